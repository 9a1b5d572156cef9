"""A spoken turn and a typed turn through all five services, each its own process.

Everything is real (nats-server, Postgres, the S3 API over HTTP, faster-whisper on the real
tiny.en, XTTS on a tiny random-weight model) except the hosted LLM, which a local
OpenAI-compatible server stands in for here so that replies can be checked word for word
(tests/e2e/test_local_llm.py answers with the real local LLM). The transcript is checked
against what was said; the rest is the flow, the ids, the order, what was stored and that
the stored audio is what was streamed.
"""

from __future__ import annotations

import io
import json

import asyncpg
import httpx
import pytest
import soundfile as sf

from services.common import ids
from tests.client import AudioChunk, Client, auth_headers
from tests.conftest import SPOKEN, assert_heard, make_speech
from tests.fakes.llm_server import reply_for

pytestmark = [pytest.mark.e2e, pytest.mark.engine]


def _reply_done(received, message_id=None):
    done = [e for e in received.events("audio.stored") if message_id in (None, e["message_id"])]
    return done[0] if done else None


async def _check_reply(client: Client, stack, user_message_id: str, user_text: str) -> dict:
    """Shared checks of one answered turn: order, audio, Postgres rows, the stored object."""
    r = client.received
    started = [e for e in r.events("reply.started") if e["user_message_id"] == user_message_id]
    assert len(started) == 1
    reply_id = started[0]["message_id"]
    assert reply_id == ids.reply_id(user_message_id, ids.DEMO_AVATAR_ID)

    deltas = [e for e in r.events("reply.delta") if e["message_id"] == reply_id]
    assert [d["delta_seq"] for d in deltas] == list(range(len(deltas)))
    text = "".join(d["text"] for d in deltas)
    assert text == reply_for(user_text)
    done = [e for e in r.events("reply.done") if e["message_id"] == reply_id]
    assert len(done) == 1 and done[0]["status"] == "complete" and done[0]["text"] == text
    sentences = [e for e in r.events("reply.sentence") if e["message_id"] == reply_id]
    assert done[0]["sentence_count"] == len(sentences) >= 3

    chunks = r.audio(reply_id)
    assert chunks, "no reply audio"
    order = [(c.sentence_index, c.chunk_seq) for c in chunks]
    assert order == sorted(order), "audio not in sentence/chunk order"
    assert {c.sentence_index for c in chunks} == set(range(len(sentences)))
    assert all(c.sample_rate == 24000 for c in chunks)

    is_reply_audio = lambda i: isinstance(i, AudioChunk) and i.message_id == reply_id  # noqa: E731
    first_delta = r.index(lambda i: isinstance(i, dict) and i["type"] == "reply.delta" and i["message_id"] == reply_id)
    first_audio = r.index(is_reply_audio)
    last_audio = max(n for n, i in enumerate(r.items) if is_reply_audio(i))
    end = r.index(lambda i: isinstance(i, dict) and i["type"] == "audio.end" and i["message_id"] == reply_id)
    stored_at = r.index(lambda i: isinstance(i, dict) and i["type"] == "audio.stored" and i["message_id"] == reply_id)
    assert first_delta < first_audio <= last_audio < end < stored_at

    stored = r.items[stored_at]
    streamed = b"".join(c.pcm for c in chunks)
    async with httpx.AsyncClient() as http:
        resp = await http.get(stored["url"])
    assert resp.status_code == 200
    audio, rate = sf.read(io.BytesIO(resp.content), dtype="int16")
    assert rate == 24000
    assert len(audio) == len(streamed) // 2
    assert stored["duration_s"] == pytest.approx(len(streamed) / 2 / 24000)
    assert audio.tobytes() == streamed

    conn = await asyncpg.connect(stack["env"]["PARLEY_DATABASE_URL"])
    try:
        rows = await conn.fetch(
            "SELECT id::text, role, text, status, audio_key, reply_to::text, timings FROM messages "
            "WHERE id = $1::uuid OR id = $2::uuid",
            user_message_id,
            reply_id,
        )
    finally:
        await conn.close()
    by_id = {row["id"]: row for row in rows}
    assert by_id[user_message_id]["role"] == "user"
    assert by_id[user_message_id]["text"] == user_text
    reply = by_id[reply_id]
    assert reply["role"] == "avatar" and reply["status"] == "complete"
    assert reply["text"] == text and reply["reply_to"] == user_message_id
    assert reply["audio_key"] == stored["key"]
    t = json.loads(reply["timings"])
    start = t["final"] if "final" in t else t["received"]
    assert start <= t["started"] <= t["first_token"] <= t["first_sentence"] <= t["first_audio"]
    assert t["first_sentence"] <= t["done"]
    if "speech_end" in t:
        assert t["speech_end"] <= t["final"]
    return {"reply_id": reply_id, "conversation_id": started[0]["conversation_id"]}


