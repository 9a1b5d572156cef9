"""One conversation's live audio on a worker: read from AUDIO_IN, segmented by VAD, decoded
through the worker's batcher, published as speech events, partials and final turns."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Coroutine
from typing import Protocol

import numpy as np
from nats.aio.msg import Msg as NatsMsg
from nats.js.api import DeliverPolicy

from services.common import bus as busmod
from services.common import ids, metrics, schemas, subjects
from services.common.logs import ctx
from services.common.schemas import AudioMeta

from .batcher import DecodeBatcher, Superseded
from .config import SttSettings
from .overlaps import Overlaps
from .partials import Partials
from .pauses import Pauses, turn_policy
from .segmenter import PauseHeard, Segmenter, SpeechStarted, UtteranceEnded, UtteranceWindow
from .turns import TurnJudge
from .vad import SileroVad, VadConfig
from .whisper import DecodeRequest, Transcript, join_transcripts

log = logging.getLogger(__name__)

_MAX_GAP_S = 5
"""A larger hole in a session's audio is not filled with more silence than this."""


class Host(Protocol):
    """What a live session needs of the worker that holds it."""

    bus: busmod.Bus
    vad: SileroVad
    decoder: DecodeBatcher
    turns: TurnJudge
    settings: SttSettings
    partial_interval_ms: int

    def spawn(self, coro: Coroutine) -> None: ...

    async def close_session(self, conv: str, flush: bool, session: LiveSession | None = None) -> None: ...


