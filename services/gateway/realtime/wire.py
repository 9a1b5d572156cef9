"""An OpenAI Realtime API compatible session (`/v1/realtime`) on Parley's own pipeline.

`RealtimeWire` is a wire (wire.py) of the session: OpenAI's client events come in, OpenAI's
server events and base64 audio go out. Everything between (auth, limits, the STT session and
its takeover, replies in sentence order, barge-in, what was heard, persistence) is the
session's. docs/openai-realtime.md is the reference.

Mapping in short: the connection is a new conversation with one avatar (`voice` picks it);
audio comes at 24 kHz and is resampled to the 16 kHz the STT worker reads; a spoken turn's
user item id is its Parley user message id and a reply's assistant item id is the reply's
message id, so REST history and the client's items name the same things.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import msgspec
import numpy as np
import soxr

from services.common import db, ids

from .. import events
from ..client_socket import ClientSocket
from ..config import GatewaySettings
from ..playout import Frame
from ..wire import Opening, SessionApi
from . import protocol as rt
from .buffer import InputBuffer
from .config import IN_RATE, Config, Refused, apply_stt, describe, modalities, stt_view, updated
from .output import Output, Response

SUBPROTOCOL = "realtime"
KEY_SUBPROTOCOL = "openai-insecure-api-key."
"""How OpenAI's browser clients carry a key: a WebSocket subprotocol `openai-insecure-api-key.<key>`."""
OPENAI_VOICES = frozenset({"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"})
"""OpenAI's built-in voices: a client's default `voice`; one that names no avatar keeps the current one."""
INTERRUPT_ORDER_WAIT_S = 5.0
"""A truncate waits this long for an earlier interruption of the reply to be stored, so the
precise position it carries is the one that stays."""

_SERVER_CODES = frozenset(
    {
        "stt_unavailable",
        "no_capacity",
        "idle_timeout",
        "session_too_long",
        "turn_failed",
        "no_avatar",
        "audio_store_failed",
    }
)
_CODE = re.compile(r"^[a-z_]+$")


