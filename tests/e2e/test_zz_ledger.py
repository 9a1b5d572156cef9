"""The ledger over everything the end-to-end tests did (this module runs after the others).

Each conversation a test client opened, with the events that client saw, must balance:
user messages answered once per character or failed visibly, no reply left streaming,
audio stored for every spoken reply, no missing or orphan objects, every closed utterance
accounted for. A deliberately broken conversation shows the checker names what is wrong.
"""

from __future__ import annotations

import asyncio

import pytest

from ops import ledger
from services.common import objectstore
from tests.client import CLIENTS, Client

pytestmark = [pytest.mark.e2e, pytest.mark.engine]


async def _check(stack, clients: list[Client]) -> list[str]:
    started = [c for c in clients if c.received.events("session.started")]
    conversations = [c.received.events("session.started")[0]["conversation_id"] for c in started]
    return await ledger.run(stack["settings"], conversations, [c.received.events() for c in clients])


async def _settled(stack, clients: list[Client], deadline_s: float = 30) -> list[str]:
    """Within a deadline the ledger balances; the last problems found otherwise."""
    for _ in range(int(deadline_s / 0.5)):
        problems = await _check(stack, clients)
        if not problems:
            return []
        await asyncio.sleep(0.5)
    return problems


async def test_everything_the_tests_did_balances(stack):
    clients = [c for c in CLIENTS if c.received.events("session.started")]
    assert await _settled(stack, clients) == []


async def test_a_lost_object_is_reported(stack):
    client = Client(stack["ws_url"])
    await client.connect(user="ledger-probe")
    await client.send_json({"type": "text", "text": "Keep this"})
    stored = (await client.wait_for(lambda r: r.events("audio.stored"), 120))[0]
    await client.close()
    assert await _settled(stack, [client]) == []
    async with objectstore.ObjectStore(stack["settings"]) as store:
        await store.client.delete_object(Bucket=store.bucket, Key=stored["key"])
    problems = await _check(stack, [client])
    assert problems == [
        f"conversation {stored['conversation_id']}: reply {stored['message_id']} names {stored['key']}, "
        "which does not exist"
    ]
