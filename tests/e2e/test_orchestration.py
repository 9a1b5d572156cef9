"""The orchestrator as users meet it: turns in order across replicas, several characters."""

from __future__ import annotations

import asyncpg
import pytest

from services import devstack
from services.common import ids
from tests.client import Client
from tests.fakes.llm_server import reply_for

pytestmark = [pytest.mark.e2e, pytest.mark.engine]


@pytest.fixture
def two_orchestrators(stack, tmp_path):
    """A second orchestrator replica beside the stack's own."""
    extra = devstack.ServiceProcess("llm", stack["env"], tmp_path / "llm-2.log").start()
    extra.wait_ready()
    yield
    assert extra.stop() == 0


@pytest.fixture
def slow_llm(fake_llm):
    fake_llm.token_delay_s = 0.08
    yield fake_llm
    fake_llm.token_delay_s = 0.005


async def _rows(stack, sql: str, *args):
    conn = await asyncpg.connect(stack["env"]["PARLEY_DATABASE_URL"])
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def test_a_new_turn_interrupts_the_reply_and_turns_stay_in_order(stack, two_orchestrators, slow_llm):
    client = Client(stack["ws_url"])
    await client.connect(user="grace")
    texts = ["First question here", "Second question here", "Third question here"]
    await client.send_json({"type": "text", "text": texts[0], "client_seq": 0})
    await client.wait_for(lambda r: r.events("reply.delta"), 30)
    for seq, text in enumerate(texts[1:], start=1):
        await client.send_json({"type": "text", "text": text, "client_seq": seq})
    users = await client.wait_for(lambda r: len(r.events("user.message")) == 3 and r.events("user.message"), 10)
    user_ids = [u["message_id"] for u in users]
    reply_ids = [ids.reply_id(u, ids.DEMO_AVATAR_ID) for u in user_ids]
    done = await client.wait_for(lambda r: len(r.events("reply.done")) == 3 and r.events("reply.done"), 60)
    by_reply = {d["message_id"]: d for d in done}
    assert set(by_reply) == set(reply_ids)

    first, last = by_reply[reply_ids[0]], by_reply[reply_ids[2]]
    assert first["status"] == "interrupted"
    assert reply_for(texts[0]).startswith(first["text"]) and first["text"] != reply_for(texts[0])
    assert by_reply[reply_ids[1]]["status"] == "interrupted"
    assert last["status"] == "complete" and last["text"] == reply_for(texts[2])

    # One reply streams at a time: each reply's text ends before the next one's begins.
    r = client.received
    spans = []
    for rid in reply_ids:
        deltas = [
            n
            for n, i in enumerate(r.items)
            if isinstance(i, dict) and i.get("message_id") == rid and i["type"] == "reply.delta"
        ]
        if deltas:
            spans.append((deltas[0], deltas[-1]))
    assert spans == sorted(spans) and all(a[1] < b[0] for a, b in zip(spans, spans[1:]))

    rows = await _rows(
        stack,
        "SELECT reply_to::text, status, text FROM messages WHERE role='avatar' AND reply_to = ANY($1::uuid[])",
        user_ids,
    )
    assert sorted(r["reply_to"] for r in rows) == sorted(user_ids)  # exactly one reply each
    stored = {r["reply_to"]: r for r in rows}
    assert stored[user_ids[0]]["status"] == "interrupted" and stored[user_ids[0]]["text"] == first["text"]
    assert stored[user_ids[2]]["status"] == "complete"
    await client.wait_for(lambda r: any(e["message_id"] == reply_ids[2] for e in r.events("audio.stored")), 120)
    await client.close()
