"""Gateway: one `ClientSession` per WebSocket, relaying between the client and the bus.

The gateway is the natural supervisor of a live session: it asks an STT worker to own the
session's audio, publishes the client's frames, and relays the conversation's events and
reply audio back. Reply audio is released to the client in sentence order (TTS workers may
synthesise a reply's sentences in parallel), then an `audio.end` marker, then `audio.stored`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass, field

import msgspec
from fastapi import WebSocket, WebSocketDisconnect
from nats.aio.msg import Msg as NatsMsg
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ConsumerConfig, DeliverPolicy

from services.common import bus as busmod
from services.common import db, ids, metrics, schemas, speech, subjects
from services.common.audio import AudioError, pcm16_to_array
from services.common.logs import ctx
from services.common.runtime import Service
from services.common.schemas import AudioMeta

from . import events, protocol
from .auth import Authenticator, AuthError, bearer
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
        self.auth = Authenticator(s, self.repo)
        self.bus = await busmod.connect(s, self.name)
        self.on_close(self.bus.close)
        await busmod.ensure_streams(self.bus)
        renewer = asyncio.create_task(self._renew_forever())
        self.on_close(lambda: _cancel(renewer))

    async def _renew_forever(self) -> None:
        """Keep this replica's session records fresh: a replica that dies stops renewing, and
        its sessions stop counting against their users' limits and become resumable."""
        while True:
            await asyncio.sleep(self.settings.session_lease_s)
            try:
                await self.repo.renew_sessions([s.resume_id for s in self.sessions])
            except Exception:
                log.exception("could not renew session records")

    def status(self) -> dict:
        return {"sessions": len(self.sessions)}

    async def drain(self) -> None:
        await self.release_clients()

    async def release_clients(self) -> None:
        """Close every socket with 1001; the sessions stay resumable through another replica."""
        for session in list(self.sessions):
            session.close(protocol.CLOSE_GOING_AWAY, "server shutting down; resume on another gateway")
        deadline = time.monotonic() + 5
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

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


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()


@dataclass
class _Reply:
    playout: Playout = field(default_factory=Playout)
    stored: tuple[events.AudioStored, int] | None = None
    """The stored event and its cursor: sent after the end-of-audio marker."""
    first_audio_at: float | None = None
    """Monotonic time its first audio frame was queued for the client."""
    user_message_id: str | None = None
    latency_reported: bool = False
    spoken: bool = False
    """It answers a spoken turn of this session (a client may report its latency)."""
    sentence_s: dict[int, float] = field(default_factory=dict)
    """Seconds of audio sent to the client, per sentence."""
    played: tuple[float, float] | None = None
    """The client's newest playback report: (ms played, monotonic time of the report)."""
    playback_ended: bool = False

    def played_s(self, now: float) -> float:
        """How far the client has played: its report carried forward in real time, or without
        one, real time since the first frame went out; never more than was sent."""
        if self.played is not None:
            ms, at = self.played
            estimate = ms / 1000 + (0.0 if self.playback_ended else now - at)
        else:
            estimate = now - (self.first_audio_at or now)
        return min(estimate, sum(self.sentence_s.values()))

    def playing(self, now: float) -> bool:
        if self.first_audio_at is None or self.playback_ended:
            return False
        return not self.playout.ended or self.played_s(now) < sum(self.sentence_s.values())

    def heard(self, now: float) -> tuple[int, float]:
        """(sentence index, seconds into it) the client had played."""
        left = self.played_s(now)
        index, offset = 0, 0.0
        for index in sorted(self.sentence_s):
            offset = min(left, self.sentence_s[index])
            left -= offset
            if left <= 0:
                break
        return index, offset


