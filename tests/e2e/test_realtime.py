"""The OpenAI Realtime API compatible endpoint, driven by the official `openai` SDK.

The SDK's realtime client is pointed at the local gateway (`websocket_base_url`) with a
Parley API key or user token as its `api_key`. Every server event it receives is also
validated strictly against the SDK's `RealtimeServerEvent` union: the SDK itself falls back
to a loosely built model for an event it cannot validate, which would hide a wrong shape.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
import typing
import warnings
import wave

import httpx
import numpy as np
import pytest
import soxr
import websockets
from openai import AsyncOpenAI
from openai._models import validate_type
from openai.types.realtime import RealtimeServerEvent

from services.common import ids
from tests.client import auth_headers, token_for
from tests.conftest import make_speech, settled_conversations
from tests.fakes.llm_server import reply_for

pytestmark = [pytest.mark.e2e, pytest.mark.engine]

RATE = 24000
CONVERSATIONS: list[str] = []
"""Every conversation this module's sessions opened: the ledger must balance over them at the end."""


class Conversation:
    """One SDK realtime connection: every event it parsed, with the raw frame it came from."""

    def __init__(self, conn):
        self.conn = conn
        self.raw: list[bytes] = []
        self.events: list = []
        self.closed: BaseException | None = None
        self._changed = asyncio.Event()
        recv_bytes = conn.recv_bytes

        async def recording() -> bytes:
            data = await recv_bytes()
            self.raw.append(data)
            return data

        conn.recv_bytes = recording
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for event in self.conn:
                if event.type == "session.created":
                    CONVERSATIONS.append(event.session.model_extra["parley"]["conversation_id"])
                self.events.append(event)
                self._changed.set()
        except Exception as exc:
            self.closed = exc
        finally:
            self._changed.set()

    def of(self, type_: str, **match) -> list:
        return [e for e in self.events if e.type == type_ and all(getattr(e, k) == v for k, v in match.items())]

    async def wait_for(self, pred, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while True:
            value = pred(self)
            if value:
                return value
            if self._reader.done():
                raise AssertionError(f"connection ended ({self.closed!r}) while waiting")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out; got: {[e.type for e in self.events][-40:]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_event(self, type_: str, timeout: float = 60.0, **match):
        return (await self.wait_for(lambda c: c.of(type_, **match), timeout))[0]

    def check_typed(self) -> None:
        """Each event is the SDK model its type names, and validates strictly as that model."""
        assert len(self.raw) == len(self.events)
        for raw, event in zip(self.raw, self.events):
            body = json.loads(raw)
            strict = validate_type(type_=RealtimeServerEvent, value=body)
            assert type(strict) is type(event), body["type"]
            assert typing.get_args(type(event).model_fields["type"].annotation) == (body["type"],)
            assert event.event_id.startswith("event_")


def _client(stack, api_key: str) -> AsyncOpenAI:
    ws = stack["http_url"].replace("http://", "ws://")
    return AsyncOpenAI(api_key=api_key, base_url=f"{stack['http_url']}/v1", websocket_base_url=f"{ws}/v1")


async def _api_key(stack, user: str) -> str:
    async with httpx.AsyncClient(base_url=stack["http_url"], trust_env=False) as http:
        made = await http.post("/v1/api-keys", json={"name": "realtime"}, headers=auth_headers(user))
        assert made.status_code == 201
        return made.json()["key"]


async def _history(stack, user: str, conversation_id: str) -> list[dict]:
    async with httpx.AsyncClient(base_url=stack["http_url"], trust_env=False) as http:
        resp = await http.get(f"/v1/conversations/{conversation_id}/messages", headers=auth_headers(user))
        assert resp.status_code == 200
        return resp.json()["items"]


async def _stored(
    stack, user: str, conversation_id: str, message_id: str, status: str, text: str | None = None, timeout=60.0
):
    """The message once stored with `status` (and `text`: an interruption may land after the reply finished)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = {m["id"]: m for m in await _history(stack, user, conversation_id)}
        row = rows.get(message_id)
        if row is not None and row["status"] == status and text in (None, row["text"]):
            return row
        assert time.monotonic() < deadline, f"{message_id} not {status}: {row}"
        await asyncio.sleep(0.5)


def _pcm24(path) -> bytes:
    with wave.open(str(path)) as w:
        assert w.getframerate() == 16000
        pcm16k = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    return soxr.resample(pcm16k, 16000, RATE).astype("<i2").tobytes()


async def _speak(conn, pcm: bytes, chunk_ms: int = 100, bytes_per_s: int = RATE * 2) -> None:
    """Append audio at the pace a microphone produces it."""
    step = bytes_per_s * chunk_ms // 1000
    start = time.monotonic()
    for n, offset in enumerate(range(0, len(pcm), step)):
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[offset : offset + step]).decode())
        await asyncio.sleep(max(0.0, start + (n + 1) * chunk_ms / 1000 - time.monotonic()))


async def _typed_turn(c: Conversation, text: str, timeout: float = 180.0):
    """Add a user message, ask for a response, wait for `response.done`."""
    before = len(c.of("response.created"))
    await c.conn.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    )
    await c.conn.response.create()
    created = (await c.wait_for(lambda c: c.of("response.created")[before:], 60))[0]
    return created.response, await _response_done(c, created.response.id, timeout)


async def _response_done(c: Conversation, response_id: str, timeout: float = 180.0):
    return (await c.wait_for(lambda c: [e for e in c.of("response.done") if e.response.id == response_id], timeout))[
        0
    ].response


def _audio_ms(c: Conversation, response_id: str) -> float:
    pcm = b"".join(base64.b64decode(e.delta) for e in c.of("response.output_audio.delta", response_id=response_id))
    return len(pcm) / 2 / RATE * 1000


# --- turns ----------------------------------------------------------------------------------


async def test_semantic_vad_is_accepted_and_reported_with_its_eagerness(stack):
    key = await _api_key(stack, "rt-sem")
    async with _client(stack, key).realtime.connect(model="gpt-realtime") as conn:
        c = Conversation(conn)
        await c.wait_event("session.created")
        turn = {"type": "semantic_vad", "eagerness": "high", "interrupt_response": True}
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": turn}}})
        detection = (await c.wait_event("session.updated")).session.audio.input.turn_detection
        assert (detection.type, detection.eagerness) == ("semantic_vad", "high")
        bad = {"type": "semantic_vad", "eagerness": "hasty"}
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": bad}}})
        error = (await c.wait_event("error")).error
        assert error.param == "session.audio.input.turn_detection.eagerness"


async def test_a_spoken_turn_with_server_vad(stack, speech_wav, fake_llm):
    key = await _api_key(stack, "rt-sam")
    async with _client(stack, key).realtime.connect(model="gpt-realtime") as conn:
        c = Conversation(conn)
        created = (await c.wait_event("session.created")).session
        assert created.model == "gpt-realtime" and created.audio.input.format.rate == RATE
        conversation_id = created.model_extra["parley"]["conversation_id"]
        await conn.session.update(
            session={
                "type": "realtime",
                "instructions": "Answer like a lighthouse keeper.",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": RATE},
                        "transcription": {"model": "whisper-1", "language": "en"},
                        "turn_detection": {
                            "type": "server_vad",
                            "threshold": 0.5,
                            "prefix_padding_ms": 300,
                            "silence_duration_ms": 400,
                        },
                    },
                    "output": {"format": {"type": "audio/pcm", "rate": RATE}, "voice": "alloy"},
                },
            }
        )
        updated = (await c.wait_event("session.updated")).session
        assert updated.audio.input.turn_detection.silence_duration_ms == 400
        assert updated.audio.input.transcription.language == "en"
        await _speak(conn, _pcm24(speech_wav))

        committed = await c.wait_event("input_audio_buffer.committed", 60)
        item_id = committed.item_id
        transcript = await c.wait_event("conversation.item.input_audio_transcription.completed", 60, item_id=item_id)
        assert transcript.transcript
        response = (await c.wait_event("response.created", 60)).response
        done = await _response_done(c, response.id)
        assert done.status == "completed"
        usage = done.usage
        assert usage.input_token_details.text_tokens > 0 and usage.output_token_details.text_tokens > 0
        assert usage.input_token_details.audio_tokens > 0 and usage.output_token_details.audio_tokens > 0
        assert usage.total_tokens == usage.input_tokens + usage.output_tokens

        types = [e.type for e in c.events]
        assert types.index("input_audio_buffer.speech_started") < types.index("input_audio_buffer.speech_stopped")
        assert types.index("input_audio_buffer.speech_stopped") < types.index("input_audio_buffer.committed")
        added = [e for e in c.of("conversation.item.added") if e.item.id == item_id]
        assert added and added[0].item.role == "user" and added[0].item.content[0].type == "input_audio"
        reply_item = done.output[0]
        assert reply_item.role == "assistant" and reply_item.status == "completed"
        deltas = c.of("response.output_audio_transcript.delta", response_id=response.id)
        text = "".join(d.delta for d in deltas)
        assert text == reply_for(transcript.transcript) == reply_item.content[0].transcript
        assert all(d.item_id == reply_item.id for d in deltas)
        assert _audio_ms(c, response.id) > 0
        order = [
            e.type
            for e in c.events
            if getattr(e, "response_id", None) == response.id or getattr(e, "response", None) is not None
        ]
        assert order.index("response.output_audio.done") < order.index("response.done")
        assert c.of("response.output_audio_transcript.done")[0].transcript == text

        prompt = next(
            r["messages"] for r in reversed(fake_llm.requests) if r["messages"][-1]["content"] == transcript.transcript
        )
        assert prompt[0]["content"].startswith("Answer like a lighthouse keeper.")
        c.check_typed()

    history = await _history(stack, "rt-sam", conversation_id)
    assert [(m["role"], m["id"]) for m in history] == [("user", item_id), ("avatar", reply_item.id)]
    assert history[0]["text"] == transcript.transcript and history[1]["text"] == text
    assert history[1]["status"] == "complete"


async def test_a_spoken_turn_in_g711_mu_law_at_8khz(stack, speech_wav, fake_llm):
    """A phone bridge's session: µ-law at 8 kHz both ways (encoded and decoded here with the
    reference codec, not Parley's), heard, answered, and the answer's audio is µ-law at 8 kHz."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
    key = await _api_key(stack, "rt-phone")
    async with _client(stack, key).realtime.connect(model="gpt-realtime") as conn:
        c = Conversation(conn)
        conversation_id = (await c.wait_event("session.created")).session.model_extra["parley"]["conversation_id"]
        mulaw = {"type": "audio/pcmu"}
        await conn.session.update(
            session={
                "type": "realtime",
                "audio": {"input": {"format": mulaw, "transcription": {"language": "en"}}, "output": {"format": mulaw}},
            }
        )
        updated = (await c.wait_event("session.updated")).session
        assert updated.audio.input.format.type == updated.audio.output.format.type == "audio/pcmu"
        with wave.open(str(speech_wav)) as w:
            pcm16k = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        pcm8k = soxr.resample(pcm16k, 16000, 8000).astype("<i2").tobytes()
        await _speak(conn, audioop.lin2ulaw(pcm8k, 2), bytes_per_s=8000)

        transcript = await c.wait_event("conversation.item.input_audio_transcription.completed", 60)
        assert "weather" in transcript.transcript.lower()
        response = (await c.wait_event("response.created", 60)).response
        done = await _response_done(c, response.id)
        assert done.status == "completed"
        sent = b"".join(base64.b64decode(e.delta) for e in c.of("response.output_audio.delta", response_id=response.id))
        assert len(sent) > 8000 and np.abs(np.frombuffer(audioop.ulaw2lin(sent, 2), "<i2")).max() > 0
        c.check_typed()
    stored = await _stored(stack, "rt-phone", conversation_id, done.output[0].id, "complete")
    deadline = time.monotonic() + 60
    while stored["audio_duration_s"] is None and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        stored = await _stored(stack, "rt-phone", conversation_id, done.output[0].id, "complete")
    assert abs(len(sent) / 8000 - stored["audio_duration_s"]) < 0.1  # one byte a sample, 8000 a second


async def test_the_llm_endpoints_rate_limits_come_before_response_done(stack, fake_llm):
    key = await _api_key(stack, "rt-limits")
    async with _client(stack, key).realtime.connect(model="gpt-realtime") as conn:
        c = Conversation(conn)
        await c.wait_event("session.created")
        _, done = await _typed_turn(c, "How many requests are left?")
        assert done.status == "completed"
        kinds = [e.type for e in c.events]
        assert kinds[kinds.index("response.done") - 1] == "rate_limits.updated"
        limits = {r.name: r for r in c.of("rate_limits.updated")[0].rate_limits}
        assert (limits["requests"].limit, limits["requests"].remaining, limits["requests"].reset_seconds) == (
            500,
            499,
            0.12,
        )
        assert (limits["tokens"].limit, limits["tokens"].remaining, limits["tokens"].reset_seconds) == (
            30000,
            29950,
            66.5,
        )
        c.check_typed()


async def test_a_caller_silent_past_idle_timeout_ms_is_prompted(stack, fake_llm):
    """server_vad with idle_timeout_ms: once the reply has played out and nothing is said for
    that long, timeout_triggered, the silence committed as a user item, and a response to it."""
    key = await _api_key(stack, "rt-idle")
    async with _client(stack, key).realtime.connect(model="gpt-realtime") as conn:
        c = Conversation(conn)
        conversation_id = (await c.wait_event("session.created")).session.model_extra["parley"]["conversation_id"]
        turn = {"type": "server_vad", "idle_timeout_ms": 1500}
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": turn}}})
        assert (await c.wait_event("session.updated")).session.audio.input.turn_detection.idle_timeout_ms == 1500
        await conn.input_audio_buffer.append(audio=base64.b64encode(b"\x00\x00" * RATE).decode())
        asked_at = time.monotonic()
        _, done = await _typed_turn(c, "Hello?")
        triggered = await c.wait_event("input_audio_buffer.timeout_triggered", 60)
        # Its audio began after it was asked for; the wait begins once that has played.
        assert time.monotonic() >= asked_at + _audio_ms(c, done.id) / 1000 + 1.4
        assert triggered.audio_end_ms - triggered.audio_start_ms == 1000  # the second appended, at most the wait
        committed = await c.wait_event("input_audio_buffer.committed", 10, item_id=triggered.item_id)
        prompt = (await c.wait_for(lambda c: c.of("response.created")[1:], 30))[0].response
        assert (await _response_done(c, prompt.id)).status == "completed"
        c.check_typed()
    users = [m for m in await _history(stack, "rt-idle", conversation_id) if m["role"] == "user"]
    assert users[-1]["id"] == committed.item_id
    assert users[-1]["text"] == "(The user has said nothing for 1.5 seconds.)"


async def test_push_to_talk_turns_end_at_the_clients_commit_and_are_answered_when_it_asks(stack, speech_wav, fake_llm):
    """turn_detection null: silence ends no turn; the client's commit does. As in OpenAI's API
    the commit makes a user item and no response: the turn is stored unanswered until the
    client's `response.create`, whose instructions the answer follows."""
    key = await _api_key(stack, "rt-ptt")
    async with _client(stack, key).realtime.connect(model="gpt-realtime") as conn:
        c = Conversation(conn)
        session = (await c.wait_event("session.created")).session
        conversation_id = session.model_extra["parley"]["conversation_id"]
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
        assert (await c.wait_event("session.updated")).session.audio.input.turn_detection is None
        pcm = _pcm24(speech_wav)
        await _speak(conn, pcm + b"\x00\x00" * RATE * 2)  # the speech, then 2 s of silence
        started = await c.wait_event("input_audio_buffer.speech_started", 30)
        assert not c.of("input_audio_buffer.committed")  # four times the usual silence ended nothing
        await conn.input_audio_buffer.commit()
        committed = await c.wait_event("input_audio_buffer.committed", 30)
        assert committed.item_id == started.item_id
        transcript = await c.wait_event("conversation.item.input_audio_transcription.completed", 60)
        assert "weather" in transcript.transcript.lower()
        user = await _stored(stack, "rt-ptt", conversation_id, committed.item_id, "complete")
        assert user["text"] == transcript.transcript
        await asyncio.sleep(1.0)  # time enough for an answer nobody asked for to begin
        rows = await _history(stack, "rt-ptt", conversation_id)
        assert [m["role"] for m in rows] == ["user"] and not c.of("response.created")

        asked_before = len(fake_llm.requests)
        await conn.response.create(response={"instructions": "You are a weather forecaster."})
        response = (await c.wait_event("response.created", 60)).response
        assert (await _response_done(c, response.id)).status == "completed"
        (asked,) = fake_llm.requests[asked_before:]
        assert asked["messages"][0]["content"].startswith("You are a weather forecaster.")
        assert [m["content"] for m in asked["messages"] if m["role"] == "user"] == [transcript.transcript]
        reply = (await _history(stack, "rt-ptt", conversation_id))[-1]
        assert (reply["role"], reply["reply_to"], reply["status"]) == ("avatar", committed.item_id, "complete")

        # Server VAD with create_response false: the VAD commits, and the turn waits all the same.
        turn = {"type": "server_vad", "create_response": False}
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": turn}}})
        updated = (await c.wait_for(lambda c: c.of("session.updated")[1:], 30))[0].session
        assert updated.audio.input.turn_detection.create_response is False
        await _speak(conn, pcm + b"\x00\x00" * RATE)
        second = (await c.wait_for(lambda c: c.of("input_audio_buffer.committed")[1:], 60))[0]
        await _stored(stack, "rt-ptt", conversation_id, second.item_id, "complete")
        await asyncio.sleep(1.0)
        assert len(c.of("response.created")) == 1
        c.check_typed()
    # Left unanswered when the client went: the ledger holds its turn.held (the module's last test).
    assert (await _history(stack, "rt-ptt", conversation_id))[-1]["id"] == second.item_id


async def test_a_typed_turn_then_a_cancelled_response(stack, fake_llm):
    key = await _api_key(stack, "rt-tia")
    async with _client(stack, key).realtime.connect(model="gpt-realtime-mini") as conn:
        c = Conversation(conn)
        session = (await c.wait_event("session.created")).session
        conversation_id = session.model_extra["parley"]["conversation_id"]
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Where are we?"}]}
        )
        user_item = (await c.wait_event("conversation.item.done")).item
        await conn.response.create()
        first = (await c.wait_event("response.created")).response
        assert first.status == "in_progress"
        done = await _response_done(c, first.id)
        assert done.status == "completed"
        text = "".join(d.delta for d in c.of("response.output_audio_transcript.delta", response_id=first.id))
        assert text == reply_for("Where are we?")
        assert _audio_ms(c, first.id) > 0
        for kind in ("response.output_item.added", "response.content_part.added", "response.content_part.done"):
            assert c.of(kind, response_id=first.id), kind

        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Never mind."}]}
        )
        await conn.response.create()
        second = (await c.wait_for(lambda c: c.of("response.created")[1:], 60))[0].response
        await conn.response.cancel()
        cancelled = await _response_done(c, second.id, 60)
        assert cancelled.status == "cancelled"
        assert cancelled.status_details.reason == "client_cancelled"

        # Cancelled while its audio streams: what the client had of it is what stays.
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Go on then?"}]}
        )
        await conn.response.create()
        third = (await c.wait_for(lambda c: c.of("response.created")[2:], 60))[0].response
        await c.wait_event("response.output_audio.delta", 120, response_id=third.id)
        await conn.response.cancel(response_id=third.id)
        cut = await _response_done(c, third.id, 60)
        assert cut.status == "cancelled" and cut.output[0].status == "incomplete"

        await asyncio.sleep(3)
        for response in (second, third):
            done_at = next(
                n for n, e in enumerate(c.events) if e.type == "response.done" and e.response.id == response.id
            )
            assert [e for e in c.events[done_at + 1 :] if getattr(e, "response_id", None) == response.id] == []
        c.check_typed()

    history = await _history(stack, "rt-tia", conversation_id)
    users = [m for m in history if m["role"] == "user"]
    assert [m["text"] for m in users] == ["Where are we?", "Never mind.", "Go on then?"]
    assert users[0]["id"] == user_item.id
    replies = [m for m in history if m["role"] == "avatar"]
    assert replies[0]["status"] == "complete" and replies[0]["text"] == text
    avatar_id = session.model_extra["parley"]["avatar_id"]
    # Nothing of it was heard, whatever the orchestrator had streamed when the cancel reached it.
    await _stored(stack, "rt-tia", conversation_id, ids.reply_id(users[1]["id"], avatar_id), "interrupted", "")
    went_on = await _stored(stack, "rt-tia", conversation_id, cut.output[0].id, "interrupted")
    assert reply_for("Go on then?").startswith(went_on["text"])


