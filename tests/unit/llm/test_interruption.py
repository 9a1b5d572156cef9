"""The orchestrator's interruptions against a real Postgres, with the bus faked in memory.

The race it pins down: a reply's row can be inserted by its turn at any moment while an
interruption is handled. The cut must be decided on one snapshot (cut, not there yet, failed),
and "not there yet" retried, so the cut is never lost to a row that appeared in between.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
from nats.js.errors import NotFoundError

from services.common import bus as busmod
from services.common import db, ids, schemas
from services.common.cancels import Cancels
from services.llm.interruptions import Interruptions
from services.llm.record import Records


class _Pool:
    """asyncpg's pool, calling `after` once, right after the first statement that marks a reply interrupted."""

    def __init__(self, pool, after):
        self._pool, self._after = pool, after

    def __getattr__(self, name):
        real = getattr(self._pool, name)
        if name not in ("execute", "fetch", "fetchrow", "fetchval"):
            return real

        async def call(query, *args):
            result = await real(query, *args)
            if self._after is not None and "status='interrupted'" in query:
                after, self._after = self._after, None
                await after()
            return result

        return call


class _Bus:
    def __init__(self):
        self.events: list = []
        self.js = SimpleNamespace(get_last_msg=self._missing)

    async def _missing(self, *_):
        raise NotFoundError

    async def publish_event(self, event, msg_id=None):
        self.events.append(event)


class _Kv:
    async def put(self, key, value):
        return 1


class _Gate:
    async def touch(self, conv):
        return None


def _message(intr: schemas.Interruption, delivery: int):
    headers = {"Nats-Msg-Id": f"interrupt.{intr.message_id}"}
    return SimpleNamespace(data=schemas.encode(intr), headers=headers, metadata=SimpleNamespace(num_delivered=delivery))


@pytest.fixture
async def repo(database_url):
    pool = await db.create_pool(database_url)
    yield db.Database(pool)
    await pool.close()


async def _turn(repo: db.Database) -> tuple[str, str, str]:
    user = f"interrupt-{uuid.uuid4().hex[:8]}"
    user_id = ids.user_id_for(user)
    await repo.users.ensure(user_id, user)
    avatar = db.Avatar(ids.new_id(), "Ada", "tester", "", "en", "voices/x.wav", None)
    await repo.avatars.upsert(avatar)
    conv = ids.new_id()
    await repo.conversations.create(conv, user_id, [avatar.id])
    user_msg = ids.new_id()
    await repo.messages.add_user(user_msg, conv, "text", ids.new_id(), 0, "Hi", {})
    return conv, user_msg, avatar.id


def _interruptions(repo, bus) -> Interruptions:
    return Interruptions(bus, Records(repo), Cancels(_Kv()), _Gate(), forget=lambda conv: None)


async def test_a_reply_row_written_while_the_cut_is_decided_still_gets_the_cut(repo):
    conv, user_msg, avatar_id = await _turn(repo)
    reply_id = ids.reply_id(user_msg, avatar_id)

    async def the_turn_writes_its_row():
        await repo.messages.start_reply(reply_id, conv, user_msg, avatar_id)

    bus = _Bus()
    interruptions = _interruptions(db.Database(_Pool(repo.pool, the_turn_writes_its_row)), bus)
    intr = schemas.Interruption(conversation_id=conv, message_id=reply_id, sentence_index=0, offset_s=0.0)
    with pytest.raises(busmod.Retry):
        await interruptions.handle(_message(intr, 1))  # no row in its snapshot: try again
    await interruptions.handle(_message(intr, 2))

    # The turn, stopped by the cancel at its first token, finishes after the cut.
    finished, status, text = await repo.messages.finish_reply(reply_id, "Hello", "interrupted", None, {}, 1)
    assert not finished and (status, text) == ("interrupted", "")
    assert [(type(e).__name__, e.text) for e in bus.events] == [("ReplyInterrupted", "")]


async def test_without_a_position_the_text_streamed_so_far_is_kept(repo):
    conv, user_msg, avatar_id = await _turn(repo)
    reply_id = ids.reply_id(user_msg, avatar_id)
    await repo.messages.start_reply(reply_id, conv, user_msg, avatar_id)
    bus = _Bus()
    interruptions = _interruptions(repo, bus)
    intr = schemas.Interruption(conversation_id=conv, message_id=reply_id)
    with pytest.raises(busmod.Retry):
        await interruptions.handle(_message(intr, 1))  # still streaming: its text is not final
    await repo.messages.finish_reply(reply_id, "Hello there.", "interrupted", None, {}, 1)
    await interruptions.handle(_message(intr, 2))
    assert await repo.messages.reply_outcome(reply_id) is not None
    assert [(type(e).__name__, e.text) for e in bus.events] == [("ReplyInterrupted", "Hello there.")]


async def test_one_snapshot_tells_the_outcomes_apart(repo):
    conv, user_msg, avatar_id = await _turn(repo)
    reply_id = ids.reply_id(user_msg, avatar_id)
    assert (await repo.messages.interrupt_reply(reply_id, "")).outcome == "absent"
    await repo.messages.start_reply(reply_id, conv, user_msg, avatar_id)
    assert (await repo.messages.interrupt_reply(reply_id, None)).outcome == "streaming"
    assert await repo.messages.interrupt_reply(reply_id, "Hel") == db.Interruption("cut", "Hel")

    conv, user_msg, avatar_id = await _turn(repo)
    other = ids.reply_id(user_msg, avatar_id)
    await repo.messages.start_reply(other, conv, user_msg, avatar_id)
    await repo.messages.finish_reply(other, "", "failed", "llm_error: x", {})
    assert (await repo.messages.interrupt_reply(other, "")).outcome == "failed"
