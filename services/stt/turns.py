"""When a turn ends: silence alone (`vad`), or silence that asks whether the person is done (`smart`).

The smart policy: after a short silence the worker asks the sound (Smart Turn) and the words
so far (a small language model); done ends the turn now, not done keeps listening up to the
long wait, which ends it anyway. Every session's sound calls go through one thread that
batches what is pending, as the decoder does. docs/benchmarks.md ("Turn taking") has the
figures that chose the default and the way the two signals combine.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Literal

import numpy as np

from services.common import metrics

from .smart_turn import SmartTurn
from .words import WordsScorer

log = logging.getLogger(__name__)

Policy = Literal["vad", "smart"]
Signals = Literal["words", "sound", "all", "any"]
"""Which verdict ends a smart turn early: the words', the sound's, both agreeing, or either."""


def reads(signals: Signals) -> tuple[bool, bool]:
    """(sound, words): which signals a combination reads."""
    return signals != "words", signals != "sound"


@dataclass(frozen=True)
class TurnPolicy:
    """One session's turn taking. `vad`: the turn ends after `vad_ms` of silence. `smart`: the
    judge is asked after `short_ms`, and the turn ends after `long_ms` whatever it said."""

    policy: Policy = "smart"
    vad_ms: int = 300
    short_ms: int = 200
    long_ms: int = 1600
    threshold: float = 0.5
    """The sound's probability of done that counts as done."""
    words_threshold: float = 0.02
    signals: Signals = "all"

    def __post_init__(self) -> None:
        if self.policy not in ("vad", "smart"):
            raise ValueError(f"turn policy {self.policy!r} is neither 'vad' nor 'smart'")
        if not 0 < self.short_ms < self.long_ms:
            raise ValueError("the short wait must be positive and shorter than the long wait")

    @property
    def end_of_turn_ms(self) -> int:
        return self.long_ms if self.policy == "smart" else self.vad_ms

    @property
    def pause_ms(self) -> int | None:
        return self.short_ms if self.policy == "smart" else None


@dataclass(frozen=True)
class Verdict:
    done: bool
    sound: float | None
    words: float | None


def decide(policy: TurnPolicy, sound: float | None, words: float | None) -> bool:
    """Each signal against its own threshold, combined as the policy says; a signal that
    could not be had leaves the other to decide (neither: not done, the long wait ends it)."""
    said = (
        None if sound is None else sound >= policy.threshold,
        None if words is None else words >= policy.words_threshold,
    )
    known = [s for s, read in zip(said, reads(policy.signals)) if read and s is not None]
    if not known:
        return False
    return any(known) if policy.signals == "any" else all(known)


class SoundBatcher:
    """Smart Turn calls of every session on one thread, whatever is pending in one call."""

    def __init__(self, model: SmartTurn, max_batch: int = 16):
        self.model, self.max_batch = model, max_batch
        self._cv = threading.Condition()
        self._queue: deque[tuple[np.ndarray, Future]] = deque()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="stt-turn", daemon=True)
        self._thread.start()

    def submit(self, audio: np.ndarray) -> Future:
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the turn model is closed")
            self._queue.append((audio, fut))
            self._cv.notify()
        return fut

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join()

    def _take(self) -> list[tuple[np.ndarray, Future]] | None:
        with self._cv:
            while not self._queue:
                if self._closed:
                    return None
                self._cv.wait()
            return [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            live = [(a, f) for a, f in batch if f.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                with metrics.TURN_MODEL_SECONDS.time():
                    probs = self.model.probabilities([a for a, _ in live])
            except BaseException as exc:
                for _, fut in live:
                    fut.set_exception(exc)
                continue
            metrics.TURN_MODEL_BATCH.observe(len(live))
            for (_, fut), p in zip(live, probs):
                fut.set_result(float(p))


class TurnJudge:
    """Asks the signals a worker has: the sound model, the words scorer, either or both."""

    def __init__(self, sound: SoundBatcher | None, words: WordsScorer | None):
        self.sound, self.words = sound, words

    def can_judge(self, signals: Signals) -> bool:
        """Whether the signals a policy combines are here (`any` makes do with one)."""
        have = (self.sound is not None, self.words is not None)
        needed = [h for h, read in zip(have, reads(signals)) if read]
        return any(needed) if signals == "any" else all(needed)

    async def verdict(self, policy: TurnPolicy, context: np.ndarray, text: Callable[[], Awaitable[str]]) -> Verdict:
        """`context` is the turn so far, `text` its transcript (awaited only for the words)."""
        read_sound, read_words = reads(policy.signals)
        sound_fut = asyncio.wrap_future(self.sound.submit(context)) if self.sound and read_sound else None
        words = None
        if self.words is not None and read_words:
            try:
                words = await self.words.probability(await text())
            except Exception as exc:  # the scorer, or the decode it waits on
                metrics.EVENTS.labels("stt", "turn_words_failed").inc()
                log.warning("turn words not scored (%s); the sound alone decides", exc)
        sound = await sound_fut if sound_fut is not None else None
        done = decide(policy, sound, words)
        metrics.EVENTS.labels("stt", "turn_done" if done else "turn_not_done").inc()
        return Verdict(done, sound, words)

    async def close(self) -> None:
        if self.sound is not None:
            await asyncio.to_thread(self.sound.close)
        if self.words is not None:
            await self.words.close()
