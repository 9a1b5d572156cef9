"""The database itself: migrations (yoyo, plain SQL files) and an asyncpg pool whose codecs
keep every text and jsonb value storable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg

MIGRATIONS = Path(__file__).parent.parent / "migrations"


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