async def test_a_truncated_item_is_stored_as_heard(stack, fake_llm):
    token = token_for("rt-uma")  # a user token works like an API key
    async with _client(stack, token).realtime.connect(model="gpt-realtime") as conn:
        c = Conversation(conn)
        conversation_id = (await c.wait_event("session.created")).session.model_extra["parley"]["conversation_id"]
        _, done = await _typed_turn(c, "Tell me about the sea?")
        assert done.status == "completed"
        item_id = done.output[0].id
        total_ms = _audio_ms(c, done.id)
        assert total_ms > 0

        await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=int(total_ms) + 5000)
        too_far = await c.wait_event("error")
        assert too_far.error.code == "invalid_value" and too_far.error.param == "audio_end_ms"

        heard_ms = int(total_ms * 0.5)
        await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=heard_ms)
        truncated = await c.wait_event("conversation.item.truncated")
        assert (truncated.item_id, truncated.audio_end_ms) == (item_id, heard_ms)
        row = await _stored(stack, "rt-uma", conversation_id, item_id, "interrupted")
        full = reply_for("Tell me about the sea?")
        assert full.startswith(row["text"]) and len(row["text"].split()) < len(full.split())

        # As the Agents SDK does after a truncate: the item it keeps is what was heard.
        await conn.conversation.item.retrieve(item_id=item_id)
        retrieved = (await c.wait_event("conversation.item.retrieved")).item
        assert (retrieved.status, retrieved.content[0].transcript) == ("incomplete", row["text"])
        user_item = next(e.item for e in c.of("conversation.item.done") if e.item.role == "user")
        await conn.conversation.item.delete(item_id=user_item.id)
        assert (await c.wait_event("conversation.item.deleted")).item_id == user_item.id
        _, again = await _typed_turn(c, "And the sky?")
        prompt = next(
            r["messages"] for r in reversed(fake_llm.requests) if r["messages"][-1]["content"] == "And the sky?"
        )
        assert "Tell me about the sea?" not in [m["content"] for m in prompt]
        assert {"role": "assistant", "content": row["text"]} in prompt
        c.check_typed()

    history = {m["id"]: m for m in await _history(stack, "rt-uma", conversation_id)}
    assert history[user_item.id]["removed"] and not history[item_id]["removed"]


