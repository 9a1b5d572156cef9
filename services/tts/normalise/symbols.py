"""Abbreviations, symbols and punctuation said as words or as the pause they stand for."""

from __future__ import annotations

import re
from collections.abc import Callable

from .language import Language

_SENTENCE_END = re.compile(r"\s*$|\s+[A-ZÀ-Ý]")
_LETTERS = re.compile(r"[^\W\d_]+")
_LETTERS_BEFORE = re.compile(r"[^\W\d_]+$")


def keep_stop(m: re.Match[str]) -> str:
    """The full stop an abbreviation swallowed, when it also ended the sentence."""
    if m.group(0).endswith(".") and _SENTENCE_END.match(m.string, m.end()):
        return "."
    return ""


def abbreviations(language: Language) -> tuple[str, Callable[[re.Match[str]], str]]:
    """All of a language's abbreviations as one alternation, so that they cost one pass."""
    alternatives = [rf"(?P<a{i}>{pattern})" for i, (pattern, _, _) in enumerate(language.abbreviations)]

    def replace(m: re.Match[str]) -> str:
        _, replacement, keeps_stop = language.abbreviations[int(m.lastgroup[1:])]
        if m.group(0)[0].isupper():
            replacement = replacement[0].upper() + replacement[1:]
        return replacement + (keep_stop(m) if keeps_stop else "")

    return rf"(?<![\w.])(?:{'|'.join(alternatives)})(?!\w)", replace


def slash(m: re.Match[str], language: Language) -> str:
    """A slash between words as it is said: "he or she", "and or", "TCP IP"."""
    left = _LETTERS_BEFORE.search(m.string[max(0, m.start() - 40) : m.start()])
    right = _LETTERS.match(m.string, m.end())
    if not left or not right:
        return m.group(0)
    left_word, right_word = left.group(0), right.group(0)
    if left_word.lower() == language.and_ or (left_word.isupper() and right_word.isupper()):
        return " "
    return f" {language.or_} "


def hash_sign(m: re.Match[str], language: Language) -> str:
    """A hash before digits is a number sign, before letters a hashtag."""
    return f"{language.number} " if m.group(1)[0].isdigit() else f"{language.hashtag} "


def ellipsis(m: re.Match[str]) -> str:
    """An ellipsis as the pause it stands for: a comma mid-sentence, a full stop at the end."""
    rest = m.string[m.end() :]
    if not rest.strip():
        return "."
    if rest[0] in "?!.,;:" or m.start() == 0:
        return ""
    return ", "
