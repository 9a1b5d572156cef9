"""Phone calls through Twilio Media Streams, on the shared stack of real services.

The caller is tests/fakes/twilio.py, Twilio's side of a call as its documentation describes it:
the incoming-call webhook signed with the account's auth token, the TwiML's `<Stream>`, the
signed handshake, µ-law in real time, marks echoed as the audio before them plays, `clear`.
The audio is coded here with the reference codec (Python 3.11's audioop), not Parley's.
"""

from __future__ import annotations

import asyncio
import io
import time
import warnings
import wave

import httpx
import numpy as np
import pytest
import soxr

from services.common import ids
from tests.client import auth_headers
from tests.conftest import PHONE_PUBLIC_URL, TWILIO_AUTH_TOKEN, make_speech, settled_conversations
from tests.fakes.llm_server import reply_for
from tests.fakes.twilio import Stream, TwilioCall

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

pytestmark = [pytest.mark.e2e, pytest.mark.engine]

PHONE_USER = "twilio"
"""PARLEY_TWILIO_USER on the shared stack: who signed calls act as."""
VOICE = "/v1/phone/twilio/voice"
CONVERSATIONS: list[str] = []


def _call(stack) -> TwilioCall:
    return TwilioCall(stack["http_url"], PHONE_PUBLIC_URL, TWILIO_AUTH_TOKEN)


def _mulaw(wav) -> bytes:
    with wave.open(str(wav)) as w:
        assert w.getframerate() == 16000
        pcm16k = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    return audioop.lin2ulaw(soxr.resample(pcm16k, 16000, 8000).astype("<i2").tobytes(), 2)


async def _get(stack, path: str, user: str = PHONE_USER) -> dict:
    async with httpx.AsyncClient(base_url=stack["http_url"], trust_env=False) as http:
        resp = await http.get(path, headers=auth_headers(user))
        assert resp.status_code == 200, resp.text
        return resp.json()


async def _conversations(stack) -> list[str]:
    return [c["id"] for c in (await _get(stack, "/v1/conversations?limit=100"))["items"]]


async def _new_conversation(stack, before: list[str]) -> str:
    deadline = time.monotonic() + 30
    while not (new := [c for c in await _conversations(stack) if c not in before]):
        assert time.monotonic() < deadline, "the call opened no conversation"
        await asyncio.sleep(0.2)
    assert len(new) == 1
    CONVERSATIONS.append(new[0])
    return new[0]


async def _messages(stack, conversation_id: str) -> list[dict]:
    return (await _get(stack, f"/v1/conversations/{conversation_id}/messages"))["items"]


async def _message(stack, conversation_id: str, pred, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in await _messages(stack, conversation_id) if pred(m)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, await _messages(stack, conversation_id)
        await asyncio.sleep(0.5)


async def _answered_call(stack, **dial) -> tuple[TwilioCall, Stream, str]:
    call = _call(stack)
    before = await _conversations(stack)
    status, stream = await call.dial(VOICE, **dial)
    assert status == 200, stream
    await call.connect(stream)
    await call.stream_microphone()
    return call, stream, await _new_conversation(stack, before)


def _best_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 800) -> float:
    """The highest normalised correlation of `a` and `b` over lags up to `max_lag` samples."""
    n = min(len(a), len(b)) - max_lag
    a, b = a.astype(np.float64), b.astype(np.float64)
    best = 0.0
    for lag in range(-max_lag, max_lag + 1, 2):
        x = a[max(0, lag) : max(0, lag) + n]
        y = b[max(0, -lag) : max(0, -lag) + n]
        best = max(best, float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-9)))
    return best


