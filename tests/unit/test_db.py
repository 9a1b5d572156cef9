"""Migrations and idempotent writes against a real Postgres."""

from __future__ import annotations

import pytest

from services.common import db, ids


@pytest.fixture
async def repo(database_url):
    pool = await db.create_pool(database_url)
    yield db.Repo(pool)
    await pool.close()


def test_migrations_are_applied_once(database_url):
    assert db.migrate(database_url) == 0


async def test_writes_are_idempotent_on_derived_ids(repo):
    user = ids.user_id_for("idempotent-user")
    await repo.ensure_user(user, "idempotent-user")
    await repo.ensure_user(user, "idempotent-user")
    avatar = db.Avatar(ids.new_id(), "Zed", None, "You are {name}.", "en", None, None)
    await repo.upsert_avatar(avatar)
    conv = ids.new_id()
    await repo.create_conversation(conv, user, [avatar.id])
    msg = ids.user_message_id(conv, "s", "text", 0)
    for _ in range(2):
        await repo.insert_user_message(msg, conv, "text", ids.new_id(), 0, "hello", {"received": 1.0})
    reply = ids.reply_id(msg, avatar.id)
    for _ in range(2):
        await repo.start_reply(reply, conv, msg, avatar.id)
    await repo.finish_reply(reply, "hi there", "complete", None, {"total_s": 0.5})
    rows = await repo.messages(conv)
    assert [(r["role"], r["status"], r["text"]) for r in rows] == [
        ("user", "complete", "hello"),
        ("avatar", "complete", "hi there"),
    ]
    assert rows[1]["timings"] == {"total_s": 0.5}
    history = await repo.history(conv, 10)
    assert [(h.role, h.text) for h in history] == [("user", "hello"), ("avatar", "hi there")]
    assert await repo.conversation_owner(conv) == user


async def test_text_holding_nul_is_stored_not_refused(repo):
    """Postgres refuses U+0000 in text and jsonb; the write keeps U+FFFD in its place."""
    user = ids.user_id_for("nul-user")
    await repo.ensure_user(user, "nul-user")
    avatar = db.Avatar(ids.new_id(), "Nul\x00", None, "You are {name}.", "en", None, None)
    await repo.upsert_avatar(avatar)
    assert (await repo.get_avatar(avatar.id)).name == "Nul\ufffd"
    conv = ids.new_id()
    await repo.create_conversation(conv, user, [avatar.id])
    msg = ids.user_message_id(conv, "s", "text", 0)
    await repo.insert_user_message(msg, conv, "text", ids.new_id(), 0, "a\x00b", {"note\x00": ["c\x00"]})
    (row,) = await repo.messages(conv)
    assert row["text"] == "a\ufffdb" and row["timings"] == {"note\ufffd": ["c\ufffd"]}
    await repo.create_api_key(ids.new_id(), user, "key\x00", b"digest-of-a-nul-key")
    assert [k["name"] for k in await repo.list_api_keys(user)] == ["key\ufffd"]