class RealtimeWire:
    def __init__(self, socket: ClientSocket, settings: GatewaySettings, avatars: db.Avatars, model: str | None):
        self.socket = socket
        self.settings = settings
        self.avatars = avatars
        self.session: SessionApi | None = None
        self.cfg = Config(model=model or "parley")
        self._key: str | None = None
        self.out = Output(self._emit)
        self.pending: list[tuple[str, str, int, str]] = []
        """Typed user items not yet answered: (item id, message id, text seq, text)."""
        self.buffer = InputBuffer()
        self._answered = False
        """Once a turn is under way the avatar (voice) is fixed, as in OpenAI's API."""
        self._applied: dict[str, asyncio.Event] = {}
        """Per reply, set when its first interruption has been stored (`reply.interrupted`)."""
        self._tasks: set[asyncio.Task] = set()

    def attach(self, session: SessionApi) -> None:
        self.session = session

    @property
    def avatar(self) -> db.Avatar:
        """Who answers: the session's avatar (a `session.update` voice may replace it before the first turn)."""
        return self.session.avatars[0]

    @property
    def conv(self) -> str:
        return self.session.conv

    @property
    def audio_session_id(self) -> str:
        return self.session.audio_session_id

    # --- connecting -------------------------------------------------------------------------

    async def accept(self) -> None:
        offered = self.socket.offered
        for offer in offered:
            if offer.startswith(KEY_SUBPROTOCOL):
                self._key = offer.removeprefix(KEY_SUBPROTOCOL) or None
        await self.socket.accept(SUBPROTOCOL if SUBPROTOCOL in offered else None)

    async def open(self) -> Opening | None:
        """No start message: the session begins at the handshake, configured by `session.update`."""
        opening = Opening(token=self._key, avatar_ids=[self.settings.default_avatar_id])
        apply_stt(self.cfg, opening)
        return opening

    async def refuse(self, code: int, reason: str) -> None:
        """A refusal is explained in an error event too: Realtime clients report error events,
        not close reasons."""
        prefix, _, rest = reason.partition(": ")
        err_code, message = (prefix, rest) if rest and _CODE.match(prefix) else ("session_refused", reason)
        event = rt.ErrorEvent(error=rt.Error(type="invalid_request_error", code=err_code, message=message))
        await self.socket.send_now(rt.encoder.encode(event).decode())
        await self.socket.close_now(code, reason)

    async def closed(self) -> None:
        for task in self._tasks:
            task.cancel()

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- writing ----------------------------------------------------------------------------

    def _emit(self, event: rt.ServerEvent) -> None:
        self.socket.send_text(rt.encoder.encode(event).decode())

    def error(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        event_id: str | None = None,
        retryable: bool = False,
    ) -> None:
        """Realtime errors carry no `retryable`; the code tells a client what went wrong."""
        kind = "server_error" if code in _SERVER_CODES or code.startswith("llm_") else "invalid_request_error"
        self._emit(rt.ErrorEvent(error=rt.Error(type=kind, code=code, message=message, param=param, event_id=event_id)))

    def _session(self) -> rt.Session:
        life_left = self.settings.max_session_s - (time.monotonic() - self.session.opened_at)
        session_id = f"sess_{uuid.UUID(self.session.resume_id).hex}"
        return describe(self.cfg, self.avatar, session_id, self.conv, int(time.time() + life_left))

    def send_audio(self, message_id: str, frame: Frame) -> None:
        rec = self.out.responses.get(message_id)
        if rec is None or rec.done or not rec.audio:
            return
        pcm = frame.pcm
        if frame.sample_rate != IN_RATE:
            pcm = soxr.resample(np.frombuffer(pcm, "<i2"), frame.sample_rate, IN_RATE).astype("<i2").tobytes()
        self.out.audio_delta(rec, pcm)

    def send(self, ev: events.ClientEvent, cursor: int | None = None) -> None:
        """Translate the session's events into Realtime server events."""
        responses = self.out.responses
        if isinstance(ev, events.SessionStarted):
            self.out.conversation_id = ev.conversation_id
            self._emit(rt.SessionCreated(session=self._session()))
        elif isinstance(ev, events.PlaybackStop):
            # A barge-in interrupts the reply now: a later truncate waits for it to be stored.
            self._applied.setdefault(ev.message_id, asyncio.Event())
            if (rec := responses.get(ev.message_id)) is not None:
                self.out.finish(rec, "cancelled", "turn_detected")
        elif isinstance(ev, events.AudioEnd):
            if (rec := responses.get(ev.message_id)) is not None:
                rec.audio_done = True
                self._settle(rec)
        elif isinstance(ev, events.SpeechStarted | events.SpeechStopped | events.TranscriptPartial):
            if ev.session_id == self.audio_session_id:
                self._on_speech(ev)
        elif isinstance(ev, events.TranscriptFinal):
            if ev.session_id == self.audio_session_id:
                self._on_final(ev)
        elif isinstance(ev, events.Error):
            self._on_error_event(ev)
        elif (rec := responses.get(getattr(ev, "message_id", ""))) is not None:
            self._on_reply(rec, ev)
        elif isinstance(ev, events.ReplyStarted):
            # A spoken turn's reply seen before its final transcript.
            self._on_reply(self._open_response(ev.user_message_id, self.cfg.modalities), ev)

    def _voice_item_id(self, utterance_seq: int) -> str:
        return ids.user_message_id(self.conv, self.audio_session_id, "voice", utterance_seq)

    def _on_speech(self, ev) -> None:
        item_id = self._voice_item_id(ev.utterance_seq)
        if isinstance(ev, events.SpeechStarted):
            if self.out.speech_started(item_id, round(ev.start_s * 1000)):
                self.buffer.speaking = item_id
        elif isinstance(ev, events.SpeechStopped):
            self._commit(item_id, round(ev.end_s * 1000))
        elif self.cfg.transcription is not None:
            self.out.heard_so_far(item_id, ev.stable)

    def _commit(self, item_id: str, end_ms: int):
        """The VAD closed the utterance: what was buffered is committed as a user audio item."""
        item, new = self.out.commit(item_id, end_ms)
        if new:
            self.buffer.committed(item_id)
            self._answered = True
        return item

    def _on_final(self, ev: events.TranscriptFinal) -> None:
        item = self._commit(ev.message_id, round((ev.end_s or 0.0) * 1000))
        if item.done:
            return
        self.out.transcribed(item, ev, heard=self.cfg.transcription is not None)
        if ids.reply_id(ev.message_id, self.avatar.id) not in self.out.responses:
            self._open_response(ev.message_id, self.cfg.modalities)

    def _open_response(self, user_message_id: str, modalities: list[str], metadata=None) -> Response:
        self._answered = True
        return self.out.open(user_message_id, ids.reply_id(user_message_id, self.avatar.id), modalities, metadata)

    def _settle(self, rec: Response) -> None:
        self.out.settle(rec, audio_pending=self.session.reply(rec.reply_id) is not None and not rec.audio_done)

    def _on_reply(self, rec: Response, ev: events.ClientEvent) -> None:
        if isinstance(ev, events.ReplyStarted):
            if rec.cancelled:
                self._spawn(self._stop_reply(rec.reply_id, (0, 0.0)))
            elif not rec.done:
                self.out.start(rec)
        elif isinstance(ev, events.ReplyDelta):
            self.out.text_delta(rec, ev.text)
        elif isinstance(ev, events.ReplyDone):
            rec.final_text, rec.final_status = ev.text, ev.status
            self._settle(rec)
        elif isinstance(ev, events.ReplyInterrupted):
            self._applied.setdefault(ev.message_id, asyncio.Event()).set()

    def _on_error_event(self, ev: events.Error) -> None:
        mid = ev.message_id or ""
        if ev.code in ("no_speech_recognized", "transcription_failed"):
            if self.out.transcription_failed(mid, ev.code, ev.message):
                return
        rec = self.out.responses.get(mid) or self.out.answering(mid)
        if rec is None:
            self.error(ev.code, ev.message)
            return
        rec.error = (ev.code, ev.message)
        if ev.code in ("turn_failed", "no_avatar"):
            self.out.finish(rec, "failed")

    # --- reading ----------------------------------------------------------------------------

    async def on_message(self, message: dict) -> None:
        if message.get("bytes") is not None:
            why = "binary frames are not part of the Realtime API: send audio in input_audio_buffer.append"
            self.error("invalid_frame", why)
        elif message.get("text") is not None:
            await self._on_text(message["text"])

    async def _on_text(self, raw: str) -> None:
        try:
            env = rt.envelope_decoder.decode(raw)
        except msgspec.ValidationError as exc:
            self.error("invalid_event", f"a client event must be a JSON object with a type: {exc}")
            return
        except msgspec.DecodeError as exc:
            self.error("invalid_json", f"the event is not valid JSON: {exc}")
            return
        event_id = env.event_id
        if env.type is None:
            self.error("missing_required_parameter", "The 'type' field is missing.", param="type", event_id=event_id)
            return
        if env.type in rt.REFUSED:
            self.error("unsupported_event", f"Parley does not support '{env.type}'", param="type", event_id=event_id)
            return
        if env.type not in rt.SUPPORTED:
            supported = ", ".join(f"'{t}'" for t in sorted(rt.SUPPORTED))
            message = f"Invalid value: '{env.type}'. Supported values are: {supported}."
            self.error("invalid_value", message, param="type", event_id=event_id)
            return
        try:
            ev = rt.decoder.decode(raw)
        except msgspec.ValidationError as exc:
            text = str(exc)
            param = rt.error_param(exc)
            missing = re.match(r"Object missing required field `([^`]+)`", text)
            if missing:
                param = ".".join(p for p in (param, missing.group(1)) if p)
            code = "missing_required_parameter" if missing else "invalid_type"
            self.error(code, text, param=param, event_id=event_id)
            return
        handler = {
            rt.SessionUpdate: self._session_update,
            rt.AudioAppend: self._append,
            rt.AudioCommit: self._commit_buffer,
            rt.AudioClear: self._clear_buffer,
            rt.ItemCreate: self._create_item,
            rt.ItemTruncate: self._truncate,
            rt.ResponseCreate: self._create_response,
            rt.ResponseCancel: self._cancel_response,
        }[type(ev)]
        try:
            await handler(ev)
        except Refused as exc:
            self.error(exc.code, exc.message, param=exc.param, event_id=event_id)

    # session.update

    async def _session_update(self, ev: rt.SessionUpdate) -> None:
        """Validate everything first, then apply: a refused update changes nothing."""
        cfg, voice = updated(self.cfg, ev.session)
        current = avatar = self.avatar
        if voice not in (msgspec.UNSET, None):
            avatar, cfg.voice = await self._resolve_voice(voice)
        if avatar.id != current.id:
            if self._answered:
                message = "the voice cannot change once the conversation has begun"
                raise Refused("cannot_update_voice", message, "session.audio.output.voice")
            await self.session.replace_avatars([avatar])
        stt_changed = avatar.id != current.id or stt_view(cfg) != stt_view(self.cfg)
        self.cfg = cfg
        apply_stt(cfg, self.session.opening)
        if stt_changed:
            await self.session.reopen_stt()
        self._emit(rt.SessionUpdated(session=self._session()))

    async def _resolve_voice(self, voice: str | rt.VoiceRef) -> tuple[db.Avatar, str]:
        """An avatar visible to the caller, by id or (case-insensitive) name."""
        name = voice.id if isinstance(voice, rt.VoiceRef) else voice
        for avatar in await self.avatars.visible(self.session.user_id):
            if name == avatar.id or name.casefold() == avatar.name.casefold():
                return avatar, name
        if name in OPENAI_VOICES:
            return self.avatar, name
        raise Refused(
            "invalid_value",
            f"no avatar named or with id '{name}' (GET /v1/avatars lists yours)",
            "session.audio.output.voice",
        )

    # audio

    async def _append(self, ev: rt.AudioAppend) -> None:
        for frame in self.buffer.append(ev.audio, self.settings.max_audio_frame_bytes):
            await self.session.audio(frame)

    async def _commit_buffer(self, ev: rt.AudioCommit) -> None:
        """With server VAD the utterance the VAD hears ends now; without speech there is nothing to commit."""
        if self.buffer.speaking is not None:
            await self.session.control("commit")
            return
        self.buffer.refuse_commit()

    async def _clear_buffer(self, ev: rt.AudioClear) -> None:
        if self.buffer.speaking is not None:
            await self.session.control("clear")
        self.buffer.clear()
        self._emit(rt.Cleared())

    # items and responses

    async def _create_item(self, ev: rt.ItemCreate) -> None:
        item = ev.item
        if item.type != "message":
            raise Refused("unsupported", f"'{item.type}' items are not supported: only user messages", "item.type")
        if item.role != "user":
            message = f"'{item.role}' messages cannot be added: only user messages are (see instructions)"
            raise Refused("unsupported", message, "item.role")
        parts = []
        for n, part in enumerate(item.content):
            if part.type not in ("input_text", "text"):
                message = f"'{part.type}' content is not supported: send text, or audio with input_audio_buffer.append"
                raise Refused("unsupported", message, f"item.content[{n}].type")
            parts.append((part.text or "").strip())
        text = " ".join(p for p in parts if p)
        if not text:
            raise Refused("invalid_value", "the message has no text", "item.content")
        if len(text) > self.settings.max_text_chars:
            message = f"messages are limited to {self.settings.max_text_chars} characters"
            raise Refused("string_above_max_length", message, "item.content")
        if item.id is not None and item.id in self.out.item_ids:
            raise Refused("invalid_value", f"an item with id '{item.id}' already exists", "item.id")
        seq, message_id = self.session.text_turn_id()
        item_id = item.id or message_id
        self.pending.append((item_id, message_id, seq, text))
        self.out.text_item(item_id, text)

    async def _create_response(self, ev: rt.ResponseCreate) -> None:
        """Answer the typed user items added since the last response, as one user turn."""
        active = self.out.active()
        if active is not None:
            raise Refused(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {active.id}. "
                "Wait until the response is finished before creating a new one.",
            )
        params = ev.response or rt.ResponseParams()
        if params.conversation not in (None, "auto"):
            raise Refused("unsupported", "out-of-band responses are not supported", "response.conversation")
        if params.input:
            raise Refused(
                "unsupported", "responses answer the conversation; response.input is not supported", "response.input"
            )
        if params.tools:
            raise Refused(
                "unsupported", "Parley's avatars call no tools: response.tools must be empty", "response.tools"
            )
        given = params.output_modalities or params.modalities
        chosen = modalities(given, "response.output_modalities") if given else self.cfg.modalities
        if not self.pending:
            raise Refused(
                "no_user_message",
                "there is no user message to answer: add one with conversation.item.create "
                "(spoken turns are answered on their own)",
            )
        _, message_id, seq, _ = self.pending[0]
        text = "\n".join(p[3] for p in self.pending)
        self.pending.clear()
        self._open_response(message_id, chosen, params.metadata)
        await self.session.submit_text(message_id, seq, text, params.instructions or self.cfg.instructions)

    async def _cancel_response(self, ev: rt.ResponseCancel) -> None:
        if ev.response_id:
            rec = self.out.by_id(ev.response_id)
        else:
            rec = next((r for r in reversed(self.out.responses.values()) if not r.done), None)
        if rec is None or rec.done:
            raise Refused("response_cancel_not_active", "Cancellation failed: no active response found", "response_id")
        await self._cancel(rec, "client_cancelled")

    async def _cancel(self, rec: Response, reason: str) -> None:
        """Stop the response now; the reply is stored as heard so far (the gateway's estimate)."""
        self.out.finish(rec, "cancelled", reason)
        rec.cancelled = True
        reply = self.session.reply(rec.reply_id)
        if reply is None:
            # The client never got any of it, so nothing of it was heard.
            await self._interrupt(rec.reply_id, (0, 0.0))
            await self.session.control("cancel", rec.user_message_id, reason)
            return
        await self._stop_reply(rec.reply_id, reply.heard(time.monotonic()), reason)

    async def _stop_reply(self, reply_id: str, position: tuple[int, float], reason: str = "cancelled") -> None:
        await self._interrupt(reply_id, position)
        await self.session.control("cancel", reply_id, reason)

    async def _interrupt(self, message_id: str, position: tuple[int, float] | None, fact_id: str | None = None) -> None:
        if fact_id is None:
            self._applied.setdefault(message_id, asyncio.Event())
        await self.session.interrupt(message_id, position, fact_id)

    async def barged_in(self) -> None:
        """The session stopped what was playing; responses still being generated stop too."""
        for rec in list(self.out.responses.values()):
            if not rec.done:
                await self._cancel(rec, "turn_detected")

    async def _truncate(self, ev: rt.ItemTruncate) -> None:
        """The client played the assistant item up to `audio_end_ms`: that is what was heard."""
        rec = self.out.responses.get(ev.item_id)
        if rec is None:
            raise Refused("invalid_value", f"no assistant item '{ev.item_id}' in this session", "item_id")
        if ev.content_index != 0:
            raise Refused(
                "invalid_value", "assistant items have one content part: content_index must be 0", "content_index"
            )
        reply = self.session.reply(rec.reply_id)
        sent_ms = reply.sent_s * 1000 if reply is not None else 0.0
        if not 0 <= ev.audio_end_ms <= sent_ms + 1:
            message = f"audio_end_ms must lie between 0 and the {sent_ms:.0f} ms of audio sent for the item"
            raise Refused("invalid_value", message, "audio_end_ms")
        position = (0, 0.0)
        if reply is not None:
            now = time.monotonic()
            reply.played, reply.playback_ended = (ev.audio_end_ms, now), True
            position = reply.heard(now)
        if not rec.done:
            self.out.finish(rec, "cancelled", "client_cancelled")
            rec.cancelled = True
            await self.session.control("cancel", rec.reply_id, "truncated")
        self._emit(rt.ItemTruncated(item_id=ev.item_id, content_index=0, audio_end_ms=ev.audio_end_ms))
        fact_id = f"truncate.{rec.reply_id}.{ev.audio_end_ms}"
        earlier = self._applied.get(rec.reply_id)
        if earlier is not None and not earlier.is_set():
            self.session.mute(rec.reply_id)
            self._spawn(self._interrupt_after(earlier, rec.reply_id, position, fact_id))
        else:
            await self._interrupt(rec.reply_id, position, fact_id)

    async def _interrupt_after(self, earlier: asyncio.Event, reply_id: str, position, fact_id: str) -> None:
        """Interruptions of one reply may be stored in any order: the precise one goes last."""
        try:
            await asyncio.wait_for(earlier.wait(), INTERRUPT_ORDER_WAIT_S)
        except TimeoutError:
            pass
        await self._interrupt(reply_id, position, fact_id)
