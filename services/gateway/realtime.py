"""An OpenAI Realtime API compatible session (`/v1/realtime`) on Parley's own pipeline.

`RealtimeSession` is a `ClientSession` that reads and writes another wire protocol: OpenAI's
client events come in, OpenAI's server events and base64 audio go out. Everything between
(auth, limits, the STT session and its takeover, replies in sentence order, barge-in, what
was heard, persistence) is the native session's. docs/openai-realtime.md is the reference.

Mapping in short: the connection is a new conversation with one avatar (`voice` picks it);
audio comes at 24 kHz and is resampled to the 16 kHz the STT worker reads; a spoken turn's
user item id is its Parley user message id and a reply's assistant item id is the reply's
message id, so REST history and the client's items name the same things.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import re
import time
import uuid
from dataclasses import dataclass, field

import msgspec
import numpy as np
import soxr
from fastapi import WebSocket

from services.common import db, ids, schemas, subjects

from . import events, protocol
from . import realtime_protocol as rt
from .handlers import ClientSession, Gateway
from .playout import Frame

IN_RATE = 24000
"""The API's audio rate, both ways."""
STT_RATE = 16000
SUBPROTOCOL = "realtime"
KEY_SUBPROTOCOL = "openai-insecure-api-key."
"""How OpenAI's browser clients carry a key: a WebSocket subprotocol `openai-insecure-api-key.<key>`."""
OPENAI_VOICES = frozenset({"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"})
"""OpenAI's built-in voices: a client's default `voice`; one that names no avatar keeps the current one."""
MIN_COMMIT_SAMPLES = IN_RATE // 10
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
_STATUS = {"complete": "completed", "interrupted": "cancelled", "failed": "failed"}
_CODE = re.compile(r"^[a-z_]+$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[a-z]{2})?$")


class _Refused(Exception):
    """A client event Parley will not act on: answered with an OpenAI-shaped error event."""

    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


@dataclass
class _Config:
    """The session as the client configured it (OpenAI's defaults where it did not)."""

    model: str
    instructions: str | None = None
    modalities: list[str] = field(default_factory=lambda: ["audio"])
    voice: str | None = None
    """As the client named it; None: the avatar's name is reported."""
    transcription: rt.Transcription | None = field(default_factory=lambda: rt.Transcription(model="parley-whisper"))
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    interrupt_response: bool = True


@dataclass
class _Response:
    id: str
    user_message_id: str
    reply_id: str
    """The assistant item's id: the reply's Parley message id."""
    modalities: list[str]
    metadata: dict[str, str] | None = None
    item_added: bool = False
    previous_item_id: str | None = None
    transcript: str = ""
    final_text: str | None = None
    final_status: str | None = None
    audio_done: bool = False
    error: tuple[str, str] | None = None
    cancelled: bool = False
    done: bool = False

    @property
    def audio(self) -> bool:
        return "audio" in self.modalities


@dataclass
class _VoiceItem:
    started: bool = False
    committed: bool = False
    done: bool = False
    previous_item_id: str | None = None
    sent: str = ""
    """Transcript text already sent as deltas."""


