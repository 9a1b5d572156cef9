"""Utterances said over a playing reply: when each becomes a barge-in, and which make no turn
because they were only a backchannel ("mhm", "yeah") or held no words Whisper was sure of
(and, over a reply or not, an utterance with no words at all).

The gateway knows what is playing and names such an utterance (`schemas.OverReply`); the
worker knows how long it has been voiced and what its words are, so it is the one to say.
"""

from __future__ import annotations

from services.common import backchannel, metrics, schemas
from services.common import bus as busmod

from .whisper import Transcript


class Overlaps:
    """Per live session: the utterances named as begun over a reply, until each is read."""

    def __init__(self, bus: busmod.Bus, conv: str, session_id: str, req: schemas.SttOpen, min_confidence: float):
        self.bus, self.conv, self.session_id = bus, conv, session_id
        self.min_ms = req.barge_in_ms
        self.min_words = req.barge_in_words
        """0: partials never barge in."""
        self.min_confidence = min_confidence
        self._said: dict[int, bool] = {}
        """Per utterance over a reply: whether its barge-in has been said."""

    def mark(self, seq: int) -> None:
        self._said.setdefault(seq, False)
        for old in [s for s in self._said if s < seq - 16]:
            del self._said[old]  # named after it was read (a late control): never read now

    async def voiced(self, seq: int, voiced_ms: float) -> None:
        """The utterance in progress so far: a barge-in once it is voiced long enough."""
        if voiced_ms >= self.min_ms and self._say(seq):
            await self._barge_in(seq, "speech")

    async def partial(self, seq: int, text: str, language: str | None) -> None:
        """A partial of it: a barge-in once it holds enough words that are not backchannels."""
        if self.min_words and backchannel.counted(text, language) >= self.min_words and self._say(seq):
            await self._barge_in(seq, "words")

    async def no_turn(self, seq: int, result: Transcript, language: str | None, message_id: str) -> bool:
        """The utterance is read: no words, or, over a reply, only a backchannel or words Whisper
        was unsure of (a sound that was not speech) make no turn, and are said so. False: a turn."""
        over_reply = self._said.pop(seq, None) is not None
        if not result.text:
            await self._nothing(message_id, "speech was detected but nothing was recognised")
            return True
        if not over_reply:
            return False
        if backchannel.only_backchannel(result.text, result.language or language):
            metrics.EVENTS.labels("stt", "backchannel").inc()
            said = schemas.Backchannel(
                conversation_id=self.conv, session_id=self.session_id, utterance_seq=seq, text=result.text
            )
            await self.bus.publish_event(said, msg_id=f"backchannel.{message_id}")
            return True
        if result.confidence >= self.min_confidence:
            return False
        metrics.EVENTS.labels("stt", "over_reply_not_speech").inc()
        await self._nothing(message_id, f"the sound over the reply held no words (read as {result.text!r}, unsure)")
        return True

    async def _nothing(self, message_id: str, message: str) -> None:
        error = schemas.ErrorEvent(
            conversation_id=self.conv, code="no_speech_recognized", message=message, message_id=message_id
        )
        await self.bus.publish_event(error, msg_id=f"stt-empty.{message_id}")

    def forget(self, seq: int) -> None:
        self._said.pop(seq, None)

    def _say(self, seq: int) -> bool:
        if self._said.get(seq, True):
            return False
        self._said[seq] = True
        return True

    async def _barge_in(self, seq: int, reason: str) -> None:
        metrics.EVENTS.labels("stt", f"barge_in_{reason}").inc()
        await self.bus.publish_live(
            schemas.BargeIn(conversation_id=self.conv, session_id=self.session_id, utterance_seq=seq, reason=reason)
        )
