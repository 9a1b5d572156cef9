"""Messages: users' turns and the avatars' replies to them, with each reply's stored audio.

Every write is idempotent on the message's derived id (services/common/ids.py), so a
redelivered bus message never duplicates a row.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from .tool_calls import ToolCall

SELECT = """id, role, avatar_id, reply_to, source, text, status, error, audio_key, audio_duration_s,
    audio_expired_at IS NOT NULL AS audio_expired, timings, created_at, sentence_count,
    removed_at IS NOT NULL AS removed"""


@dataclass(frozen=True)
class Message:
    id: str
    role: str
    avatar_id: str | None
    reply_to: str | None
    source: str | None
    text: str
    status: str
    error: str | None
    audio_key: str | None
    audio_duration_s: float | None
    audio_expired: bool
    """The reply's audio was deleted after the retention period; its text stays."""
    timings: dict[str, Any]
    created_at: dt.datetime
    sentence_count: int | None
    """How many sentences a finished reply sent to TTS (unset on older replies)."""
    removed: bool = False
    """Taken out of the LLM's history by the client (the row stays)."""

    def public(self, audio_url: str | None) -> dict[str, Any]:
        """As the REST API shows it, with the reply's audio as a short-lived URL."""
        return {
            "id": self.id,
            "role": self.role,
            "avatar_id": self.avatar_id,
            "reply_to": self.reply_to,
            "source": self.source,
            "text": self.text,
            "status": self.status,
            "error": self.error,
            "audio_key": self.audio_key,
            "audio_url": audio_url,
            "audio_duration_s": self.audio_duration_s,
            "audio_expired": self.audio_expired,
            "timings": self.timings,
            "created_at": self.created_at.isoformat(),
            "removed": self.removed,
        }


@dataclass(frozen=True)
class HistoryItem:
    """A message as the LLM's prompt sees it."""

    role: str
    avatar_id: str | None
    text: str
    calls: tuple[dict, ...] = ()
    """An avatar's finished tool calls in the reply, in order (`ToolCall.prompt_item`): kept
    even when the reply was cut off before a word of it was heard."""


@dataclass(frozen=True)
class Interruption:
    """What an interruption did to its reply: ``cut`` (stored with ``text``), ``absent`` (no
    row yet), ``streaming`` (no position given and the text not final yet) or ``failed``."""

    outcome: str
    text: str = ""


class ExpiringBatch(list):
    """Replies (id, audio key) claimed for deletion of their audio."""

    def __init__(self, conn: asyncpg.Connection, rows: list[tuple[str, str]]):
        super().__init__(rows)
        self._conn = conn

    async def expire(self) -> None:
        await self._conn.execute(
            """UPDATE messages SET audio_key=NULL, audio_expired_at=now(), updated_at=now()
               WHERE id = ANY($1::uuid[])""",
            [mid for mid, _ in self],
        )


def _calls(raw: list[dict] | None) -> tuple[dict, ...]:
    return tuple(ToolCall(reply_id="", round=0, call_index=0, kind="", **c).prompt_item() for c in raw or ())


