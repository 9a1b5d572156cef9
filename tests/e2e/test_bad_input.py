"""Bad input in its first form: each gets an error event; the connection and services go on."""

from __future__ import annotations

import json

import asyncpg
import pytest

from services.common import ids
from tests.client import Client
from tests.fakes.llm_server import reply_for

pytestmark = [pytest.mark.e2e, pytest.mark.engine]


async def test_bad_frames_get_error_events_and_the_session_goes_on(stack):
    client = Client(stack["ws_url"])
    await client.connect(user="carol")
    await client.send_raw("{not json")
    await client.send_raw('{"type": "teleport"}')
    await client.send_raw(b"\x01\x02\x03")
    await client.send_raw(b"\x00" * 64001)
    await client.send_raw('{"type": "text", "text": "   "}')
    errors = await client.wait_for(lambda r: len(r.events("error")) >= 5 and r.events("error"), 10)
    assert [e["code"] for e in errors] == [
        "malformed_json",
        "unknown_message",
        "bad_audio_frame",
        "frame_too_large",
        "empty_text",
    ]
    await client.send_json({"type": "text", "text": "Still there?"})
    await client.wait_for(lambda r: r.events("audio.stored"), 120)
    await client.close()


async def test_first_message_must_be_session_start(stack):
    import websockets

    async with websockets.connect(stack["ws_url"]) as ws:
        await ws.send('{"type": "text", "text": "hi"}')
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 4400


@pytest.mark.parametrize(
    "start,reason",
    [
        ({"sample_rate": 48000}, "sample_rate"),
        ({"end_of_turn_ms": 20}, "end_of_turn_ms"),
        ({"turn": {"policy": "eager"}}, "turn.policy"),
        ({"turn": {"short_ms": 900, "long_ms": 800}}, "short_ms must be shorter"),
        ({"interruption": {"min_ms": 20}}, "interruption.min_ms"),
        ({"interruption": {"resume_ms": -1}}, "interruption.resume_ms"),
        ({"interruption": {"min_words": 1, "backchannels": False}}, "backchannels"),
    ],
)
async def test_a_start_the_gateway_cannot_honour_is_refused(stack, start, reason):
    import websockets

    async with websockets.connect(stack["ws_url"]) as ws:
        await ws.send(json.dumps({"type": "session.start", "user": "erin", **start}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 4400
    assert reason in closed.value.rcvd.reason


async def test_a_latency_report_must_name_a_spoken_reply_of_the_session(stack):
    client = Client(stack["ws_url"])
    await client.connect(user="latency-liar")
    await client.send_json({"type": "latency", "message_id": ids.new_id(), "voice_to_voice_ms": 420.0})
    await client.send_json({"type": "latency", "message_id": ids.new_id(), "voice_to_voice_ms": -5})
    errors = await client.wait_for(lambda r: len(r.events("error")) >= 2 and r.events("error"), 10)
    assert [e["code"] for e in errors] == ["unknown_reply", "unknown_message"]
    await client.close()


async def test_unknown_conversation_is_refused(stack):
    client = Client(stack["ws_url"])
    with pytest.raises(AssertionError):
        await client.connect(user="dave", conversation_id="00000000-0000-0000-0000-000000000000")
    assert client.close_code == 4404


@pytest.mark.parametrize(
    "mode,code",
    [
        ("http_401", "llm_auth"),
        ("malformed", "llm_bad_response"),
        ("drop", "llm_bad_response"),
        ("stall", "llm_timeout"),
    ],
)
async def test_failing_llm_is_an_error_event_and_a_failed_reply(stack, fake_llm, mode, code):
    """The endpoint refusing, answering garbage, ending its stream mid-reply (no `[DONE]`) or
    hanging mid-reply (`PARLEY_LLM_STALL_TIMEOUT_S`, 5 s on the test stack): an error event,
    the reply stored `failed`, the user message kept, and the conversation's next turn answered."""
    client = Client(stack["ws_url"])
    await client.connect(user="erin")
    fake_llm.mode = mode
    try:
        await client.send_json({"type": "text", "text": "Are you there?"})
        user_id = (await client.wait_for(lambda r: r.events("user.message"), 10))[0]["message_id"]
        errors = await client.wait_for(lambda r: r.events("error"), 30)
        done = await client.wait_for(lambda r: r.events("reply.done"), 30)
    finally:
        fake_llm.mode = "ok"
    assert errors[0]["code"] == code
    assert done[0]["status"] == "failed"
    conn = await asyncpg.connect(stack["env"]["PARLEY_DATABASE_URL"])
    try:
        user_row = await conn.fetchrow("SELECT text FROM messages WHERE id=$1::uuid", user_id)
        reply_row = await conn.fetchrow("SELECT status, error FROM messages WHERE reply_to=$1::uuid", user_id)
    finally:
        await conn.close()
    assert user_row["text"] == "Are you there?"
    assert reply_row["status"] == "failed" and code in reply_row["error"]
    await client.send_json({"type": "text", "text": "And now?"})
    after = await client.wait_for(lambda r: [d for d in r.events("reply.done") if d["status"] == "complete"], 30)
    assert after[0]["text"] == reply_for("And now?")
    await client.close()


async def test_failing_speech_synthesis_leaves_a_text_only_reply(stack):
    """An avatar whose voice cannot be synthesised: failure events per sentence, text kept."""
    avatar_id = ids.new_id()
    conn = await asyncpg.connect(stack["env"]["PARLEY_DATABASE_URL"])
    try:
        await conn.execute(
            "INSERT INTO avatars (id, name, persona_prompt, language, voice_key) VALUES ($1::uuid, $2, $3, 'en', NULL)",
            avatar_id,
            "Mute",
            "You are {name}.",
        )
    finally:
        await conn.close()
    client = Client(stack["ws_url"])
    await client.connect(user="frank", avatar_ids=[avatar_id])
    await client.send_json({"type": "text", "text": "Say something"})
    end = await client.wait_for(lambda r: r.events("audio.end"), 60)
    r = client.received
    done = r.events("reply.done")[0]
    assert done["status"] == "complete" and done["text"]
    failed = r.events("audio.sentence_failed")
    assert sorted(f["sentence_index"] for f in failed) == list(range(done["sentence_count"]))
    assert end[0]["message_id"] == done["message_id"]
    assert r.audio() == []
    conn = await asyncpg.connect(stack["env"]["PARLEY_DATABASE_URL"])
    try:
        row = await conn.fetchrow("SELECT status, text, audio_key FROM messages WHERE id=$1::uuid", done["message_id"])
    finally:
        await conn.close()
    assert row["status"] == "complete" and row["text"] == done["text"] and row["audio_key"] is None
    await client.close()


async def test_malformed_ids_in_session_start_are_refused(stack):
    client = Client(stack["ws_url"])
    with pytest.raises(AssertionError):
        await client.connect(user="dave", conversation_id="not-a-uuid")
    assert client.close_code == 4400