class RealtimeSession(ClientSession):
    def __init__(self, ws: WebSocket, gateway: Gateway):
        super().__init__(ws, gateway)
        self.cfg = _Config(model="parley")
        self.avatar: db.Avatar | None = None
        self._key: str | None = None
        self.responses: dict[str, _Response] = {}
        """By reply message id (the assistant item id)."""
        self.voice_items: dict[str, _VoiceItem] = {}
        self.item_ids: set[str] = set()
        self.last_item_id: str | None = None
        self.pending: list[tuple[str, str, int, str]] = []
        """Typed user items not yet answered: (item id, message id, text seq, text)."""
        self.speaking: str | None = None
        """The user item whose speech the VAD hears now."""
        self.buffered = 0
        """Samples (24 kHz) appended since the last commit or clear."""
        self._resampler = soxr.ResampleStream(IN_RATE, STT_RATE, 1, dtype="int16")
        self._answered = False
        """Once a turn is under way the avatar (voice) is fixed, as in OpenAI's API."""
        self._applied: dict[str, asyncio.Event] = {}
        """Per reply, set when its first interruption has been stored (`reply.interrupted`)."""
        self._tasks: set[asyncio.Task] = set()

    # --- connecting -------------------------------------------------------------------------

    async def _accept(self) -> None:
        offered = self.ws.scope.get("subprotocols") or []
        for offer in offered:
            if offer.startswith(KEY_SUBPROTOCOL):
                self._key = offer.removeprefix(KEY_SUBPROTOCOL) or None
        await self.ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)

    async def _await_start(self) -> protocol.Start | None:
        """No start message: the session begins at the handshake, configured by `session.update`."""
        self.cfg = _Config(model=self.ws.query_params.get("model") or "parley")
        return protocol.Start(token=self._key, end_of_turn_ms=self.cfg.silence_duration_ms)

    async def _setup(self, start: protocol.Start) -> bool:
        self.avatar = await self.gw.repo.get_avatar(self.settings.default_avatar_id)
        if self.avatar is None:
            await self._safe_close(protocol.CLOSE_NOT_FOUND, "no_avatar: the default avatar does not exist")
            return False
        start.avatar_ids = [self.avatar.id]
        return await super()._setup(start)

    async def _safe_close(self, code: int, reason: str) -> None:
        """A refusal before the session is live is explained in an error event too: Realtime
        clients report error events, not close reasons."""
        if not self._live:
            prefix, _, rest = reason.partition(": ")
            err_code, message = (prefix, rest) if rest and _CODE.match(prefix) else ("session_refused", reason)
            event = rt.ErrorEvent(error=rt.Error(type="invalid_request_error", code=err_code, message=message))
            try:
                await self.ws.send_text(rt.encoder.encode(event).decode())
            except Exception:
                pass
        await super()._safe_close(code, reason)

    def _stt_open_request(self, start: protocol.Start) -> schemas.SttOpen:
        req = super()._stt_open_request(start)
        req.vad_threshold = self.cfg.threshold
        req.pad_ms = self.cfg.prefix_padding_ms
        req.instructions = self.cfg.instructions
        prompt = self.cfg.transcription.prompt if self.cfg.transcription else None
        if prompt:
            req.prompt = ", ".join(p for p in (req.prompt, prompt) if p)
        return req

    async def _reopen_stt(self) -> None:
        """Apply new recognition settings: the session's audio is opened again, replayed from
        after the newest final transcript (the takeover path), on whichever worker answers."""
        old = self.stt_worker
        error = await self._open_stt(self._start, takeover=True)
        if error is not None:
            self.error(*error, retryable=True)
            return
        if self._watch is None:
            self._watch = asyncio.create_task(self._watch_stt())
        if old and old != self.stt_worker:
            await self.bus.publish(
                subjects.control(self.conv),
                schemas.SessionControl(
                    conversation_id=self.conv, session_id=self.session_id, action="release", worker_id=old
                ),
            )

    async def _teardown(self) -> None:
        for task in self._tasks:
            task.cancel()
        await super()._teardown()

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- writing ----------------------------------------------------------------------------

    def _emit(self, event: rt.ServerEvent) -> None:
        self.out.put_nowait(("text", rt.encoder.encode(event).decode()))

    def error(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        event_id: str | None = None,
        retryable: bool = False,
    ) -> None:
        kind = "server_error" if code in _SERVER_CODES or code.startswith("llm_") else "invalid_request_error"
        self._emit(rt.ErrorEvent(error=rt.Error(type=kind, code=code, message=message, param=param, event_id=event_id)))

    def _session(self) -> rt.Session:
        cfg, avatar = self.cfg, self.avatar
        life_left = self.settings.max_session_s - (time.monotonic() - self.opened_at)
        turn = rt.TurnDetection(
            threshold=cfg.threshold,
            prefix_padding_ms=cfg.prefix_padding_ms,
            silence_duration_ms=cfg.silence_duration_ms,
            interrupt_response=cfg.interrupt_response,
        )
        return rt.Session(
            id=f"sess_{uuid.UUID(self.resume_id).hex}",
            model=cfg.model,
            output_modalities=cfg.modalities,
            instructions=cfg.instructions or "",
            audio=rt.Audio(
                input=rt.AudioInput(format=rt.AudioFormat(), transcription=cfg.transcription, turn_detection=turn),
                output=rt.AudioOutput(format=rt.AudioFormat(), voice=cfg.voice or avatar.name),
            ),
            expires_at=int(time.time() + life_left),
            parley=rt.ParleyInfo(conversation_id=self.conv, avatar_id=avatar.id, avatar_name=avatar.name),
        )

    def _item(self, rec: _Response, status: str, text: str | None = None) -> rt.Item:
        content = []
        if text is not None:
            part = "output_audio" if rec.audio else "output_text"
            content = [rt.Content(type=part, transcript=text) if rec.audio else rt.Content(type=part, text=text)]
        return rt.Item(id=rec.reply_id, role="assistant", status=status, content=content)

    def _part(self, rec: _Response, text: str) -> rt.Part:
        return rt.Part(type="audio", transcript=text) if rec.audio else rt.Part(type="text", text=text)

    def _response(self, rec: _Response, status: str, details: rt.StatusDetails | None = None) -> rt.Response:
        output = [self._item(rec, "completed" if status == "completed" else "incomplete", self._text(rec))]
        return rt.Response(
            id=rec.id,
            status=status,
            status_details=details,
            output=output if rec.item_added and status != "in_progress" else [],
            conversation_id=self.conv,
            output_modalities=rec.modalities,
            metadata=rec.metadata,
        )

    @staticmethod
    def _text(rec: _Response) -> str:
        return rec.final_text if rec.final_status == "complete" and rec.final_text is not None else rec.transcript

    def _open_response(self, user_message_id: str, modalities: list[str], metadata=None) -> _Response:
        reply_id = ids.reply_id(user_message_id, self.avatar.id)
        rec = _Response(rt.new_id("resp"), user_message_id, reply_id, modalities, metadata)
        self.responses[reply_id] = rec
        self._answered = True
        self._emit(rt.ResponseCreated(response=self._response(rec, "in_progress")))
        return rec

    def _start_output(self, rec: _Response) -> None:
        if rec.item_added:
            return
        rec.item_added = True
        rec.previous_item_id, self.last_item_id = self.last_item_id, rec.reply_id
        self.item_ids.add(rec.reply_id)
        item = self._item(rec, "in_progress")
        self._emit(rt.OutputItemAdded(response_id=rec.id, item=item))
        self._emit(rt.ItemAdded(item=item, previous_item_id=rec.previous_item_id))
        self._emit(rt.ContentPartAdded(response_id=rec.id, item_id=rec.reply_id, part=self._part(rec, "")))

    def _finish(self, rec: _Response, status: str, reason: str | None = None) -> None:
        """Close the response: its content part and item, then `response.done`."""
        if rec.done:
            return
        rec.done = True
        text = self._text(rec)
        if rec.item_added:
            where = {"response_id": rec.id, "item_id": rec.reply_id}
            if rec.audio:
                self._emit(rt.AudioDone(**where))
                self._emit(rt.AudioTranscriptDone(**where, transcript=text))
            else:
                self._emit(rt.TextDone(**where, text=text))
            self._emit(rt.ContentPartDone(**where, part=self._part(rec, text)))
            item = self._item(rec, "completed" if status == "completed" else "incomplete", text)
            self._emit(rt.ItemDone(item=item, previous_item_id=rec.previous_item_id))
            self._emit(rt.OutputItemDone(response_id=rec.id, item=item))
        details = None
        if status == "failed":
            code, message = rec.error or ("reply_failed", "the reply failed")
            details = rt.StatusDetails(
                type="failed", error=rt.StatusError(type="server_error", code=code, message=message)
            )
        elif status != "completed":
            details = rt.StatusDetails(type=status, reason=reason)
        self._emit(rt.ResponseDone(response=self._response(rec, status, details)))

    def _maybe_finish(self, rec: _Response) -> None:
        """Done once its text is final and, for audio, all its audio has been sent."""
        if rec.done or rec.final_status is None:
            return
        if rec.audio and rec.reply_id in self.replies and not rec.audio_done:
            return
        self._finish(rec, _STATUS.get(rec.final_status, "failed"), "turn_detected")

    def _emit_audio(self, message_id: str, frame: Frame) -> None:
        rec = self.responses.get(message_id)
        if rec is None or rec.done or not rec.audio:
            return
        self._start_output(rec)
        pcm = frame.pcm
        if frame.sample_rate != IN_RATE:
            pcm = soxr.resample(np.frombuffer(pcm, "<i2"), frame.sample_rate, IN_RATE).astype("<i2").tobytes()
        delta = base64.b64encode(pcm).decode()
        self._emit(rt.AudioDelta(response_id=rec.id, item_id=rec.reply_id, delta=delta))

    def send_event(self, ev: events.ClientEvent, cursor: int | None = None) -> None:
        """Translate what the native session relays into Realtime server events."""
        if isinstance(ev, events.SessionStarted):
            self._emit(rt.SessionCreated(session=self._session()))
        elif isinstance(ev, events.PlaybackStop):
            if (rec := self.responses.get(ev.message_id)) is not None:
                self._finish(rec, "cancelled", "turn_detected")
        elif isinstance(ev, events.AudioEnd):
            if (rec := self.responses.get(ev.message_id)) is not None:
                rec.audio_done = True
                self._maybe_finish(rec)
        elif isinstance(ev, events.SpeechStarted | events.SpeechStopped | events.TranscriptPartial):
            if ev.session_id == self.session_id:
                self._on_speech(ev)
        elif isinstance(ev, events.TranscriptFinal):
            if ev.session_id == self.session_id:
                self._on_final(ev)
        elif isinstance(ev, events.Error):
            self._on_error_event(ev)
        elif (rec := self.responses.get(getattr(ev, "message_id", ""))) is not None:
            self._on_reply(rec, ev)
        elif isinstance(ev, events.ReplyStarted):
            # A spoken turn's reply seen before its final transcript.
            self._on_reply(self._open_response(ev.user_message_id, self.cfg.modalities), ev)

    def _voice_item_id(self, utterance_seq: int) -> str:
        return ids.user_message_id(self.conv, self.session_id, "voice", utterance_seq)

    def _on_speech(self, ev) -> None:
        item_id = self._voice_item_id(ev.utterance_seq)
        item = self.voice_items.setdefault(item_id, _VoiceItem())
        if isinstance(ev, events.SpeechStarted):
            if not item.started and not item.committed:
                item.started = True
                self.speaking = item_id
                self._emit(rt.SpeechStarted(audio_start_ms=round(ev.start_s * 1000), item_id=item_id))
        elif isinstance(ev, events.SpeechStopped):
            self._commit(item_id, round(ev.end_s * 1000))
        elif self.cfg.transcription is not None and not item.done:
            stable = ev.stable
            if stable.startswith(item.sent) and len(stable) > len(item.sent):
                self._emit(rt.TranscriptionDelta(item_id=item_id, delta=stable[len(item.sent) :]))
                item.sent = stable

    def _commit(self, item_id: str, end_ms: int) -> _VoiceItem:
        """The VAD closed the utterance: the buffer is committed as a user audio item."""
        item = self.voice_items.setdefault(item_id, _VoiceItem())
        if item.committed:
            return item
        item.committed = True
        if self.speaking == item_id:
            self.speaking = None
        self.buffered = 0
        self._answered = True
        item.previous_item_id, self.last_item_id = self.last_item_id, item_id
        self.item_ids.add(item_id)
        self._emit(rt.SpeechStopped(audio_end_ms=end_ms, item_id=item_id))
        self._emit(rt.Committed(item_id=item_id, previous_item_id=item.previous_item_id))
        audio = rt.Item(id=item_id, role="user", status="completed", content=[rt.Content(type="input_audio")])
        self._emit(rt.ItemAdded(item=audio, previous_item_id=item.previous_item_id))
        return item

    def _on_final(self, ev: events.TranscriptFinal) -> None:
        item = self._commit(ev.message_id, round((ev.end_s or 0.0) * 1000))
        if item.done:
            return
        item.done = True
        heard = self.cfg.transcription is not None
        if heard:
            if ev.text.startswith(item.sent) and len(ev.text) > len(item.sent):
                self._emit(rt.TranscriptionDelta(item_id=ev.message_id, delta=ev.text[len(item.sent) :]))
            seconds = round(max(0.0, (ev.end_s or 0.0) - (ev.start_s or 0.0)), 3)
            self._emit(
                rt.TranscriptionCompleted(
                    item_id=ev.message_id, transcript=ev.text, usage=rt.DurationUsage(seconds=seconds)
                )
            )
        content = [rt.Content(type="input_audio", transcript=ev.text if heard else None)]
        done = rt.Item(id=ev.message_id, role="user", status="completed", content=content)
        self._emit(rt.ItemDone(item=done, previous_item_id=item.previous_item_id))
        if ids.reply_id(ev.message_id, self.avatar.id) not in self.responses:
            self._open_response(ev.message_id, self.cfg.modalities)

    def _on_reply(self, rec: _Response, ev: events.ClientEvent) -> None:
        if isinstance(ev, events.ReplyStarted):
            if rec.cancelled:
                self._spawn(self._stop_reply(rec.reply_id, (0, 0.0)))
            elif not rec.done:
                self._start_output(rec)
        elif isinstance(ev, events.ReplyDelta):
            if rec.done:
                return
            self._start_output(rec)
            rec.transcript += ev.text
            where = {"response_id": rec.id, "item_id": rec.reply_id, "delta": ev.text}
            self._emit(rt.AudioTranscriptDelta(**where) if rec.audio else rt.TextDelta(**where))
        elif isinstance(ev, events.ReplyDone):
            rec.final_text, rec.final_status = ev.text, ev.status
            self._maybe_finish(rec)
        elif isinstance(ev, events.ReplyInterrupted):
            self._applied.setdefault(ev.message_id, asyncio.Event()).set()

    def _on_error_event(self, ev: events.Error) -> None:
        item = self.voice_items.get(ev.message_id or "")
        if item is not None and ev.code in ("no_speech_recognized", "transcription_failed"):
            item.done = True
            error = rt.Error(type="transcription_error", code=ev.code, message=ev.message)
            self._emit(rt.TranscriptionFailed(item_id=ev.message_id, error=error))
            return
        rec = self.responses.get(ev.message_id or "") or next(
            (r for r in self.responses.values() if r.user_message_id == ev.message_id), None
        )
        if rec is None:
            self.error(ev.code, ev.message)
            return
        rec.error = (ev.code, ev.message)
        if ev.code in ("turn_failed", "no_avatar"):
            self._finish(rec, "failed")

    # --- reading ----------------------------------------------------------------------------

    async def _on_audio(self, frame: bytes) -> None:
        self.error(
            "invalid_frame", "binary frames are not part of the Realtime API: send audio in input_audio_buffer.append"
        )

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
        except _Refused as exc:
            self.error(exc.code, exc.message, param=exc.param, event_id=event_id)

    # session.update

    async def _session_update(self, ev: rt.SessionUpdate) -> None:
        """Validate everything first, then apply: a refused update changes nothing."""
        s = ev.session
        if s.type not in (msgspec.UNSET, "realtime"):
            raise _Refused("unsupported", "only realtime sessions are supported (no transcription sessions)", "type")
        cfg = dataclasses.replace(self.cfg)
        audio = s.audio or rt.AudioIn()
        a_in = audio.input or rt.AudioInputIn()
        a_out = audio.output or rt.AudioOutputIn()
        if s.model is not msgspec.UNSET:
            cfg.model = s.model
        if s.instructions is not msgspec.UNSET:
            cfg.instructions = s.instructions or None
        modalities = s.output_modalities if s.output_modalities is not msgspec.UNSET else s.modalities
        if modalities is not msgspec.UNSET:
            cfg.modalities = _modalities(modalities, "session.output_modalities")
        if s.tools:
            raise _Refused(
                "unsupported", "Parley's avatars call no tools: session.tools must be empty", "session.tools"
            )
        _check_format(a_in.format, s.input_audio_format, "session.audio.input.format")
        _check_format(a_out.format, s.output_audio_format, "session.audio.output.format")
        transcription = a_in.transcription
        if transcription is msgspec.UNSET:
            transcription = s.input_audio_transcription
        if transcription is None:
            cfg.transcription = None
        elif transcription is not msgspec.UNSET:
            language = (transcription.language or "").lower() or None
            if language is not None and not _LANGUAGE.match(language):
                param = "session.audio.input.transcription.language"
                raise _Refused("invalid_value", f"'{transcription.language}' is not an ISO-639-1 language code", param)
            cfg.transcription = rt.Transcription(
                model=transcription.model or "parley-whisper", language=language, prompt=transcription.prompt
            )
        turn = a_in.turn_detection if a_in.turn_detection is not msgspec.UNSET else s.turn_detection
        if turn is not msgspec.UNSET:
            _apply_turn_detection(cfg, turn)
        voice = a_out.voice if a_out.voice is not msgspec.UNSET else s.voice
        avatar = self.avatar
        if voice not in (msgspec.UNSET, None):
            avatar, cfg.voice = await self._resolve_voice(voice)
        if avatar.id != self.avatar.id:
            if self._answered:
                message = "the voice cannot change once the conversation has begun"
                raise _Refused("cannot_update_voice", message, "session.audio.output.voice")
            await self.gw.repo.replace_conversation_avatars(self.conv, [avatar.id])
            self._hotwords = None
        stt_changed = avatar.id != self.avatar.id or _stt_view(cfg) != _stt_view(self.cfg)
        self.cfg, self.avatar = cfg, avatar
        self._start.barge_in = cfg.interrupt_response
        self._start.end_of_turn_ms = cfg.silence_duration_ms
        self._start.language = cfg.transcription.language if cfg.transcription else None
        if stt_changed:
            await self._reopen_stt()
        self._emit(rt.SessionUpdated(session=self._session()))

    async def _resolve_voice(self, voice: str | rt.VoiceRef) -> tuple[db.Avatar, str]:
        """An avatar visible to the caller, by id or (case-insensitive) name."""
        name = voice.id if isinstance(voice, rt.VoiceRef) else voice
        fields = [f.name for f in dataclasses.fields(db.Avatar)]
        for row in await self.gw.repo.visible_avatars(self.user_id):
            if name == row["id"] or name.casefold() == row["name"].casefold():
                return db.Avatar(**{k: row[k] for k in fields}), name
        if name in OPENAI_VOICES:
            return self.avatar, name
        raise _Refused(
            "invalid_value",
            f"no avatar named or with id '{name}' (GET /v1/avatars lists yours)",
            "session.audio.output.voice",
        )

    # audio

    async def _append(self, ev: rt.AudioAppend) -> None:
        try:
            pcm = base64.b64decode(ev.audio, validate=True)
        except (binascii.Error, ValueError):
            raise _Refused("invalid_value", "audio must be base64-encoded PCM16", "audio") from None
        if len(pcm) % 2:
            raise _Refused("invalid_value", "audio must be PCM16: an even number of bytes", "audio")
        if not pcm:
            return
        samples = np.frombuffer(pcm, "<i2")
        self.buffered += len(samples)
        data = self._resampler.resample_chunk(samples).astype("<i2").tobytes()
        step = self.settings.max_audio_frame_bytes - self.settings.max_audio_frame_bytes % 2
        for offset in range(0, len(data), step):
            await super()._on_audio(data[offset : offset + step])

    async def _commit_buffer(self, ev: rt.AudioCommit) -> None:
        """With server VAD the utterance the VAD hears ends now; without speech there is nothing to commit."""
        if self.speaking is not None:
            await self._control("commit")
            return
        buffered, self.buffered = self.buffered, 0
        if buffered < MIN_COMMIT_SAMPLES:
            message = f"buffer too small: at least 100 ms of audio is needed, the buffer holds {buffered / 24:.0f} ms"
        else:
            message = "no speech was detected in the buffer, so there is nothing to commit"
        raise _Refused("input_audio_buffer_commit_empty", message)

    async def _clear_buffer(self, ev: rt.AudioClear) -> None:
        if self.speaking is not None:
            await self._control("clear")
            self.speaking = None
        self.buffered = 0
        self._resampler = soxr.ResampleStream(IN_RATE, STT_RATE, 1, dtype="int16")
        self._emit(rt.Cleared())

    async def _control(self, action: str, message_id: str = "", reason: str = "") -> None:
        await self.bus.publish(
            subjects.control(self.conv),
            schemas.SessionControl(
                conversation_id=self.conv,
                session_id=self.session_id,
                action=action,
                message_id=message_id,
                reason=reason,
            ),
        )

    # items and responses

    async def _create_item(self, ev: rt.ItemCreate) -> None:
        item = ev.item
        if item.type != "message":
            raise _Refused("unsupported", f"'{item.type}' items are not supported: only user messages", "item.type")
        if item.role != "user":
            message = f"'{item.role}' messages cannot be added: only user messages are (see instructions)"
            raise _Refused("unsupported", message, "item.role")
        parts = []
        for n, part in enumerate(item.content):
            if part.type not in ("input_text", "text"):
                message = f"'{part.type}' content is not supported: send text, or audio with input_audio_buffer.append"
                raise _Refused("unsupported", message, f"item.content[{n}].type")
            parts.append((part.text or "").strip())
        text = " ".join(p for p in parts if p)
        if not text:
            raise _Refused("invalid_value", "the message has no text", "item.content")
        if len(text) > self.settings.max_text_chars:
            message = f"messages are limited to {self.settings.max_text_chars} characters"
            raise _Refused("string_above_max_length", message, "item.content")
        if item.id is not None and item.id in self.item_ids:
            raise _Refused("invalid_value", f"an item with id '{item.id}' already exists", "item.id")
        seq = self.text_seq
        self.text_seq += 1
        message_id = ids.user_message_id(self.conv, self.session_id, "text", seq)
        item_id = item.id or message_id
        self.pending.append((item_id, message_id, seq, text))
        self.item_ids.add(item_id)
        previous, self.last_item_id = self.last_item_id, item_id
        added = rt.Item(id=item_id, role="user", status="completed", content=[rt.Content(type="input_text", text=text)])
        self._emit(rt.ItemAdded(item=added, previous_item_id=previous))
        self._emit(rt.ItemDone(item=added, previous_item_id=previous))

    async def _create_response(self, ev: rt.ResponseCreate) -> None:
        """Answer the typed user items added since the last response, as one user turn."""
        active = next((r for r in self.responses.values() if not r.done), None)
        if active is not None:
            raise _Refused(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {active.id}. "
                "Wait until the response is finished before creating a new one.",
            )
        params = ev.response or rt.ResponseParams()
        if params.conversation not in (None, "auto"):
            raise _Refused("unsupported", "out-of-band responses are not supported", "response.conversation")
        if params.input:
            raise _Refused(
                "unsupported", "responses answer the conversation; response.input is not supported", "response.input"
            )
        if params.tools:
            raise _Refused(
                "unsupported", "Parley's avatars call no tools: response.tools must be empty", "response.tools"
            )
        given = params.output_modalities or params.modalities
        modalities = _modalities(given, "response.output_modalities") if given else self.cfg.modalities
        if not self.pending:
            raise _Refused(
                "no_user_message",
                "there is no user message to answer: add one with conversation.item.create "
                "(spoken turns are answered on their own)",
            )
        _, message_id, seq, _ = self.pending[0]
        text = "\n".join(p[3] for p in self.pending)
        self.pending.clear()
        turn = schemas.UserTurn(
            conversation_id=self.conv,
            message_id=message_id,
            session_id=self.session_id,
            turn_seq=seq,
            source="text",
            text=text,
            marks={"received": time.time()},
            instructions=params.instructions or self.cfg.instructions,
        )
        self._open_response(message_id, modalities, params.metadata)
        await self.bus.publish_fact(subjects.turn(self.conv), turn, msg_id=message_id)

    async def _cancel_response(self, ev: rt.ResponseCancel) -> None:
        if ev.response_id:
            rec = next((r for r in self.responses.values() if r.id == ev.response_id), None)
        else:
            rec = next((r for r in reversed(self.responses.values()) if not r.done), None)
        if rec is None or rec.done:
            raise _Refused("response_cancel_not_active", "Cancellation failed: no active response found", "response_id")
        await self._cancel(rec, "client_cancelled")

    async def _cancel(self, rec: _Response, reason: str) -> None:
        """Stop the response now; the reply is stored as heard so far (the gateway's estimate)."""
        self._finish(rec, "cancelled", reason)
        rec.cancelled = True
        reply = self.replies.get(rec.reply_id)
        if reply is None:
            # The client never got any of it, so nothing of it was heard.
            await self._interrupt(rec.reply_id, (0, 0.0))
            await self._control("cancel", rec.user_message_id, reason)
            return
        await self._stop_reply(rec.reply_id, reply.heard(time.monotonic()), reason)

    async def _stop_reply(self, reply_id: str, position: tuple[int, float], reason: str = "cancelled") -> None:
        await self._interrupt(reply_id, position)
        await self._control("cancel", reply_id, reason)

    async def _interrupt(self, message_id: str, position: tuple[int, float] | None, fact_id: str | None = None) -> None:
        if fact_id is None:
            self._applied.setdefault(message_id, asyncio.Event())
        await super()._interrupt(message_id, position, fact_id)

    async def _barge_in(self) -> None:
        """The native barge-in stops what is playing; responses still being generated stop too."""
        await super()._barge_in()
        for rec in list(self.responses.values()):
            if not rec.done:
                await self._cancel(rec, "turn_detected")

    async def _truncate(self, ev: rt.ItemTruncate) -> None:
        """The client played the assistant item up to `audio_end_ms`: that is what was heard."""
        rec = self.responses.get(ev.item_id)
        if rec is None:
            raise _Refused("invalid_value", f"no assistant item '{ev.item_id}' in this session", "item_id")
        if ev.content_index != 0:
            raise _Refused(
                "invalid_value", "assistant items have one content part: content_index must be 0", "content_index"
            )
        reply = self.replies.get(rec.reply_id)
        sent_ms = sum(reply.sentence_s.values()) * 1000 if reply is not None else 0.0
        if not 0 <= ev.audio_end_ms <= sent_ms + 1:
            message = f"audio_end_ms must lie between 0 and the {sent_ms:.0f} ms of audio sent for the item"
            raise _Refused("invalid_value", message, "audio_end_ms")
        position = (0, 0.0)
        if reply is not None:
            now = time.monotonic()
            reply.played, reply.playback_ended = (ev.audio_end_ms, now), True
            position = reply.heard(now)
        if not rec.done:
            self._finish(rec, "cancelled", "client_cancelled")
            rec.cancelled = True
            await self._control("cancel", rec.reply_id, "truncated")
        self._emit(rt.ItemTruncated(item_id=ev.item_id, content_index=0, audio_end_ms=ev.audio_end_ms))
        fact_id = f"truncate.{rec.reply_id}.{ev.audio_end_ms}"
        earlier = self._applied.get(rec.reply_id)
        if earlier is not None and not earlier.is_set():
            self.interrupted.add(rec.reply_id)
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


