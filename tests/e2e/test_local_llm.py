"""The real local LLM answers: SmolLM2-135M-Instruct from its package, served by llama.cpp's
`llama-server` (the one `parley dev` starts), behind the stack's own orchestrator.

A real model's wording cannot be asserted, so the tests assert what a client relies on: a
reply that streams, completes, is stored whole and well-formed (text, no chat-template
tokens, audio), for a typed and for a spoken turn."""

from __future__ import annotations

import asyncpg
import pytest

from ops import devstack
from tests.client import Client
from tests.conftest import SPOKEN, assert_heard

pytestmark = [pytest.mark.e2e, pytest.mark.engine]


@pytest.fixture(scope="module")
def answered_by_local_llm(stack, local_llm, tmp_path_factory):
    """The stack's orchestrator replaced by one that asks the local LLM; put back afterwards."""
    own = stack["procs"]["llm"]
    own.stop()
    env = {**stack["env"], "PARLEY_LLM_BASE_URL": local_llm.base_url, "PARLEY_LLM_MODEL": local_llm.model_name}
    env["PARLEY_LLM_MAX_TOKENS"] = "60"
    real = devstack.ServiceProcess("llm", env, tmp_path_factory.mktemp("llm-logs") / "llm.log").start()
    real.wait_ready()
    yield stack
    real.stop()
    own.start()
    own.wait_ready()


async def _stored_reply(stack, client: Client, user_message_id: str) -> dict:
    r = client.received
    (started,) = [e for e in r.events("reply.started") if e["user_message_id"] == user_message_id]
    reply_id = started["message_id"]
    await client.wait_for(lambda r: [e for e in r.events("audio.stored") if e["message_id"] == reply_id], 180)
    (done,) = [e for e in r.events("reply.done") if e["message_id"] == reply_id]
    deltas = "".join(d["text"] for d in r.events("reply.delta") if d["message_id"] == reply_id)
    conn = await asyncpg.connect(stack["env"]["PARLEY_DATABASE_URL"])
    try:
        row = await conn.fetchrow("SELECT text, status, audio_key FROM messages WHERE id=$1::uuid", reply_id)
    finally:
        await conn.close()
    assert done["status"] == row["status"] == "complete", done
    assert row["text"] == done["text"] == deltas
    assert len(row["text"].split()) >= 2, row["text"]
    assert "<|" not in row["text"] and "im_start" not in row["text"], row["text"]
    assert done["sentence_count"] >= 1 and row["audio_key"]
    return dict(row)


async def test_a_typed_turn_is_answered_by_the_local_llm(answered_by_local_llm):
    stack = answered_by_local_llm
    client = Client(stack["ws_url"])
    await client.connect(user="local-llm-typed")
    await client.send_json({"type": "text", "text": "Hello Ada, what can you do?"})
    (accepted,) = await client.wait_for(lambda r: r.events("user.message"), 10)
    await client.wait_for(lambda r: r.events("reply.started"), 60)
    await _stored_reply(stack, client, accepted["message_id"])
    await client.close()


async def test_a_spoken_turn_is_answered_by_the_local_llm(answered_by_local_llm, speech_wav, batch_stt):
    stack = answered_by_local_llm
    client = Client(stack["ws_url"])
    await client.connect(user="local-llm-spoken")
    await client.stream_wav(speech_wav)
    (final,) = await client.wait_for(lambda r: r.events("transcript.final"), 60)
    assert_heard(SPOKEN, final["text"], speech_wav, batch_stt)
    await client.wait_for(lambda r: r.events("reply.started"), 60)
    await _stored_reply(stack, client, final["message_id"])
    await client.close()
