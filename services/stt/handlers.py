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

import numpy as np
from nats.aio.msg import Msg as NatsMsg
from nats.js.api import DeliverPolicy

from services.common import bus as busmod
from services.common import ids, metrics, schemas, subjects
from services.common.logs import ctx
from services.common.runtime import Service
from services.common.schemas import AudioMeta

from .batcher import DecodeBatcher, Superseded
from .config import SttSettings
from .segmenter import Segmenter, SpeechStarted, UtteranceEnded, UtteranceWindow
from .vad import SileroVad, VadConfig
from .whisper import DecodeRequest, Transcript, WhisperEngine, join_transcripts

log = logging.getLogger(__name__)

_MAX_GAP_S = 5
"""A larger hole in a session's audio is not filled with more silence than this."""


class Partials:
    """Partial transcripts of the utterance in progress, with a prefix that never changes.

    A word becomes stable once two hypotheses in a row agree on it and on everything before
    it (the local-agreement policy of streaming Whisper); stable words are kept from then on:
    each published text starts with them, and so does the final transcript, whose decode of
    the window is given them as its forced prefix.
    """

    def __init__(self, utterance_seq: int):
        self.utterance_seq = utterance_seq
        self.done_text = ""
        """Text of the utterance's windows already read in full."""
        self.seq = 0
        self.stable: list[str] = []
        self.last: list[str] = []
        self.next_at = 0
        """Samples of the current window after which the next partial is due."""
        self.in_flight = False
        self.pending_windows = 0
        """Windows cut but not read yet: until they are, no partial is shown (its text would
        lack theirs)."""

    def update(self, hypothesis: str) -> tuple[str, str]:
        """The text and stable prefix to publish for a new hypothesis of the current window."""
        words = hypothesis.split()
        agreed = 0
        while agreed < min(len(words), len(self.last)) and words[agreed] == self.last[agreed]:
            agreed += 1
        if agreed > len(self.stable) and words[: len(self.stable)] == self.stable:
            self.stable = words[:agreed]
        self.last = words
        shown = self.stable + words[len(self.stable) :]
        stable = " ".join(x for x in (self.done_text, " ".join(self.stable)) if x)
        text = " ".join(x for x in (self.done_text, " ".join(shown)) if x)
        return text, stable

    @property
    def prefix(self) -> str | None:
        """The current window's stable words, which its final decode must begin with."""
        return " ".join(self.stable) or None

    def window_cut(self) -> None:
        """The window was cut: the next one starts afresh (its text joins once it is read)."""
        self.stable, self.last, self.next_at = [], [], 0
        self.pending_windows += 1

    def window_done(self, text: str) -> None:
        """A window was read in full: its text is final."""
        self.done_text = " ".join(x for x in (self.done_text, text) if x)
        self.pending_windows -= 1