async def test_a_call_is_heard_and_answered_in_order_with_every_mark_echoed(stack, speech_wav, fake_llm):
    call, stream, conversation_id = await _answered_call(stack)
    assert stream.url == PHONE_PUBLIC_URL.replace("https://", "wss://") + "/v1/phone/twilio/stream"
    assert set(stream.parameters) == {"avatar_id", "call_token"}
    call.say(_mulaw(speech_wav))
    user = await _message(stack, conversation_id, lambda m: m["role"] == "user")
    assert "weather" in user["text"].lower() and user["source"] == "voice"
    reply = await _message(stack, conversation_id, lambda m: m["role"] == "avatar" and m["audio_url"])
    assert reply["status"] == "complete" and reply["text"] == reply_for(user["text"])
    await call.wait_for(lambda phone: len(phone.played) >= len(phone.received) > 0, 60)
    await asyncio.sleep(0.5)
    marks = [m for m in call.phone.messages if m["event"] == "mark"]
    assert marks and call.phone.marks_echoed == [m["mark"]["name"] for m in marks]
    assert call.phone.clears == []
    async with httpx.AsyncClient(trust_env=False) as http:
        stored = (await http.get(reply["audio_url"])).content
    with wave.open(io.BytesIO(stored)) as w:
        stored_pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        stored_8k = soxr.resample(stored_pcm, w.getframerate(), 8000).astype("<i2")
    received = np.frombuffer(audioop.ulaw2lin(bytes(call.phone.received), 2), "<i2")
    assert abs(len(received) - len(stored_8k)) <= 80  # the stored reply, at 8000 samples a second
    assert _best_correlation(received, stored_8k) > 0.9  # the same audio, in the same order
    await call.stop()
    await _ended(stack, conversation_id, "client")


async def _ended(stack, conversation_id: str, reason: str) -> None:
    """The call's session record is closed with `reason` (read from Postgres)."""
    import asyncpg

    conn = await asyncpg.connect(stack["settings"].database_url)
    try:
        deadline = time.monotonic() + 30
        while True:
            row = await conn.fetchrow(
                "SELECT ended_at, end_reason FROM client_sessions WHERE conversation_id=$1", conversation_id
            )
            if row is not None and row["ended_at"] is not None:
                assert row["end_reason"] == reason
                return
            assert time.monotonic() < deadline, row
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def test_speaking_over_the_avatar_clears_the_call_and_stores_what_was_heard(stack, speech_wav, fake_llm):
    call, _, conversation_id = await _answered_call(stack)
    call.say(_mulaw(make_speech("Tell me a long story please", speech_wav.with_name("story.wav"))))
    first = await _message(stack, conversation_id, lambda m: m["role"] == "avatar")
    full = reply_for((await _message(stack, conversation_id, lambda m: m["role"] == "user"))["text"])
    # Barge in once the phone holds audio it has not played yet, half a second into the reply.
    await call.wait_for(lambda phone: len(phone.played) >= 4000 and len(phone.received) > len(phone.played) + 4000)
    call.say(_mulaw(speech_wav))
    await call.wait_for(lambda phone: phone.clears, 60)
    played_at_clear = call.phone.clears[0]
    assert played_at_clear < len(call.phone.received)
    cut = await _message(stack, conversation_id, lambda m: m["id"] == first["id"] and m["status"] == "interrupted")
    # The marks the clear sent back were not taken as played: less than the whole reply was heard.
    assert full.startswith(cut["text"]) and len(cut["text"]) < len(full)
    answer = await _message(stack, conversation_id, lambda m: m["role"] == "avatar" and m["id"] != first["id"])
    assert answer["reply_to"] != first["reply_to"]
    await call.stop()


async def test_keys_pressed_are_a_turn(stack, fake_llm):
    call, _, conversation_id = await _answered_call(stack)
    for digit in "42#":
        await call.press(digit)
    user = await _message(stack, conversation_id, lambda m: m["role"] == "user")
    assert user["text"] == "DTMF: 42" and user["source"] == "text"
    await _message(stack, conversation_id, lambda m: m["role"] == "avatar" and m["status"] == "complete")
    await call.stop()


