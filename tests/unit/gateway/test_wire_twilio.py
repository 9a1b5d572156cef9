"""The Twilio Media Streams wire without a server: Twilio's messages (as its documentation gives
them) in, against an in-memory session and socket; what it sends Twilio and asks of the session,
out. Signatures are made with Twilio's own helper library, not with Parley's code."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np
import pytest
from pydantic import SecretStr
from twilio.request_validator import RequestValidator

from services.common import g711
from services.gateway import events, protocol
from services.gateway.auth import Principal
from services.gateway.config import GatewaySettings
from services.gateway.phone import twiml
from services.gateway.phone.signature import call_token, call_token_valid, public_urls, signed
from services.gateway.phone.wire import TwilioWire
from services.gateway.playout import Frame
from services.gateway.relay import Reply
from tests.fakes.session_api import AVATAR, FakeClientSocket, FakeSession

AUTH_TOKEN = "twilio-auth-token-for-tests"
STREAM_URL = "wss://phone.example.com/v1/phone/twilio/stream"
SID = "MZ" + "1" * 32
CALL = "CA" + "2" * 32
ACCOUNT = "AC" + "3" * 32
REPLY = "22222222-2222-4222-8222-222222222222"


class FakeAuth:
    async def as_user(self, external: str, via: str) -> Principal:
        return Principal(f"user-of-{external}", external, via)


def _settings(**more) -> GatewaySettings:
    base = {"public_url": "https://phone.example.com", "twilio_auth_token": SecretStr(AUTH_TOKEN)}
    return GatewaySettings(auth_jwt_secret="x", start_timeout_s=1, **(base | more))


def _start(params: dict[str, str], sid: str = SID, **media_format) -> str:
    fmt = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1, **media_format}
    start = {"accountSid": ACCOUNT, "streamSid": sid, "callSid": CALL, "tracks": ["inbound"]}
    start |= {"mediaFormat": fmt, "customParameters": params}
    return json.dumps({"event": "start", "sequenceNumber": "1", "start": start, "streamSid": sid})


CONNECTED = json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def _signed_params() -> dict[str, str]:
    return {"avatar_id": AVATAR.id, "call_token": call_token(AUTH_TOKEN, CALL, AVATAR.id)}


def _wire(first, signature: str | None = None, **settings):
    headers = {"host": "127.0.0.1:8000"}
    if signature is not None:
        headers["x-twilio-signature"] = signature
    socket = FakeClientSocket(first, headers=headers, path="/v1/phone/twilio/stream")
    wire = TwilioWire(socket, _settings(**settings), FakeAuth())
    session = FakeSession()
    wire.attach(session)
    return wire, socket, session


def _twilio_signature(url: str = STREAM_URL, params: dict | None = None, token: str = AUTH_TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params or {})


async def _opened(**settings):
    wire, socket, session = _wire([CONNECTED, _start(_signed_params())], _twilio_signature(), **settings)
    assert (await wire.open()) is not None, socket.closed
    return wire, socket, session


async def _send(wire: TwilioWire, body: dict) -> None:
    await wire.on_message({"text": json.dumps({"streamSid": SID, "sequenceNumber": "2", **body})})


def _media(payload: bytes) -> dict:
    media = {"track": "inbound", "chunk": "1", "timestamp": "20", "payload": base64.b64encode(payload).decode()}
    return {"event": "media", "media": media}


# --- signatures -----------------------------------------------------------------------------


def test_signatures_are_twilios_for_webhooks_and_for_the_stream_handshake():
    url = "https://phone.example.com/v1/phone/twilio/voice?avatar_id=a"
    params = {"CallSid": CALL, "From": "+14158675310", "To": "+18005551212", "CallStatus": "ringing"}
    given = _twilio_signature(url, params)
    assert signed(AUTH_TOKEN, [url], params.items(), given)
    assert not signed(AUTH_TOKEN, [url], {**params, "From": "+1999"}.items(), given)
    assert not signed("another-token", [url], params.items(), given)
    assert not signed(AUTH_TOKEN, [url], params.items(), None)
    # Twilio drops the default port (and a proxy may write it): both forms verify.
    with_port = "https://phone.example.com:443/v1/phone/twilio/voice?avatar_id=a"
    assert signed(AUTH_TOKEN, [with_port], params.items(), given)
    assert signed(AUTH_TOKEN, [STREAM_URL], (), _twilio_signature())


def test_the_urls_a_request_was_signed_for():
    assert public_urls("https://p.example.com/", "ignored:1", "/v1/x", websocket=True) == ["wss://p.example.com/v1/x"]
    assert public_urls(None, "h:8000", "/v1/x", websocket=False) == ["https://h:8000/v1/x", "http://h:8000/v1/x"]
    assert public_urls(None, None, "/v1/x", websocket=True) == []


def test_a_call_token_holds_for_its_call_and_avatar_until_it_expires():
    token = call_token(AUTH_TOKEN, CALL, AVATAR.id)
    assert call_token_valid(AUTH_TOKEN, token, CALL, AVATAR.id)
    assert not call_token_valid(AUTH_TOKEN, token, "CA" + "9" * 32, AVATAR.id)
    assert not call_token_valid(AUTH_TOKEN, token, CALL, "another-avatar")
    assert not call_token_valid("another-token", token, CALL, AVATAR.id)
    assert not call_token_valid(AUTH_TOKEN, call_token(AUTH_TOKEN, CALL, AVATAR.id, time.time() - 600), CALL, AVATAR.id)
    assert not call_token_valid(AUTH_TOKEN, "garbage", CALL, AVATAR.id)


def test_the_twiml_connects_the_call_to_the_stream_with_its_parameters():
    xml = twiml.connect_stream(STREAM_URL, {"avatar_id": AVATAR.id, "call_token": 'a&b"<'}).decode()
    assert xml.startswith("<?xml version='1.0' encoding='utf-8'?>\n<Response><Connect><Stream url=")
    import xml.etree.ElementTree as ET

    stream = ET.fromstring(xml.split("\n", 1)[1]).find("Connect/Stream")
    assert stream.get("url") == STREAM_URL
    assert {p.get("name"): p.get("value") for p in stream.findall("Parameter")} == {
        "avatar_id": AVATAR.id,
        "call_token": 'a&b"<',
    }


# --- opening --------------------------------------------------------------------------------


async def test_a_signed_call_with_its_call_token_acts_as_the_phone_user():
    wire, socket, _ = await _opened(twilio_user="acme/phone")
    assert socket.accepted is None and socket.closed is None
    assert wire.stream_sid == SID and wire.call_sid == CALL


async def test_the_opening_of_a_signed_call():
    wire, _, _ = _wire([CONNECTED, _start({**_signed_params(), "language": "de"})], _twilio_signature())
    opening = await wire.open()
    assert opening.principal == Principal("user-of-twilio", "twilio", "twilio")
    assert opening.token is None and opening.avatar_ids == [AVATAR.id]
    assert (opening.stt.language, opening.stt.partials) == ("de", False)


async def test_a_parley_token_in_the_custom_parameters_needs_no_signature():
    wire, socket, _ = _wire([CONNECTED, _start({"token": "pk_abc", "avatar_id": AVATAR.id})], None, public_url=None)
    opening = await wire.open()
    assert opening.token == "pk_abc" and opening.principal is None and opening.avatar_ids == [AVATAR.id]


async def test_calls_that_prove_nothing_are_refused():
    other_url = _twilio_signature("wss://elsewhere.example.com/v1/phone/twilio/stream")
    stale = call_token(AUTH_TOKEN, CALL, AVATAR.id, time.time() - 600)
    good = _signed_params()["call_token"]
    cases = [
        ({"avatar_id": AVATAR.id}, None, {}, (protocol.CLOSE_UNAUTHENTICATED, "unsigned call")),
        ({"token": "pk_abc"}, other_url, {}, (protocol.CLOSE_FORBIDDEN, "X-Twilio-Signature")),
        ({"avatar_id": AVATAR.id}, _twilio_signature(token="forged"), {}, (protocol.CLOSE_FORBIDDEN, "Signature")),
        ({"avatar_id": AVATAR.id}, _twilio_signature(), {}, (protocol.CLOSE_FORBIDDEN, "call_token")),
        ({"avatar_id": AVATAR.id, "call_token": stale}, _twilio_signature(), {}, (4403, "call_token")),
        ({"avatar_id": "other", "call_token": good}, _twilio_signature(), {}, (4403, "call_token")),
        (_signed_params(), _twilio_signature(), {"twilio_auth_token": None}, (4401, "no Twilio-signed calls")),
        (_signed_params(), _twilio_signature(), {"twilio_account_sid": "AC" + "0" * 32}, (4403, "another Twilio")),
    ]
    for params, signature, settings, (code, words) in cases:
        wire, socket, _ = _wire([CONNECTED, _start(params)], signature, **settings)
        assert await wire.open() is None, params
        assert socket.closed[0] == code and words in socket.closed[1], (params, socket.closed)


async def test_a_stream_that_does_not_start_as_twilio_starts_one_is_refused():
    media = json.dumps({"streamSid": SID, **_media(b"\xff" * 160)})
    cases = [
        ([CONNECTED, media], "media before start"),
        ([media], "media before start"),
        (["{nope"], "not a Media Streams message"),
        ([json.dumps({"event": "start", "streamSid": SID})], "not a Media Streams message"),
        ([_start({"token": "pk"}, encoding="audio/l16")], "unsupported media format"),
        ([_start({"token": "pk"}, sampleRate=16000)], "unsupported media format"),
        ([_start({"token": "pk"}, sid="")], "no streamSid"),
        ([CONNECTED], "no start message in time"),
    ]
    for first, words in cases:
        wire, socket, _ = _wire(first, _twilio_signature())
        assert await wire.open() is None
        assert words in socket.closed[1], (first, socket.closed)
        assert socket.closed[0] == (protocol.CLOSE_START_TIMEOUT if "in time" in words else protocol.CLOSE_BAD_START)


# --- the caller's audio, keys and hang-up ---------------------------------------------------


async def test_mu_law_media_reaches_the_session_as_16khz_pcm():
    wire, _, session = await _opened()
    tone = (np.sin(np.arange(8000) * 2 * np.pi * 440 / 8000) * 8000).astype("<i2").tobytes()
    mulaw = g711.encode(tone, "ulaw")
    for offset in range(0, len(mulaw), 160):
        await _send(wire, _media(mulaw[offset : offset + 160]))
    pcm = b"".join(call[1] for call in session.calls if call[0] == "audio")
    assert abs(len(pcm) / 2 - 16000) < 16  # one second at 16 kHz: under 1 ms is held back
    spectrum = np.abs(np.fft.rfft(np.frombuffer(pcm, "<i2")[1000:9000]))
    assert abs(np.argmax(spectrum) * 16000 / 8000 - 440) < 5  # the same tone, at twice the rate


async def test_bad_media_closes_the_stream_and_the_session_with_it():
    cases = [
        ({"event": "media", "media": {"track": "inbound", "payload": "not base64!"}}, 1007, "not base64"),
        (_media(b"\xff" * 8001), 1009, "at most 8000 bytes"),
        ({"event": "mark", "streamSid": "MZ" + "9" * 32, "mark": {"name": "x"}}, 1008, "this socket streams"),
        ({"event": "start", "start": {}}, 1008, "start after start"),
        ({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": "X"}}, 1008, "no key"),
        ({"event": "hello"}, 1007, "not a Media Streams message"),
    ]
    for body, code, words in cases:
        wire, _, session = await _opened()
        await _send(wire, body)
        ((closed_code, reason, end_reason),) = session.named("close")
        assert (closed_code, end_reason) == (code, "protocol_error") and words in reason, (body, reason)
    wire, _, session = await _opened()
    await wire.on_message({"bytes": b"\x00\x01"})
    assert session.named("close")[0][0] == 1007


async def test_odd_and_empty_payloads_are_audio_like_any_other():
    wire, _, session = await _opened()
    for size in (1, 161, 0, 333):
        await _send(wire, _media(b"\x7f" * size))
    assert not session.named("close")
    assert sum(len(c[0]) for c in session.named("audio")) > 0


async def test_stop_ends_the_session_as_the_callers_hang_up():
    wire, _, session = await _opened()
    await _send(wire, {"event": "stop", "stop": {"accountSid": ACCOUNT, "callSid": CALL}})
    assert session.named("close") == [(1000, "call ended", "client")]


async def test_keys_pressed_cut_the_reply_off_and_are_the_next_turn():
    wire, _, session = await _opened()
    session.replies[REPLY] = Reply()
    for digit in "12#":
        await _send(wire, {"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": digit}})
    assert session.named("cut") == [(REPLY,)]
    assert [c[2] for c in session.named("submit_text")] == ["DTMF: 12"]
    wire.keypad._pause_s = 0.05
    await _send(wire, {"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": "7"}})
    await asyncio.sleep(0.2)
    assert [c[2] for c in session.named("submit_text")] == ["DTMF: 12", "DTMF: 7"]
    await wire.closed()


# --- the reply's audio, marks and clear -----------------------------------------------------


def _frame(seconds: float, index: int = 0, seq: int = 0, rate: int = 24000) -> Frame:
    pcm = (np.sin(np.arange(int(rate * seconds)) * 0.05) * 6000).astype("<i2").tobytes()
    return Frame(index, seq, rate, pcm)


def _out(socket: FakeClientSocket) -> list[dict]:
    return [json.loads(t) for t in socket.raw]


async def test_reply_audio_goes_out_as_mu_law_each_frame_marked_with_how_much_was_sent():
    wire, socket, session = await _opened()
    session.replies[REPLY] = Reply()
    wire.send_audio(REPLY, _frame(0.5))
    wire.send_audio(REPLY, _frame(0.25, seq=1))
    wire.send(events.AudioEnd(conversation_id=session.conv, message_id=REPLY, sentence_count=1))
    out = _out(socket)
    assert [m["event"] for m in out] == ["media", "mark", "media", "mark", "media", "mark"]
    assert all(m["streamSid"] == SID for m in out)
    mulaw = b"".join(base64.b64decode(m["media"]["payload"]) for m in out if m["event"] == "media")
    assert abs(len(mulaw) - 6000) <= 2  # 0.75 s at 8 kHz, one byte a sample
    marks = [m["mark"]["name"] for m in out if m["event"] == "mark"]
    assert marks == [f"{REPLY} 0 500", f"{REPLY} 0 750", f"{REPLY} 0 750 end"]
    for name in marks:  # Twilio echoes each mark once the audio before it has played
        await _send(wire, {"event": "mark", "mark": {"name": name}})
    assert session.named("playback") == [(REPLY, 500.0, False), (REPLY, 750.0, False), (REPLY, 750.0, True)]


async def test_a_stop_clears_what_twilio_holds_and_the_marks_it_returns_are_ignored():
    wire, socket, session = await _opened()
    session.replies[REPLY] = Reply()
    wire.send_audio(REPLY, _frame(0.5))
    wire.send_audio(REPLY, _frame(0.5, seq=1))
    pending = [m["mark"]["name"] for m in _out(socket) if m["event"] == "mark"]
    await _send(wire, {"event": "mark", "mark": {"name": pending[0]}})
    wire.send(events.PlaybackStop(conversation_id=session.conv, message_id=REPLY, sentence_index=0, offset_ms=600))
    assert _out(socket)[-1] == {"event": "clear", "streamSid": SID}
    await _send(wire, {"event": "mark", "mark": {"name": pending[1]}})  # returned by the clear, never played
    assert session.named("playback") == [(REPLY, 500.0, False)]
    sent = len(socket.raw)
    wire.send_audio(REPLY, _frame(0.5, seq=2))  # what was already under way when it stopped
    wire.send(events.AudioEnd(conversation_id=session.conv, message_id=REPLY, sentence_count=1))
    assert len(socket.raw) == sent


async def test_a_paused_reply_resumes_from_where_the_caller_stopped_hearing_it():
    wire, socket, session = await _opened()
    reply = session.replies[REPLY] = Reply()
    wire.send_audio(REPLY, _frame(1.0))
    wire.send(events.PlaybackPause(conversation_id=session.conv, message_id=REPLY, sentence_index=0, offset_ms=400))
    assert _out(socket)[-1]["event"] == "clear"
    reply.played = (400.0, time.monotonic())  # the relay's resume sets where it goes on from
    wire.send(events.PlaybackResume(conversation_id=session.conv, message_id=REPLY, sentence_index=0, offset_ms=400))
    wire.send_audio(REPLY, _frame(0.6))
    assert _out(socket)[-1]["mark"]["name"] == f"{REPLY} 1 1000"
    await _send(wire, {"event": "mark", "mark": {"name": f"{REPLY} 0 1000"}})  # from before the clear
    await _send(wire, {"event": "mark", "mark": {"name": f"{REPLY} 1 1000"}})
    assert session.named("playback") == [(REPLY, 1000.0, False)]


async def test_errors_go_to_the_log_not_to_twilio(caplog):
    wire, socket, session = await _opened()
    sent = len(socket.raw)
    wire.send(events.Error(conversation_id=session.conv, code="stt_unavailable", message="no worker"))
    wire.error("bus_unavailable", "send it again", retryable=True)
    assert len(socket.raw) == sent
    assert "stt_unavailable" in caplog.text and "bus_unavailable" in caplog.text


@pytest.mark.parametrize("name", ["x", "a b", f"{REPLY} 0 nope", f"{REPLY} 0 10 end extra"])
async def test_marks_that_are_not_ours_are_ignored(name):
    wire, _, session = await _opened()
    await _send(wire, {"event": "mark", "mark": {"name": name}})
    assert session.named("playback") == [] and session.named("close") == []
