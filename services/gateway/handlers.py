"""Gateway: one `ClientSession` per WebSocket, relaying between the client and the bus.

The gateway is the natural supervisor of a live session: it asks an STT worker to own the
session's audio, publishes the client's frames, and relays the conversation's events and
reply audio back. Reply audio is released to the client in sentence order (TTS workers may
synthesise a reply's sentences in parallel), then an `audio.end` marker, then `audio.stored`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

import msgspec
from fastapi import WebSocket, WebSocketDisconnect
from nats.aio.msg import Msg as NatsMsg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from services.common import bus as busmod
from services.common import db, ids, metrics, schemas, subjects
from services.common.audio import AudioError, pcm16_to_array
from services.common.logs import ctx
from services.common.runtime import Service
from services.common.schemas import AudioMeta

from . import protocol
from .config import GatewaySettings
from .playout import Frame, Playout

log = logging.getLogger(__name__)

_REPLAY_MARGIN_S = 0.05
"""A takeover replays from just after the newest final's speech, inside the silence that ended it."""


class Gateway(Service):
    name = "gateway"

    def __init__(self, settings: GatewaySettings):
        super().__init__(settings)
        self.settings: GatewaySettings = settings
        self.sessions: set[ClientSession] = set()

    async def start(self) -> None:
        s = self.settings
        self.pool = await db.create_pool(s.database_url, s.db_pool_min, s.db_pool_max)
        self.on_close(self.pool.close)
        self.repo = db.Repo(self.pool)
        self.bus = await busmod.connect(s, self.name)
        self.on_close(self.bus.close)
        await busmod.ensure_streams(self.bus)

    def status(self) -> dict:
        return {"sessions": len(self.sessions)}

    async def drain(self) -> None:
        for session in list(self.sessions):
            await session.close(protocol.CLOSE_GOING_AWAY, "server shutting down")

    async def sign(self, keys: list[str]) -> dict[str, str]:
        """Audio URLs are issued by the storage service, which holds the bucket credentials."""
        if not keys:
            return {}
        try:
            reply = await self.bus.nc.request(
                subjects.STORAGE_SIGN, schemas.encode(schemas.SignRequest(keys=keys)), timeout=2.0
            )
            return schemas.decode(reply.data, schemas.SignReply).urls
        except (NatsTimeout, NoRespondersError):
            return {}


@dataclass
class _Reply:
    playout: Playout = field(default_factory=Playout)
    stored: schemas.AudioStored | None = None
    first_audio_sent: bool = False
    user_message_id: str | None = None
    latency_reported: bool = False
    spoken: bool = False
    """It answers a spoken turn of this session (a client may report its latency)."""