class ClientSession:
    def __init__(self, ws: WebSocket, gateway: Gateway):
        self.ws = ws
        self.gw = gateway
        self.bus = gateway.bus
        self.settings = gateway.settings
        self.conv = ""
        self.user_id = ""
        self.session_id = ids.new_id()
        """This connection's audio session on the bus (STT, speech events, control)."""
        self.resume_id = self.session_id
        """The client-facing session: stable across resumes, the key of its stored record."""
        self.out: asyncio.Queue = asyncio.Queue()
        self.seq = 0
        self.cursor = 0
        """The newest final event's sequence in PARLEY_EVENTS: a client resumes after it."""
        self.audio_seq = 0
        self.audio_samples = 0
        """Samples of mic audio published so far: each frame's offset in the session."""
        self.text_seq = 0
        self.replies: dict[str, _Reply] = {}
        self.interrupted: set[str] = set()
        self.speech_end_at: dict[str, float] = {}
        self._audio_before_final: dict[str, tuple[_Reply, float]] = {}
        self._subs: list = []
        self._fills: set[asyncio.Task] = set()
        self._closed = False
        self._live = False
        """Live events flow only once `session.started` is queued: it is always seq 1."""
        self._recorded = False
        self.end_reason = "dropped"
        self._start: protocol.Start | None = None
        self._hotwords: str | None = None
        self.stt_worker = ""
        self._stt_seen = 0.0
        self._stt_leaving = False
        self._alive_sub = None
        self._watch: asyncio.Task | None = None
        self.last_final: tuple[int, float] | None = None
        """(utterance_seq, end_s) of the newest final transcript: a takeover replays after it."""
        now = time.monotonic()
        self.opened_at = now
        self.last_heard = now
        self._audio_budget = self.settings.audio_burst_s * 16000
        self._budget_at = now
        self._rate_error_at = 0.0
        self._bus_error_at = 0.0

    # --- outgoing ---------------------------------------------------------------------------

    def send_event(self, ev: events.ClientEvent, cursor: int | None = None) -> None:
        """Queue an event; one sender task writes to the socket so frames never interleave."""
        self.seq += 1
        self.out.put_nowait(("text", events.to_json(ev, self.seq, cursor)))

    def error(self, code: str, message: str, retryable: bool = False) -> None:
        self.send_event(
            events.Error(conversation_id=self.conv or None, code=code, message=message, retryable=retryable)
        )

    async def _sender(self) -> None:
        while True:
            kind, payload = await self.out.get()
            if kind == "close":
                if payload is not None:
                    await self._safe_close(*payload)
                return
            if kind == "text":
                await self.ws.send_text(payload)
            else:
                await self.ws.send_bytes(payload)

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        await self._accept()
        if not self.gw.auth.origin_allowed(self.ws.headers.get("origin"), self.ws.headers.get("host")):
            await self._safe_close(protocol.CLOSE_FORBIDDEN, "origin not allowed")
            return
        start = await self._await_start()
        if start is None:
            return
        try:
            principal = await self.gw.auth.authenticate(bearer(self.ws.headers.get("authorization")) or start.token)
        except AuthError as exc:
            await self._safe_close(protocol.CLOSE_UNAUTHENTICATED, f"{exc.code}: {exc.message}"[:120])
            return
        self.user_id = principal.user_id
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

    async def _accept(self) -> None:
        """Complete the WebSocket handshake (a protocol adapter picks its own subprotocol)."""
        offered = self.ws.scope.get("subprotocols") or []
        await self.ws.accept(subprotocol=protocol.SUBPROTOCOL if protocol.SUBPROTOCOL in offered else None)

    async def _await_start(self) -> protocol.Start | None:
        try:
            raw = await asyncio.wait_for(self.ws.receive_text(), self.settings.start_timeout_s)
        except TimeoutError:
            await self._safe_close(protocol.CLOSE_START_TIMEOUT, "no session.start in time")
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
        s = self.settings
        try:
            # Canonical form: ids become subject tokens, so one conversation has one spelling.
            conversation_id = str(uuid.UUID(start.conversation_id)) if start.conversation_id else None
            avatar_ids = [str(uuid.UUID(a)) for a in start.avatar_ids] or [s.default_avatar_id]
            resume_id = str(uuid.UUID(start.resume.session_id)) if start.resume else None
        except ValueError:
            await self._safe_close(
                protocol.CLOSE_BAD_START, "conversation_id, avatar_ids and resume.session_id must be UUIDs"
            )
            return False
        resumed = None
        if resume_id:
            resumed = await repo.resumable_session(resume_id, dt.timedelta(seconds=s.resume_grace_s))
            if resumed is None or resumed["user_id"] != self.user_id:
                await self._safe_close(
                    protocol.CLOSE_RESUME_EXPIRED, "session cannot be resumed (unknown, ended or past its grace)"
                )
                return False
            if conversation_id not in (None, resumed["conversation_id"]):
                await self._safe_close(protocol.CLOSE_BAD_START, "resume.session_id belongs to another conversation")
                return False
            conversation_id = resumed["conversation_id"]
            options = resumed["options"]
            start.language = start.language or options.get("language")
            start.end_of_turn_ms = start.end_of_turn_ms or options.get("end_of_turn_ms")
            self.resume_id = resume_id
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
        opened = await repo.open_session(
            self.resume_id,
            self.user_id,
            self.conv,
            self._connection,
            {"language": start.language, "end_of_turn_ms": start.end_of_turn_ms},
            s.max_sessions_per_user,
            dt.timedelta(seconds=2 * s.session_lease_s),
        )
        if not opened:
            await self._safe_close(
                protocol.CLOSE_TOO_MANY_SESSIONS, f"at most {s.max_sessions_per_user} live sessions per user"
            )
            return False
        self._recorded = True
        if resumed is not None:
            # The dropped connection, if its gateway has not noticed yet, lets go now.
            await self.bus.publish(
                subjects.control(self.conv),
                schemas.SessionControl(conversation_id=self.conv, session_id=self.resume_id, action="resumed"),
            )
        self._subs.append(await self.bus.nc.subscribe(subjects.live_all(self.conv), cb=self._on_live))
        self._subs.append(await self.bus.nc.subscribe(subjects.speech_all(self.conv), cb=self._on_live))
        self._subs.append(await self.bus.nc.subscribe(subjects.control(self.conv), cb=self._on_control))
        self._start = start
        stt_error = await self._open_stt(start)
        if stt_error is None:
            self._watch = asyncio.create_task(self._watch_stt())
        self.send_event(
            events.SessionStarted(
                protocol=protocol.PROTOCOL_VERSION,
                conversation_id=self.conv,
                session_id=self.resume_id,
                audio_session_id=self.session_id,
                resumed=resumed is not None,
                audio_in=events.AudioFormat(sample_rate=16000),
                audio_out=events.AudioFormat(sample_rate=24000),
                speech_input=stt_error is None,
            )
        )
        self._live = True
        # Final events from here on (after the client's cursor when resuming), each with its cursor.
        if resumed is None:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
        elif start.resume.last_cursor is not None:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start.resume.last_cursor + 1
            )
        else:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME,
                opt_start_time=resumed["started_at"].isoformat(),
            )
        self._subs.append(
            await self.bus.js.subscribe(
                subjects.event_all(self.conv),
                stream=subjects.EVENTS_STREAM,
                ordered_consumer=True,
                config=config,
                cb=self._on_event,
            )
        )
        if stt_error is not None:
            self.error(*stt_error, retryable=True)
        log.info(
            "session %s",
            "resumed" if resumed else "started",
            extra=ctx(conversation_id=self.conv, session_id=self.session_id),
        )
        return True

    @property
    def _connection(self) -> str:
        return f"{self.settings.instance_id}/{self.session_id}"

    async def _open_stt(self, start: protocol.Start, takeover: bool = False) -> tuple[str, str] | None:
        """Find an STT worker for the session; the error code and message if none took it.

        Full workers are not in the `stt` queue group, so "no responders" means no worker
        has room: a heartbeat heard on `parley.stt.alive.*` tells whether any is running
        (no capacity) or none (unavailable). A takeover asks the new worker to replay the
        session's audio from just after the newest final transcript."""
        if self._hotwords is None:
            # The avatars' names are what recognition most often gets wrong and must not.
            self._hotwords = ", ".join(a.name for a in await self.gw.repo.conversation_avatars(self.conv))
        req = self._stt_open_request(start)
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

    def _stt_open_request(self, start: protocol.Start) -> schemas.SttOpen:
        """What the STT worker is asked to do with the session's audio (an adapter adds its options)."""
        return schemas.SttOpen(
            conversation_id=self.conv,
            session_id=self.session_id,
            language=start.language,
            end_of_turn_ms=start.end_of_turn_ms,
            prompt=self._hotwords or None,
            partials=start.partials,
        )

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
            beat_again = time.monotonic() - self._stt_seen < self.settings.stt_takeover_after_s
            if error is not None and beat_again and not self._stt_leaving:
                continue  # the owner was slow, not gone: it beat again while no other answered
            if error is not None:
                self.error(*error, retryable=True)
                self._stt_seen = time.monotonic()  # try again after another silent spell
                continue
            metrics.EVENTS.labels("gateway", "stt_takeover").inc()
            if self.stt_worker == old:
                continue  # the owner took its own session back (after a bus outage): nothing to release
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
        for fill in list(self._fills):
            fill.cancel()
        if self._alive_sub is not None:
            self._subs.append(self._alive_sub)
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        if not self.conv:
            return
        try:
            await self.bus.publish(
                subjects.control(self.conv),
                schemas.SessionControl(conversation_id=self.conv, session_id=self.session_id, action="end"),
            )
        except Exception:
            log.warning("could not announce session end", extra=ctx(conversation_id=self.conv))
        if self._recorded and self.end_reason != "resumed":
            try:
                await self.gw.repo.end_session(self.resume_id, self._connection, self.end_reason)
            except Exception:
                log.warning("could not record session end", extra=ctx(conversation_id=self.conv))

    def close(self, code: int, reason: str, end_reason: str | None = None) -> None:
        """Close after everything already queued has been sent (an error event explaining why)."""
        if end_reason is not None:
            self.end_reason = end_reason
        self.out.put_nowait(("close", (code, reason)))

    # --- incoming ---------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        """Frames in until the client leaves, goes idle or outstays the session length. One
        watchdog per session keeps those deadlines, not a timer armed and cancelled for every
        frame (tens of thousands a second at hundreds of sessions)."""
        self._waiting = False
        self._expired = False
        watchdog = asyncio.create_task(self._watchdog(asyncio.current_task()))
        try:
            while not self._expired:
                self._waiting = True
                try:
                    message = await self.ws.receive()
                except asyncio.CancelledError:
                    if self._expired and asyncio.current_task().uncancel() == 0:
                        return
                    raise
                finally:
                    self._waiting = False
                self.last_heard = time.monotonic()
                if message["type"] == "websocket.disconnect":
                    return
                try:
                    if message.get("bytes") is not None:
                        await self._on_audio(message["bytes"])
                    elif message.get("text") is not None:
                        await self._on_text(message["text"])
                except (TimeoutError, NatsError) as exc:
                    # The bus is down or reconnecting: the client hears it (once a second at
                    # most) and may resend; a text with client_seq is the same turn again.
                    now = time.monotonic()
                    if now - self._bus_error_at >= 1.0:
                        self._bus_error_at = now
                        self.error(
                            "bus_unavailable",
                            f"the message could not be passed on ({type(exc).__name__}); send it again",
                            retryable=True,
                        )
        finally:
            watchdog.cancel()

    async def _watchdog(self, receiver: asyncio.Task) -> None:
        """Sleep to the nearer of the idle and session-length deadlines; at it, say why and
        close. A receiver busy with a frame finishes it first."""
        s = self.settings
        while True:
            now = time.monotonic()
            idle_left = self.last_heard + s.idle_timeout_s - now
            life_left = self.opened_at + s.max_session_s - now
            if min(idle_left, life_left) > 0:
                await asyncio.sleep(min(idle_left, life_left))
                continue
            if life_left <= idle_left:
                self.error("session_too_long", f"sessions last at most {s.max_session_s:g} s; start a new one")
                self.close(protocol.CLOSE_SESSION_TOO_LONG, "maximum session length", "max_length")
            else:
                self.error("idle_timeout", f"nothing received for {s.idle_timeout_s:g} s")
                self.close(protocol.CLOSE_IDLE, "idle timeout", "idle")
            self._expired = True
            if self._waiting:
                receiver.cancel()
            return

    def _within_rate(self, samples: int) -> bool:
        """A token bucket of audio: real time times max_audio_rate, after a burst allowance."""
        s = self.settings
        now = time.monotonic()
        capacity = s.audio_burst_s * 16000
        self._audio_budget = min(capacity, self._audio_budget + (now - self._budget_at) * 16000 * s.max_audio_rate)
        self._budget_at = now
        if samples > self._audio_budget:
            return False
        self._audio_budget -= samples
        return True

    async def _on_audio(self, frame: bytes) -> None:
        if len(frame) > self.settings.max_audio_frame_bytes:
            self.error("frame_too_large", f"audio frames are limited to {self.settings.max_audio_frame_bytes} bytes")
            return
        try:
            pcm16_to_array(frame)
        except AudioError as exc:
            self.error("bad_audio_frame", str(exc))
            return
        if not self._within_rate(len(frame) // 2):
            metrics.EVENTS.labels("gateway", "audio_dropped_too_fast").inc()
            now = time.monotonic()
            if now - self._rate_error_at >= 1.0:
                self._rate_error_at = now
                self.error(
                    "audio_too_fast",
                    f"mic audio arrives faster than {self.settings.max_audio_rate:g}x real time; frames are dropped",
                )
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
        elif isinstance(msg, protocol.Playback):
            self._on_playback(msg)
        elif isinstance(msg, protocol.End):
            self.close(1000, "session ended", "client")
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

    def _on_playback(self, msg: protocol.Playback) -> None:
        reply = self.replies.get(msg.message_id)
        if reply is None or reply.first_audio_at is None:
            self.error("unknown_reply", "playback is reported for replies whose audio this session sent")
            return
        reply.played = (msg.played_ms, time.monotonic())
        reply.playback_ended = reply.playback_ended or msg.ended

    async def _on_user_text(self, msg: protocol.Text) -> None:
        text = msg.text.strip()
        if not text:
            self.error("empty_text", "text messages must not be empty")
            return
        if len(text) > self.settings.max_text_chars:
            self.error("text_too_long", f"text messages are limited to {self.settings.max_text_chars} characters")
            return
        if msg.client_seq is not None:
            # The client's numbering spans resumes: a resend after a reconnect is the same turn.
            seq, namespace = msg.client_seq, self.resume_id
        else:
            seq, namespace = self.text_seq, self.session_id
            self.text_seq += 1
        message_id = ids.user_message_id(self.conv, namespace, "text", seq)
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
        self.send_event(events.UserMessage(conversation_id=self.conv, message_id=message_id, text=text))

    async def _on_interrupt(self, msg: protocol.Interrupt) -> None:
        now = time.monotonic()
        if msg.message_id:
            try:
                targets = [str(uuid.UUID(msg.message_id))]
            except ValueError:
                self.error("bad_message_id", "interrupt.message_id must be a reply's message id")
                return
            if targets[0] not in self.replies:
                # Only a reply this session relayed: an id from anywhere else (another user's
                # conversation included) must not reach the orchestrator.
                self.error("unknown_reply", "interrupt.message_id is not a reply of this session")
                return
        else:
            targets = [m for m, r in self.replies.items() if not r.playout.ended or r.playing(now)]
        for mid in targets:
            position = None
            if msg.message_id is not None and msg.sentence_index is not None:
                position = (msg.sentence_index, (msg.offset_ms or 0) / 1000)
            elif (reply := self.replies.get(mid)) is not None and reply.played is not None:
                position = reply.heard(now)
            await self._interrupt(mid, position)
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

    async def _interrupt(self, message_id: str, position: tuple[int, float] | None, fact_id: str | None = None) -> None:
        """Stop forwarding the reply's audio and have it stored as heard up to `position`.

        One interruption per reply is kept (de-duplicated by id) unless `fact_id` names a later one."""
        self.interrupted.add(message_id)
        await self.bus.publish_fact(
            subjects.interrupt(self.conv),
            schemas.Interruption(
                conversation_id=self.conv,
                message_id=message_id,
                sentence_index=position[0] if position else None,
                offset_s=position[1] if position else None,
            ),
            msg_id=fact_id or f"interrupt.{message_id}",
        )

    async def _barge_in(self) -> None:
        """The person started speaking: any reply still playing stops where playback stood."""
        now = time.monotonic()
        playing = [(mid, r) for mid, r in self.replies.items() if mid not in self.interrupted and r.playing(now)]
        for mid, reply in playing:
            position = reply.heard(now)
            self.send_event(
                events.PlaybackStop(
                    conversation_id=self.conv,
                    message_id=mid,
                    sentence_index=position[0],
                    offset_ms=round(position[1] * 1000),
                )
            )
            await self._interrupt(mid, position)
            metrics.EVENTS.labels("gateway", "barge_in").inc()
            await self.bus.publish(
                subjects.control(self.conv),
                schemas.SessionControl(
                    conversation_id=self.conv,
                    session_id=self.session_id,
                    action="cancel",
                    message_id=mid,
                    reason="barge-in",
                ),
            )

    # --- from the bus -----------------------------------------------------------------------

    async def _on_control(self, msg: NatsMsg) -> None:
        try:
            ctl = schemas.decode(msg.data, schemas.SessionControl)
        except msgspec.DecodeError:
            return
        if ctl.action == "resumed" and ctl.session_id == self.resume_id and not self._closed:
            self.close(protocol.CLOSE_SUPERSEDED, "session resumed on another connection", "resumed")

    async def _on_live(self, msg: NatsMsg) -> None:
        """Live media and events (core NATS): audio of replies this connection saw start."""
        if self._closed or not self._live:
            return
        if subjects.is_speech(msg.subject):
            meta = AudioMeta.from_headers(msg.headers)
            if (reply := self.replies.get(meta.message_id)) is not None:
                self._play(
                    meta.message_id,
                    reply.playout.whole(meta.sentence_index, msg.data, meta.sample_rate, meta.status == "ok"),
                )
            return
        if msg.subject.endswith(".audio"):
            meta = AudioMeta.from_headers(msg.headers)
            if (reply := self.replies.get(meta.message_id)) is not None:
                self._play(
                    meta.message_id,
                    reply.playout.chunk(meta.sentence_index, meta.chunk_seq, msg.data, meta.last, meta.sample_rate),
                )
            return
        try:
            ev = events.from_bus(msg.data)
        except msgspec.DecodeError:
            log.warning("undecodable event on %s", msg.subject)
            return
        if isinstance(ev, events.ReplyStarted):
            self.replies.setdefault(ev.message_id, _Reply()).user_message_id = ev.user_message_id
        elif isinstance(ev, events.SpeechStarted) and ev.session_id == self.session_id:
            self.send_event(ev)
            if self._start is not None and self._start.barge_in:
                await self._barge_in()
            return
        self.send_event(ev)

    async def _on_event(self, msg: NatsMsg) -> None:
        """Final events (PARLEY_EVENTS, in order, each with its cursor). A reply this connection
        did not see start (it began before a resume) gets its final form only, no audio."""
        if self._closed:
            return
        cursor = msg.metadata.sequence.stream
        self.cursor = max(self.cursor, cursor)
        try:
            ev = events.from_bus(msg.data)
        except msgspec.DecodeError:
            log.warning("undecodable event on %s", msg.subject)
            return
        mid = getattr(ev, "message_id", None)
        reply = self.replies.get(mid) if mid else None
        if isinstance(ev, events.TranscriptFinal):
            if ev.speech_end_at:
                early = self._audio_before_final.pop(ev.message_id, None)
                if early is None:
                    self.speech_end_at[ev.message_id] = ev.speech_end_at
                else:
                    early[0].spoken = True
                    metrics.VOICE_TO_VOICE_SECONDS.observe(early[1] - ev.speech_end_at)
            if ev.session_id == self.session_id and ev.end_s is not None:
                if self.last_final is None or ev.utterance_seq > self.last_final[0]:
                    self.last_final = (ev.utterance_seq, ev.end_s)
        elif reply is None:
            pass
        elif isinstance(ev, events.ReplyDone):
            self.send_event(ev, cursor)
            self._play(ev.message_id, reply.playout.count(ev.sentence_count))
            return
        elif isinstance(ev, events.ReplyInterrupted):
            reply.playout.ended = True  # nothing more is played of it
        elif isinstance(ev, events.SentenceFailed):
            self.send_event(ev, cursor)
            self._play(ev.message_id, reply.playout.failed(ev.sentence_index))
            return
        elif isinstance(ev, events.AudioStored) and not reply.playout.ended:
            reply.stored = (ev, cursor)  # the URL follows the end-of-message marker
            fill = asyncio.create_task(self._fill_from_store(ev.message_id))
            self._fills.add(fill)
            fill.add_done_callback(self._fills.discard)
            return
        self.send_event(ev, cursor)

    async def _fill_from_store(self, message_id: str) -> None:
        """The reply is stored, so every sentence is in PARLEY_SPEECH. What has not arrived live
        a moment later (lost while the bus was down) is read back from there, so the reply
        plays to its end and the end marker and URL follow."""
        await asyncio.sleep(self.settings.audio_fill_after_s)
        reply = self.replies.get(message_id)
        if self._closed or reply is None or reply.playout.ended or reply.playout.sentence_count is None:
            return
        playout = reply.playout
        for index in range(playout.next_sentence, playout.sentence_count):
            sentence = await speech.read(self.bus, self.conv, message_id, index)
            if sentence is None:
                frames = playout.failed(index)
            else:
                frames = playout.whole(index, sentence.pcm16, sentence.sample_rate, sentence.ok)
            metrics.EVENTS.labels("gateway", "audio_filled_from_store").inc()
            self._play(message_id, frames)
            if playout.ended:
                return

    def _play(self, message_id: str, frames: list[Frame]) -> None:
        """Send what may be heard now; then, once the reply is complete, the end marker and URL."""
        reply = self.replies[message_id]
        if message_id not in self.interrupted:
            for frame in frames:
                self._send_audio(message_id, reply, frame)
        playout = reply.playout
        if not playout.ended and playout.complete:
            playout.ended = True
            self.send_event(
                events.AudioEnd(conversation_id=self.conv, message_id=message_id, sentence_count=playout.sentence_count)
            )
            if reply.stored is not None:
                self.send_event(*reply.stored)

    def _send_audio(self, message_id: str, reply: _Reply, frame: Frame) -> None:
        if reply.first_audio_at is None:
            reply.first_audio_at = time.monotonic()
            spoke_at = self.speech_end_at.pop(reply.user_message_id or "", None)
            reply.spoken = spoke_at is not None
            if spoke_at:
                metrics.VOICE_TO_VOICE_SECONDS.observe(time.time() - spoke_at)
            elif reply.user_message_id:
                # Live audio may overtake the final transcript (an ordered consumer) under load;
                # a typed turn has none, so only the newest few wait.
                self._audio_before_final[reply.user_message_id] = (reply, time.time())
                while len(self._audio_before_final) > 16:
                    del self._audio_before_final[next(iter(self._audio_before_final))]
        index = frame.sentence_index
        reply.sentence_s[index] = reply.sentence_s.get(index, 0.0) + len(frame.pcm) / 2 / frame.sample_rate
        self._emit_audio(message_id, frame)

    def _emit_audio(self, message_id: str, frame: Frame) -> None:
        """Queue one frame of reply audio in the client's wire form."""
        self.out.put_nowait(
            (
                "bytes",
                protocol.audio_frame(message_id, frame.sentence_index, frame.chunk_seq, frame.sample_rate, frame.pcm),
            )
        )
