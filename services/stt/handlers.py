"""STT worker: owns live sessions' audio, detects end of turn, publishes transcripts.

A gateway asks for a worker on `parley.stt.open` (queue group: one worker answers). The
worker reads the session's audio from the short-lived AUDIO_IN stream through an ordered
consumer (gaps are detected and re-fetched by the client library) and runs streaming VAD
per session. Every decode of every session goes through the worker's one `DecodeBatcher`,
which reads whatever is pending in one batched Whisper call, finals first: utterances as
they close, windows of long speech as they are cut (at pauses), and partials at a steady
cadence while someone speaks. The final transcript is published twice: as the `UserTurn`
fact the orchestrator consumes, and as the client event.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.msg import Msg as NatsMsg

from services.common import metrics, schemas, subjects
from services.common.logs import ctx
from services.common.runtime import Service

from .batcher import DecodeBatcher
from .config import SttSettings
from .live import LiveSession
from .smart_turn import SmartTurn, TurnModelError
from .turns import SoundBatcher, TurnJudge, reads
from .vad import SileroVad
from .whisper import WhisperEngine
from .words import WordsScorer

log = logging.getLogger(__name__)

class SttService(Service):
    """Live sessions up to a capacity; a full worker leaves the `stt` queue group, so opens
    go only to workers with room, and comes back when a session ends. Heartbeats on
    `parley.stt.alive.<worker>` let gateways notice a dead or leaving owner and move its
    sessions to another worker, which replays the utterance in progress from AUDIO_IN."""

    name = "stt"

    def __init__(self, settings: SttSettings):
        super().__init__(settings)
        self.settings: SttSettings = settings
        self.sessions: dict[str, LiveSession] = {}
        self._background: set[asyncio.Task] = set()
        self._open_sub = None
        self._leaving = False

    def spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def start(self) -> None:
        s = self.settings
        self.engine = await asyncio.to_thread(
            WhisperEngine,
            s.stt_model,
            device=s.stt_device,
            compute_type=s.stt_compute_type,
            beam_size=s.stt_beam_size,
            language=s.stt_language,
            max_new_tokens=s.stt_max_new_tokens,
            cpu_threads=s.stt_cpu_threads,
            num_workers=s.stt_num_workers,
            download_root=s.stt_download_root,
        )
        self.vad = SileroVad.shared()
        self.partial_interval_ms = s.stt_partial_interval_ms
        if self.partial_interval_ms is None:
            self.partial_interval_ms = 500 if self.engine.model.model.device == "cuda" else 0
        self.decoder = DecodeBatcher(self.engine, s.stt_max_batch, on_batch=_observe_batch)
        self.on_close(lambda: asyncio.to_thread(self.decoder.close))
        self.turns = await self._turn_judge()
        self.on_close(self.turns.close)
        metrics.STT_PENDING_DECODES.set_function(lambda: self.decoder.pending)
        self.bus = await self.open_bus()
        self._heartbeat = asyncio.create_task(self._beat())
        await self._admit()

    async def _turn_judge(self) -> TurnJudge:
        """The signals smart sessions are judged by. A missing or broken turn model is said
        here, once, and counted; those sessions then end on silence alone."""
        s = self.settings
        sound = None
        if reads(s.stt_turn_signals)[0] and not s.stt_turn_model:
            log.warning("no turn model (PARLEY_STT_TURN_MODEL): the sound signal is off")
        elif reads(s.stt_turn_signals)[0]:
            try:
                model = await asyncio.to_thread(SmartTurn, s.stt_turn_model)
                sound = SoundBatcher(model, s.stt_turn_max_batch)
            except TurnModelError as exc:
                log.warning("%s: smart turn taking falls back to silence alone", exc)
        metrics.TURN_MODEL_AVAILABLE.set(1 if sound else 0)
        words = WordsScorer(s.stt_turn_lm_url, s.stt_turn_lm_model) if s.stt_turn_lm_url else None
        judge = TurnJudge(sound, words)
        if s.stt_turn_policy == "smart" and not judge.can_judge(s.stt_turn_signals):
            metrics.EVENTS.labels("stt", "turn_signals_missing").inc()
            log.warning(
                "smart turn taking (%s) lacks its signals (PARLEY_STT_TURN_LM_URL, PARLEY_STT_TURN_MODEL): "
                "sessions end after %d ms of silence alone",
                s.stt_turn_signals,
                s.vad_end_of_turn_ms,
            )
        return judge

    async def _beat(self) -> None:
        subject = subjects.stt_alive(self.settings.instance_id)
        while True:
            alive = schemas.SttAlive(
                worker_id=self.settings.instance_id,
                sessions=len(self.sessions),
                capacity=self.settings.stt_capacity,
                leaving=self._leaving,
            )
            try:
                await self.bus.nc.publish(subject, schemas.encode(alive))
            except Exception:
                log.warning("heartbeat not sent", exc_info=True)
            await asyncio.sleep(self.settings.stt_heartbeat_s)

    async def _admit(self) -> None:
        """Be in the queue group exactly while there is room for another session."""
        room = not self._leaving and len(self.sessions) < self.settings.stt_capacity
        if room and self._open_sub is None:
            self._open_sub = await self.bus.nc.subscribe(subjects.STT_OPEN, queue="stt", cb=self._on_open)
        elif not room and self._open_sub is not None:
            sub, self._open_sub = self._open_sub, None
            await sub.unsubscribe()
        metrics.ACTIVE_SESSIONS.labels("stt").set(len(self.sessions))

    async def _on_open(self, msg: NatsMsg) -> None:
        try:
            req = schemas.decode(msg.data, schemas.SttOpen)
        except Exception as exc:
            await msg.respond(schemas.encode(schemas.SttOpened(ok=False, error=f"bad request: {exc}")))
            return
        if not self.ready or self._leaving:
            await msg.respond(schemas.encode(schemas.SttOpened(ok=False, error="draining")))
            return
        if req.conversation_id in self.sessions:
            await self.close_session(req.conversation_id, flush=False)
        elif len(self.sessions) >= self.settings.stt_capacity:
            # Two opens raced for the last slot: the gateway asks the group again.
            await msg.respond(schemas.encode(schemas.SttOpened(ok=False, error="no_capacity")))
            return
        try:
            session = LiveSession(self, req)
        except ValueError as exc:
            await msg.respond(schemas.encode(schemas.SttOpened(ok=False, error=f"bad request: {exc}")))
            return
        self.sessions[req.conversation_id] = session
        await session.start()
        await self._admit()
        await msg.respond(schemas.encode(schemas.SttOpened(ok=True, worker_id=self.settings.instance_id)))
        takeover = req.replay_from_s is not None
        if takeover:
            metrics.EVENTS.labels("stt", "session_taken_over").inc()
        log.info(
            "session taken over" if takeover else "session opened",
            extra=ctx(conversation_id=req.conversation_id, session_id=req.session_id),
        )

    async def close_session(self, conv: str, flush: bool, session: LiveSession | None = None) -> None:
        """Close the conversation's session (only if it is still `session`, when given)."""
        current = self.sessions.get(conv)
        if current is None or (session is not None and current is not session):
            return
        del self.sessions[conv]
        await current.close(flush)
        if self.bus.nc.is_connected:
            await self._admit()

    def status(self) -> dict:
        pending = self.decoder.pending if hasattr(self, "decoder") else 0
        return {"sessions": len(self.sessions), "capacity": self.settings.stt_capacity, "pending_decodes": pending}

    async def drain(self) -> None:
        """Hand sessions over: say so on the heartbeat, give gateways time to move each
        session to another worker (which releases it here, the utterance in progress to be
        replayed there), and finish the sessions nobody took, utterance in progress included."""
        self._leaving = True
        await self._admit()
        if self.sessions:
            await self.bus.nc.publish(
                subjects.stt_alive(self.settings.instance_id),
                schemas.encode(schemas.SttAlive(worker_id=self.settings.instance_id, leaving=True)),
            )
            deadline = time.monotonic() + self.settings.stt_handover_wait_s
            while self.sessions and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        for conv in list(self.sessions):
            await self.close_session(conv, flush=True)
        await asyncio.gather(*self._background, return_exceptions=True)
        self._heartbeat.cancel()


def _observe_batch(size: int, audio_s: float, seconds: float) -> None:
    """Called on the decode thread after each Whisper call; prometheus-client is thread-safe."""
    metrics.STT_BATCH_SIZE.observe(size)
    if audio_s > 0:
        metrics.STT_REAL_TIME_FACTOR.observe(seconds / audio_s)