def _modalities(given: list[str], param: str) -> list[str]:
    """`["audio"]` (audio with its transcript) or `["text"]`; the beta's `["text", "audio"]` is audio."""
    if not given or not set(given) <= {"text", "audio"}:
        raise _Refused("invalid_value", "output_modalities must be ['audio'] or ['text']", param)
    return ["audio"] if "audio" in given else ["text"]


def _check_format(fmt, beta: str | msgspec.UnsetType, param: str) -> None:
    """PCM16 at 24 kHz only (G.711 is refused rather than misheard)."""
    if beta not in (msgspec.UNSET, "pcm16"):
        raise _Refused("unsupported", f"audio format '{beta}' is not supported: use pcm16 at 24 kHz", param)
    if fmt in (msgspec.UNSET, None):
        return
    if fmt.type != "audio/pcm" or fmt.rate not in (None, IN_RATE):
        rate = f" at {fmt.rate} Hz" if fmt.rate else ""
        raise _Refused(
            "unsupported", f"audio format '{fmt.type}'{rate} is not supported: use audio/pcm at 24000 Hz", param
        )


def _apply_turn_detection(cfg: _Config, turn: rt.TurnDetectionIn | None) -> None:
    param = "session.audio.input.turn_detection"
    if turn is None:
        raise _Refused("unsupported", "Parley detects turns on the server: turn_detection must be server_vad", param)
    if turn.type != "server_vad":
        raise _Refused("unsupported", f"turn detection '{turn.type}' is not supported: use server_vad", param + ".type")
    if turn.create_response is False:
        message = "every committed turn is answered: create_response cannot be false"
        raise _Refused("unsupported", message, param + ".create_response")
    if turn.threshold is not None:
        if not 0.0 < turn.threshold < 1.0:
            raise _Refused("invalid_value", "threshold must lie between 0 and 1", param + ".threshold")
        cfg.threshold = turn.threshold
    if turn.prefix_padding_ms is not None:
        if not 0 <= turn.prefix_padding_ms <= 2000:
            raise _Refused("invalid_value", "prefix_padding_ms must lie in 0..2000", param + ".prefix_padding_ms")
        cfg.prefix_padding_ms = turn.prefix_padding_ms
    if turn.silence_duration_ms is not None:
        if not 100 <= turn.silence_duration_ms <= 5000:
            raise _Refused("invalid_value", "silence_duration_ms must lie in 100..5000", param + ".silence_duration_ms")
        cfg.silence_duration_ms = turn.silence_duration_ms
    if turn.interrupt_response is not None:
        cfg.interrupt_response = turn.interrupt_response


def _stt_view(cfg: _Config) -> tuple:
    """What the STT session is opened with: a change reopens it."""
    t = cfg.transcription
    return (
        cfg.threshold,
        cfg.prefix_padding_ms,
        cfg.silence_duration_ms,
        cfg.instructions,
        t.language if t else None,
        t.prompt if t else None,
    )