async def test_a_parley_token_in_the_stream_parameters_needs_no_signature(stack, fake_llm):
    """A number's own TwiML (a TwiML Bin) with an API key as a `<Parameter>`: the call is the key's user."""
    async with httpx.AsyncClient(base_url=stack["http_url"], trust_env=False) as http:
        made = await http.post("/v1/api-keys", json={"name": "phone"}, headers=auth_headers("phone-own-twiml"))
        key = made.json()["key"]
    call = _call(stack)
    await call.connect(Stream(PHONE_PUBLIC_URL + "/v1/phone/twilio/stream", {"token": key}), signature=None)
    await call.stream_microphone()
    await call.press("7")
    await call.press("#")
    conversations = (await _get(stack, "/v1/conversations", "phone-own-twiml"))["items"]
    deadline = time.monotonic() + 30
    while not conversations:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
        conversations = (await _get(stack, "/v1/conversations", "phone-own-twiml"))["items"]
    CONVERSATIONS.append(conversations[0]["id"])
    await call.stop()


async def test_forged_and_unsigned_calls_are_refused(stack):
    call = _call(stack)
    status, body = await call.dial(VOICE, signature="Zm9yZ2Vk")
    assert status == 403 and "X-Twilio-Signature" in body
    status, stream = await call.dial(VOICE)
    assert status == 200
    forged = _call(stack)
    forged.call_sid = call.call_sid
    forged.validator.token = b"not-the-auth-token"
    await forged.connect(stream)
    assert (await forged.wait_closed()) == (4403, "X-Twilio-Signature does not sign this stream's URL")
    unsigned = _call(stack)
    await unsigned.connect(Stream(stream.url, {"avatar_id": stream.parameters["avatar_id"]}), signature=None)
    assert (await unsigned.wait_closed())[0] == 4401
    replayed = _call(stack)  # a real signature, and a call token of another call
    await replayed.connect(stream)
    assert (await replayed.wait_closed()) == (4403, "call_token missing, expired or not this call's")


async def test_the_webhook_refuses_what_twilio_would_not_send(stack):
    call = _call(stack)
    assert (await call.dial(VOICE + "?avatar_id=nope"))[0] == 422
    assert (await call.dial(VOICE + f"?avatar_id={ids.new_id()}"))[0] == 404
    async with httpx.AsyncClient(base_url=stack["http_url"], trust_env=False) as http:
        resp = await http.post(VOICE, data={"From": "+1"})
    assert resp.status_code == 403


async def test_bad_streams_are_closed_and_what_was_said_is_kept(stack, fake_llm):
    """Media before start, bad base64, an unknown stream: each closes the stream with a reason.
    A call whose socket drops with no `stop` ends its session; its accepted turn is answered."""
    status, stream = await (call := _call(stack)).dial(VOICE)
    await call.connect(stream, start={"event": "media", "media": {"payload": "//8="}, "streamSid": call.stream_sid})
    assert (await call.wait_closed()) == (4400, "media before start")

    cases = [
        ({"event": "media", "media": {"track": "inbound", "payload": "***"}}, 1007, "media payload is not base64"),
        ({"event": "mark", "mark": {"name": "x"}, "streamSid": "MZ" + "0" * 32}, 1008, "message for stream"),
    ]
    for body, code, words in cases:
        before = await _conversations(stack)
        call = _call(stack)
        status, stream = await call.dial(VOICE)
        await call.connect(stream)
        conversation_id = await _new_conversation(stack, before)
        await call.send({"streamSid": call.stream_sid, "sequenceNumber": "3", **body})
        closed = await call.wait_closed()
        assert closed[0] == code and words in closed[1]
        await _ended(stack, conversation_id, "protocol_error")

    call, _, conversation_id = await _answered_call(stack)
    await call.press("9")
    await call.press("#")
    user = await _message(stack, conversation_id, lambda m: m["role"] == "user")
    await call.hang_up()  # no stop
    await _ended(stack, conversation_id, "dropped")
    reply = await _message(stack, conversation_id, lambda m: m["role"] == "avatar" and m["status"] == "complete")
    assert reply["reply_to"] == user["id"]


async def test_every_phone_conversation_balances(stack):
    assert CONVERSATIONS
    assert await settled_conversations(stack["settings"], CONVERSATIONS) == []
