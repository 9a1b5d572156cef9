"""Faults under a live conversation, each ending with the reply complete and stored: what
the ledger check at the end of the suite then balances over."""

from __future__ import annotations

import time

import pytest

from tests.client import Client

pytestmark = [pytest.mark.e2e, pytest.mark.engine]


@pytest.fixture
def tts_process(stack):
    """The stack's TTS worker, started again after the test if the test killed it."""
    proc = stack["procs"]["tts"]
    yield proc
    if proc.proc.poll() is not None:
        proc.start()
        proc.wait_ready()


async def test_a_tts_worker_killed_mid_sentence_costs_a_redelivery_not_a_sentence(stack, tts_process):
    """kill -9 after the worker took a sentence and streamed part of it, before its ack: the
    job is redelivered to the restarted worker (after JetStream's ack wait), the sentence is
    synthesised again, and the reply is stored whole."""
    client = Client(stack["ws_url"])
    await client.connect(user="fault-tts")
    await client.send_json({"type": "text", "text": "Talk to me while your voice fails"})
    first = await client.wait_for(lambda r: r.audio(), 60)
    reply_id = first[0].message_id
    tts_process.proc.kill()
    tts_process.proc.wait()
    killed_at = time.monotonic()
    tts_process.start()
    tts_process.wait_ready()

    stored = await client.wait_for(lambda r: r.events("audio.stored"), 120)
    recovered_s = time.monotonic() - killed_at
    done = client.received.events("reply.done")[0]
    assert stored[0]["message_id"] == reply_id and done["status"] == "complete"
    assert not client.received.events("audio.sentence_failed")
    assert stored[0]["duration_s"] > 0
    print(f"recovered {recovered_s:.1f} s after the kill")  # the ack wait dominates it
    await client.close()
