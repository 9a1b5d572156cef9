"""The ledger names what is wrong: a reply's audio object deleted behind Parley's back.

The check over everything the tests did is the `closing_ledger` fixture (tests/conftest.py),
which every test on the shared stack is held to when the run ends.
"""

from __future__ import annotations

import pytest

from services.common import objectstore
from tests.client import Client
from tests.conftest import ledger_problems, settled_ledger

pytestmark = [pytest.mark.e2e, pytest.mark.engine]


async def test_a_lost_object_is_reported(stack):
    client = Client(stack["ws_url"])
    await client.connect(user="ledger-probe")
    await client.send_json({"type": "text", "text": "Keep this"})
    stored = (await client.wait_for(lambda r: r.events("audio.stored"), 120))[0]
    await client.close()
    settings = stack["settings"]
    assert await settled_ledger(settings, [client]) == []
    async with objectstore.ObjectStore(settings) as store:
        audio = await store.get(stored["key"])
        await store.client.delete_object(Bucket=store.bucket, Key=stored["key"])
        try:
            problems = await ledger_problems(settings, [client])
        finally:  # put back, so the closing check finds this conversation whole
            await store.put(stored["key"], audio, "audio/wav")
    assert problems == [
        f"conversation {stored['conversation_id']}: reply {stored['message_id']} names {stored['key']}, "
        "which does not exist"
    ]
    assert await ledger_problems(settings, [client]) == []