class LiveSession:
    """One conversation's live audio on this worker: VAD state, partials, and the
    utterances waiting for their final transcript, in order."""

    def __init__(self, worker: Host, req: schemas.SttOpen):
        self.worker = worker
        self.bus = worker.bus
        self.conv = req.conversation_id
        self.session_id = req.session_id
        self.language = req.language or worker.settings.stt_language
        s = worker.settings
        self.prompt = req.prompt or s.stt_prompt
        self.turn = turn_policy(req, s, worker.turns)
        cfg = VadConfig(
            threshold=req.vad_threshold or s.vad_threshold,
            end_of_turn_ms=self.turn.end_of_turn_ms,
            min_speech_ms=s.vad_min_speech_ms,
            pad_ms=s.vad_pad_ms if req.pad_ms is None else req.pad_ms,
        )
        self.instructions = req.instructions
        self.tools, self.tool_choice = req.tools, req.tool_choice
        self.hold = req.hold
        self.replay_from = None if req.replay_from_s is None else int(req.replay_from_s * cfg.sample_rate)
        self._cfg = cfg
        self.segmenter = self._segmenter(req.first_utterance_seq, 0)
        self._started = self.replay_from is None
        self.sample_rate = cfg.sample_rate
        self.partial_every = cfg.samples(worker.partial_interval_ms) if req.partials else 0
        self.partials: Partials | None = None
        self.windows: dict[int, list[asyncio.Future]] = {}
        """Per utterance still open, the final decodes of its windows, in order."""
        self.utterances: asyncio.Queue = asyncio.Queue()
        self.bad_frames = 0
        self.pauses = Pauses(worker.turns, self.turn, self._decode, self._end_at, worker.spawn, self.conv)
        self.overlaps = Overlaps(self.bus, self.conv, self.session_id, req, s.stt_over_reply_min_confidence)
        self._handling = asyncio.Lock()
        self._subs: list = []
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        # A takeover reads the audio kept in AUDIO_IN from its start (bounded by the stream's
        # age limit) and skips to `replay_from`; a new session reads what comes from now on.
        subscribe = functools.partial(
            self.bus.js.subscribe,
            subjects.audio_in(self.conv),
            ordered_consumer=True,
            idle_heartbeat=self.bus.heartbeat_s,
            deliver_policy=DeliverPolicy.NEW if self._started else DeliverPolicy.ALL,
            cb=self._on_audio,
        )
        self._subs.append(await self.bus.patiently(f"the mic audio of {self.conv}", subscribe))
        for kind, on in (
            (schemas.SessionEnd, self._on_end),
            (schemas.UtteranceCommit, self._on_commit),
            (schemas.UtteranceClear, self._on_clear),
            (schemas.SttRelease, self._on_release),
            (schemas.OverReply, self._on_over_reply),
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
        await self._maybe_barge_in()
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
            self.segmenter = self._segmenter(self.segmenter.next_utterance_seq, offset)
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

    def _segmenter(self, first_seq: int, start_sample: int) -> Segmenter:
        return Segmenter(self.worker.vad, self._cfg, first_seq, start_sample, pause_ms=self.turn.pause_ms)

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
        await self.overlaps.partial(p.utterance_seq, text, self.language)

    async def _on_over_reply(self, ctl: schemas.OverReply) -> None:
        if ctl.session_id == self.session_id:
            self.overlaps.mark(ctl.utterance_seq)
            await self._maybe_barge_in()

    async def _maybe_barge_in(self) -> None:
        seg = self.segmenter
        if seg.in_speech:
            await self.overlaps.voiced(seg.next_utterance_seq, seg.voiced_ms)

    async def _handle(self, events: list) -> None:
        async with self._handling:
            for ev in events:
                await self._handle_one(ev)

    async def _handle_one(self, ev) -> None:
        if isinstance(ev, PauseHeard):
            prefix = self.partials.prefix if self.partials else None
            self.pauses.heard(ev, prefix, list(self.windows.get(ev.utterance_seq, [])))
        elif isinstance(ev, SpeechStarted):
            self.partials = Partials(ev.utterance_seq)
            await self.bus.publish_live(
                schemas.SpeechStarted(
                    conversation_id=self.conv,
                    session_id=self.session_id,
                    utterance_seq=ev.utterance_seq,
                    start_s=ev.start_s,
                )
            )
        elif isinstance(ev, UtteranceWindow):
            p = self.partials
            fut = self._decode(ev.audio, p.prefix if p else None)
            self.windows.setdefault(ev.utterance_seq, []).append(fut)
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
                    utterance_seq=ev.utterance_seq,
                    end_s=ev.end_s,
                )
            )
            windows = self.windows.pop(ev.utterance_seq, [])
            await self.utterances.put((ev, marks, windows, self.pauses.tail(ev, prefix)))

    async def _end_at(self, voiced_end: int) -> None:
        """The judge said done: end the utterance at that pause (unless speech came back)."""
        await self._handle(self.segmenter.end_at_pause(voiced_end))

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
                    self.windows.pop(ev.utterance_seq, None)
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
                self.overlaps.forget(ev.utterance_seq)
                log.exception("transcription failed", extra=ctx(conversation_id=self.conv))
                await self.bus.publish_event(
                    schemas.ErrorEvent(
                        conversation_id=self.conv,
                        code="transcription_failed",
                        message=f"utterance {ev.utterance_seq} could not be transcribed",
                        message_id=ids.user_message_id(self.conv, self.session_id, "voice", ev.utterance_seq),
                    ),
                    msg_id=f"stt-fail.{self.session_id}.{ev.utterance_seq}",
                )

    async def _transcribe(
        self, ev: UtteranceEnded, marks: dict, windows: list[asyncio.Future], tail: asyncio.Future
    ) -> None:
        """Wait for the utterance's decodes (queued when it closed, in order) and publish it."""
        parts = [await w for w in windows] + [await tail]
        result = parts[0] if len(parts) == 1 else join_transcripts(parts)
        metrics.stage("transcribe", time.time() - marks["eot"])
        marks["final"] = time.time()
        message_id = ids.user_message_id(self.conv, self.session_id, "voice", ev.utterance_seq)
        if await self.overlaps.no_turn(ev.utterance_seq, result, self.language, message_id):
            return
        await self.bus.publish_event(
            schemas.TranscriptFinal(
                conversation_id=self.conv,
                session_id=self.session_id,
                utterance_seq=ev.utterance_seq,
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
                turn_seq=ev.utterance_seq,
                source="voice",
                text=result.text,
                language=result.language,
                confidence=result.confidence,
                speech_start_s=ev.start_s,
                speech_end_s=ev.end_s,
                marks=marks,
                instructions=self.instructions,
                tools=self.tools,
                tool_choice=self.tool_choice,
                hold=self.hold,
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
