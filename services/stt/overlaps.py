"""Utterances said over a playing reply: when each becomes a barge-in, and which were only a
backchannel ("mhm", "yeah") that should leave the reply playing and make no turn.

The gateway knows what is playing and names such an utterance (`schemas.OverReply`); the
worker knows how long it has been voiced and what its words are, so it is the one to say.
"""

from __future__ import annotations

from services.common import backchannel


class Overlaps:
    """Per session: the utterances the gateway named as begun over a reply, until read."""

    def __init__(self, min_ms: int, min_words: int):
        self.min_ms = min_ms
        self.min_words = max(1, min_words)
        self._said: dict[int, bool] = {}
        """Per utterance over a reply: whether its barge-in has been said."""

    def mark(self, seq: int) -> None:
        self._said.setdefault(seq, False)

    def by_speech(self, seq: int, voiced_ms: float) -> bool:
        """True once, when an utterance over a reply has been voiced long enough."""
        return voiced_ms >= self.min_ms and self._say(seq)

    def by_words(self, seq: int, text: str, language: str | None) -> bool:
        """True once, when a partial of it holds enough words that are not backchannels."""
        return backchannel.counted(text, language) >= self.min_words and self._say(seq)

    def ended(self, seq: int) -> bool:
        """The utterance is being read: True if it was said over a reply."""
        return self._said.pop(seq, None) is not None

    def _say(self, seq: int) -> bool:
        if self._said.get(seq, True):
            return False
        self._said[seq] = True
        return True
