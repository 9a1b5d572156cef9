"""Client sessions: one row per session, for the per-user limit and for resuming a dropped one."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import asyncpg


@dataclass(frozen=True)
class ClientSession:
    id: str
    user_id: str
    conversation_id: str
    options: dict[str, Any]
    """The client's choices that a resume restores (recognition language, end of turn)."""
    started_at: dt.datetime
    live: bool
    end_reason: str | None


class ClientSessions:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def open(
        self,
        session_id: str,
        user_id: str,
        conv_id: str,
        gateway: str,
        options: dict,
        limit: int,
        stale_after: dt.timedelta,
    ) -> bool:
        """Record a live session unless the user already has `limit` live ones (a session
        whose gateway stopped renewing it for `stale_after` no longer counts). Serialised
        per user, so concurrent starts on several gateways cannot exceed the limit. A
        resumed session takes over its own row."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 7))", user_id)
            live = await conn.fetchval(
                """SELECT count(*) FROM client_sessions
                   WHERE user_id=$1 AND ended_at IS NULL AND seen_at > now() - $2::interval AND id <> $3""",
                user_id,
                stale_after,
                session_id,
            )
            if live >= limit:
                return False
            await conn.execute(
                """INSERT INTO client_sessions (id, user_id, conversation_id, gateway, options)
                   VALUES ($1,$2,$3,$4,$5)
                   ON CONFLICT (id) DO UPDATE SET gateway=$4, seen_at=now(), ended_at=NULL, end_reason=NULL""",
                session_id,
                user_id,
                conv_id,
                gateway,
                options,
            )
            return True

    async def renew(self, session_ids: list[str]) -> None:
        if session_ids:
            await self.pool.execute(
                "UPDATE client_sessions SET seen_at=now() WHERE id = ANY($1::uuid[]) AND ended_at IS NULL", session_ids
            )

    async def end(self, session_id: str, connection: str, reason: str) -> None:
        """End the session if `connection` still holds it (a resume elsewhere may have taken it)."""
        await self.pool.execute(
            """UPDATE client_sessions SET ended_at=now(), seen_at=now(), end_reason=$3
               WHERE id=$1 AND gateway=$2 AND ended_at IS NULL""",
            session_id,
            connection,
            reason,
        )

    async def resumable(self, session_id: str, grace: dt.timedelta) -> ClientSession | None:
        """A session that may be resumed: dropped (or its gateway died) within the grace window.
        One the client ended itself, or the server ended for a limit, may not."""
        row = await self.pool.fetchrow(
            """SELECT id, user_id, conversation_id, options, started_at, ended_at IS NULL AS live, end_reason
               FROM client_sessions WHERE id=$1 AND seen_at > now() - $2::interval""",
            session_id,
            grace,
        )
        if row is None or (not row["live"] and row["end_reason"] != "dropped"):
            return None
        return ClientSession(**row)
