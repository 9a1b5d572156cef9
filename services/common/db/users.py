"""Users: one row per external identity (a token's subject, or tenant/subject)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class User:
    id: str
    external_id: str


class Users:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def ensure(self, user_id: str, external_id: str) -> None:
        await self.pool.execute(
            "INSERT INTO users (id, external_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            user_id,
            external_id,
        )
