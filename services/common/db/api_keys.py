"""API keys for server-to-server callers: only each key's digest is kept."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import asyncpg

from .users import User


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None

    def public(self) -> dict[str, Any]:
        """As the REST API lists it (the key itself is shown only once, when it is made)."""
        return {"id": self.id, "name": self.name, "created_at": self.created_at, "last_used_at": self.last_used_at}


class ApiKeys:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def create(self, key_id: str, user_id: str, name: str, key_hash: bytes) -> None:
        await self.pool.execute(
            "INSERT INTO api_keys (id, user_id, name, key_hash) VALUES ($1,$2,$3,$4)", key_id, user_id, name, key_hash
        )

    async def user_of(self, key_hash: bytes) -> User | None:
        """The user of a live key, marking the key used."""
        row = await self.pool.fetchrow(
            """UPDATE api_keys k SET last_used_at=now() FROM users u
               WHERE k.key_hash=$1 AND k.revoked_at IS NULL AND u.id = k.user_id
               RETURNING k.user_id AS id, u.external_id""",
            key_hash,
        )
        return User(**row) if row else None

    async def live(self, user_id: str) -> list[ApiKey]:
        """The user's keys not revoked, oldest first."""
        rows = await self.pool.fetch(
            """SELECT id, name, created_at, last_used_at FROM api_keys
               WHERE user_id=$1 AND revoked_at IS NULL ORDER BY created_at""",
            user_id,
        )
        return [ApiKey(**r) for r in rows]

    async def revoke(self, key_id: str, user_id: str) -> bool:
        done = await self.pool.execute(
            "UPDATE api_keys SET revoked_at=now() WHERE id=$1 AND user_id=$2 AND revoked_at IS NULL", key_id, user_id
        )
        return done.endswith(" 1")