class LiveSession:
    """One conversation's live audio on this worker: VAD state, partials, and the
    utterances waiting for their final transcript, in order."""

    def __init__(self, worker: SttService, req: schemas.SttOpen):
        self.worker = worker
        self.bus = worker.bus
        self.conv = req.conversation_id
        self.session_id = req.session_id
        self.language = req.language or worker.settings.stt_language
        s = worker.settings
        self.prompt = req.prompt or s.stt_prompt
        cfg = VadConfig(
            threshold=req.vad_threshold or s.vad_threshold,
            end_of_turn_ms=req.end_of_turn_ms or s.vad_end_of_turn_ms,
            min_speech_ms=s.vad_min_speech_ms,
            pad_ms=s.vad_pad_ms if req.pad_ms is None else req.pad_ms,
        )
        self.instructions = req.instructions
        self.replay_from = None if req.replay_from_s is None else int(req.replay_from_s * cfg.sample_rate)
        self._cfg = cfg
        self.segmenter = Segmenter(worker.vad, cfg, first_utterance_index=req.first_utterance_seq)
        self._started = self.replay_from is None
        self.sample_rate = cfg.sample_rate
        self.partial_every = cfg.samples(worker.partial_interval_ms) if req.partials else 0
        self.partials: Partials | None = None
        self.windows: dict[int, list[asyncio.Future]] = {}
        """Per utterance still open, the final decodes of its windows, in order."""
        self.utterances: asyncio.Queue = asyncio.Queue()
        self.bad_frames = 0
        self._subs: list = []
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        # A takeover reads the audio kept in AUDIO_IN from its start (bounded by the stream's
        # age limit) and skips to `replay_from`; a new session reads what comes from now on.
        self._subs.append(
            await self.bus.js.subscribe(
                subjects.audio_in(self.conv),
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.NEW if self._started else DeliverPolicy.ALL,
                cb=self._on_audio,
            )
        )
        for kind, on in (
            (schemas.SessionEnd, self._on_end),
            (schemas.UtteranceCommit, self._on_commit),
            (schemas.UtteranceClear, self._on_clear),
            (schemas.SttRelease, self._on_release),
        ):
            self._subs.append(await self.bus.on_control(self.conv, kind, on))
        self._task = asyncio.create_task(self._transcribe_loop())

    async def _on_audio(self, msg: NatsMsg) -> None:
        try:
            meta = AudioMeta.from_headers(msg.headers)
            if meta.session_id != self.session_id:
                return  # a previous session's frames still in the stream
            events = self._feed(meta.offset, msg.data)
        except Exception as exc:
            self.bad_frames += 1
            log.warning("bad audio frame: %s", exc, extra=ctx(conversation_id=self.conv))
            return
        await self._handle(events)
        self._maybe_partial()

    def _feed(self, offset: int, data: bytes) -> list:
        """Feed a frame at its place in the session's audio: a takeover starts at the first
        frame reaching `replay_from`; frames seen already are skipped; a gap (frames lost on
        the live path) is filled with silence so that times stay true."""
        samples = len(data) // 2
        if not self._started:
            if offset + samples <= self.replay_from:
                return []
            self._started = True
            self.segmenter = Segmenter(
                self.worker.vad, self._cfg, self.segmenter.next_utterance_index, start_sample=offset
            )
        expected = self.segmenter.samples_fed
        if offset + samples <= expected:
            return []
        events = []
        if offset > expected:
            gap = min(offset - expected, self.sample_rate * _MAX_GAP_S)
            events += self.segmenter.feed(np.zeros(gap, dtype=np.int16))
        elif offset < expected:
            data = data[(expected - offset) * 2 :]
        return events + self.segmenter.feed(data)

    def _decode(self, audio, prefix: str | None = None) -> asyncio.Future:
        request = DecodeRequest(audio, self.language, self.prompt, prefix)
        return asyncio.wrap_future(self.worker.decoder.submit(request))

    def _maybe_partial(self) -> None:
        """Ask for a partial once another `partial_every` of speech has come in."""
        p = self.partials
        if p is None or p.in_flight or not self.partial_every or not self.segmenter.in_speech:
            return
        audio = self.segmenter.active_audio()
        if audio is None or len(audio) < max(p.next_at, self.partial_every):
            return
        p.in_flight = True
        p.next_at = len(audio) + self.partial_every
        request = DecodeRequest(audio, self.language, self.prompt)
        fut = asyncio.wrap_future(self.worker.decoder.submit_partial(self, request))
        fut.add_done_callback(lambda f: self.worker.spawn(self._publish_partial(p, f)))

    async def _publish_partial(self, p: Partials, fut: asyncio.Future) -> None:
        p.in_flight = False
        if fut.cancelled() or isinstance(fut.exception(), Superseded):
            return
        if fut.exception() is not None:
            log.warning("partial decode failed: %s", fut.exception(), extra=ctx(conversation_id=self.conv))
            return
        if self.partials is not p or p.pending_windows:
            return  # the utterance (or its window) ended meanwhile: its final supersedes this
        result: Transcript = fut.result()
        text, stable = p.update(result.text)
        await self.bus.publish_live(
            schemas.TranscriptPartial(
                conversation_id=self.conv,
                session_id=self.session_id,
                utterance_seq=p.utterance_seq,
                partial_seq=p.seq,
                text=text,
                stable=stable,
            )
        )
        p.seq += 1

    async def _handle(self, events: list) -> None:
        for ev in events:
            if isinstance(ev, SpeechStarted):
                self.partials = Partials(ev.utterance_index)
                await self.bus.publish_live(
                    schemas.SpeechStarted(
                        conversation_id=self.conv,
                        session_id=self.session_id,
                        utterance_seq=ev.utterance_index,
                        start_s=ev.start_s,
                    )
                )
            elif isinstance(ev, UtteranceWindow):
                p = self.partials
                fut = self._decode(ev.audio, p.prefix if p else None)
                self.windows.setdefault(ev.utterance_index, []).append(fut)
                if p is not None:
                    self.worker.decoder.drop_partial(self)
                    p.window_cut()
                    fut.add_done_callback(lambda f, p=p: self._window_read(p, f))
            elif isinstance(ev, UtteranceEnded):
                prefix = self.partials.prefix if self.partials else None
                self.partials = None
                self.worker.decoder.drop_partial(self)
                now = time.time()
                fed_s = self.segmenter.samples_fed / self.sample_rate
                marks = {"speech_end": now - max(0.0, fed_s - ev.end_s), "eot": now}
                metrics.stage("end_of_turn", marks["eot"] - marks["speech_end"])
                await self.bus.publish_live(
                    schemas.SpeechStopped(
                        conversation_id=self.conv,
                        session_id=self.session_id,
                        utterance_seq=ev.utterance_index,
                        end_s=ev.end_s,
                    )
                )
                windows = self.windows.pop(ev.utterance_index, [])
                await self.utterances.put((ev, marks, windows, self._decode(ev.audio, prefix)))

    def _window_read(self, p: Partials, fut: asyncio.Future) -> None:
        if self.partials is p and not fut.cancelled() and fut.exception() is None:
            p.window_done(fut.result().text)

    async def _on_end(self, ctl: schemas.SessionEnd) -> None:
        if ctl.session_id in ("", self.session_id):
            # Not awaited here: closing unsubscribes this very callback's subscription.
            self.worker.spawn(self.worker.close_session(self.conv, flush=True))

    async def _on_commit(self, ctl: schemas.UtteranceCommit) -> None:
        if ctl.session_id == self.session_id:
            await self._handle(self.segmenter.flush())

    async def _on_clear(self, ctl: schemas.UtteranceClear) -> None:
        if ctl.session_id == self.session_id:
            for ev in self.segmenter.flush():
                if isinstance(ev, UtteranceEnded):
                    self.windows.pop(ev.utterance_index, None)
            self.partials = None

    async def _on_release(self, ctl: schemas.SttRelease) -> None:
        if ctl.worker_id == self.worker.settings.instance_id:
            # Another worker took the session over and replays the utterance in progress.
            self.worker.spawn(self.worker.close_session(self.conv, flush=False, session=self))

    async def _transcribe_loop(self) -> None:
        while True:
            item = await self.utterances.get()
            if item is None:
                return
            ev, marks, windows, tail = item
            try:
                await self._transcribe(ev, marks, windows, tail)
            except Exception:
                log.exception("transcription failed", extra=ctx(conversation_id=self.conv))
                await self.bus.publish_event(
                    schemas.ErrorEvent(
                        conversation_id=self.conv,
                        code="transcription_failed",
                        message=f"utterance {ev.utterance_index} could not be transcribed",
                        message_id=ids.user_message_id(self.conv, self.session_id, "voice", ev.utterance_index),
                    ),
                    msg_id=f"stt-fail.{self.session_id}.{ev.utterance_index}",
                )

    async def _transcribe(
        self, ev: UtteranceEnded, marks: dict, windows: list[asyncio.Future], tail: asyncio.Future
    ) -> None:
        """Wait for the utterance's decodes (queued when it closed, in order) and publish it."""
        parts = [await w for w in windows] + [await tail]
        result = parts[0] if len(parts) == 1 else join_transcripts(parts)
        metrics.stage("transcribe", time.time() - marks["eot"])
        marks["final"] = time.time()
        message_id = ids.user_message_id(self.conv, self.session_id, "voice", ev.utterance_index)
        if not result.text:
            await self.bus.publish_event(
                schemas.ErrorEvent(
                    conversation_id=self.conv,
                    code="no_speech_recognized",
                    message="speech was detected but nothing was recognised",
                    message_id=message_id,
                ),
                msg_id=f"stt-empty.{message_id}",
            )
            return
        await self.bus.publish_event(
            schemas.TranscriptFinal(
                conversation_id=self.conv,
                session_id=self.session_id,
                utterance_seq=ev.utterance_index,
                message_id=message_id,
                text=result.text,
                language=result.language,
                confidence=result.confidence,
                start_s=ev.start_s,
                end_s=ev.end_s,
                speech_end_at=marks["speech_end"],
            ),
            msg_id=f"final.{message_id}",
        )
        await self.bus.publish_fact(
            subjects.turn(self.conv),
            schemas.UserTurn(
                conversation_id=self.conv,
                message_id=message_id,
                session_id=self.session_id,
                turn_seq=ev.utterance_index,
                source="voice",
                text=result.text,
                language=result.language,
                confidence=result.confidence,
                speech_start_s=ev.start_s,
                speech_end_s=ev.end_s,
                marks=marks,
                instructions=self.instructions,
            ),
            msg_id=message_id,
        )
        metrics.EVENTS.labels("stt", "final_transcript").inc()

    async def close(self, flush: bool) -> None:
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        if flush:
            await self._handle(self.segmenter.flush())
        self.partials = None
        await self.utterances.put(None)
        if self._task:
            await self._task


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
        metrics.STT_PENDING_DECODES.set_function(lambda: self.decoder.pending)
        self.bus = await busmod.connect(s, self.name)
        self.on_close(self.bus.close)
        await busmod.ensure_streams(self.bus)
        self._heartbeat = asyncio.create_task(self._beat())
        await self._admit()

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
        session = LiveSession(self, req)
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
