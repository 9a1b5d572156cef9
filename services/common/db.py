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
from typing import Any

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


def _storable(value: Any) -> Any:
    """Postgres text and jsonb cannot hold U+0000: it is kept as U+FFFD instead. A NUL in a
    client's text, a REST field or an LLM's output would otherwise fail the write, and a
    typed turn would be answered, retried and failed again until it gave up."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    return value


def _json(value: Any) -> str:
    return json.dumps(_storable(value))


async def _init(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=_json, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("uuid", encoder=str, decoder=str, schema="pg_catalog", format="text")
    await conn.set_type_codec("text", encoder=_storable, decoder=str, schema="pg_catalog", format="text")


async def _released(conn: asyncpg.Connection) -> None:
    """Nothing to undo on release: Parley sets no session state (no SET, LISTEN, advisory
    locks or cursors), and asyncpg still rolls back a transaction left open. Its default
    reset sends `RESET ALL` and three more statements after every query, a second round trip
    that doubled each pooled query's time (0.17 ms to 0.085 ms p50 for `SELECT 1` here)."""


async def create_pool(database_url: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(database_url, min_size=min_size, max_size=max_size, init=_init, reset=_released)


@dataclass(frozen=True)
class Interruption:
    """What an interruption did to its reply: ``cut`` (stored with ``text``), ``absent`` (no
    row yet), ``streaming`` (no position given and the text not final yet) or ``failed``."""

    outcome: str
    text: str = ""


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
AVATAR_EDITABLE = ("name", "role_title", "persona_prompt", "language")
MESSAGE_COLUMNS = """id, role, avatar_id, reply_to, source, text, status, error, audio_key, audio_duration_s,
    audio_expired_at IS NOT NULL AS audio_expired, timings, created_at"""


# A conversation as listed: its avatars in order and a preview of its latest message.
CONVERSATION_SELECT = """SELECT c.id, c.title, c.created_at,
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
        """An avatar that may join a new conversation: a deleted one may not (its old
        conversations still read it through `conversation_avatars`)."""
        row = await self.pool.fetchrow(
            f"SELECT {AVATAR_COLUMNS} FROM avatars WHERE id=$1 AND deleted_at IS NULL", avatar_id
        )
        return Avatar(**row) if row else None

    async def list_avatars(self, user_id: str | None) -> list[Avatar]:
        rows = await self.pool.fetch(
            f"""SELECT {AVATAR_COLUMNS} FROM avatars
                WHERE (owner_id IS NULL OR owner_id=$1) AND deleted_at IS NULL ORDER BY name, id""",
            user_id,
        )
        return [Avatar(**r) for r in rows]

    async def create_conversation(self, conv_id: str, user_id: str, avatar_ids: list[str]) -> None:
        """An avatar named twice joins once, at its first place."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO conversations (id, user_id) VALUES ($1, $2)", conv_id, user_id)
            await conn.executemany(
                """INSERT INTO conversation_avatars (conversation_id, avatar_id, position) VALUES ($1,$2,$3)
                   ON CONFLICT DO NOTHING""",
                [(conv_id, a, i) for i, a in enumerate(avatar_ids)],
            )

    async def replace_conversation_avatars(self, conv_id: str, avatar_ids: list[str]) -> None:
        """For a conversation nobody has answered yet (a Realtime client choosing its voice)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM conversation_avatars WHERE conversation_id=$1", conv_id)
            await conn.executemany(
                """INSERT INTO conversation_avatars (conversation_id, avatar_id, position) VALUES ($1,$2,$3)
                   ON CONFLICT DO NOTHING""",
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

    async def reply_outcome(self, reply_id: str):
        """A finished reply as it was announced: status, text, error and sentence count."""
        return await self.pool.fetchrow(
            "SELECT status, text, error, sentence_count FROM messages WHERE id=$1 AND status <> 'streaming'",
            reply_id,
        )

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

    async def message_status(self, message_id: str) -> str | None:
        return await self.pool.fetchval("SELECT status FROM messages WHERE id=$1", message_id)

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
            f"""SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id=$1
                ORDER BY created_at, role='avatar', id""",
            conv_id,
        )
        return [dict(r) for r in rows]

    # --- API keys ---------------------------------------------------------------------------

    async def create_api_key(self, key_id: str, user_id: str, name: str, key_hash: bytes) -> None:
        await self.pool.execute(
            "INSERT INTO api_keys (id, user_id, name, key_hash) VALUES ($1,$2,$3,$4)", key_id, user_id, name, key_hash
        )

    async def api_key_user(self, key_hash: bytes) -> tuple[str, str] | None:
        """(user id, external id) of a live key, marking it used."""
        row = await self.pool.fetchrow(
            """UPDATE api_keys k SET last_used_at=now() FROM users u
               WHERE k.key_hash=$1 AND k.revoked_at IS NULL AND u.id = k.user_id
               RETURNING k.user_id, u.external_id""",
            key_hash,
        )
        return (row["user_id"], row["external_id"]) if row else None

    async def list_api_keys(self, user_id: str) -> list[dict]:
        rows = await self.pool.fetch(
            """SELECT id, name, created_at, last_used_at FROM api_keys
               WHERE user_id=$1 AND revoked_at IS NULL ORDER BY created_at""",
            user_id,
        )
        return [dict(r) for r in rows]

    async def revoke_api_key(self, key_id: str, user_id: str) -> bool:
        done = await self.pool.execute(
            "UPDATE api_keys SET revoked_at=now() WHERE id=$1 AND user_id=$2 AND revoked_at IS NULL", key_id, user_id
        )
        return done.endswith(" 1")

    # --- client sessions --------------------------------------------------------------------

    async def open_session(
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

    async def renew_sessions(self, session_ids: list[str]) -> None:
        if session_ids:
            await self.pool.execute(
                "UPDATE client_sessions SET seen_at=now() WHERE id = ANY($1::uuid[]) AND ended_at IS NULL", session_ids
            )

    async def end_session(self, session_id: str, connection: str, reason: str) -> None:
        """End the session if `connection` still holds it (a resume elsewhere may have taken it)."""
        await self.pool.execute(
            """UPDATE client_sessions SET ended_at=now(), seen_at=now(), end_reason=$3
               WHERE id=$1 AND gateway=$2 AND ended_at IS NULL""",
            session_id,
            connection,
            reason,
        )

    async def resumable_session(self, session_id: str, grace: dt.timedelta) -> dict | None:
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
        return dict(row)

    async def message_audio_key(self, conv_id: str, message_id: str) -> str | None:
        return await self.pool.fetchval(
            "SELECT audio_key FROM messages WHERE id=$1 AND conversation_id=$2", message_id, conv_id
        )

    # --- avatars and conversations as the REST API shows them ----------------------------------

    async def visible_avatars(self, user_id: str) -> list[dict]:
        """The user's own avatars and the public ones (no owner), deleted ones left out."""
        rows = await self.pool.fetch(
            f"""SELECT {AVATAR_COLUMNS}, created_at, updated_at FROM avatars
                WHERE (owner_id IS NULL OR owner_id=$1) AND deleted_at IS NULL
                ORDER BY owner_id IS NOT NULL, name, id""",
            user_id,
        )
        return [dict(r) for r in rows]

    async def visible_avatar(self, avatar_id: str, user_id: str) -> dict | None:
        row = await self.pool.fetchrow(
            f"""SELECT {AVATAR_COLUMNS}, created_at, updated_at FROM avatars
                WHERE id=$1 AND (owner_id IS NULL OR owner_id=$2) AND deleted_at IS NULL""",
            avatar_id,
            user_id,
        )
        return dict(row) if row else None

    async def create_avatar(self, a: Avatar) -> dict:
        row = await self.pool.fetchrow(
            f"""INSERT INTO avatars ({AVATAR_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7)
                RETURNING {AVATAR_COLUMNS}, created_at, updated_at""",
            a.id,
            a.name,
            a.role_title,
            a.persona_prompt,
            a.language,
            a.voice_key,
            a.owner_id,
        )
        return dict(row)

    async def update_avatar(self, avatar_id: str, owner_id: str, changes: dict) -> dict | None:
        """Change an owned, live avatar's editable fields (only those in `changes`)."""
        columns = [c for c in AVATAR_EDITABLE if c in changes]
        sets = "".join(f"{c}=${n}, " for n, c in enumerate(columns, start=3))
        row = await self.pool.fetchrow(
            f"""UPDATE avatars SET {sets}updated_at=now()
                WHERE id=$1 AND owner_id=$2 AND deleted_at IS NULL
                RETURNING {AVATAR_COLUMNS}, created_at, updated_at""",
            avatar_id,
            owner_id,
            *(changes[c] for c in columns),
        )
        return dict(row) if row else None

    async def set_avatar_voice(self, avatar_id: str, owner_id: str, voice_key: str) -> dict | None:
        row = await self.pool.fetchrow(
            f"""UPDATE avatars SET voice_key=$3, updated_at=now()
                WHERE id=$1 AND owner_id=$2 AND deleted_at IS NULL
                RETURNING {AVATAR_COLUMNS}, created_at, updated_at""",
            avatar_id,
            owner_id,
            voice_key,
        )
        return dict(row) if row else None

    async def delete_avatar(self, avatar_id: str, owner_id: str) -> bool:
        """Soft: the row stays, so conversations that had the avatar keep their history."""
        done = await self.pool.execute(
            "UPDATE avatars SET deleted_at=now(), updated_at=now() WHERE id=$1 AND owner_id=$2 AND deleted_at IS NULL",
            avatar_id,
            owner_id,
        )
        return done.endswith(" 1")

    async def user_conversations(
        self, user_id: str, limit: int, before: tuple[dt.datetime, str] | None = None
    ) -> list[dict]:
        """A page of the user's conversations, newest first; `before` is the (created_at, id)
        of the last one of the previous page."""
        after_clause = "AND (c.created_at, c.id) < ($3, $4::uuid)" if before else ""
        rows = await self.pool.fetch(
            f"""{CONVERSATION_SELECT}
                WHERE c.user_id=$1 {after_clause}
                ORDER BY c.created_at DESC, c.id DESC LIMIT $2""",
            user_id,
            limit,
            *(before or ()),
        )
        return [dict(r) for r in rows]

    async def user_conversation(self, conv_id: str, user_id: str) -> dict | None:
        row = await self.pool.fetchrow(f"{CONVERSATION_SELECT} WHERE c.id=$1 AND c.user_id=$2", conv_id, user_id)
        return dict(row) if row else None

    async def message_page(
        self, conv_id: str, limit: int, after: tuple[dt.datetime, bool, str] | None = None
    ) -> list[dict]:
        """A page of a conversation's messages, oldest first (a user's turn before replies made
        in the same instant); `after` is the (created_at, is_reply, id) of the previous page's last."""
        after_clause = "AND (created_at, role='avatar', id) > ($3, $4, $5::uuid)" if after else ""
        rows = await self.pool.fetch(
            f"""SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id=$1 {after_clause}
                ORDER BY created_at, role='avatar', id LIMIT $2""",
            conv_id,
            limit,
            *(after or ()),
        )
        return [dict(r) for r in rows]
