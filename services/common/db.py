"""Postgres access: migrations (yoyo, plain SQL files), an asyncpg pool, and the queries.

Every write of a message is idempotent on its derived id, so a redelivered bus message
never duplicates a row.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import asyncpg

MIGRATIONS = Path(__file__).parent / "migrations"


def migrate(database_url: str) -> int:
    """Apply pending migrations under a lock (safe from several replicas); returns how many."""
    from yoyo import get_backend, read_migrations

    url = database_url
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix) :]
    backend = get_backend(url)
    migrations = read_migrations(str(MIGRATIONS))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return len(pending)


async def _init(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("uuid", encoder=str, decoder=str, schema="pg_catalog", format="text")


async def create_pool(database_url: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(database_url, min_size=min_size, max_size=max_size, init=_init)


@dataclass(frozen=True)
class Avatar:
    id: str
    name: str
    role_title: str | None
    persona_prompt: str
    language: str
    voice_key: str | None
    owner_id: str | None


@dataclass(frozen=True)
class HistoryItem:
    role: str
    avatar_id: str | None
    text: str


AVATAR_COLUMNS = "id, name, role_title, persona_prompt, language, voice_key, owner_id"


class _ExpiringBatch(list):
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


class Repo:
    """The queries services run; thin on purpose so each one's SQL is easy to read."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def ensure_user(self, user_id: str, external_id: str) -> None:
        await self.pool.execute(
            "INSERT INTO users (id, external_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            user_id,
            external_id,
        )

    async def upsert_avatar(self, a: Avatar) -> None:
        await self.pool.execute(
            f"""INSERT INTO avatars ({AVATAR_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7)
                ON CONFLICT (id) DO UPDATE SET name=$2, role_title=$3, persona_prompt=$4,
                    language=$5, voice_key=$6, updated_at=now()""",
            a.id,
            a.name,
            a.role_title,
            a.persona_prompt,
            a.language,
            a.voice_key,
            a.owner_id,
        )

    async def get_avatar(self, avatar_id: str) -> Avatar | None:
        row = await self.pool.fetchrow(f"SELECT {AVATAR_COLUMNS} FROM avatars WHERE id=$1", avatar_id)
        return Avatar(**row) if row else None

    async def list_avatars(self, user_id: str | None) -> list[Avatar]:
        rows = await self.pool.fetch(
            f"SELECT {AVATAR_COLUMNS} FROM avatars WHERE owner_id IS NULL OR owner_id=$1 ORDER BY name",
            user_id,
        )
        return [Avatar(**r) for r in rows]

    async def create_conversation(self, conv_id: str, user_id: str, avatar_ids: list[str]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO conversations (id, user_id) VALUES ($1, $2)", conv_id, user_id)
            await conn.executemany(
                "INSERT INTO conversation_avatars (conversation_id, avatar_id, position) VALUES ($1,$2,$3)",
                [(conv_id, a, i) for i, a in enumerate(avatar_ids)],
            )

    async def conversation_owner(self, conv_id: str) -> str | None:
        return await self.pool.fetchval("SELECT user_id FROM conversations WHERE id=$1", conv_id)

    async def conversation_avatars(self, conv_id: str) -> list[Avatar]:
        rows = await self.pool.fetch(
            f"""SELECT {", ".join("a." + c.strip() for c in AVATAR_COLUMNS.split(","))}
                FROM conversation_avatars ca JOIN avatars a ON a.id = ca.avatar_id
                WHERE ca.conversation_id=$1 ORDER BY ca.position""",
            conv_id,
        )
        return [Avatar(**r) for r in rows]

    async def insert_user_message(
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
        self, reply_id: str, text: str, status: str, error: str | None, timings: dict
    ) -> tuple[bool, str, str]:
        """Finish a reply still streaming. Returns (whether this call finished it, the stored
        status, the stored text): an interruption may have finished it first."""
        row = await self.pool.fetchrow(
            """UPDATE messages SET text=$2, status=$3, error=$4, timings=timings || $5, updated_at=now()
               WHERE id=$1 AND status='streaming' RETURNING status, text""",
            reply_id,
            text,
            status,
            error,
            timings,
        )
        if row is not None:
            return True, row["status"], row["text"]
        row = await self.pool.fetchrow("SELECT status, text FROM messages WHERE id=$1", reply_id)
        return False, row["status"], row["text"]

    async def interrupt_reply(self, reply_id: str, heard: str | None) -> str | None:
        """Mark a reply interrupted, keeping only the heard text when it is known; returns the
        stored text, or None when there is no such reply or it had failed."""
        return await self.pool.fetchval(
            """UPDATE messages SET status='interrupted', text=COALESCE($2, text), updated_at=now()
               WHERE id=$1 AND role='avatar' AND status <> 'failed' RETURNING text""",
            reply_id,
            heard,
        )

    async def finished_replies(self, user_message_id: str) -> set[str]:
        """Avatars whose reply to this user message is already finished."""
        rows = await self.pool.fetch(
            "SELECT avatar_id FROM messages WHERE reply_to=$1 AND status <> 'streaming'", user_message_id
        )
        return {r["avatar_id"] for r in rows}

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

    @contextlib.asynccontextmanager
    async def expiring_audio(self, older_than: dt.timedelta, limit: int):
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
            yield _ExpiringBatch(conn, [(r["id"], r["audio_key"]) for r in rows])

    async def history(self, conv_id: str, limit: int) -> list[HistoryItem]:
        rows = await self.pool.fetch(
            """SELECT role, avatar_id, text FROM (
                   SELECT role, avatar_id, text, created_at FROM messages
                   WHERE conversation_id=$1 AND status IN ('complete', 'interrupted') AND text <> ''
                   ORDER BY created_at DESC LIMIT $2) t
               ORDER BY created_at""",
            conv_id,
            limit,
        )
        return [HistoryItem(**r) for r in rows]

    async def messages(self, conv_id: str) -> list[dict]:
        rows = await self.pool.fetch(
            """SELECT id, role, avatar_id, reply_to, source, text, status, error, audio_key,
                      audio_duration_s, audio_expired_at IS NOT NULL AS audio_expired, timings, created_at
               FROM messages WHERE conversation_id=$1 ORDER BY created_at, role DESC""",
            conv_id,
        )
        return [dict(r) for r in rows]
