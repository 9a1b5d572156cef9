"""Conversations: a user's, with their avatars in order and a preview of the latest message."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import asyncpg

SELECT = """SELECT c.id, c.title, c.created_at,
               GREATEST(c.updated_at, last.created_at) AS updated_at,
               ARRAY(SELECT ca.avatar_id::text FROM conversation_avatars ca
                     WHERE ca.conversation_id = c.id ORDER BY ca.position) AS avatar_ids,
               last.role AS last_role, last.avatar_id AS last_avatar_id, last.text AS last_text,
               last.created_at AS last_at
        FROM conversations c
        LEFT JOIN LATERAL (
            SELECT m.role, m.avatar_id, left(m.text, 200) AS text, m.created_at FROM messages m
            WHERE m.conversation_id = c.id AND m.text <> ''
            ORDER BY m.created_at DESC, m.role='avatar' DESC, m.id DESC LIMIT 1) last ON true"""


@dataclass(frozen=True)
class LastMessage:
    """The preview of a conversation's latest message that has text."""

    role: str
    avatar_id: str | None
    text: str
    """Its first 200 characters."""
    created_at: dt.datetime


@dataclass(frozen=True)
class Conversation:
    id: str
    avatar_ids: list[str]
    title: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    """Its latest message's time, or its creation."""
    last_message: LastMessage | None

    @classmethod
    def of(cls, row: asyncpg.Record) -> Conversation:
        last = None
        if row["last_at"] is not None:
            last = LastMessage(row["last_role"], row["last_avatar_id"], row["last_text"], row["last_at"])
        return cls(row["id"], row["avatar_ids"], row["title"], row["created_at"], row["updated_at"], last)

    def public(self) -> dict[str, Any]:
        """As the REST API shows it."""
        last = self.last_message
        return {
            "id": self.id,
            "avatar_ids": self.avatar_ids,
            "title": self.title,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "last_message": None
            if last is None
            else {"role": last.role, "avatar_id": last.avatar_id, "text": last.text, "created_at": last.created_at},
        }


class Conversations:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def create(self, conv_id: str, user_id: str, avatar_ids: list[str]) -> None:
        """An avatar named twice joins once, at its first place."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO conversations (id, user_id) VALUES ($1, $2)", conv_id, user_id)
            await _add_avatars(conn, conv_id, avatar_ids)

    async def replace_avatars(self, conv_id: str, avatar_ids: list[str]) -> None:
        """For a conversation nobody has answered yet (a Realtime client choosing its voice)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM conversation_avatars WHERE conversation_id=$1", conv_id)
            await _add_avatars(conn, conv_id, avatar_ids)

    async def owner(self, conv_id: str) -> str | None:
        return await self.pool.fetchval("SELECT user_id FROM conversations WHERE id=$1", conv_id)

    async def get(self, conv_id: str, user_id: str) -> Conversation | None:
        row = await self.pool.fetchrow(f"{SELECT} WHERE c.id=$1 AND c.user_id=$2", conv_id, user_id)
        return Conversation.of(row) if row else None

    async def page(self, user_id: str, limit: int, before: tuple[dt.datetime, str] | None = None) -> list[Conversation]:
        """A page of the user's conversations, newest first; `before` is the (created_at, id)
        of the last one of the previous page."""
        after_clause = "AND (c.created_at, c.id) < ($3, $4::uuid)" if before else ""
        rows = await self.pool.fetch(
            f"""{SELECT}
                WHERE c.user_id=$1 {after_clause}
                ORDER BY c.created_at DESC, c.id DESC LIMIT $2""",
            user_id,
            limit,
            *(before or ()),
        )
        return [Conversation.of(r) for r in rows]


async def _add_avatars(conn: asyncpg.Connection, conv_id: str, avatar_ids: list[str]) -> None:
    await conn.executemany(
        """INSERT INTO conversation_avatars (conversation_id, avatar_id, position) VALUES ($1,$2,$3)
           ON CONFLICT DO NOTHING""",
        [(conv_id, a, i) for i, a in enumerate(avatar_ids)],
    )
