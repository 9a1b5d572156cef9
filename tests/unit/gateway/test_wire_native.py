"""The native wire (docs/protocol.md) without a server: client frames in, against an in-memory
session and socket; the events it sends and the session calls it makes, out."""

from __future__ import annotations

import json

import msgspec
from fastapi import WebSocketDisconnect

from services.gateway import events, protocol
from services.gateway.native import NativeWire
from services.gateway.relay import Reply
from tests.fakes.session_api import CONV, FakeClientSocket, FakeSession

REPLY = "22222222-2222-4222-8222-222222222222"
OTHER = "55555555-5555-4555-8555-555555555555"


def _wire(first: str | Exception = "", offered: list[str] | None = None):
    socket = FakeClientSocket(first, offered)
    wire = NativeWire(socket, start_timeout_s=1, max_text_chars=20)
    session = FakeSession()
    wire.attach(session)
    return wire, socket, session


def _start(**fields) -> str:
    return msgspec.json.encode(protocol.Start(**fields)).decode()


async def _text(wire: NativeWire, body: dict | str) -> None:
    await wire.on_message({"text": body if isinstance(body, str) else json.dumps(body)})


async def test_the_handshake_takes_the_parley_subprotocol_only_when_offered():
    wire, socket, _ = _wire(offered=["other", protocol.SUBPROTOCOL])
    await wire.accept()
    assert socket.accepted == protocol.SUBPROTOCOL
    wire, socket, _ = _wire(offered=["other"])
    await wire.accept()
    assert socket.accepted is None


async def test_session_start_becomes_the_opening_the_session_runs_with():
    resume = protocol.Resume(session_id=REPLY, last_cursor=7)
    start = _start(token="pk_x", conversation_id=CONV, avatar_ids=["a", "b"], resume=resume, language="de")
    wire, socket, _ = _wire(start)
    opening = await wire.open()
    assert (opening.token, opening.conversation_id, opening.avatar_ids) == ("pk_x", CONV, ["a", "b"])
    assert opening.resume == resume and opening.barge_in is True
    assert (opening.stt.language, opening.stt.end_of_turn_ms, opening.stt.partials) == ("de", None, True)
    assert socket.closed is None and socket.raw == []


async def test_a_bad_first_message_closes_the_connection_with_its_reason():
    not_start = json.dumps({"type": "text", "text": "hi"})
    cases = [
        (TimeoutError(), (protocol.CLOSE_START_TIMEOUT, "no session.start in time")),
        (WebSocketDisconnect(), (protocol.CLOSE_BAD_START, "the first message must be a JSON session.start")),
        (not_start, (protocol.CLOSE_BAD_START, "the first message must be session.start")),
        (_start(protocol=9), (protocol.CLOSE_UNSUPPORTED_VERSION, "protocol 9 unsupported")),
    ]
    for first, closed in cases:
        wire, socket, _ = _wire(first)
        assert await wire.open() is None
        assert socket.closed == closed
    wire, socket, _ = _wire("{nope")
    assert await wire.open() is None
    code, reason = socket.closed
    assert code == protocol.CLOSE_BAD_START and reason.startswith("bad session.start: ") and len(reason) <= 120


async def test_binary_frames_are_the_microphone():
    wire, socket, session = _wire()
    await wire.on_message({"bytes": b"\x01\x00" * 160})
    assert session.calls == [("audio", b"\x01\x00" * 160)]
    assert socket.raw == []


async def test_typed_text_is_a_turn_and_is_echoed_as_the_user_message():
    wire, socket, session = _wire()
    await _text(wire, {"type": "text", "text": "  hello  ", "client_seq": 3})
    await _text(wire, {"type": "text", "text": "again"})
    (first_id, seq, text, instructions), (second_id, second_seq, _, _) = session.named("submit_text")
    assert (seq, text, instructions, second_seq) == (3, "hello", None, 0)
    assert socket.texts == [
        {"type": "user.message", "v": 1, "conversation_id": CONV, "message_id": first_id, "text": "hello", "seq": 1},
        {"type": "user.message", "v": 1, "conversation_id": CONV, "message_id": second_id, "text": "again", "seq": 2},
    ]