class Messages:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def add_user(
        self,
        message_id: str,
        conv_id: str,
        source: str,
        session_id: str,
        turn_seq: int,
        text: str,
        timings: dict,
    ) -> None:
        await self.pool.execute(
            """INSERT INTO messages (id, conversation_id, role, source, session_id, turn_seq, text,
                                     status, timings)
               VALUES ($1,$2,'user',$3,$4,$5,$6,'complete',$7) ON CONFLICT (id) DO NOTHING""",
            message_id,
            conv_id,
            source,
            session_id,
            turn_seq,
            text,
            timings,
        )

    async def get(self, conv_id: str, message_id: str) -> Message | None:
        """One message of the conversation (none from another)."""
        row = await self.pool.fetchrow(
            f"SELECT {SELECT} FROM messages WHERE id=$1 AND conversation_id=$2", message_id, conv_id
        )
        return Message(**row) if row else None

    async def remove(self, conv_id: str, message_id: str) -> bool:
        """Take a message out of the LLM's history (the row stays); False: none such, or gone."""
        done = await self.pool.execute(
            "UPDATE messages SET removed_at=now() WHERE id=$1 AND conversation_id=$2 AND removed_at IS NULL",
            message_id,
            conv_id,
        )
        return done.endswith(" 1")

    async def status(self, message_id: str) -> str | None:
        return await self.pool.fetchval("SELECT status FROM messages WHERE id=$1", message_id)

    async def of_conversation(self, conv_id: str) -> list[Message]:
        rows = await self.pool.fetch(
            f"""SELECT {SELECT} FROM messages WHERE conversation_id=$1
                ORDER BY created_at, role='avatar', id""",
            conv_id,
        )
        return [Message(**r) for r in rows]

    async def page(self, conv_id: str, limit: int, after: tuple[dt.datetime, bool, str] | None = None) -> list[Message]:
        """A page of a conversation's messages, oldest first (a user's turn before replies made
        in the same instant); `after` is the (created_at, is_reply, id) of the previous page's last."""
        after_clause = "AND (created_at, role='avatar', id) > ($3, $4, $5::uuid)" if after else ""
        rows = await self.pool.fetch(
            f"""SELECT {SELECT} FROM messages WHERE conversation_id=$1 {after_clause}
                ORDER BY created_at, role='avatar', id LIMIT $2""",
            conv_id,
            limit,
            *(after or ()),
        )
        return [Message(**r) for r in rows]

    async def history(self, conv_id: str, limit: int) -> list[HistoryItem]:
        rows = await self.pool.fetch(
            """SELECT role, avatar_id, text, calls FROM (
                   SELECT m.role, m.avatar_id, CASE WHEN m.status = 'failed' THEN '' ELSE m.text END AS text,
                          m.created_at, c.calls
                   FROM messages m LEFT JOIN LATERAL (
                       SELECT jsonb_agg(jsonb_build_object('id', id, 'name', name, 'arguments', arguments,
                                                           'status', status, 'result', result, 'error', error)
                                        ORDER BY round, call_index) AS calls
                       FROM tool_calls WHERE reply_id = m.id AND status <> 'running') c ON true
                   WHERE m.conversation_id=$1 AND m.removed_at IS NULL AND (
                       (m.status IN ('complete', 'interrupted') AND m.text <> '')
                       OR (m.status <> 'streaming' AND c.calls IS NOT NULL))
                   ORDER BY m.created_at DESC LIMIT $2) t
               ORDER BY created_at""",
            conv_id,
            limit,
        )
        return [HistoryItem(r["role"], r["avatar_id"], r["text"], _calls(r["calls"])) for r in rows]

    # --- replies ----------------------------------------------------------------------------

    async def start_reply(self, reply_id: str, conv_id: str, user_message_id: str, avatar_id: str) -> None:
        await self.pool.execute(
            """INSERT INTO messages (id, conversation_id, role, avatar_id, reply_to, status)
               VALUES ($1,$2,'avatar',$3,$4,'streaming') ON CONFLICT (id) DO NOTHING""",
            reply_id,
            conv_id,
            avatar_id,
            user_message_id,
        )

    async def finish_reply(
        self, reply_id: str, text: str, status: str, error: str | None, timings: dict, sentences: int = 0
    ) -> tuple[bool, str, str]:
        """Finish a reply still streaming. Returns (whether this call finished it, the stored
        status, the stored text): an interruption may have finished it first."""
        row = await self.pool.fetchrow(
            """UPDATE messages SET text=$2, status=$3, error=$4, timings=timings || $5, sentence_count=$6,
                      updated_at=now()
               WHERE id=$1 AND status='streaming' RETURNING status, text""",
            reply_id,
            text,
            status,
            error,
            timings,
            sentences,
        )
        if row is not None:
            return True, row["status"], row["text"]
        # Interrupted first: the count of sentences sent is still this attempt's to record.
        row = await self.pool.fetchrow(
            """UPDATE messages SET sentence_count=COALESCE(sentence_count, $2), text=COALESCE(text, $3)
               WHERE id=$1 RETURNING status, text""",
            reply_id,
            sentences,
            text,
        )
        return False, row["status"], row["text"]

    async def reply_outcome(self, reply_id: str) -> Message | None:
        """A finished reply as it was announced: its status, text, error and sentence count."""
        row = await self.pool.fetchrow(f"SELECT {SELECT} FROM messages WHERE id=$1 AND status <> 'streaming'", reply_id)
        return Message(**row) if row else None

    async def interrupt_reply(self, reply_id: str, heard: str | None) -> Interruption:
        """Mark a reply interrupted, keeping only the heard text when it is known.

        One statement, so one snapshot, tells the outcomes apart: a second query could see a
        row the first did not (a reply inserted between them) and take "not there yet" for
        "failed". Without a position (``heard`` None) a reply still streaming is left alone
        until its text is final, so the text streamed so far is what is kept."""
        row = await self.pool.fetchrow(
            """WITH cur AS (SELECT status FROM messages WHERE id=$1 AND role='avatar'),
                    cut AS (UPDATE messages SET status='interrupted', text=COALESCE($2, text), updated_at=now()
                            WHERE id=$1 AND role='avatar' AND status <> 'failed'
                              AND ($2::text IS NOT NULL OR status <> 'streaming')
                            RETURNING text)
               SELECT (SELECT status FROM cur) AS status, EXISTS (SELECT 1 FROM cut) AS cut,
                      (SELECT text FROM cut) AS text""",
            reply_id,
            heard,
        )
        if row["cut"]:
            return Interruption("cut", row["text"] or "")
        if row["status"] is None:
            return Interruption("absent")
        return Interruption("streaming" if row["status"] == "streaming" else "failed")

    async def fail_streaming_replies(self, user_message_id: str, error: str) -> None:
        await self.pool.execute(
            """UPDATE messages SET status='failed', error=$2, updated_at=now()
               WHERE reply_to=$1 AND role='avatar' AND status='streaming'""",
            user_message_id,
            error,
        )

    async def finished_replies(self, user_message_id: str) -> set[str]:
        """Avatars whose reply to this user message is already finished."""
        rows = await self.pool.fetch(
            "SELECT avatar_id FROM messages WHERE reply_to=$1 AND status <> 'streaming'", user_message_id
        )
        return {r["avatar_id"] for r in rows}

    # --- reply audio ------------------------------------------------------------------------

    async def set_audio(self, message_id: str, key: str, duration_s: float, timings: dict) -> None:
        """Record a reply's stored audio; a reply whose audio already expired stays expired."""
        await self.pool.execute(
            """UPDATE messages SET audio_key=$2, audio_duration_s=$3, timings=timings || $4,
                      audio_stored_at=COALESCE(audio_stored_at, now()), updated_at=now()
               WHERE id=$1 AND audio_expired_at IS NULL""",
            message_id,
            key,
            duration_s,
            timings,
        )

    async def audio_key(self, conv_id: str, message_id: str) -> str | None:
        return await self.pool.fetchval(
            "SELECT audio_key FROM messages WHERE id=$1 AND conversation_id=$2", message_id, conv_id
        )

    @contextlib.asynccontextmanager
    async def expiring_audio(self, older_than: dt.timedelta, limit: int) -> AsyncIterator[ExpiringBatch]:
        """A batch of replies whose audio was stored before now - `older_than`, locked for
        this caller (others skip them) until the block ends; `expire()` records the expiry."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT id::text, audio_key FROM messages
                   WHERE audio_key IS NOT NULL AND audio_stored_at < now() - $1::interval
                   ORDER BY audio_stored_at LIMIT $2 FOR UPDATE SKIP LOCKED""",
                older_than,
                limit,
            )
            yield ExpiringBatch(conn, [(r["id"], r["audio_key"]) for r in rows])