async def test_spoken_turn(stack, speech_wav, fake_llm, batch_stt):
    client = Client(stack["ws_url"])
    started = await client.connect(user="alice")
    assert started[0]["speech_input"] is True
    await client.stream_wav(speech_wav)
    final = await client.wait_for(lambda r: r.events("transcript.final"), 60)
    assert len(final) == 1
    assert_heard(SPOKEN, final[0]["text"], speech_wav, batch_stt)
    user_message_id = final[0]["message_id"]
    assert user_message_id == ids.user_message_id(
        started[0]["conversation_id"], started[0]["session_id"], "voice", final[0]["utterance_seq"]
    )
    await client.wait_for(lambda r: _reply_done(r), 180)
    r = client.received
    assert r.index(lambda i: isinstance(i, dict) and i["type"] == "transcript.final") < r.index(
        lambda i: isinstance(i, dict) and i["type"] == "reply.delta"
    )
    await _check_reply(client, stack, user_message_id, final[0]["text"])
    assert fake_llm.requests[-1]["messages"][0]["role"] == "system"
    assert "Ada" in fake_llm.requests[-1]["messages"][0]["content"]
    await client.close()


LONG = (
    "On Monday we walked along the river to the old mill and then the baker on the corner "
    "sold us fresh bread and my sister bought a green parrot for her kitchen"
)


async def test_partials_come_while_speaking_then_one_final(stack, fake_llm, tmp_path):
    client = Client(stack["ws_url"])
    await client.connect(user="paula")
    await client.stream_wav(make_speech(LONG, tmp_path / "long.wav"))
    final = (await client.wait_for(lambda r: r.events("transcript.final"), 60))[0]
    r = client.received
    partials = [p for p in r.events("transcript.partial") if p["utterance_seq"] == final["utterance_seq"]]
    assert partials, "no partial transcript while the person spoke"
    assert [p["partial_seq"] for p in partials] == list(range(len(partials)))
    final_at = r.index(lambda i: isinstance(i, dict) and i["type"] == "transcript.final")
    last_partial_at = max(r.index(lambda i, p=p: i is p) for p in partials)
    assert last_partial_at < final_at  # nothing partial after the final
    stable = ""
    for p in partials:
        assert p["text"].startswith(p["stable"])
        assert p["stable"].startswith(stable)  # stable words never change once given
        stable = p["stable"]
    assert stable, f"the real model agreed on no word while the person spoke: {partials}"
    assert final["text"].startswith(stable)  # nor does the final transcript change them
    assert len(r.events("transcript.final")) == 1
    await client.wait_for(lambda r: _reply_done(r), 180)
    await client.close()


async def test_typed_turns_carry_history(stack, fake_llm):
    client = Client(stack["ws_url"])
    await client.connect(user="bob")
    await client.send_json({"type": "text", "text": "What is Parley?"})
    accepted = await client.wait_for(lambda r: r.events("user.message"), 10)
    first_id = accepted[0]["message_id"]
    await client.wait_for(lambda r: _reply_done(r), 120)
    first = await _check_reply(client, stack, first_id, "What is Parley?")

    await client.send_json({"type": "text", "text": "And who are you?"})
    await client.wait_for(lambda r: len(r.events("audio.stored")) == 2, 120)
    second_id = client.received.events("user.message")[1]["message_id"]
    await _check_reply(client, stack, second_id, "And who are you?")
    prompt = fake_llm.requests[-1]["messages"]
    assert [m["role"] for m in prompt[-3:]] == ["user", "assistant", "user"]
    assert prompt[-3]["content"] == "What is Parley?"
    assert prompt[-2]["content"] == reply_for("What is Parley?")

    async with httpx.AsyncClient(base_url=stack["http_url"]) as http:
        resp = await http.get(f"/v1/conversations/{first['conversation_id']}/messages", headers=auth_headers("bob"))
        assert resp.status_code == 200
        history = resp.json()["items"]
        assert resp.json()["next_cursor"] is None
        assert [m["role"] for m in history] == ["user", "avatar", "user", "avatar"]
        assert all(m["audio_url"] for m in history if m["role"] == "avatar")
        other = await http.get(
            f"/v1/conversations/{first['conversation_id']}/messages", headers=auth_headers("mallory")
        )
        assert other.status_code == 404
    await client.close()
