"""Speech over a playing reply: whether it cuts the reply off, and whether a cut was false.

The gateway knows what is playing; the STT worker hears the speech. When the person starts
speaking over a reply the gateway names the utterance to the worker (`OverReply`) and lets
the reply play on: the worker says when the speech counts (`BargeIn`: voiced `min_ms`, or a
partial with `min_words` words that are not backchannels, both `SttOptions`) and drops it,
with no turn, if it was only "mhm" (`Backchannel`). A barge-in on sound alone pauses the
reply; words (a partial that barges in by its words, or the utterance's final transcript)
make the stop final, and none within `resume_ms` (a cough, a door, echo) resumes the reply
where it stopped.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from .wire import Opening


class Replies(Protocol):
    """What the arbiter asks of the session."""

    def playing(self) -> list[str]:
        """Replies playing to the person now."""

    async def over_reply(self, utterance_seq: int) -> None:
        """Tell the STT worker the utterance began over a reply."""

    def pause(self, message_id: str) -> bool:
        """Stop sending the reply, keeping its place; False if it is not playing."""

    def resume(self, message_id: str) -> None:
        """Send the paused reply again from where it stopped."""

    async def stop(self, message_id: str) -> None:
        """Stop the reply for good: stored as heard up to where it stopped, the rest cancelled."""


@dataclass
class _Overlap:
    replies: list[str]
    paused: list[str] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class BargeIns:
    def __init__(self, replies: Replies, opening: Opening):
        self.replies = replies
        self.opening = opening
        """Read as it stands (a Realtime session.update changes it): `barge_in` off, speech never
        stops a reply, though backchannels still make no turn; `resume_ms` 0, no pause."""
        self._over: dict[int, _Overlap] = {}

    @property
    def enabled(self) -> bool:
        return self.opening.barge_in

    def pending(self) -> list[int]:
        """Utterances over a reply not yet decided."""
        return list(self._over)

    def held(self, utterance_seq: int) -> bool:
        """The utterance began over a reply and is not yet known to be more than a backchannel."""
        o = self._over.get(utterance_seq)
        return o is not None and not o.paused

    async def speech_started(self, utterance_seq: int) -> bool:
        """True if it began over a reply (which plays on until the speech counts)."""
        playing = self.replies.playing()
        if playing:
            self._over[utterance_seq] = _Overlap(playing)
            await self.replies.over_reply(utterance_seq)
        return bool(playing)

    async def barge_in(self, utterance_seq: int, by_words: bool) -> None:
        """The worker says the speech counts."""
        o = self._over.get(utterance_seq)
        if o is None or not self.enabled:
            return
        if by_words or not self.opening.resume_ms:
            await self._stop(utterance_seq)
            return
        if o.paused:
            return
        o.paused = [m for m in o.replies if self.replies.pause(m)]
        o.timer = asyncio.get_running_loop().call_later(self.opening.resume_ms / 1000, self._resume, o)

    async def words(self, utterance_seq: int) -> None:
        """The utterance became a turn: the person took the floor."""
        if self.enabled:
            await self._stop(utterance_seq)
        else:
            self._forget(utterance_seq)

    def no_words(self, utterance_seq: int) -> None:
        """The utterance ended as nothing but a backchannel, or with no words at all: play on."""
        if (o := self._forget(utterance_seq)) is not None:
            self._resume(o)

    def _resume(self, o: _Overlap) -> None:
        """No words in time: play on (words that come later still stop it)."""
        paused, o.paused, o.timer = o.paused, [], None
        for mid in paused:
            self.replies.resume(mid)

    async def close(self) -> None:
        """The session ends: a paused reply is stored as heard up to where it stopped."""
        for seq in list(self._over):
            if self._over[seq].paused:
                await self._stop(seq)
            self._forget(seq)

    async def _stop(self, utterance_seq: int) -> None:
        o = self._forget(utterance_seq)
        if o is None:
            return
        playing = self.replies.playing()
        for mid in o.replies:
            if mid in o.paused or mid in playing:
                await self.replies.stop(mid)

    def _forget(self, utterance_seq: int) -> _Overlap | None:
        o = self._over.pop(utterance_seq, None)
        if o is not None and o.timer is not None:
            o.timer.cancel()
        return o
