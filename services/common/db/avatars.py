"""Avatars: the public ones (no owner) and users' own, deleted softly."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from ..tools import decode_tools

WRITTEN = ("id", "name", "role_title", "persona_prompt", "language", "voice_key", "owner_id")
COLUMNS = (*WRITTEN, "tools", "version", "created_at", "updated_at")
SELECT = ", ".join(COLUMNS)
EDITABLE = ("name", "role_title", "persona_prompt", "language")


@dataclass(frozen=True)
class Avatar:
    """One avatar, however it was read; the times are unset on one built to be written."""

    id: str
    name: str
    role_title: str | None
    persona_prompt: str
    language: str
    voice_key: str | None
    owner_id: str | None
    tools: list[dict[str, Any]] = field(default_factory=list)
    """As `services.common.tools.Tool` structs, secrets included (never shown: `public`)."""
    version: int = 1
    """Counts the avatar's changes; a reply records the version it ran with."""
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None

    def public(self) -> dict[str, Any]:
        """As the REST API shows it: whether it has a voice, not where the voice is kept."""
        return {
            "id": self.id,
            "name": self.name,
            "role_title": self.role_title,
            "persona_prompt": self.persona_prompt,
            "language": self.language,
            "has_voice": bool(self.voice_key),
            "public": self.owner_id is None,
            "tools": [t.public() for t in decode_tools(self.tools)],
            "version": self.version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def _written(a: Avatar) -> tuple:
    """The values of `WRITTEN`, in its order."""
    return tuple(getattr(a, c) for c in WRITTEN)


def _avatar(row: asyncpg.Record | None) -> Avatar | None:
    return Avatar(**row) if row else None


class Avatars:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def upsert(self, a: Avatar) -> None:
        await self.pool.execute(
            f"""INSERT INTO avatars ({", ".join(WRITTEN)}) VALUES ($1,$2,$3,$4,$5,$6,$7)
                ON CONFLICT (id) DO UPDATE SET name=$2, role_title=$3, persona_prompt=$4,
                    language=$5, voice_key=$6, updated_at=now()""",
            *_written(a),
        )

    async def create(self, a: Avatar) -> Avatar:
        row = await self.pool.fetchrow(
            f"""INSERT INTO avatars ({", ".join(WRITTEN)}) VALUES ($1,$2,$3,$4,$5,$6,$7) RETURNING {SELECT}""",
            *_written(a),
        )
        return Avatar(**row)

    async def get(self, avatar_id: str) -> Avatar | None:
        """An avatar that may join a new conversation: a deleted one may not (its old
        conversations still read it through `of_conversation`)."""
        row = await self.pool.fetchrow(f"SELECT {SELECT} FROM avatars WHERE id=$1 AND deleted_at IS NULL", avatar_id)
        return _avatar(row)

    async def visible(self, user_id: str) -> list[Avatar]:
        """The public avatars, then the user's own, each by name; deleted ones left out."""
        rows = await self.pool.fetch(
            f"""SELECT {SELECT} FROM avatars
                WHERE (owner_id IS NULL OR owner_id=$1) AND deleted_at IS NULL
                ORDER BY owner_id IS NOT NULL, name, id""",
            user_id,
        )
        return [Avatar(**r) for r in rows]

    async def get_visible(self, avatar_id: str, user_id: str) -> Avatar | None:
        row = await self.pool.fetchrow(
            f"""SELECT {SELECT} FROM avatars
                WHERE id=$1 AND (owner_id IS NULL OR owner_id=$2) AND deleted_at IS NULL""",
            avatar_id,
            user_id,
        )
        return _avatar(row)

    async def of_conversation(self, conv_id: str) -> list[Avatar]:
        """A conversation's avatars in order, deleted ones included: its history names them."""
        rows = await self.pool.fetch(
            f"""SELECT {", ".join("a." + c for c in COLUMNS)}
                FROM conversation_avatars ca JOIN avatars a ON a.id = ca.avatar_id
                WHERE ca.conversation_id=$1 ORDER BY ca.position""",
            conv_id,
        )
        return [Avatar(**r) for r in rows]

    async def update(self, avatar_id: str, owner_id: str, changes: dict[str, Any]) -> Avatar | None:
        """Change an owned, live avatar's editable fields (only those in `changes`)."""
        return await self._change(avatar_id, owner_id, {c: changes[c] for c in EDITABLE if c in changes})

    async def set_voice(self, avatar_id: str, owner_id: str, voice_key: str) -> Avatar | None:
        return await self._change(avatar_id, owner_id, {"voice_key": voice_key})

    async def set_tools(self, avatar_id: str, owner_id: str, tools: list[dict[str, Any]]) -> Avatar | None:
        """Replace an owned, live avatar's tools (checked by the caller)."""
        return await self._change(avatar_id, owner_id, {"tools": tools})

    async def _change(self, avatar_id: str, owner_id: str, values: dict[str, Any]) -> Avatar | None:
        """One change of an owned, live avatar: its version one higher (column names are ours)."""
        sets = "".join(f"{c}=${n}, " for n, c in enumerate(values, start=3))
        row = await self.pool.fetchrow(
            f"""UPDATE avatars SET {sets}version=version + 1, updated_at=now()
                WHERE id=$1 AND owner_id=$2 AND deleted_at IS NULL RETURNING {SELECT}""",
            avatar_id,
            owner_id,
            *values.values(),
        )
        return _avatar(row)

    async def delete(self, avatar_id: str, owner_id: str) -> bool:
        """Soft: the row stays, so conversations that had the avatar keep their history."""
        done = await self.pool.execute(
            "UPDATE avatars SET deleted_at=now(), updated_at=now() WHERE id=$1 AND owner_id=$2 AND deleted_at IS NULL",
            avatar_id,
            owner_id,
        )
        return done.endswith(" 1")
