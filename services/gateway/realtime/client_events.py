"""The client's events: each decoded and checked, refused with an OpenAI-shaped error event,
or acted on.

`session.update` and `input_audio_buffer.*` are handled here; `conversation.item.*` and
`response.*` go to the conversation (conversation.py). A handler refuses by raising `Refused`,
before it has changed anything.
"""

from __future__ import annotations

import logging
import re

import msgspec

from services.common import db

from . import protocol as rt
from .buffer import InputBuffer
from .config import Refused, apply_stt, stt_view, updated
from .connection import Connection
from .conversation import Conversation

OPENAI_VOICES = frozenset({"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"})
"""OpenAI's built-in voices: a client's default `voice`; one that names no avatar keeps the current one."""
_MISSING = re.compile(r"Object missing required field `([^`]+)`")
log = logging.getLogger(__name__)


class ClientEvents:
    def __init__(self, conn: Connection, conversation: Conversation, avatars: db.Avatars):
        self.conn = conn
        self.conversation = conversation
        self.avatars = avatars
        self._handlers = {
            rt.SessionUpdate: self._session_update,
            rt.AudioAppend: self._append,
            rt.AudioCommit: self._commit,
            rt.AudioClear: self._clear,
            rt.ItemCreate: conversation.create_item,
            rt.ItemTruncate: conversation.truncate,
            rt.ItemRetrieve: conversation.items.retrieve,
            rt.ItemDelete: conversation.items.delete,
            rt.ResponseCreate: conversation.create_response,
            rt.ResponseCancel: conversation.cancel_response,
        }

    async def on_message(self, message: dict) -> None:
        if message.get("bytes") is not None:
            why = "binary frames are not part of the Realtime API: send audio in input_audio_buffer.append"
            self.conn.error("invalid_frame", why)
        elif message.get("text") is not None:
            await self._on_text(message["text"])

    async def _on_text(self, raw: str) -> None:
        ev = self._decode(raw)
        if ev is None:
            return
        try:
            await self._handlers[type(ev)](ev)
        except Refused as exc:
            self.conn.error(exc.code, exc.message, param=exc.param, event_id=ev.event_id)

    def _decode(self, raw: str) -> rt.ClientEvent | None:
        """The client event, or None once its error has been sent: the envelope first, so an
        unknown `type` is named as such rather than as a field of some other event."""
        error = self.conn.error
        try:
            env = rt.envelope_decoder.decode(raw)
        except msgspec.ValidationError as exc:
            error("invalid_event", f"a client event must be a JSON object with a type: {exc}")
            return None
        except msgspec.DecodeError as exc:
            error("invalid_json", f"the event is not valid JSON: {exc}")
            return None
        event_id = env.event_id
        if env.type is None:
            error("missing_required_parameter", "The 'type' field is missing.", param="type", event_id=event_id)
            return None
        if env.type in rt.REFUSED:
            error("unsupported_event", f"Parley does not support '{env.type}'", param="type", event_id=event_id)
            return None
        if env.type not in rt.SUPPORTED:
            supported = ", ".join(f"'{t}'" for t in sorted(rt.SUPPORTED))
            message = f"Invalid value: '{env.type}'. Supported values are: {supported}."
            error("invalid_value", message, param="type", event_id=event_id)
            return None
        try:
            return rt.decoder.decode(raw)
        except msgspec.ValidationError as exc:
            text = str(exc)
            param = rt.error_param(exc)
            missing = _MISSING.match(text)
            if missing:
                param = ".".join(p for p in (param, missing.group(1)) if p)
            code = "missing_required_parameter" if missing else "invalid_type"
            error(code, text, param=param, event_id=event_id)
            return None

    # --- session.update -------------------------------------------------------------------

    async def _session_update(self, ev: rt.SessionUpdate) -> None:
        """Validate everything first, then apply: a refused update changes nothing."""
        conn, session = self.conn, self.conn.session
        current = avatar = conn.avatar
        voice = _voice_of(ev.session)
        named = None
        if voice not in (msgspec.UNSET, None):
            avatar, named = await self._resolve_voice(voice)
        cfg, _, warnings = updated(conn.cfg, ev.session, {t["name"] for t in avatar.tools})
        if named is not None:
            cfg.voice = named
        if avatar.id != current.id:
            if self.conversation.begun:
                message = "the voice cannot change once the conversation has begun"
                raise Refused("cannot_update_voice", message, "session.audio.output.voice")
            await session.replace_avatars([avatar])
        stt_changed = avatar.id != current.id or stt_view(cfg) != stt_view(conn.cfg)
        conn.cfg = cfg
        if cfg.input_format != conn.buffer.format:
            speaking, conn.buffer = conn.buffer.speaking, InputBuffer(cfg.input_format)
            conn.buffer.speaking = speaking
        apply_stt(cfg, session.opening)
        self.conversation.idle.configured()
        if stt_changed:
            await session.reopen_stt()
        for w in warnings:
            log.info("realtime setting taken at its nearest: %s: %s", w.param, w.message)
        conn.emit(rt.SessionUpdated(session=conn.described(warnings)))

    async def _resolve_voice(self, voice: str | rt.VoiceRef) -> tuple[db.Avatar, str]:
        """An avatar visible to the caller, by id or (case-insensitive) name."""
        name = voice.id if isinstance(voice, rt.VoiceRef) else voice
        for avatar in await self.avatars.visible(self.conn.session.user_id):
            if name == avatar.id or name.casefold() == avatar.name.casefold():
                return avatar, name
        if name in OPENAI_VOICES:
            return self.conn.avatar, name
        raise Refused(
            "invalid_value",
            f"no avatar named or with id '{name}' (GET /v1/avatars lists yours)",
            "session.audio.output.voice",
        )

    # --- input_audio_buffer.* -------------------------------------------------------------

    async def _append(self, ev: rt.AudioAppend) -> None:
        buffer = self.conn.buffer
        before = buffer.buffered
        frames = buffer.append(ev.audio, self.conn.settings.max_audio_frame_bytes)
        self.conn.audio_in_ms += (buffer.buffered - before) / buffer.rate * 1000
        for frame in frames:
            await self.conn.session.audio(frame)

    async def _commit(self, ev: rt.AudioCommit) -> None:
        """With server VAD the utterance the VAD hears ends now; without speech there is nothing to commit."""
        if self.conn.buffer.speaking is not None:
            await self.conn.session.commit_utterance()
            return
        self.conn.buffer.refuse_commit()

    async def _clear(self, ev: rt.AudioClear) -> None:
        if self.conn.buffer.speaking is not None:
            await self.conn.session.clear_utterance()
        self.conn.buffer.clear()
        self.conn.emit(rt.Cleared())


def _voice_of(s: rt.SessionIn) -> str | rt.VoiceRef | None | msgspec.UnsetType:
    """The voice `session.update` names, read before the rest (a tool may not take an avatar
    tool's name, and the voice says which avatar)."""
    audio = s.audio or rt.AudioIn()
    out = audio.output or rt.AudioOutputIn()
    return out.voice if out.voice is not msgspec.UNSET else s.voice
