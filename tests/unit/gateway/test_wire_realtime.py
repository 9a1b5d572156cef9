"""The Realtime API wire (docs/openai-realtime.md) without a server: OpenAI client events in,
against an in-memory session, repository and socket; the server events it sends and the
session calls it makes, out. tests/e2e/test_realtime.py runs the same through the real stack."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid

from services.common import db, ids
from services.gateway import events
from services.gateway.config import GatewaySettings
from services.gateway.playout import Frame
from services.gateway.realtime import RealtimeWire
from services.gateway.relay import Reply
from tests.fakes.session_api import AUDIO_SESSION, AVATAR, CONV, FakeClientSocket, FakeSession

BOB = db.Avatar("bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb", "Bob", None, "You are Bob.", "en", None, None)


class FakeAvatars:
    def __init__(self, avatars: list[db.Avatar]):
        self.avatars = avatars

    async def visible(self, user_id: str) -> list[db.Avatar]:
        return list(self.avatars)


def _wire(offered: list[str] | None = None, **settings):
    socket = FakeClientSocket(offered=offered)
    config = GatewaySettings(**{"max_text_chars": 40, "max_audio_frame_bytes": 200, **settings})
    wire = RealtimeWire(socket, config, FakeAvatars([AVATAR, BOB]), model=None)
    session = FakeSession()
    wire.attach(session)
    return wire, socket, session


async def _client(wire: RealtimeWire, event: dict | str) -> None:
    await wire.on_message({"text": event if isinstance(event, str) else json.dumps(event)})


async def _settled() -> None:
    """Let the tasks the wire spawned run."""
    for _ in range(5):
        await asyncio.sleep(0)


def _started() -> events.SessionStarted:
    fmt = events.AudioFormat(sample_rate=16000)
    return events.SessionStarted(
        conversation_id=CONV,
        protocol=1,
        session_id=AUDIO_SESSION,
        audio_session_id=AUDIO_SESSION,
        resumed=False,
        audio_in=fmt,
        audio_out=fmt,
        speech_input=True,
    )


def _item(text: str | None = None, part: str = "input_text", **item) -> dict:
    """A `conversation.item.create` of a user message with one content part."""
    content = {"type": part} if text is None else {"type": part, "text": text}
    return {"type": "conversation.item.create", "item": {"role": "user", "content": [content], **item}}


def _truncate(item_id: str, audio_end_ms: int, content_index: int = 0) -> dict:
    return {
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": content_index,
        "audio_end_ms": audio_end_ms,
    }


def _voice_id(seq: int) -> str:
    return ids.user_message_id(CONV, AUDIO_SESSION, "voice", seq)


async def _typed_turn(wire: RealtimeWire, session: FakeSession, text: str = "hello", **response) -> tuple[str, str]:
    """A typed user item answered by `response.create`: (user message id, reply id)."""
    await _client(wire, _item(text))
    await _client(wire, {"type": "response.create", "response": response})
    message_id = session.named("submit_text")[-1][0]
    return message_id, ids.reply_id(message_id, AVATAR.id)


def _reply_started(user_message_id: str, reply_id: str) -> events.ReplyStarted:
    return events.ReplyStarted(
        conversation_id=CONV, message_id=reply_id, user_message_id=user_message_id, avatar_id=AVATAR.id
    )


def _reply_done(reply_id: str, text: str, status: str = "complete") -> events.ReplyDone:
    return events.ReplyDone(conversation_id=CONV, message_id=reply_id, status=status, text=text, sentence_count=1)


# --- connecting -----------------------------------------------------------------------------


async def test_the_key_rides_in_a_subprotocol_and_the_session_opens_with_openais_defaults():
    wire, socket, _ = _wire(offered=["realtime", "openai-insecure-api-key.pk_secret"])
    await wire.accept()
    opening = await wire.open()
    assert socket.accepted == "realtime"
    assert opening.token == "pk_secret" and opening.avatar_ids == [GatewaySettings().default_avatar_id]
    assert opening.barge_in is True
    stt = opening.stt
    assert (stt.end_of_turn_ms, stt.vad_threshold, stt.pad_ms) == (500, 0.5, 300)
    assert (stt.language, stt.instructions, stt.prompt) == (None, None, None)


async def test_a_refusal_is_an_error_event_before_the_close():
    wire, socket, _ = _wire()
    await wire.refuse(4401, "invalid_token: the key is not valid")
    await wire.refuse(4403, "origin not allowed")
    first, second = socket.texts
    assert first["type"] == "error" and first["event_id"].startswith("event_")
    assert first["error"] == {
        "type": "invalid_request_error",
        "code": "invalid_token",
        "message": "the key is not valid",
        "param": None,
        "event_id": None,
    }
    assert (second["error"]["code"], second["error"]["message"]) == ("session_refused", "origin not allowed")
    assert socket.closed == (4403, "origin not allowed")


async def test_session_created_describes_the_session_and_where_its_history_lives():
    wire, socket, _ = _wire()
    wire.send(_started())
    (created,) = socket.texts
    assert created["type"] == "session.created"
    session = created["session"]
    assert session["id"] == f"sess_{uuid.UUID(AUDIO_SESSION).hex}" and session["model"] == "parley"
    assert session["output_modalities"] == ["audio"] and session["instructions"] == ""
    assert session["audio"]["output"] == {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "Ada", "speed": 1.0}
    assert session["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 500
    assert session["parley"] == {"conversation_id": CONV, "avatar_id": AVATAR.id, "avatar_name": "Ada"}


# --- session.update -------------------------------------------------------------------------


async def test_session_update_is_applied_and_reported_and_reopens_stt_only_when_recognition_changes():
    wire, socket, session = _wire()
    turn = {"type": "server_vad", "silence_duration_ms": 800, "threshold": 0.6}
    update = {"instructions": "Be brief.", "audio": {"input": {"turn_detection": turn}}}
    await _client(wire, {"type": "session.update", "session": update})
    await _client(wire, {"type": "session.update", "session": {"output_modalities": ["text"]}})
    assert session.calls == [("reopen_stt",)]
    first, second = socket.texts
    assert first["type"] == second["type"] == "session.updated"
    assert first["session"]["instructions"] == "Be brief." and first["session"]["output_modalities"] == ["audio"]
    assert first["session"]["audio"]["input"]["turn_detection"]["threshold"] == 0.6
    assert second["session"]["output_modalities"] == ["text"] and second["session"]["instructions"] == "Be brief."
    stt = session.opening.stt
    assert (stt.end_of_turn_ms, stt.vad_threshold, stt.instructions) == (800, 0.6, "Be brief.")


async def test_a_voice_naming_an_avatar_changes_who_answers_until_the_conversation_has_begun():
    wire, socket, session = _wire()
    await _client(wire, {"type": "session.update", "session": {"audio": {"output": {"voice": "bob"}}}})
    assert session.calls == [("replace_avatars", [BOB.id]), ("reopen_stt",)]
    updated = socket.texts[-1]["session"]
    assert updated["audio"]["output"]["voice"] == "bob" and updated["parley"]["avatar_id"] == BOB.id
    await _client(wire, {"type": "session.update", "session": {"voice": "alloy"}})
    assert socket.texts[-1]["session"]["audio"]["output"]["voice"] == "alloy"
    assert socket.texts[-1]["session"]["parley"]["avatar_id"] == BOB.id
    session.avatars = [AVATAR]
    await _typed_turn(wire, session)
    session.calls.clear()
    await _client(wire, {"type": "session.update", "event_id": "e9", "session": {"voice": "Bob"}})
    error = socket.texts[-1]
    assert error["type"] == "error" and error["error"]["code"] == "cannot_update_voice"
    assert (error["error"]["param"], error["error"]["event_id"]) == ("session.audio.output.voice", "e9")
    assert session.calls == [] and session.avatars == [AVATAR]


async def test_a_refused_session_update_changes_nothing_and_says_which_field():
    wire, socket, session = _wire()
    bad = {"audio": {"input": {"turn_detection": {"silence_duration_ms": 900, "threshold": 2}}}, "instructions": "x"}
    await _client(wire, {"type": "session.update", "event_id": "e2", "session": bad})
    await _client(wire, {"type": "session.update", "session": {"voice": "Nobody"}})
    assert session.calls == [] and session.opening.stt.end_of_turn_ms is None
    await _client(wire, {"type": "session.update", "session": {}})
    refused, unknown, updated = socket.texts
    assert refused["error"] == {
        "type": "invalid_request_error",
        "code": "invalid_value",
        "message": "threshold must lie between 0 and 1",
        "param": "session.audio.input.turn_detection.threshold",
        "event_id": "e2",
    }
    assert (unknown["error"]["code"], unknown["error"]["param"]) == ("invalid_value", "session.audio.output.voice")
    assert updated["session"]["instructions"] == ""
    assert updated["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 500
    assert session.calls == [] and session.opening.stt.end_of_turn_ms == 500


async def test_events_that_are_not_valid_client_events_are_refused_with_openais_error_codes():
    wire, socket, session = _wire()
    await _client(wire, "{oops")
    await _client(wire, "[1]")
    await _client(wire, {"event_id": "e1"})
    await _client(wire, {"type": "output_audio_buffer.clear", "event_id": "e2"})
    await _client(wire, {"type": "dance"})
    await _client(wire, {"type": "input_audio_buffer.append", "event_id": "e3"})
    await _client(wire, {"type": "response.cancel", "response_id": 5})
    await wire.on_message({"bytes": b"\x00\x00"})
    errors = [(e["type"], e["code"], e["param"], e["event_id"]) for e in (t["error"] for t in socket.texts)]
    assert errors == [
        ("invalid_request_error", "invalid_json", None, None),
        ("invalid_request_error", "invalid_event", None, None),
        ("invalid_request_error", "missing_required_parameter", "type", "e1"),
        ("invalid_request_error", "unsupported_event", "type", "e2"),
        ("invalid_request_error", "invalid_value", "type", None),
        ("invalid_request_error", "missing_required_parameter", "audio", "e3"),
        ("invalid_request_error", "invalid_type", "response_id", None),
        ("invalid_request_error", "invalid_frame", None, None),
    ]
    assert socket.texts[4]["error"]["message"].startswith("Invalid value: 'dance'. Supported values are: ")
    assert session.calls == []


# --- the input audio buffer -----------------------------------------------------------------


async def test_appended_audio_reaches_the_session_at_16_khz_in_frames_of_the_limit():
    wire, socket, session = _wire()
    pcm = (b"\x10\x00\xf0\xff" * 1200)[:4800]  # 100 ms at 24 kHz
    await _client(wire, {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})
    frames = [c[1] for c in session.calls]
    assert [c[0] for c in session.calls] == ["audio"] * len(frames) and len(frames) > 1
    assert all(len(f) <= 200 and len(f) % 2 == 0 for f in frames)
    assert 2800 <= sum(map(len, frames)) <= 3200  # two thirds of the samples, less what the resampler holds
    await _client(wire, {"type": "input_audio_buffer.append", "audio": "not base64!"})
    assert socket.texts[-1]["error"]["message"] == "audio must be base64-encoded PCM16"


async def test_commit_and_clear_end_or_drop_the_utterance_the_vad_hears():
    wire, socket, session = _wire()
    await _client(wire, {"type": "input_audio_buffer.commit"})
    error = socket.texts[-1]["error"]
    assert error["code"] == "input_audio_buffer_commit_empty" and error["message"].startswith("buffer too small")
    await _client(wire, {"type": "input_audio_buffer.clear"})
    assert socket.types()[-1] == "input_audio_buffer.cleared" and session.calls == []
    wire.send(events.SpeechStarted(conversation_id=CONV, session_id=AUDIO_SESSION, utterance_seq=0, start_s=1.25))
    assert socket.texts[-1] == {
        "type": "input_audio_buffer.speech_started",
        "event_id": socket.texts[-1]["event_id"],
        "audio_start_ms": 1250,
        "item_id": _voice_id(0),
    }
    await _client(wire, {"type": "input_audio_buffer.commit"})
    await _client(wire, {"type": "input_audio_buffer.clear"})
    assert session.calls == [("commit",), ("clear",)]
    await _client(wire, {"type": "input_audio_buffer.commit"})
    assert socket.texts[-1]["error"]["code"] == "input_audio_buffer_commit_empty"


async def test_a_spoken_turn_becomes_a_user_audio_item_with_its_transcript_and_a_response():
    wire, socket, session = _wire()
    item = _voice_id(0)
    common = {"conversation_id": CONV, "session_id": AUDIO_SESSION, "utterance_seq": 0}
    wire.send(events.SpeechStarted(**common, start_s=0.5))
    wire.send(events.SpeechStarted(**{**common, "session_id": "elsewhere"}, start_s=0.5))
    wire.send(events.TranscriptPartial(**common, partial_seq=0, text="Hello th", stable="Hello"))
    wire.send(events.SpeechStopped(**common, end_s=1.5))
    final = events.TranscriptFinal(**common, message_id=item, text="Hello there.", start_s=0.5, end_s=1.5)
    wire.send(final)
    assert socket.types() == [
        "input_audio_buffer.speech_started",
        "conversation.item.input_audio_transcription.delta",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
        "conversation.item.done",
        "response.created",
    ]
    texts = socket.texts
    assert [texts[1]["delta"], texts[5]["delta"]] == ["Hello", " there."]
    assert texts[6]["transcript"] == "Hello there." and texts[6]["usage"] == {"type": "duration", "seconds": 1.0}
    assert texts[7]["item"]["content"] == [{"type": "input_audio", "transcript": "Hello there."}]
    assert texts[8]["response"]["status"] == "in_progress" and session.calls == []


def _spoken(wire: RealtimeWire, seq: int, text: str, start_s: float = 0.5, end_s: float = 1.5) -> str:
    """An utterance of the session, committed by the VAD and transcribed: its item id."""
    common = {"conversation_id": CONV, "session_id": AUDIO_SESSION, "utterance_seq": seq}
    item = _voice_id(seq)
    wire.send(events.SpeechStarted(**common, start_s=start_s))
    wire.send(events.SpeechStopped(**common, end_s=end_s))
    wire.send(events.TranscriptFinal(**common, message_id=item, text=text, start_s=start_s, end_s=end_s))
    return item


def _held(item: str, text: str) -> events.TurnHeld:
    return events.TurnHeld(conversation_id=CONV, message_id=item, text=text)


async def test_with_create_response_false_a_spoken_turn_waits_for_the_clients_response_create():
    wire, socket, session = _wire()
    update = {"audio": {"input": {"turn_detection": {"type": "server_vad", "create_response": False}}}}
    await _client(wire, {"type": "session.update", "session": update})
    updated = socket.texts[-1]["session"]
    assert updated["audio"]["input"]["turn_detection"]["create_response"] is False
    assert not updated["parley"].get("warnings") and session.opening.stt.hold is True
    first = _spoken(wire, 0, "Hello there.")
    second = _spoken(wire, 1, "Are you there?", 2.0, 2.5)
    wire.send(_held(first, "Hello there."))
    assert "response.created" not in socket.types()  # the turns are items, not yet answered
    # The client asks before the newest turn is stored: the response opens now, is asked for then.
    await _client(wire, {"type": "response.create", "response": {"instructions": "Be brief."}})
    created = socket.texts[-1]
    assert created["type"] == "response.created" and created["response"]["status"] == "in_progress"
    await _settled()
    assert session.named("answer_held") == []
    wire.send(_held(second, "Are you there?"))
    await _settled()
    assert session.named("answer_held") == [(second, "Are you there?", "Be brief.")]
    reply_id = ids.reply_id(second, AVATAR.id)
    wire.send(_reply_started(second, reply_id))
    wire.send(_reply_done(reply_id, "Yes."))
    await _settled()
    done = socket.texts[-1]
    assert done["type"] == "response.done" and done["response"]["id"] == created["response"]["id"]
    assert done["response"]["usage"]["input_token_details"]["audio_tokens"] == 15  # both turns' 1.5 s of speech
    # One response answered both: nothing is left to answer.
    await _client(wire, {"type": "response.create"})
    assert socket.texts[-1]["error"]["code"] == "no_user_message"


async def test_push_to_talk_commits_are_answered_only_when_asked_and_a_turn_that_says_nothing_fails_its_response():
    wire, socket, session = _wire()
    await _client(wire, {"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}})
    assert session.opening.stt.hold is True
    common = {"conversation_id": CONV, "session_id": AUDIO_SESSION, "utterance_seq": 0}
    wire.send(events.SpeechStarted(**common, start_s=0.5))
    await _client(wire, {"type": "input_audio_buffer.commit"})
    wire.send(events.SpeechStopped(**common, end_s=1.5))
    await _client(wire, {"type": "response.create"})
    response_id = socket.texts[-1]["response"]["id"]
    message = "no speech was recognized in utterance 0"
    wire.send(events.Error(conversation_id=CONV, code="no_speech_recognized", message=message, message_id=_voice_id(0)))
    await _settled()
    done = next(t for t in socket.texts if t["type"] == "response.done")
    assert done["response"]["id"] == response_id and done["response"]["status"] == "failed"
    assert done["response"]["status_details"]["error"]["code"] == "no_speech_recognized"
    assert session.named("answer_held") == []
    # Cancelled while it waits for its turn: nothing was asked of the orchestrator, nothing is.
    item = _spoken(wire, 1, "Hello?")
    await _client(wire, {"type": "response.create"})
    await _client(wire, {"type": "response.cancel"})
    assert socket.texts[-1]["response"]["status"] == "cancelled"
    wire.send(_held(item, "Hello?"))
    await _settled()
    assert session.named("answer_held") == [] and session.named("interrupt") == [] and session.named("cancel") == []


async def test_speech_over_a_playing_reply_is_written_once_it_counts_and_never_if_only_a_backchannel():
    wire, socket, session = _wire()
    common = {"conversation_id": CONV, "session_id": AUDIO_SESSION}
    session.over_reply = {0, 1}
    # "Mhm" over the reply: the client hears nothing of it, so it keeps playing; no item is made.
    wire.send(events.SpeechStarted(**common, utterance_seq=0, start_s=0.5))
    wire.send(events.SpeechStopped(**common, utterance_seq=0, end_s=0.9))
    wire.send(events.Backchannel(**common, utterance_seq=0, text="Mhm."))
    assert socket.types() == []
    # Speech that counts: written as it was heard, from its start.
    wire.send(events.SpeechStarted(**common, utterance_seq=1, start_s=2.0))
    wire.send(events.TranscriptPartial(**common, utterance_seq=1, partial_seq=0, text="Wait", stable=""))
    assert socket.types() == []
    wire.send(events.BargeIn(**common, utterance_seq=1, reason="words"))
    assert socket.types() == ["input_audio_buffer.speech_started"]
    assert socket.texts[0]["audio_start_ms"] == 2000 and socket.texts[0]["item_id"] == _voice_id(1)
    # An utterance over a reply that recognised nothing was never shown: nothing to fail.
    session.over_reply = {2}
    wire.send(events.SpeechStarted(**common, utterance_seq=2, start_s=4.0))
    wire.send(events.Error(conversation_id=CONV, code="no_speech_recognized", message="", message_id=_voice_id(2)))
    assert socket.types() == ["input_audio_buffer.speech_started"]


# --- typed items and responses --------------------------------------------------------------


async def test_a_typed_item_and_response_create_are_one_text_turn_with_the_sessions_instructions():
    wire, socket, session = _wire()
    await _client(wire, {"type": "session.update", "session": {"instructions": "Be brief."}})
    await _client(wire, _item(" Hi ", id="item_a"))
    await _client(wire, _item("there", part="text"))
    await _client(wire, _item("again", id="item_a"))
    await _client(wire, {"type": "response.create", "response": {"metadata": {"k": "v"}}})
    message_id = ids.user_message_id(CONV, AUDIO_SESSION, "text", 0)
    assert session.named("submit_text") == [(message_id, 0, "Hi\nthere", "Be brief.")]
    texts = socket.texts
    assert [t["type"] for t in texts[1:]] == [
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.added",
        "conversation.item.done",
        "error",
        "response.created",
    ]
    assert texts[1]["item"] == {
        "id": "item_a",
        "object": "realtime.item",
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [{"type": "input_text", "text": "Hi"}],
    }
    assert texts[1]["previous_item_id"] is None
    assert texts[3]["item"]["id"] == ids.user_message_id(CONV, AUDIO_SESSION, "text", 1)
    assert texts[3]["previous_item_id"] == "item_a"
    assert (texts[5]["error"]["code"], texts[5]["error"]["param"]) == ("invalid_value", "item.id")
    response = texts[6]["response"]
    assert response["id"].startswith("resp_") and response["metadata"] == {"k": "v"}
    assert (response["status"], response["output"], response["conversation_id"]) == ("in_progress", [], "")


async def test_items_and_responses_parley_cannot_answer_are_refused():
    wire, socket, session = _wire()
    await _client(wire, _item("hi", type="function_call"))
    await _client(wire, _item("hi", role="assistant"))
    await _client(wire, _item(part="input_audio"))
    await _client(wire, _item(" "))
    await _client(wire, _item("x" * 41))
    await _client(wire, {"type": "response.create"})
    await _client(wire, {"type": "response.create", "response": {"conversation": "none"}})
    await _client(wire, {"type": "response.create", "response": {"tools": [{"type": "function"}]}})
    await _client(wire, {"type": "response.create", "response": {"output_modalities": ["video"]}})
    codes = [(t["error"]["code"], t["error"]["param"]) for t in socket.texts]
    assert codes == [
        ("unsupported", "item.type"),
        ("unsupported", "item.role"),
        ("unsupported", "item.content[0].type"),
        ("invalid_value", "item.content"),
        ("string_above_max_length", "item.content"),
        ("no_user_message", None),
        ("unsupported", "response.conversation"),
        ("missing_required_parameter", "response.tools[0].name"),
        ("invalid_value", "response.output_modalities"),
    ]
    assert session.calls == []


async def test_a_spoken_reply_goes_from_response_created_to_response_done_once_its_audio_is_sent():
    wire, socket, session = _wire()
    wire.send(_started())
    user_id, reply_id = await _typed_turn(wire, session)
    session.replies[reply_id] = Reply()
    wire.send(_reply_started(user_id, reply_id))
    wire.send(events.ReplyDelta(conversation_id=CONV, message_id=reply_id, delta_seq=0, text="Hi"))
    wire.send_audio(reply_id, Frame(0, 0, 24000, b"\x01\x00\x02\x00"))
    wire.send_audio(reply_id, Frame(0, 1, 16000, b"\x01\x00" * 160))
    wire.send(events.ReplyDelta(conversation_id=CONV, message_id=reply_id, delta_seq=1, text=" there."))
    wire.send(_reply_done(reply_id, "Hi there."))
    assert socket.types()[-1] == "response.output_audio_transcript.delta"  # not done until its audio is
    wire.send(events.AudioEnd(conversation_id=CONV, message_id=reply_id, sentence_count=1))
    texts = socket.texts[3:]
    assert [t["type"] for t in texts] == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "conversation.item.done",
        "response.output_item.done",
        "response.done",
    ]
    response_id = texts[0]["response"]["id"]
    assert all(t["response_id"] == response_id and t["item_id"] == reply_id for t in texts[3:11])
    assert texts[2]["previous_item_id"] == user_id
    assert base64.b64decode(texts[5]["delta"]) == b"\x01\x00\x02\x00"
    assert len(base64.b64decode(texts[6]["delta"])) == 480  # 160 samples at 16 kHz are 240 at 24 kHz
    assert texts[9]["transcript"] == "Hi there."
    done = texts[-1]["response"]
    assert (done["status"], done["status_details"], done["conversation_id"]) == ("completed", None, CONV)
    assert done["output"] == [
        {
            "id": reply_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_audio", "transcript": "Hi there."}],
        }
    ]
    wire.send_audio(reply_id, Frame(0, 2, 24000, b"\x01\x00"))
    assert socket.types()[-1] == "response.done"


async def test_a_text_reply_is_done_with_its_text():
    wire, socket, session = _wire()
    user_id, reply_id = await _typed_turn(wire, session, output_modalities=["text"])
    session.replies[reply_id] = Reply()
    wire.send(_reply_started(user_id, reply_id))
    wire.send_audio(reply_id, Frame(0, 0, 24000, b"\x01\x00"))
    wire.send(events.ReplyDelta(conversation_id=CONV, message_id=reply_id, delta_seq=0, text="Hi."))
    wire.send(_reply_done(reply_id, "Hi."))
    assert socket.types()[3:] == [
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "conversation.item.done",
        "response.output_item.done",
        "response.done",
    ]
    assert socket.texts[-1]["response"]["output"][0]["content"] == [{"type": "output_text", "text": "Hi."}]


async def test_only_one_response_at_a_time():
    wire, socket, session = _wire()
    await _typed_turn(wire, session)
    await _client(wire, _item("more"))
    await _client(wire, {"type": "response.create"})
    error = socket.texts[-1]["error"]
    assert error["code"] == "conversation_already_has_active_response"
    assert error["message"].startswith("Conversation already has an active response in progress: resp_")
    assert len(session.named("submit_text")) == 1


async def test_response_cancel_before_any_audio_stores_nothing_as_heard_and_stops_a_late_start():
    wire, socket, session = _wire()
    user_id, reply_id = await _typed_turn(wire, session)
    session.calls.clear()
    await _client(wire, {"type": "response.cancel"})
    assert session.calls == [
        ("interrupt", reply_id, (0, 0.0), None),
        ("cancel", user_id, "client_cancelled"),
    ]
    done = socket.texts[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    session.calls.clear()
    wire.send(_reply_started(user_id, reply_id))
    await _settled()
    assert session.calls == [("interrupt", reply_id, (0, 0.0), None), ("cancel", reply_id, "cancelled")]
    assert socket.types()[-1] == "response.done"
    await _client(wire, {"type": "response.cancel"})
    error = socket.texts[-1]["error"]
    assert (error["code"], error["param"]) == ("response_cancel_not_active", "response_id")


async def test_response_cancel_of_a_playing_reply_stores_what_the_client_heard():
    wire, socket, session = _wire()
    user_id, reply_id = await _typed_turn(wire, session)
    session.replies[reply_id] = Reply(sentence_s={0: 1.0, 1: 1.0}, played=(1250.0, 0.0), playback_ended=True)
    wire.send(_reply_started(user_id, reply_id))
    wire.send(events.ReplyDelta(conversation_id=CONV, message_id=reply_id, delta_seq=0, text="Hi"))
    response_id = socket.texts[2]["response"]["id"]
    session.calls.clear()
    await _client(wire, {"type": "response.cancel", "response_id": response_id})
    assert session.calls == [
        ("interrupt", reply_id, (1, 0.25), None),
        ("cancel", reply_id, "client_cancelled"),
    ]
    assert socket.types()[-6:] == [
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "conversation.item.done",
        "response.output_item.done",
        "response.done",
    ]
    done = socket.texts[-1]["response"]
    assert done["status"] == "cancelled" and done["output"][0]["status"] == "incomplete"
    assert done["output"][0]["content"] == [{"type": "output_audio", "transcript": "Hi"}]


async def test_truncate_stores_the_clients_playback_position_as_what_was_heard():
    wire, socket, session = _wire()
    user_id, reply_id = await _typed_turn(wire, session)
    reply = session.replies[reply_id] = Reply(sentence_s={0: 2.0})
    wire.send(_reply_started(user_id, reply_id))
    session.calls.clear()
    await _client(wire, _truncate("nope", 0))
    await _client(wire, _truncate(reply_id, 0, content_index=1))
    await _client(wire, _truncate(reply_id, 2500))
    assert [(t["error"]["code"], t["error"]["param"]) for t in socket.texts[-3:]] == [
        ("invalid_value", "item_id"),
        ("invalid_value", "content_index"),
        ("invalid_value", "audio_end_ms"),
    ]
    message = socket.texts[-1]["error"]["message"]
    assert message == "audio_end_ms must lie between 0 and the 2000 ms of audio sent for the item"
    await _client(wire, _truncate(reply_id, 1500))
    assert session.calls == [
        ("cancel", reply_id, "truncated"),
        ("interrupt", reply_id, (0, 1.5), f"truncate.{reply_id}.1500"),
    ]
    assert reply.playback_ended and reply.played[0] == 1500
    assert socket.types()[-1] == "response.done"  # truncated waits for the truncate to be stored
    wire.send(events.ReplyInterrupted(conversation_id=CONV, message_id=reply_id, text="Hi"))
    await _settled()
    assert socket.types()[-2:] == ["response.done", "conversation.item.truncated"]
    truncated = socket.texts[-1]
    assert (truncated["item_id"], truncated["content_index"], truncated["audio_end_ms"]) == (reply_id, 0, 1500)
    assert socket.texts[-2]["response"]["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}


async def test_a_truncate_after_a_barge_in_is_stored_after_the_barge_ins_interruption():
    wire, socket, session = _wire()
    user_id, reply_id = await _typed_turn(wire, session)
    session.replies[reply_id] = Reply(sentence_s={0: 2.0})
    wire.send(_reply_started(user_id, reply_id))
    wire.send(events.PlaybackStop(conversation_id=CONV, message_id=reply_id, sentence_index=0, offset_ms=900))
    done = socket.texts[-1]["response"]
    assert (done["status"], done["status_details"]["reason"]) == ("cancelled", "turn_detected")
    session.calls.clear()
    await _client(wire, _truncate(reply_id, 800))
    await _settled()
    assert session.calls == [("mute", reply_id)]
    wire.send(events.ReplyInterrupted(conversation_id=CONV, message_id=reply_id, text="Hi"))
    await _settled()
    assert session.calls == [("mute", reply_id), ("interrupt", reply_id, (0, 0.8), f"truncate.{reply_id}.800")]
    assert socket.types()[-1] != "conversation.item.truncated"  # the barge-in's was stored, not the truncate's
    wire.send(events.ReplyInterrupted(conversation_id=CONV, message_id=reply_id, text="H"))
    await _settled()
    assert socket.types()[-1] == "conversation.item.truncated"
    await wire.closed()


async def test_truncated_is_sent_after_a_while_if_the_truncate_is_never_reported_stored(monkeypatch):
    monkeypatch.setattr("services.gateway.realtime.interruptions.STORED_WAIT_S", 0.05)
    wire, socket, session = _wire()
    user_id, reply_id = await _typed_turn(wire, session)
    session.replies[reply_id] = Reply(sentence_s={0: 2.0})
    wire.send(_reply_started(user_id, reply_id))
    await _client(wire, _truncate(reply_id, 500))
    assert socket.types()[-1] == "response.done"
    await asyncio.sleep(0.2)
    assert socket.types()[-1] == "conversation.item.truncated"
    await wire.closed()


async def test_a_barge_in_cancels_responses_still_being_generated():
    wire, socket, session = _wire()
    user_id, reply_id = await _typed_turn(wire, session)
    session.calls.clear()
    await wire.barged_in()
    assert session.calls == [("interrupt", reply_id, (0, 0.0), None), ("cancel", user_id, "turn_detected")]
    done = socket.texts[-1]["response"]
    assert (done["status"], done["status_details"]) == ("cancelled", {"type": "cancelled", "reason": "turn_detected"})
    session.calls.clear()
    await wire.barged_in()
    assert session.calls == []


# --- the session's errors -------------------------------------------------------------------


async def test_the_sessions_errors_become_transcription_failures_failed_responses_or_error_events():
    wire, socket, session = _wire()
    common = {"conversation_id": CONV, "session_id": AUDIO_SESSION, "utterance_seq": 0}
    wire.send(events.SpeechStarted(**common, start_s=0.0))
    heard = events.Error(
        conversation_id=CONV, code="no_speech_recognized", message="nothing heard", message_id=_voice_id(0)
    )
    wire.send(heard)
    failed = socket.texts[-1]
    assert failed["type"] == "conversation.item.input_audio_transcription.failed" and failed["item_id"] == _voice_id(0)
    assert failed["error"] == {
        "type": "transcription_error",
        "code": "no_speech_recognized",
        "message": "nothing heard",
        "param": None,
        "event_id": None,
    }
    user_id, reply_id = await _typed_turn(wire, session)
    wire.send(events.Error(conversation_id=CONV, code="turn_failed", message="the LLM failed", message_id=user_id))
    done = socket.texts[-1]["response"]
    assert done["status"] == "failed"
    error = {"type": "server_error", "code": "turn_failed", "message": "the LLM failed"}
    assert done["status_details"] == {"type": "failed", "error": error}
    wire.send(events.Error(conversation_id=CONV, code="stt_unavailable", message="no STT worker"))
    wire.error("llm_timeout", "too slow", retryable=True)
    wire.error("text_too_long", "shorter")
    kinds = [(t["error"]["type"], t["error"]["code"]) for t in socket.texts[-3:]]
    assert kinds == [
        ("server_error", "stt_unavailable"),
        ("server_error", "llm_timeout"),
        ("invalid_request_error", "text_too_long"),
    ]


# --- tools ----------------------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "name": "weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


async def test_function_tools_are_kept_reported_and_carried_on_every_turn():
    wire, socket, session = _wire()
    await _client(wire, {"type": "session.update", "session": {"tools": [WEATHER], "tool_choice": "required"}})
    (updated,) = socket.texts
    assert updated["session"]["tools"] == [WEATHER] and updated["session"]["tool_choice"] == "required"
    assert session.opening.stt.tools[0]["name"] == "weather" and session.opening.stt.tool_choice == "required"
    assert session.named("reopen_stt") == [()]
    _, reply_id = await _typed_turn(wire, session, "the weather?")
    wire.send(_reply_done(reply_id, "Sunny."))
    ((tools, choice),) = session.turn_tools
    assert [t["kind"] for t in tools] == ["client"] and choice == "required"
    await _client(wire, _item("again"))
    pick = {"type": "function", "name": "weather"}
    await _client(wire, {"type": "response.create", "response": {"tools": [], "tool_choice": "none"}})
    assert session.turn_tools[-1] == (None, "none")
    await _client(wire, {"type": "session.update", "session": {"tool_choice": pick}})
    assert socket.texts[-1]["session"]["tool_choice"] == pick
    assert session.opening.stt.tool_choice == {"type": "function", "function": {"name": "weather"}}


async def test_tools_parley_cannot_offer_are_refused_and_change_nothing():
    wire, socket, session = _wire()
    own = db.Avatar(AVATAR.id, "Ada", None, "p", "en", None, None, tools=[{"kind": "client", "name": "clock"}])
    session.avatars = [own]
    wire.conn.session = session
    mcp = {"type": "mcp", "server_label": "x", "server_url": "https://mcp.example.com"}
    await _client(wire, {"type": "session.update", "session": {"tools": [mcp, WEATHER]}})
    updated = socket.texts.pop()["session"]
    socket.raw.pop()
    assert [t["name"] for t in updated["tools"]] == ["weather"]  # the MCP server is left out, with a warning
    assert [w["param"] for w in updated["parley"]["warnings"]] == ["session.tools"]
    await _client(wire, {"type": "session.update", "session": {"tools": []}})
    socket.raw.pop()
    session.calls.clear()  # the two updates reopened the STT session with their tools
    for tools in ([{**WEATHER, "name": "clock"}], [{**WEATHER, "parameters": {"type": "string"}}], ["x"]):
        await _client(wire, {"type": "session.update", "session": {"tools": tools}})
    await _client(
        wire,
        {
            "type": "session.update",
            "session": {"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
        },
    )
    errors = [(t["error"]["code"], t["error"]["param"]) for t in socket.texts]
    assert errors == [
        ("invalid_value", "session.tools[0].name"),
        ("invalid_value", "session.tools"),
        ("invalid_type", "session.tools[0]"),
        ("invalid_value", "session.tool_choice.name"),
    ]
    assert session.opening.stt.tools is None and session.named("reopen_stt") == []


def _call(reply_id: str, call_id: str, index: int = 0, of: int = 1, kind: str = "client") -> events.ToolCall:
    return events.ToolCall(
        conversation_id=CONV,
        message_id=reply_id,
        call_id=call_id,
        name="weather",
        arguments='{"city": "Paris"}',
        kind=kind,
        index=index,
        round_calls=of,
        sentences_before=1,
    )


async def test_a_function_call_ends_its_response_and_the_answer_goes_on_in_the_next():
    wire, socket, session = _wire()
    wire.send(_started())
    await _client(wire, {"type": "session.update", "session": {"tools": [WEATHER]}})
    user_id, reply_id = await _typed_turn(wire, session, "weather in Paris")
    reply = session.replies[reply_id] = Reply()
    wire.send(_reply_started(user_id, reply_id))
    wire.send(events.ReplyDelta(conversation_id=CONV, message_id=reply_id, delta_seq=0, text="Let me check."))
    wire.send(events.ReplySentence(conversation_id=CONV, message_id=reply_id, sentence_index=0, text="Let me check."))
    call_id, other = str(uuid.uuid4()), str(uuid.uuid4())
    wire.send(_call(reply_id, call_id, 0, of=2))
    wire.send(_call(reply_id, other, 1, of=2, kind="webhook"))
    assert "response.function_call_arguments.done" not in socket.types()  # its sentence's audio is not out yet
    reply.playout.next_sentence = 1
    wire.send_audio(reply_id, Frame(0, 0, 24000, b"\x01\x00" * 10))
    args = next(t for t in socket.texts if t["type"] == "response.function_call_arguments.done")
    assert (args["call_id"], args["name"], args["output_index"]) == (call_id, "weather", 1)
    first = next(t for t in socket.texts if t["type"] == "response.done")["response"]
    assert first["status"] == "completed" and [o["type"] for o in first["output"]] == ["message", "function_call"]
    assert first["output"][0]["content"][0]["transcript"] == "Let me check."

    await _client(
        wire,
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": call_id, "output": "21 C"},
        },
    )
    # The session is as the reply was asked with: the answer carries no change of it.
    assert session.named("tool_result") == [(call_id, "21 C", None)]
    assert (
        socket.texts[-1]["type"] == "conversation.item.done"
        and socket.texts[-1]["item"]["type"] == "function_call_output"
    )
    submitted = len(session.named("submit_text"))
    await _client(wire, {"type": "response.create"})
    assert len(session.named("submit_text")) == submitted  # no new turn: the reply goes on
    second = socket.texts[-1]["response"]
    assert socket.texts[-1]["type"] == "response.created" and second["id"] != first["id"]
    wire.send(events.ReplyDelta(conversation_id=CONV, message_id=reply_id, delta_seq=1, text=" "))
    wire.send(events.ReplyDelta(conversation_id=CONV, message_id=reply_id, delta_seq=2, text="It is 21 C."))
    wire.send_audio(reply_id, Frame(1, 0, 24000, b"\x01\x00" * 10))
    wire.send(_reply_done(reply_id, "Let me check. It is 21 C."))
    wire.send(events.AudioEnd(conversation_id=CONV, message_id=reply_id, sentence_count=2))
    done = [t for t in socket.texts if t["type"] == "response.done"][-1]["response"]
    assert done["id"] == second["id"] and done["status"] == "completed"
    (message,) = done["output"]
    assert message["content"][0]["transcript"] == "It is 21 C." and message["id"] != reply_id
    deltas = [t["delta"] for t in socket.texts if t["type"] == "response.output_audio_transcript.delta"]
    assert deltas == ["Let me check.", "It is 21 C."]


async def test_an_answer_the_session_refuses_is_an_error_event():
    wire, socket, session = _wire()
    session.tool_refusals.append(("unknown_tool_call", "not a call of this conversation"))
    await _client(
        wire,
        {"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": "c1", "output": "x"}},
    )
    await _client(wire, {"type": "conversation.item.create", "item": {"type": "function_call_output", "output": "x"}})
    errors = [(t["error"]["code"], t["error"]["param"]) for t in socket.texts]
    assert errors == [("unknown_tool_call", "item.call_id"), ("missing_required_parameter", "item.call_id")]


async def test_response_done_reports_the_llms_tokens_and_the_audio_at_openais_rates():
    wire, socket, session = _wire()
    wire.send(_started())
    user_id, reply_id = await _typed_turn(wire, session)
    reply = session.replies[reply_id] = Reply()
    wire.send(_reply_started(user_id, reply_id))
    wire.send_audio(reply_id, Frame(0, 0, 24000, b"\x01\x00" * 24000))
    reply.sentence_s[0] = 1.0  # the relay counts what it sent: one second
    done = events.ReplyDone(
        conversation_id=CONV,
        message_id=reply_id,
        status="complete",
        text="Hi.",
        sentence_count=1,
        usage={"input_tokens": 30, "output_tokens": 5},
    )
    reply.playout.ended = True
    wire.send(done)
    wire.send(events.AudioEnd(conversation_id=CONV, message_id=reply_id, sentence_count=1))
    usage = [t for t in socket.texts if t["type"] == "response.done"][-1]["response"]["usage"]
    assert usage["input_token_details"] == {"text_tokens": 30, "audio_tokens": 0, "cached_tokens": 0}
    assert usage["output_token_details"] == {"text_tokens": 5, "audio_tokens": 20} and usage["output_tokens"] == 25
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def _stored_message(message_id: str, role: str, text: str, status: str = "complete", source=None) -> db.Message:
    import datetime as dt

    return db.Message(
        id=message_id,
        role=role,
        avatar_id=AVATAR.id if role == "avatar" else None,
        reply_to=None,
        source=source,
        text=text,
        status=status,
        error=None,
        audio_key=None,
        audio_duration_s=None,
        audio_expired=False,
        timings={},
        created_at=dt.datetime.now(dt.UTC),
        sentence_count=1,
    )


async def test_items_are_retrieved_as_stored_and_deleted_from_the_history():
    wire, socket, session = _wire()
    wire.send(_started())
    await _client(wire, _item("not answered yet", id="item_mine"))
    await _client(wire, {"type": "conversation.item.retrieve", "item_id": "item_mine"})
    assert socket.texts[-1]["item"]["content"] == [{"type": "input_text", "text": "not answered yet"}]
    await _client(wire, {"type": "conversation.item.delete", "item_id": "item_mine"})
    assert socket.texts[-1] == {**socket.texts[-1], "type": "conversation.item.deleted", "item_id": "item_mine"}
    await _client(wire, {"type": "response.create"})
    assert socket.texts[-1]["error"]["code"] == "no_user_message"  # the deleted item is not answered

    user_id, reply_id = await _typed_turn(wire, session, "tell me")
    wire.send(_reply_started(user_id, reply_id))
    wire.send(_reply_done(reply_id, "One. Two. Three."))
    session.history.messages[reply_id] = _stored_message(reply_id, "avatar", "One. Two.", "interrupted")
    session.history.messages[user_id] = _stored_message(user_id, "user", "tell me", source="text")
    await _client(wire, {"type": "conversation.item.retrieve", "item_id": reply_id})
    item = socket.texts[-1]["item"]
    assert socket.texts[-1]["type"] == "conversation.item.retrieved" and item["status"] == "incomplete"
    assert item["content"] == [{"type": "output_audio", "transcript": "One. Two."}]  # what was heard
    await _client(wire, {"type": "conversation.item.delete", "item_id": user_id})
    assert session.history.removed == [user_id] and socket.texts[-1]["type"] == "conversation.item.deleted"
    await _client(wire, {"type": "conversation.item.delete", "item_id": user_id})
    await _client(wire, {"type": "conversation.item.retrieve", "item_id": str(uuid.uuid4())})
    errors = [(t["error"]["code"], t["error"]["param"]) for t in socket.texts[-2:]]
    assert errors == [("invalid_value", "item_id"), ("invalid_value", "item_id")]


# --- idle timeout -------------------------------------------------------------------------


async def test_a_caller_silent_past_idle_timeout_ms_after_the_reply_is_prompted(monkeypatch):
    monkeypatch.setattr("services.gateway.realtime.idle.POLL_S", 0.02)
    wire, socket, session = _wire()
    turn = {"type": "server_vad", "idle_timeout_ms": 1000}
    await _client(wire, {"type": "session.update", "session": {"audio": {"input": {"turn_detection": turn}}}})
    assert socket.texts[-1]["session"]["audio"]["input"]["turn_detection"]["idle_timeout_ms"] == 1000
    await asyncio.sleep(1.2)
    assert session.named("submit_text") == []  # nothing said yet by the avatar: no prompt
    await _client(wire, {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x00\x00" * 2400).decode()})
    user_id, reply_id = await _typed_turn(wire, session, output_modalities=["text"])
    wire.send(_reply_started(user_id, reply_id))
    wire.send(_reply_done(reply_id, "Hi."))
    assert socket.types()[-1] == "response.done"
    await asyncio.sleep(0.5)
    assert len(session.named("submit_text")) == 1  # not yet
    await asyncio.sleep(0.8)
    ((item_id, _, text, _),) = session.named("submit_text")[1:]
    assert text == "(The user has said nothing for 1 seconds.)"
    kinds = socket.types()
    at = kinds.index("input_audio_buffer.timeout_triggered")
    assert kinds[at : at + 5] == [
        "input_audio_buffer.timeout_triggered",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "response.created",
    ]
    triggered = socket.texts[at]
    assert triggered["item_id"] == item_id and (triggered["audio_start_ms"], triggered["audio_end_ms"]) == (0, 100)
    assert len(session.named("submit_text")) == 2  # one prompt, not one per poll
    await wire.closed()