async def test_voice_picks_an_avatar_and_instructions_replace_its_persona(stack, tmp_path, fake_llm):
    voice = tmp_path / "voice.wav"
    subprocess.run(["sox", "-n", "-r", "22050", "-c", "1", str(voice), "synth", "8", "sine", "220"], check=True)
    async with httpx.AsyncClient(base_url=stack["http_url"], trust_env=False, timeout=60) as http:
        made = await http.post(
            "/v1/avatars",
            data={"name": "Marlow", "language": "en"},
            files={"voice": ("voice.wav", voice.read_bytes(), "audio/wav")},
            headers=auth_headers("rt-vic"),
        )
        assert made.status_code == 201, made.text
        marlow = made.json()["id"]
    key = await _api_key(stack, "rt-vic")
    async with _client(stack, key).realtime.connect(model="gpt-realtime") as conn:
        c = Conversation(conn)
        created = (await c.wait_event("session.created")).session
        assert created.model_extra["parley"]["avatar_name"] == "Ada"
        conversation_id = created.model_extra["parley"]["conversation_id"]

        await conn.session.update(session={"type": "realtime", "audio": {"output": {"voice": "nobody-here"}}})
        unknown = await c.wait_event("error")
        assert unknown.error.code == "invalid_value" and unknown.error.param == "session.audio.output.voice"

        await conn.session.update(
            session={
                "type": "realtime",
                "instructions": "You are a terse harbour pilot.",
                "audio": {"output": {"voice": "marlow"}},
            }
        )
        updated = (await c.wait_event("session.updated")).session
        assert updated.model_extra["parley"]["avatar_id"] == marlow
        assert updated.audio.output.voice == "marlow" and updated.instructions == "You are a terse harbour pilot."

        _, done = await _typed_turn(c, "Who speaks?")
        assert done.status == "completed"
        prompt = next(
            r["messages"] for r in reversed(fake_llm.requests) if r["messages"][-1]["content"] == "Who speaks?"
        )
        assert prompt[0]["content"].startswith("You are a terse harbour pilot.")
        assert "Ada" not in prompt[0]["content"]

        await conn.session.update(session={"type": "realtime", "audio": {"output": {"voice": "Ada"}}})
        locked = await c.wait_for(lambda c: c.of("error")[1:])
        assert locked[0].error.code == "cannot_update_voice"
        c.check_typed()

    history = await _history(stack, "rt-vic", conversation_id)
    assert [m["avatar_id"] for m in history if m["role"] == "avatar"] == [marlow]