async def test_a_refused_message_is_answered_with_an_error_event_and_nothing_else():
    wire, socket, session = _wire()
    await _text(wire, {"type": "text", "text": "   "})
    await _text(wire, {"type": "text", "text": "x" * 21})
    await _text(wire, "{not json")
    await _text(wire, {"type": "dance"})
    await _text(wire, _start())
    assert session.calls == []
    errors = socket.texts
    assert [(e["type"], e["code"], e["seq"]) for e in errors] == [
        ("error", "empty_text", 1),
        ("error", "text_too_long", 2),
        ("error", "malformed_json", 3),
        ("error", "unknown_message", 4),
        ("error", "unexpected_message", 5),
    ]
    assert errors[0] == {
        "type": "error",
        "v": 1,
        "conversation_id": CONV,
        "code": "empty_text",
        "message": "text messages must not be empty",
        "message_id": None,
        "retryable": False,
        "seq": 1,
    }
    assert errors[1]["message"] == "text messages are limited to 20 characters"


async def test_cancel_without_a_reply_stops_every_unfinished_one_where_it_was_heard():
    wire, socket, session = _wire()
    played = Reply(sentence_s={0: 1.0, 1: 2.0}, played=(1500.0, 0.0), playback_ended=True)
    session.replies = {REPLY: played, OTHER: Reply()}
    await _text(wire, {"type": "interrupt"})
    assert session.calls == [
        ("interrupt", REPLY, (1, 0.5), None),
        ("interrupt", OTHER, None, None),
        ("cancel", "", "client interrupt"),
    ]
    assert socket.raw == []


async def test_cancel_of_one_reply_carries_the_clients_position():
    wire, socket, session = _wire()
    session.replies = {REPLY: Reply(), OTHER: Reply()}
    await _text(wire, {"type": "interrupt", "message_id": REPLY, "sentence_index": 2, "offset_ms": 250})
    assert session.calls == [("interrupt", REPLY, (2, 0.25), None), ("cancel", REPLY, "client interrupt")]


async def test_cancel_of_a_reply_this_session_did_not_relay_is_refused():
    wire, socket, session = _wire()
    session.replies = {REPLY: Reply()}
    await _text(wire, {"type": "interrupt", "message_id": "not-a-uuid"})
    await _text(wire, {"type": "interrupt", "message_id": OTHER})
    assert session.calls == []
    assert [(e["code"], e["message"]) for e in socket.texts] == [
        ("bad_message_id", "interrupt.message_id must be a reply's message id"),
        ("unknown_reply", "interrupt.message_id is not a reply of this session"),
    ]


async def test_playback_and_latency_reports_reach_the_session_and_unknown_ones_are_refused():
    wire, socket, session = _wire()
    session.replies = {REPLY: Reply()}
    await _text(wire, {"type": "playback", "message_id": REPLY, "played_ms": 120.5, "ended": True})
    await _text(wire, {"type": "latency", "message_id": REPLY, "voice_to_voice_ms": 640})
    await _text(wire, {"type": "playback", "message_id": OTHER, "played_ms": 1})
    await _text(wire, {"type": "latency", "message_id": OTHER, "voice_to_voice_ms": 1})
    assert session.calls == [
        ("playback", REPLY, 120.5, True),
        ("latency", REPLY, 640.0),
        ("playback", OTHER, 1.0, False),
        ("latency", OTHER, 1.0),
    ]
    assert [e["code"] for e in socket.texts] == ["unknown_reply", "unknown_reply"]


async def test_session_end_closes_the_session_as_the_clients_choice():
    wire, socket, session = _wire()
    await _text(wire, {"type": "session.end"})
    assert session.calls == [("close", 1000, "session ended", "client")]


async def test_events_carry_the_connections_sequence_and_a_final_events_cursor():
    wire, socket, session = _wire()
    wire.send(events.ReplyDelta(conversation_id=CONV, message_id=REPLY, delta_seq=0, text="Hi"))
    wire.send(events.ReplyInterrupted(conversation_id=CONV, message_id=REPLY, text="Hi"), cursor=42)
    wire.error("stt_unavailable", "no STT worker", retryable=True)
    first, second, third = socket.texts
    assert (first["seq"], "cursor" in first) == (1, False)
    assert (second["seq"], second["cursor"]) == (2, 42)
    assert (third["type"], third["seq"], third["retryable"], third["conversation_id"]) == ("error", 3, True, CONV)
