"""The native wire: Parley's own client protocol (docs/protocol.md) on a WebSocket.

JSON messages and binary PCM16 frames in; typed events as JSON with a per-connection `seq`,
and reply audio as binary frames with a 28-byte header, out.
"""

from __future__ import annotations

import time
import uuid

import msgspec
from fastapi import WebSocketDisconnect

from . import events, protocol
from .client_socket import ClientSocket
from .playout import Frame
from .wire import Opening, SessionApi, SttOptions


class NativeWire:
    def __init__(self, socket: ClientSocket, start_timeout_s: float, max_text_chars: int):
        self.socket = socket
        self.start_timeout_s = start_timeout_s
        self.max_text_chars = max_text_chars
        self.session: SessionApi | None = None
        self.seq = 0

    def attach(self, session: SessionApi) -> None:
        self.session = session

    # --- connecting -------------------------------------------------------------------------

    async def accept(self) -> None:
        offered = self.socket.offered
        await self.socket.accept(protocol.SUBPROTOCOL if protocol.SUBPROTOCOL in offered else None)

    async def open(self) -> Opening | None:
        """The first message must be a `session.start` of a supported protocol version."""
        try:
            raw = await self.socket.first_text(self.start_timeout_s)
        except TimeoutError:
            await self.refuse(protocol.CLOSE_START_TIMEOUT, "no session.start in time")
            return None
        except (WebSocketDisconnect, KeyError, RuntimeError):
            await self.refuse(protocol.CLOSE_BAD_START, "the first message must be a JSON session.start")
            return None
        try:
            msg = protocol.decoder.decode(raw)
        except msgspec.DecodeError as exc:
            await self.refuse(protocol.CLOSE_BAD_START, f"bad session.start: {exc}"[:120])
            return None
        if not isinstance(msg, protocol.Start):
            await self.refuse(protocol.CLOSE_BAD_START, "the first message must be session.start")
            return None
        if msg.protocol not in protocol.SUPPORTED_VERSIONS:
            await self.refuse(protocol.CLOSE_UNSUPPORTED_VERSION, f"protocol {msg.protocol} unsupported")
            return None
        return Opening(
            token=msg.token,
            conversation_id=msg.conversation_id,
            avatar_ids=msg.avatar_ids,
            resume=msg.resume,
            barge_in=msg.barge_in,
            resume_ms=msg.interruption.resume_ms,
            stt=SttOptions(
                language=msg.language,
                end_of_turn_ms=msg.end_of_turn_ms,
                partials=msg.partials,
                turn_policy=msg.turn.policy if msg.turn else None,
                turn_short_ms=msg.turn.short_ms if msg.turn else None,
                turn_long_ms=msg.turn.long_ms if msg.turn else None,
                barge_in_ms=msg.interruption.min_ms,
                barge_in_words=msg.interruption.min_words,
            ),
        )

    async def refuse(self, code: int, reason: str) -> None:
        await self.socket.close_now(code, reason)

    # --- writing ----------------------------------------------------------------------------

    def send(self, ev: events.ClientEvent, cursor: int | None = None) -> None:
        self.seq += 1
        self.socket.send_text(events.to_json(ev, self.seq, cursor))

    def send_audio(self, message_id: str, frame: Frame) -> None:
        self.socket.send_bytes(
            protocol.audio_frame(message_id, frame.sentence_index, frame.chunk_seq, frame.sample_rate, frame.pcm)
        )

    def error(self, code: str, message: str, retryable: bool = False) -> None:
        conv = self.session.conv if self.session is not None else ""
        self.send(events.Error(conversation_id=conv or None, code=code, message=message, retryable=retryable))

    async def barged_in(self) -> None:
        pass

    async def closed(self) -> None:
        pass

    # --- reading ----------------------------------------------------------------------------

    async def on_message(self, message: dict) -> None:
        if message.get("bytes") is not None:
            await self.session.audio(message["bytes"])
        elif message.get("text") is not None:
            await self._on_text(message["text"])

    async def _on_text(self, raw: str) -> None:
        try:
            msg = protocol.decoder.decode(raw)
        except msgspec.ValidationError as exc:
            self.error("unknown_message", f"message not understood: {exc}")
            return
        except msgspec.DecodeError as exc:
            self.error("malformed_json", f"not valid JSON: {exc}")
            return
        session = self.session
        if isinstance(msg, protocol.Text):
            await self._on_user_text(msg)
        elif isinstance(msg, protocol.Interrupt):
            await self._on_interrupt(msg)
        elif isinstance(msg, protocol.Playback):
            if not session.playback(msg.message_id, msg.played_ms, msg.ended):
                self.error("unknown_reply", "playback is reported for replies whose audio this session sent")
        elif isinstance(msg, protocol.End):
            session.close(1000, "session ended", "client")
        elif isinstance(msg, protocol.Latency):
            if not session.latency(msg.message_id, msg.voice_to_voice_ms):
                self.error("unknown_reply", "latency is reported once per spoken reply of this session")
        elif isinstance(msg, protocol.ToolResult):
            refused = await session.tool_result(msg.call_id, msg.output, msg.error)
            if refused is not None:
                self.error(*refused)
        else:
            self.error("unexpected_message", "session.start was already received")

    async def _on_user_text(self, msg: protocol.Text) -> None:
        text = msg.text.strip()
        if not text:
            self.error("empty_text", "text messages must not be empty")
            return
        if len(text) > self.max_text_chars:
            self.error("text_too_long", f"text messages are limited to {self.max_text_chars} characters")
            return
        session = self.session
        seq, message_id = session.text_turn_id(msg.client_seq)
        await session.submit_text(message_id, seq, text)
        self.send(events.UserMessage(conversation_id=session.conv, message_id=message_id, text=text))

    async def _on_interrupt(self, msg: protocol.Interrupt) -> None:
        session = self.session
        now = time.monotonic()
        if msg.message_id:
            try:
                targets = [str(uuid.UUID(msg.message_id))]
            except ValueError:
                self.error("bad_message_id", "interrupt.message_id must be a reply's message id")
                return
            if session.reply(targets[0]) is None:
                # Only a reply this session relayed: an id from anywhere else (another user's
                # conversation included) must not reach the orchestrator.
                self.error("unknown_reply", "interrupt.message_id is not a reply of this session")
                return
        else:
            targets = session.unfinished()
        for mid in targets:
            position = None
            if msg.message_id is not None and msg.sentence_index is not None:
                position = (msg.sentence_index, (msg.offset_ms or 0) / 1000)
            elif (reply := session.reply(mid)) is not None and reply.played is not None:
                position = reply.heard(now)
            await session.interrupt(mid, position)
        await session.cancel(msg.message_id or "", "client interrupt")
