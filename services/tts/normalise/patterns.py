"""Regex fragments the rules and the languages share, so that each is written once."""

from __future__ import annotations


def _lead(excluded: str) -> str:
    """A first digit not preceded by any of `excluded`. The lookbehind comes after the digit so that
    the regex engine can skip ahead to digits instead of trying it at every position."""
    return rf"[0-9](?<![{excluded}][0-9])"


AFTER_WORD = _lead(r"\w.,")
AFTER_DATE = _lead(r"\w./:-")
AFTER_TIME = _lead(r"\w:.,")
AFTER_RANGE = _lead(r"\w.,:/-")
AFTER_DECADE = _lead(r"\w.,'")
AFTER_MONEY = _lead(r"\w.,$€£¥")
NUMBER = rf"{AFTER_MONEY}(?:[0-9]{{0,2}}(?:[.,][0-9]{{3}})+(?:[.,][0-9]+)?|[0-9]*(?:[.,][0-9]+)?)"

# A clock time's parts, for the time forms each language writes.
HOUR = rf"(?P<hour>{AFTER_TIME}[0-9]?)"
MINUTE = r"(?P<minute>[0-9]{2})(?::00Z?)?(?![0-9]|:[0-9])"
MERIDIEM = r"\s?(?P<ampm>[AaPp])\.?\s?[Mm](?:\.|(?!\w))"
CLOCK = rf"{HOUR}:{MINUTE}(?:\s?Uhr(?!\w))?"
"""The clock time every language but English writes (English has its own, with a.m. and p.m.)."""

# A date's optional year after its month name.
NAMED_YEAR = r"(?:,?\s(?P<year>[0-9]{4}))?(?![0-9]|[.,][0-9])"

SYMBOLS = {"$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY"}
CODES = ("USD", "EUR", "GBP", "JPY", "CHF")


def amount_tail(decimal: str) -> str:
    """An amount after its first digit, as written in the language: "2,500.50" in English, "2.500,50"
    or "2 500,50" elsewhere."""
    if decimal == ".":
        return r"[0-9]{0,2}(?:,[0-9]{3})+(?:\.[0-9]{1,2})?|[0-9]*(?:[.,][0-9]{1,2})?"
    return r"[0-9]{0,2}(?:[.' ][0-9]{3})+(?:,[0-9]{1,2})?|[0-9]*(?:[.,][0-9]{1,2})?"


def amount(decimal: str) -> str:
    return rf"[0-9](?:{amount_tail(decimal)})"