class ClientSession:
    def __init__(self, ws: WebSocket, gateway: Gateway):
        self.ws = ws
        self.gw = gateway
        self.bus = gateway.bus
        self.settings = gateway.settings
        self.conv = ""
        self.session_id = ids.new_id()
        self.out: asyncio.Queue = asyncio.Queue()
        self.seq = 0
        self.audio_seq = 0
        self.audio_samples = 0
        """Samples of mic audio published so far: each frame's offset in the session."""
        self.text_seq = 0
        self.replies: dict[str, _Reply] = {}
        self.interrupted: set[str] = set()
        self.speech_end_at: dict[str, float] = {}
        self._subs: list = []
        self._closed = False
        self._start: protocol.Start | None = None
        self._hotwords: str | None = None
        self.stt_worker = ""
        self._stt_seen = 0.0
        self._stt_leaving = False
        self._alive_sub = None
        self._watch: asyncio.Task | None = None
        self.last_final: tuple[int, float] | None = None
        """(utterance_seq, end_s) of the newest final transcript: a takeover replays after it."""

    # --- outgoing ---------------------------------------------------------------------------

    def send_event(self, ev: schemas.Event | dict) -> None:
        """Queue an event; one sender task writes to the socket so frames never interleave."""
        body = msgspec.to_builtins(ev) if isinstance(ev, msgspec.Struct) else dict(ev)
        self.seq += 1
        body["seq"] = self.seq
        self.out.put_nowait(("text", msgspec.json.encode(body).decode()))

    def error(self, code: str, message: str, **extra) -> None:
        ev = {
            "type": "error",
            "v": schemas.SCHEMA_VERSION,
            "conversation_id": self.conv or None,
            "code": code,
            "message": message,
            **extra,
        }
        self.send_event(ev)

    async def _sender(self) -> None:
        while True:
            kind, payload = await self.out.get()
            if kind == "close":
                return
            if kind == "text":
                await self.ws.send_text(payload)
            else:
                await self.ws.send_bytes(payload)

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        await self.ws.accept()
        start = await self._await_start()
        if start is None:
            return
        if not await self._setup(start):
            return
        self.gw.sessions.add(self)
        metrics.ACTIVE_SESSIONS.labels("gateway").set(len(self.gw.sessions))
        sender = asyncio.create_task(self._sender())
        try:
            await self._receive_loop()
        except WebSocketDisconnect:
            pass
        finally:
            self.gw.sessions.discard(self)
            metrics.ACTIVE_SESSIONS.labels("gateway").set(len(self.gw.sessions))
            await self._teardown()
            self.out.put_nowait(("close", None))
            try:
                await asyncio.wait_for(sender, 5)
            except Exception:
                sender.cancel()

    async def _await_start(self) -> protocol.Start | None:
        try:
            raw = await asyncio.wait_for(self.ws.receive_text(), self.settings.start_timeout_s)
        except TimeoutError:
            await self.ws.close(protocol.CLOSE_START_TIMEOUT, "no session.start in time")
            return None
        except (WebSocketDisconnect, KeyError, RuntimeError):
            await self._safe_close(protocol.CLOSE_BAD_START, "the first message must be a JSON session.start")
            return None
        try:
            msg = protocol.decoder.decode(raw)
        except msgspec.DecodeError as exc:
            await self._safe_close(protocol.CLOSE_BAD_START, f"bad session.start: {exc}"[:120])
            return None
        if not isinstance(msg, protocol.Start):
            await self._safe_close(protocol.CLOSE_BAD_START, "the first message must be session.start")
            return None
        if msg.protocol not in protocol.SUPPORTED_VERSIONS:
            await self._safe_close(protocol.CLOSE_UNSUPPORTED_VERSION, f"protocol {msg.protocol} unsupported")
            return None
        return msg

    async def _safe_close(self, code: int, reason: str) -> None:
        try:
            await self.ws.close(code, reason)
        except Exception:
            pass

    async def _setup(self, start: protocol.Start) -> bool:
        repo = self.gw.repo
        self.user_id = ids.user_id_for(start.user)
        await repo.ensure_user(self.user_id, start.user)
        try:
            # Canonical form: ids become subject tokens, so one conversation has one spelling.
            conversation_id = str(uuid.UUID(start.conversation_id)) if start.conversation_id else None
            avatar_ids = [str(uuid.UUID(a)) for a in start.avatar_ids] or [self.settings.default_avatar_id]
        except ValueError:
            await self._safe_close(protocol.CLOSE_BAD_START, "conversation_id and avatar_ids must be UUIDs")
            return False
        if conversation_id:
            owner = await repo.conversation_owner(conversation_id)
            if owner is None:
                await self._safe_close(protocol.CLOSE_NOT_FOUND, "no such conversation")
                return False
            if owner != self.user_id:
                await self._safe_close(protocol.CLOSE_FORBIDDEN, "not your conversation")
                return False
            self.conv = conversation_id
        else:
            for aid in avatar_ids:
                avatar = await repo.get_avatar(aid)
                if avatar is None or avatar.owner_id not in (None, self.user_id):
                    await self._safe_close(protocol.CLOSE_NOT_FOUND, f"no such avatar: {aid}"[:120])
                    return False
            self.conv = ids.new_id()
            await repo.create_conversation(self.conv, self.user_id, avatar_ids)
        self._subs.append(await self.bus.nc.subscribe(subjects.live_all(self.conv), cb=self._on_bus))
        self._subs.append(await self.bus.nc.subscribe(subjects.event_all(self.conv), cb=self._on_bus))
        self._subs.append(await self.bus.nc.subscribe(subjects.speech_all(self.conv), cb=self._on_bus))
        self._start = start
        stt_error = await self._open_stt(start)
        if stt_error is None:
            self._watch = asyncio.create_task(self._watch_stt())
        self.send_event(
            {
                "type": "session.started",
                "v": schemas.SCHEMA_VERSION,
                "protocol": protocol.PROTOCOL_VERSION,
                "conversation_id": self.conv,
                "session_id": self.session_id,
                "audio_in": {"encoding": "pcm_s16le", "sample_rate": 16000, "channels": 1},
                "audio_out": {"encoding": "pcm_s16le", "sample_rate": 24000, "channels": 1},
                "speech_input": stt_error is None,
            }
        )
        if stt_error is not None:
            self.error(*stt_error, retryable=True)
        log.info("session started", extra=ctx(conversation_id=self.conv, session_id=self.session_id))
        return True

    async def _open_stt(self, start: protocol.Start, takeover: bool = False) -> tuple[str, str] | None:
        """Find an STT worker for the session; the error code and message if none took it.

        Full workers are not in the `stt` queue group, so "no responders" means no worker
        has room: a heartbeat heard on `parley.stt.alive.*` tells whether any is running
        (no capacity) or none (unavailable). A takeover asks the new worker to replay the
        session's audio from just after the newest final transcript."""
        if self._hotwords is None:
            # The avatars' names are what recognition most often gets wrong and must not.
            self._hotwords = ", ".join(a.name for a in await self.gw.repo.conversation_avatars(self.conv))
        req = schemas.SttOpen(
            conversation_id=self.conv,
            session_id=self.session_id,
            language=start.language,
            end_of_turn_ms=start.end_of_turn_ms,
            prompt=self._hotwords or None,
        )
        if takeover:
            req.replay_from_s = self.last_final[1] + _REPLAY_MARGIN_S if self.last_final else 0.0
            req.first_utterance_seq = self.last_final[0] + 1 if self.last_final else 0
        last = "no speech recognition worker answered"
        for _ in range(self.settings.stt_open_attempts):
            try:
                reply = await self.bus.nc.request(
                    subjects.STT_OPEN, schemas.encode(req), timeout=self.settings.stt_open_timeout_s
                )
                opened = schemas.decode(reply.data, schemas.SttOpened)
                if opened.ok:
                    await self._follow(opened.worker_id)
                    return None
                last = opened.error
            except NoRespondersError:
                last = ""
            except NatsTimeout:
                last = "no speech recognition worker answered"
            await asyncio.sleep(0.1)
        if not last:
            last = "no_capacity" if await self._any_stt_worker() else "no speech recognition worker is running"
        code = "no_capacity" if last == "no_capacity" else "stt_unavailable"
        return code, f"speech input is unavailable: {last}; typed text still works"

    async def _any_stt_worker(self) -> bool:
        heard = asyncio.Event()

        async def on_beat(msg: NatsMsg) -> None:
            heard.set()

        sub = await self.bus.nc.subscribe(subjects.stt_alive("*"), cb=on_beat)
        try:
            await asyncio.wait_for(heard.wait(), min(1.0, self.settings.stt_takeover_after_s))
            return True
        except TimeoutError:
            return False
        finally:
            await sub.unsubscribe()

    async def _follow(self, worker_id: str) -> None:
        """Watch the heartbeat of the worker that owns the session's audio."""
        if self._alive_sub is not None:
            await self._alive_sub.unsubscribe()
        self.stt_worker = worker_id
        self._stt_seen = time.monotonic()
        self._stt_leaving = False

        async def on_beat(msg: NatsMsg) -> None:
            try:
                alive = schemas.decode(msg.data, schemas.SttAlive)
            except msgspec.DecodeError:
                return
            self._stt_seen = time.monotonic()
            self._stt_leaving = self._stt_leaving or alive.leaving

        self._alive_sub = await self.bus.nc.subscribe(subjects.stt_alive(worker_id), cb=on_beat)

    async def _watch_stt(self) -> None:
        """Move the session to another STT worker when its owner stops beating or leaves."""
        while not self._closed:
            await asyncio.sleep(0.25)
            silent = time.monotonic() - self._stt_seen > self.settings.stt_takeover_after_s
            if not (silent or self._stt_leaving) or self._start is None:
                continue
            old = self.stt_worker
            log.warning(
                "STT worker %s %s; moving the session",
                old,
                "is leaving" if self._stt_leaving else "stopped answering",
                extra=ctx(conversation_id=self.conv, session_id=self.session_id),
            )
            error = await self._open_stt(self._start, takeover=True)
            if error is not None:
                self.error(*error, retryable=True)
                self._stt_seen = time.monotonic()  # try again after another silent spell
                continue
            metrics.EVENTS.labels("gateway", "stt_takeover").inc()
            await self.bus.publish(
                subjects.control(self.conv),
                schemas.SessionControl(
                    conversation_id=self.conv, session_id=self.session_id, action="release", worker_id=old
                ),
            )

    async def _teardown(self) -> None:
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
        if self._alive_sub is not None:
            self._subs.append(self._alive_sub)
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        if self.conv:
            try:
                await self.bus.publish(
                    subjects.control(self.conv),
                    schemas.SessionControl(conversation_id=self.conv, session_id=self.session_id, action="end"),
                )
            except Exception:
                log.warning("could not announce session end", extra=ctx(conversation_id=self.conv))

    async def close(self, code: int, reason: str) -> None:
        self.out.put_nowait(("close", None))
        await self._safe_close(code, reason)

    # --- incoming ---------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await self._on_audio(message["bytes"])
            elif message.get("text") is not None:
                await self._on_text(message["text"])

    async def _on_audio(self, frame: bytes) -> None:
        if len(frame) > self.settings.max_audio_frame_bytes:
            self.error("frame_too_large", f"audio frames are limited to {self.settings.max_audio_frame_bytes} bytes")
            return
        try:
            pcm16_to_array(frame)
        except AudioError as exc:
            self.error("bad_audio_frame", str(exc))
            return
        meta = AudioMeta(
            conversation_id=self.conv, session_id=self.session_id, chunk_seq=self.audio_seq, offset=self.audio_samples
        )
        self.audio_seq += 1
        self.audio_samples += len(frame) // 2
        await self.bus.nc.publish(subjects.audio_in(self.conv), frame, headers=meta.headers())

    async def _on_text(self, raw: str) -> None:
        try:
            msg = protocol.decoder.decode(raw)
        except msgspec.ValidationError as exc:
            self.error("unknown_message", f"message not understood: {exc}")
            return
        except msgspec.DecodeError as exc:
            self.error("malformed_json", f"not valid JSON: {exc}")
            return
        if isinstance(msg, protocol.Text):
            await self._on_user_text(msg)
        elif isinstance(msg, protocol.Interrupt):
            await self._on_interrupt(msg)
        elif isinstance(msg, protocol.End):
            await self.close(1000, "session ended")
        elif isinstance(msg, protocol.Latency):
            self._on_latency(msg)
        else:
            self.error("unexpected_message", "session.start was already received")

    def _on_latency(self, msg: protocol.Latency) -> None:
        """Counted once per spoken reply this session relayed; anything else is refused."""
        reply = self.replies.get(msg.message_id)
        if reply is None or not reply.spoken or reply.latency_reported:
            self.error("unknown_reply", "latency is reported once per spoken reply of this session")
            return
        reply.latency_reported = True
        metrics.CLIENT_VOICE_TO_VOICE_SECONDS.observe(msg.voice_to_voice_ms / 1000)

    async def _on_user_text(self, msg: protocol.Text) -> None:
        text = msg.text.strip()
        if not text:
            self.error("empty_text", "text messages must not be empty")
            return
        if len(text) > self.settings.max_text_chars:
            self.error("text_too_long", f"text messages are limited to {self.settings.max_text_chars} characters")
            return
        seq = msg.client_seq if msg.client_seq is not None else self.text_seq
        self.text_seq = seq + 1
        message_id = ids.user_message_id(self.conv, self.session_id, "text", seq)
        turn = schemas.UserTurn(
            conversation_id=self.conv,
            message_id=message_id,
            session_id=self.session_id,
            turn_seq=seq,
            source="text",
            text=text,
            marks={"received": time.time()},
        )
        await self.bus.publish_fact(subjects.turn(self.conv), turn, msg_id=message_id)
        self.send_event(schemas.UserMessage(conversation_id=self.conv, message_id=message_id, text=text))

    async def _on_interrupt(self, msg: protocol.Interrupt) -> None:
        if msg.message_id:
            try:
                targets = [str(uuid.UUID(msg.message_id))]
            except ValueError:
                self.error("bad_message_id", "interrupt.message_id must be a reply's message id")
                return
        else:
            targets = [m for m, r in self.replies.items() if not r.playout.ended]
        for mid in targets:
            self.interrupted.add(mid)
            position = msg.message_id is not None and msg.sentence_index is not None
            await self.bus.publish_fact(
                subjects.interrupt(self.conv),
                schemas.Interruption(
                    conversation_id=self.conv,
                    message_id=mid,
                    sentence_index=msg.sentence_index if position else None,
                    offset_s=(msg.offset_ms or 0) / 1000 if position else None,
                ),
                msg_id=f"interrupt.{mid}",
            )
        await self.bus.publish(
            subjects.control(self.conv),
            schemas.SessionControl(
                conversation_id=self.conv,
                session_id=self.session_id,
                action="cancel",
                message_id=msg.message_id or "",
                reason="client interrupt",
            ),
        )

    # --- from the bus -----------------------------------------------------------------------

    def _reply(self, message_id: str) -> _Reply:
        return self.replies.setdefault(message_id, _Reply())

    async def _on_bus(self, msg: NatsMsg) -> None:
        if self._closed:
            return
        if msg.subject.startswith("parley.speech."):
            meta = AudioMeta.from_headers(msg.headers)
            self._play(
                meta.message_id,
                self._reply(meta.message_id).playout.whole(
                    meta.sentence_index, msg.data, meta.sample_rate, meta.status == "ok"
                ),
            )
            return
        if msg.subject.startswith("parley.live.") and msg.subject.endswith(".audio"):
            meta = AudioMeta.from_headers(msg.headers)
            self._play(
                meta.message_id,
                self._reply(meta.message_id).playout.chunk(
                    meta.sentence_index, meta.chunk_seq, msg.data, meta.last, meta.sample_rate
                ),
            )
            return
        try:
            ev = schemas.decode_event(msg.data)
        except msgspec.DecodeError:
            log.warning("undecodable event on %s", msg.subject)
            return
        if isinstance(ev, schemas.TranscriptFinal):
            if ev.speech_end_at:
                self.speech_end_at[ev.message_id] = ev.speech_end_at
            if ev.session_id == self.session_id and ev.end_s is not None:
                if self.last_final is None or ev.utterance_seq > self.last_final[0]:
                    self.last_final = (ev.utterance_seq, ev.end_s)
        elif isinstance(ev, schemas.ReplyStarted):
            self._reply(ev.message_id).user_message_id = ev.user_message_id
        elif isinstance(ev, schemas.ReplyCompleted):
            self.send_event(ev)
            self._play(ev.message_id, self._reply(ev.message_id).playout.count(ev.sentence_count))
            return
        elif isinstance(ev, schemas.ReplyInterrupted):
            self._reply(ev.message_id).playout.ended = True  # nothing more is played of it
        elif isinstance(ev, schemas.SentenceFailed):
            self.send_event(ev)
            self._play(ev.message_id, self._reply(ev.message_id).playout.failed(ev.sentence_index))
            return
        elif isinstance(ev, schemas.AudioStored):
            reply = self._reply(ev.message_id)
            if not reply.playout.ended:
                reply.stored = ev  # the URL follows the end-of-message marker
                return
        self.send_event(ev)

    def _play(self, message_id: str, frames: list[Frame]) -> None:
        """Send what may be heard now; then, once the reply is complete, the end marker and URL."""
        reply = self._reply(message_id)
        if message_id not in self.interrupted:
            for frame in frames:
                self._send_audio(message_id, reply, frame)
        playout = reply.playout
        if not playout.ended and playout.complete:
            playout.ended = True
            self.send_event(
                {
                    "type": "audio.end",
                    "v": schemas.SCHEMA_VERSION,
                    "conversation_id": self.conv,
                    "message_id": message_id,
                    "sentence_count": playout.sentence_count,
                }
            )
            if reply.stored is not None:
                self.send_event(reply.stored)

    def _send_audio(self, message_id: str, reply: _Reply, frame: Frame) -> None:
        if not reply.first_audio_sent:
            reply.first_audio_sent = True
            spoke_at = self.speech_end_at.pop(reply.user_message_id or "", None)
            reply.spoken = spoke_at is not None
            if spoke_at:
                metrics.VOICE_TO_VOICE_SECONDS.observe(time.time() - spoke_at)
        self.out.put_nowait(
            (
                "bytes",
                protocol.audio_frame(message_id, frame.sentence_index, frame.chunk_seq, frame.sample_rate, frame.pcm),
            )
        )
