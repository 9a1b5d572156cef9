"""Migrations, idempotent writes and each repository's row type against a real Postgres."""

from __future__ import annotations

import pytest

from services.common import db, ids


@pytest.fixture
async def database(database_url):
    pool = await db.create_pool(database_url)
    yield db.Database(pool)
    await pool.close()


def test_migrations_are_applied_once(database_url):
    assert db.migrate(database_url) == 0


async def test_writes_are_idempotent_on_derived_ids(database):
    user = ids.user_id_for("idempotent-user")
    await database.users.ensure(user, "idempotent-user")
    await database.users.ensure(user, "idempotent-user")
    avatar = db.Avatar(ids.new_id(), "Zed", None, "You are {name}.", "en", None, None)
    await database.avatars.upsert(avatar)
    conv = ids.new_id()
    await database.conversations.create(conv, user, [avatar.id])
    msg = ids.user_message_id(conv, "s", "text", 0)
    for _ in range(2):
        await database.messages.add_user(msg, conv, "text", ids.new_id(), 0, "hello", {"received": 1.0})
    reply = ids.reply_id(msg, avatar.id)
    for _ in range(2):
        await database.messages.start_reply(reply, conv, msg, avatar.id)
    await database.messages.finish_reply(reply, "hi there", "complete", None, {"total_s": 0.5}, 1)
    rows = await database.messages.of_conversation(conv)
    assert [(r.role, r.status, r.text) for r in rows] == [
        ("user", "complete", "hello"),
        ("avatar", "complete", "hi there"),
    ]
    assert rows[1].timings == {"total_s": 0.5}
    assert await database.messages.reply_outcome(reply) == rows[1]
    history = await database.messages.history(conv, 10)
    assert [(h.role, h.text) for h in history] == [("user", "hello"), ("avatar", "hi there")]
    assert await database.conversations.owner(conv) == user


async def test_each_entity_comes_back_as_its_one_row_type(database):
    """However an avatar is read (to use, to list, after a write) it is an `Avatar`."""
    user = ids.user_id_for("row-types-user")
    await database.users.ensure(user, "row-types-user")
    mine = await database.avatars.create(db.Avatar(ids.new_id(), "Mine", None, "p", "en", "voices/m.wav", user))
    assert isinstance(mine, db.Avatar) and mine.created_at is not None
    assert mine.public()["has_voice"] and not mine.public()["public"]
    assert await database.avatars.get(mine.id) == await database.avatars.get_visible(mine.id, user) == mine
    assert mine in await database.avatars.visible(user)
    assert await database.avatars.get_visible(mine.id, ids.user_id_for("someone-else")) is None
    renamed = await database.avatars.update(mine.id, user, {"name": "Renamed"})
    assert isinstance(renamed, db.Avatar) and renamed.name == "Renamed"
    conv = ids.new_id()
    await database.conversations.create(conv, user, [mine.id, mine.id])
    assert await database.avatars.of_conversation(conv) == [await database.avatars.get(mine.id)]
    (listed,) = await database.conversations.page(user, 10)
    assert listed == await database.conversations.get(conv, user)
    assert listed.avatar_ids == [mine.id] and listed.last_message is None
    assert await database.avatars.delete(mine.id, user)
    assert await database.avatars.get(mine.id) is None
    assert [a.id for a in await database.avatars.of_conversation(conv)] == [mine.id]  # its history still names it
    await database.keys.create(ids.new_id(), user, "k", b"digest-of-a-row-type-key")
    assert await database.keys.user_of(b"digest-of-a-row-type-key") == db.User(user, "row-types-user")
    (key,) = await database.keys.live(user)
    assert isinstance(key, db.ApiKey) and key.last_used_at is not None


async def test_text_holding_nul_is_stored_not_refused(database):
    """Postgres refuses U+0000 in text and jsonb; the write keeps U+FFFD in its place."""
    user = ids.user_id_for("nul-user")
    await database.users.ensure(user, "nul-user")
    avatar = db.Avatar(ids.new_id(), "Nul\x00", None, "You are {name}.", "en", None, None)
    await database.avatars.upsert(avatar)
    assert (await database.avatars.get(avatar.id)).name == "Nul\ufffd"
    conv = ids.new_id()
    await database.conversations.create(conv, user, [avatar.id])
    msg = ids.user_message_id(conv, "s", "text", 0)
    await database.messages.add_user(msg, conv, "text", ids.new_id(), 0, "a\x00b", {"note\x00": ["c\x00"]})
    (row,) = await database.messages.of_conversation(conv)
    assert row.text == "a\ufffdb" and row.timings == {"note\ufffd": ["c\ufffd"]}
    await database.keys.create(ids.new_id(), user, "key\x00", b"digest-of-a-nul-key")
    assert [k.name for k in await database.keys.live(user)] == ["key\ufffd"]


async def test_tools_are_versioned_with_the_avatar_and_calls_stored_once(database):
    """A tool list bumps the avatar's version; a call is stored once under its derived id and
    keeps its first outcome; a reply cut off before a word was heard still gives the next
    prompt its finished calls, never one still running."""
    user = ids.user_id_for("tools-user")
    await database.users.ensure(user, "tools-user")
    avatar = await database.avatars.create(db.Avatar(ids.new_id(), "Tess", None, "p", "en", "voices/t.wav", user))
    tool = {"kind": "webhook", "name": "order", "url": "https://shop.example.com/o", "secret": "k" * 16}
    tooled = await database.avatars.set_tools(avatar.id, user, [tool])
    assert tooled.version == avatar.version + 1 and tooled.tools == [tool]
    assert tooled.public()["tools"][0]["has_secret"] and "secret" not in tooled.public()["tools"][0]
    conv = ids.new_id()
    await database.conversations.create(conv, user, [avatar.id])
    msg = ids.user_message_id(conv, "s", "text", 0)
    await database.messages.add_user(msg, conv, "text", ids.new_id(), 0, "order a pizza", {})
    reply = ids.reply_id(msg, avatar.id)
    await database.messages.start_reply(reply, conv, msg, avatar.id)

    def call(index: int) -> db.ToolCall:
        cid = ids.tool_call_id(reply, 0, index)
        return db.ToolCall(cid, reply, 0, index, "order", "webhook", '{"item": "pizza"}', "running")

    first = await database.tool_calls.begin(conv, call(0), tooled.version)
    again = await database.tool_calls.begin(conv, call(0), tooled.version)
    assert first == again and first.status == "running" and first.conversation_id == conv
    done = await database.tool_calls.finish(first.id, '{"order": 7}', None)
    late = await database.tool_calls.finish(first.id, None, "too late")
    assert (done.status, done.result) == (late.status, late.result) == ("ok", '{"order": 7}')
    assert (await database.tool_calls.begin(conv, call(0), tooled.version)).finished
    await database.tool_calls.begin(conv, call(1), tooled.version)  # still running: not history
    await database.messages.finish_reply(reply, "", "interrupted", None, {})
    (_, item) = await database.messages.history(conv, 10)
    assert (item.role, item.text) == ("avatar", "")
    assert item.calls == (
        {"id": first.id, "name": "order", "arguments": '{"item": "pizza"}', "output": '{"order": 7}'},
    )
    assert [c.id for c in await database.tool_calls.of_reply(reply)] == [first.id, call(1).id]
