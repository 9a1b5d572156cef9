"""A live session's pauses under the smart policy: asking whether the person is done, and
keeping the pause's decode for the utterance that ends there."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import numpy as np

from services.common import schemas
from services.common.logs import ctx

from .config import SttSettings
from .segmenter import PauseHeard, UtteranceEnded
from .turns import TurnJudge, TurnPolicy, reads
from .whisper import join_transcripts

log = logging.getLogger(__name__)

Decode = Callable[[np.ndarray, str | None], asyncio.Future]


def turn_policy(req: schemas.SttOpen, s: SttSettings, judge: TurnJudge) -> TurnPolicy:
    """The session's turn taking: what it asked for, else the worker's; `smart` without the
    signals it combines is `vad`. A long wait given alone never falls under the short one."""
    policy = req.turn_policy or s.stt_turn_policy
    if policy == "smart" and not judge.can_judge(s.stt_turn_signals):
        policy = "vad"
    long_ms = req.turn_long_ms or s.stt_turn_long_ms
    return TurnPolicy(
        policy=policy,
        vad_ms=req.end_of_turn_ms or s.vad_end_of_turn_ms,
        short_ms=min(req.turn_short_ms or s.stt_turn_short_ms, long_ms // 2),
        long_ms=long_ms,
        threshold=s.stt_turn_threshold,
        words_threshold=s.stt_turn_words_threshold,
        signals=s.stt_turn_signals,
    )


class Pauses:
    def __init__(
        self,
        judge: TurnJudge,
        policy: TurnPolicy,
        decode: Decode,
        end_at: Callable[[int], Awaitable[None]],
        spawn: Callable,
        conv: str,
    ):
        self.judge, self.policy, self._decode, self._end_at, self._spawn = judge, policy, decode, end_at, spawn
        self.conv = conv
        self._early: tuple[PauseHeard, asyncio.Future] | None = None
        """The newest pause's decode: the utterance's own, when it ends at that pause."""

    def heard(self, ev: PauseHeard, prefix: str | None, windows: list[asyncio.Future]) -> None:
        """Ask the judge; with a words signal, the utterance so far is decoded now."""
        tail = None
        if self.judge.words is not None and reads(self.policy.signals)[1]:
            tail = self._decode(ev.audio, prefix)
        if self._early is not None:
            self._early[1].cancel()  # speech came back since that pause: its decode is of no use
        self._early = (ev, tail) if tail is not None else None
        self._spawn(self._ask(ev, windows, tail))

    async def _ask(self, ev: PauseHeard, windows: list[asyncio.Future], tail: asyncio.Future | None) -> None:
        async def text() -> str:
            return join_transcripts([await w for w in windows] + [await tail]).text

        try:
            verdict = await self.judge.verdict(self.policy, ev.context, text)
        except Exception as exc:
            log.warning("turn not judged (%s); the long wait ends it", exc, extra=ctx(conversation_id=self.conv))
            return
        if verdict.done:
            await self._end_at(ev.voiced_end)

    def tail(self, ev: UtteranceEnded, prefix: str | None) -> asyncio.Future:
        """The utterance's last decode: the pause's, when the utterance ended there."""
        early, self._early = self._early, None
        if early is not None:
            pause, decode = early
            same = pause.utterance_seq == ev.utterance_seq and pause.end_s == ev.end_s
            if same and len(pause.audio) == len(ev.audio):
                return decode
            decode.cancel()
        return self._decode(ev.audio, prefix)
