"""Sentence cutting: a reply's token stream into speakable pieces, each as soon as it is complete."""

from __future__ import annotations

import re

import emoji
import pysbd

_MARKUP = re.compile(r"[*_#`>~|]+|\[(.*?)\]\([^)]*\)|^\s*(?:[-+]|\d+[.)])\s+", re.M)
# pysbd (about 0.25 ms a call) runs only once a sentence mark is followed by the next word:
# before that, it could only return the one growing segment.
_TERMINATORS = re.compile(r"[.!?;:…。！？]['\")\]]*\s+\S")
# Addresses are masked before segmenting: pysbd would split "a.html?b=1" at the "?".
_ADDRESS = re.compile(r"\b(?:https?://|www\.)\S*[^\s.,!?;:)\]'\"]|\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# A clause may end the first piece early: punctuation followed by a space (so "3,500" is safe).
_CLAUSE = re.compile(r"[,;:—–]\s")


def speakable(text: str) -> str:
    """What the voice says: markdown marks, list bullets, link targets and emoji are for the eye.

    The stored message keeps the text as the model wrote it; only synthesis gets this form.
    """
    text = emoji.replace_emoji(text, replace="")
    return " ".join(_MARKUP.sub(lambda m: m.group(1) or "", text).split())


class SentenceCutter:
    """Cuts a token stream into speakable pieces as soon as each is complete.

    pysbd knows abbreviations, decimals, URLs and e-mail addresses, so a sentence is only
    released once a later one has begun (the last segment may still be growing). To start
    speaking sooner, the first piece of a reply may be a clause: once it has
    `first_clause_words` words and a clause mark (comma, semicolon, colon, dash) followed by
    a space, it goes; later pieces are whole sentences, which synthesise more naturally.
    """

    def __init__(self, language: str = "en", first_clause_words: int = 4):
        try:
            self._seg = pysbd.Segmenter(language=language, clean=False, char_span=True)
        except ValueError:
            self._seg = pysbd.Segmenter(language="en", clean=False, char_span=True)
        self._buf = ""
        self._seen = 0
        """Sentence marks before this index were already put to pysbd, which kept them inside a
        sentence ("e.g. this"): only a new one calls it again, not every later token."""
        self._first = True
        self._first_clause_words = first_clause_words

    def push(self, delta: str) -> list[str]:
        self._buf += delta
        out: list[str] = []
        marks = [m.start() for m in _TERMINATORS.finditer(self._buf, self._seen)]
        if marks:
            masked = _ADDRESS.sub(lambda m: "x" * len(m.group()), self._buf)
            spans = self._seg.segment(masked)
            self._seen = marks[-1] + 1
            if len(spans) >= 2:
                cuts = [sp.start for sp in spans[1:]]
                pieces = [self._buf[a:b] for a, b in zip([0, *cuts[:-1]], cuts)]
                out, self._buf = [p.strip() for p in pieces if p.strip()], self._buf[cuts[-1] :]
                self._seen = max(0, self._seen - cuts[-1])
        if self._first and not out and self._first_clause_words:
            out = self._first_clause()
        if out:
            self._first = False
        return out

    def _first_clause(self) -> list[str]:
        for m in _CLAUSE.finditer(self._buf):
            head = self._buf[: m.start() + 1]
            if len(head.split()) >= self._first_clause_words:
                self._buf = self._buf[m.end() :]
                self._seen = max(0, self._seen - m.end())
                return [head.strip()]
        return []

    def flush(self) -> list[str]:
        self._seen = 0
        rest, self._buf = self._buf.strip(), ""
        return [rest] if rest else []
