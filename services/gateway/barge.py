"""Speech over a playing reply: whether it cuts the reply off, and whether a cut was false.

The gateway knows what is playing; the STT worker hears the speech. When the person starts
speaking over a reply the gateway names the utterance to the worker (`OverReply`) and lets
the reply play on: the worker says when the speech counts (`BargeIn`: voiced `min_ms`, or,
if set, a partial with `min_words` words that are not backchannels; both `SttOptions`) and
drops it, with no turn, if it was only "mhm" (`Backchannel`) or held no words it was sure of. A
barge-in on sound alone pauses the reply; words (a partial that barges in by its words, or
the utterance's final transcript) make the stop final, and none (a cough, a door) resume the
reply where it stopped: once the worker says so, or `resume_ms` after the speech stopped
(a final lost on the way), never while the person is still speaking.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from services.common import bus as busmod
from services.common import ids, schemas

from . import events
from .relay import ReplyRelay
from .wire import Opening


@dataclass
class _Overlap:
    replies: list[str]
    paused: list[str] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class BargeIns:
    def __init__(
        self,
        bus: busmod.Bus,
        conv: str,
        audio_session_id: str,
        relay: ReplyRelay,
        opening: Opening,
        cut: Callable[[str], Awaitable[None]],
    ):
        self.bus, self.conv, self.audio_session_id = bus, conv, audio_session_id
        self.relay = relay
        self.opening = opening
        """Read as it stands (a Realtime session.update changes it): `barge_in` off, speech never
        stops a reply, though backchannels still make no turn; `resume_ms` 0, no pause."""
        self._cut = cut
        """Stop a reply for good where it was heard (or paused): stored so, the rest cancelled."""
        self._over: dict[int, _Overlap] = {}

    @property
    def enabled(self) -> bool:
        return self.opening.barge_in

    def held(self, utterance_seq: int) -> bool:
        """The utterance began over a reply and is not yet known to be more than a backchannel."""
        o = self._over.get(utterance_seq)
        return o is not None and not o.paused

    async def heard(self, ev: events.ClientEvent) -> bool:
        """This session's person's speech; for `speech.started`, True if it began over a reply."""
        if isinstance(ev, events.SpeechStarted):
            return await self._started(ev.utterance_seq)
        if isinstance(ev, events.BargeIn):
            await self._counts(ev.utterance_seq, by_words=ev.reason == "words")
        elif isinstance(ev, events.SpeechStopped):
            self._stopped(ev.utterance_seq)
        elif isinstance(ev, events.Backchannel):
            self._no_words(ev.utterance_seq)
        elif isinstance(ev, events.TranscriptFinal):
            await self._words(ev.utterance_seq)
        elif isinstance(ev, events.Error):
            for seq in list(self._over):
                if ids.user_message_id(self.conv, self.audio_session_id, "voice", seq) == ev.message_id:
                    self._no_words(seq)
        return False

    async def close(self) -> None:
        """The session ends: a paused reply is stored as heard up to where it stopped."""
        for seq in list(self._over):
            if self._over[seq].paused:
                await self._stop(seq)
            self._forget(seq)

    def _playing(self) -> list[str]:
        return [mid for mid, _ in self.relay.playing(time.monotonic())]

    async def _started(self, utterance_seq: int) -> bool:
        playing = self._playing()
        if playing:
            self._over[utterance_seq] = _Overlap(playing)
            await self.bus.control(
                schemas.OverReply(
                    conversation_id=self.conv, session_id=self.audio_session_id, utterance_seq=utterance_seq
                )
            )
        return bool(playing)

    async def _counts(self, utterance_seq: int, by_words: bool) -> None:
        o = self._over.get(utterance_seq)
        if o is None or not self.enabled:
            return
        if by_words or not self.opening.resume_ms:
            await self._stop(utterance_seq)
            return
        if not o.paused:
            o.paused = [m for m in o.replies if self.relay.pause(m) is not None]

    def _stopped(self, utterance_seq: int) -> None:
        """The speech stopped: a pause not settled by its words in `resume_ms` resumes."""
        o = self._over.get(utterance_seq)
        if o is not None and o.paused and o.timer is None:
            o.timer = asyncio.get_running_loop().call_later(self.opening.resume_ms / 1000, self._resume, o)

    async def _words(self, utterance_seq: int) -> None:
        """The utterance became a turn: the person took the floor."""
        if self.enabled:
            await self._stop(utterance_seq)
        else:
            self._forget(utterance_seq)

    def _no_words(self, utterance_seq: int) -> None:
        """It ended as nothing but a backchannel, or with no words at all: play on."""
        if (o := self._forget(utterance_seq)) is not None:
            self._resume(o)

    def _resume(self, o: _Overlap) -> None:
        """No words (in time): play on; words that come later still stop it."""
        paused, o.paused, o.timer = o.paused, [], None
        for mid in paused:
            self.relay.resume(mid)

    async def _stop(self, utterance_seq: int) -> None:
        o = self._forget(utterance_seq)
        if o is None:
            return
        playing = self._playing()
        for mid in o.replies:
            if mid in o.paused or mid in playing:
                await self._cut(mid)

    def _forget(self, utterance_seq: int) -> _Overlap | None:
        o = self._over.pop(utterance_seq, None)
        if o is not None and o.timer is not None:
            o.timer.cancel()
        return o
