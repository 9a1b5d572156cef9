"""Partial transcripts of the utterance in progress, with a prefix that never changes."""

from __future__ import annotations


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