# --- bad input --------------------------------------------------------------------------------


async def test_bad_input_gets_openai_errors_and_the_session_goes_on(stack, fake_llm):
    key = await _api_key(stack, "rt-bea")
    async with _client(stack, key).realtime.connect(model="gpt-realtime") as conn:
        c = Conversation(conn)
        await c.wait_event("session.created")

        async def refused(send, code: str, param: str | None = None, event_id: str | None = None):
            before = len(c.of("error"))
            await send()
            error = (await c.wait_for(lambda c: c.of("error")[before:], 30))[0].error
            assert (error.code, error.param) == (code, param), error
            assert error.type == "invalid_request_error" and error.message
            if event_id is not None:
                assert error.event_id == event_id
            return error

        await refused(
            lambda: conn.send_raw('{"type": "no.such.event", "event_id": "evt_1"}'), "invalid_value", "type", "evt_1"
        )
        await refused(lambda: conn.send_raw("{not json"), "invalid_json")
        await refused(
            lambda: conn.send_raw('{"type": "input_audio_buffer.append", "audio": 7}'), "invalid_type", "audio"
        )
        await refused(
            lambda: conn.send_raw('{"type": "conversation.item.truncate", "item_id": "x"}'),
            "missing_required_parameter",
            "content_index",
        )
        await refused(lambda: conn.send_raw(b"\x00\x01"), "invalid_frame")
        await refused(
            lambda: conn.input_audio_buffer.append(audio="%%% not base64 %%%", event_id="evt_2"),
            "invalid_value",
            "audio",
            "evt_2",
        )
        await refused(
            lambda: conn.input_audio_buffer.append(audio=base64.b64encode(b"\x01\x02\x03").decode()),
            "invalid_value",
            "audio",
        )
        await refused(
            lambda: conn.session.update(
                session={"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu", "rate": 16000}}}}
            ),
            "unsupported",
            "session.audio.input.format",
        )
        await refused(
            lambda: conn.session.update(
                session={"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcm", "rate": 16000}}}}
            ),
            "unsupported",
            "session.audio.output.format",
        )
        await refused(
            lambda: conn.send_raw('{"type": "session.update", "session": {"input_audio_format": "g722"}}'),
            "unsupported",
            "session.audio.input.format",
        )
        await refused(lambda: conn.input_audio_buffer.commit(), "input_audio_buffer_commit_empty")
        await refused(lambda: conn.response.cancel(), "response_cancel_not_active", "response_id")
        await refused(lambda: conn.response.create(), "no_user_message")
        await refused(
            lambda: conn.conversation.item.truncate(item_id="item_nope", content_index=0, audio_end_ms=10),
            "invalid_value",
            "item_id",
        )
        await refused(lambda: conn.conversation.item.delete(item_id="item_nope"), "invalid_value", "item_id")
        await refused(lambda: conn.conversation.item.retrieve(item_id="item_nope"), "invalid_value", "item_id")
        await refused(
            lambda: conn.conversation.item.create(
                item={"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi"}]}
            ),
            "unsupported",
            "item.role",
        )
        # A refused update changed nothing: the session still reports PCM16 at 24 kHz and server VAD.
        await conn.session.update(session={"type": "realtime"})
        session = (await c.wait_event("session.updated")).session
        assert (
            session.audio.input.format.type == "audio/pcm" and session.audio.input.turn_detection.type == "server_vad"
        )

        # Silence appended, then cleared: nothing is committed.
        silence = base64.b64encode(b"\x00\x00" * (RATE // 5)).decode()
        await conn.input_audio_buffer.append(audio=silence)
        await conn.input_audio_buffer.clear()
        await c.wait_event("input_audio_buffer.cleared")

        _, done = await _typed_turn(c, "Still there?")
        assert done.status == "completed"
        assert done.output[0].content[0].transcript == reply_for("Still there?")
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Again?"}]}
        )
        await conn.response.create()
        await c.wait_for(lambda c: c.of("response.created")[1:], 60)
        await refused(lambda: conn.response.create(), "conversation_already_has_active_response")
        await c.wait_for(lambda c: c.of("response.done")[1:], 180)
        assert all(e.error.type == "invalid_request_error" for e in c.of("error"))
        c.check_typed()


# --- connecting -------------------------------------------------------------------------------


async def test_browsers_authenticate_with_the_key_subprotocol(stack):
    url = stack["http_url"].replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
    offered = ["realtime", f"openai-insecure-api-key.{token_for('rt-wes')}", "openai-beta.realtime-v1"]
    async with websockets.connect(url, subprotocols=offered) as ws:
        assert ws.subprotocol == "realtime"
        first = json.loads(await ws.recv())
        assert first["type"] == "session.created" and first["session"]["model"] == "gpt-realtime"


async def test_a_bad_key_gets_an_error_event_and_the_socket_closes(stack):
    url = stack["http_url"].replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
    async with websockets.connect(url, additional_headers={"Authorization": "Bearer pk_not-a-key"}) as ws:
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and error["error"]["code"] == "invalid_api_key"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 4401


async def test_speaking_over_a_response_cancels_it(stack, speech_wav, fake_llm):
    key = await _api_key(stack, "rt-bo")
    async with _client(stack, key).realtime.connect(model="gpt-realtime") as conn:
        c = Conversation(conn)
        conversation_id = (await c.wait_event("session.created")).session.model_extra["parley"]["conversation_id"]
        fake_llm.mode = "endless"
        try:
            await conn.conversation.item.create(
                item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Talk on?"}]}
            )
            await conn.response.create()
            talking = (await c.wait_event("response.created")).response
            await c.wait_event("response.output_audio_transcript.delta", 60, response_id=talking.id)
            speaking = asyncio.create_task(_speak(conn, _pcm24(speech_wav)))
            await c.wait_event("input_audio_buffer.speech_started", 60)
            stopped = await _response_done(c, talking.id, 60)
        finally:
            fake_llm.mode = "ok"
        await speaking
        assert stopped.status == "cancelled" and stopped.status_details.reason == "turn_detected"
        committed = await c.wait_event("input_audio_buffer.committed", 60)
        answer = (await c.wait_for(lambda c: c.of("response.created")[1:], 60))[0].response
        assert (await _response_done(c, answer.id)).status == "completed"
        c.check_typed()
    await _stored(stack, "rt-bo", conversation_id, stopped.output[0].id, "interrupted")
    users = [m for m in await _history(stack, "rt-bo", conversation_id) if m["role"] == "user"]
    assert [m["id"] for m in users][1:] == [committed.item_id]


async def test_commit_ends_the_speech_the_vad_hears_and_clear_drops_it(stack, tmp_path, fake_llm):
    wav = make_speech("Please remember the harbour lights tonight", tmp_path / "no-pause.wav", trailing_silence_s=0.3)
    speech = _pcm24(wav)
    key = await _api_key(stack, "rt-cal")
    async with _client(stack, key).realtime.connect(model="gpt-realtime") as conn:
        c = Conversation(conn)
        await c.wait_event("session.created")
        # A silence this long never ends the turn on its own here: only the client's commit does.
        await conn.session.update(
            session={
                "type": "realtime",
                "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 5000}}},
            }
        )
        await c.wait_event("session.updated")

        await _speak(conn, speech)
        dropped = (await c.wait_event("input_audio_buffer.speech_started", 60)).item_id
        await conn.input_audio_buffer.clear()
        await c.wait_event("input_audio_buffer.cleared")

        await _speak(conn, speech)
        kept = (await c.wait_for(lambda c: c.of("input_audio_buffer.speech_started")[1:], 60))[0].item_id
        await conn.input_audio_buffer.commit()
        committed = await c.wait_event("input_audio_buffer.committed", 60)
        assert committed.item_id == kept != dropped
        await c.wait_event("conversation.item.input_audio_transcription.completed", 60, item_id=kept)
        response = (await c.wait_event("response.created", 60)).response
        assert (await _response_done(c, response.id)).status == "completed"
        assert c.of("input_audio_buffer.committed", item_id=dropped) == []
        assert c.of("conversation.item.input_audio_transcription.completed", item_id=dropped) == []
        c.check_typed()


WEATHER_TOOL = {
    "type": "function",
    "name": "weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


async def test_a_function_call_round_trip_as_the_sdk_makes_it(stack, fake_llm):
    """session.update with a function tool; the response that calls it ends with the
    `function_call` item after what was said before it; the client's function_call_output and
    response.create make the next response, which speaks the answer; all of it stored."""
    fake_llm.tool_arguments = {"weather": {"city": "Paris"}}
    key = await _api_key(stack, "rt-tool")
    try:
        async with _client(stack, key).realtime.connect(model="gpt-realtime") as conn:
            c = Conversation(conn)
            conversation_id = (await c.wait_event("session.created")).session.model_extra["parley"]["conversation_id"]
            await conn.session.update(session={"type": "realtime", "tools": [WEATHER_TOOL], "tool_choice": "auto"})
            updated = (await c.wait_event("session.updated")).session
            assert [t.name for t in updated.tools] == ["weather"] and updated.tool_choice == "auto"
            await conn.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Weather in Paris?"}],
                }
            )
            await conn.response.create()
            first = (await c.wait_event("response.created")).response
            args = await c.wait_event("response.function_call_arguments.done", response_id=first.id)
            assert args.name == "weather" and json.loads(args.arguments) == {"city": "Paris"}
            done = await _response_done(c, first.id)
            assert done.status == "completed" and [o.type for o in done.output] == ["message", "function_call"]
            assert done.output[1].call_id == args.call_id and _audio_ms(c, first.id) > 0
            said = "".join(d.delta for d in c.of("response.output_audio_transcript.delta", response_id=first.id))
            assert said == "Let me check."

            await conn.conversation.item.create(
                item={"type": "function_call_output", "call_id": args.call_id, "output": '{"temperature": "21 C"}'}
            )
            await conn.response.create()
            second = (await c.wait_for(lambda c: c.of("response.created")[1:], 60))[0].response
            answer = await _response_done(c, second.id)
            assert answer.status == "completed" and answer.output[0].type == "message"
            spoken = answer.output[0].content[0].transcript
            assert "21 C" in spoken and not spoken.startswith("Let me check")
            assert answer.output[0].id != done.output[0].id and _audio_ms(c, second.id) > 0

            await conn.conversation.item.create(
                item={"type": "function_call_output", "call_id": args.call_id, "output": "again"}
            )
            refused = await c.wait_event("error")
            assert refused.error.code == "tool_call_finished" and refused.error.param == "item.call_id"
            assert not c.of("error")[1:]
            c.check_typed()
        reply_id = done.output[0].id
        row = await _stored(stack, "rt-tool", conversation_id, reply_id, "complete")
        assert row["text"].startswith("Let me check.") and "21 C" in row["text"]
    finally:
        fake_llm.tool_arguments = {}


async def test_every_realtime_conversation_balances(stack):
    """The ledger's invariant holds over the conversations this module's sessions held."""
    assert CONVERSATIONS
    assert await settled_conversations(stack["settings"], CONVERSATIONS) == []
