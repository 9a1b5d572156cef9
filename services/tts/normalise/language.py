"""What one language brings to the shared rules: its words, and hooks where its grammar differs.

The rules in `rules.py` read only these fields, never a language code; an empty field switches
off the rule that uses it, so a language without word tables gets only the rules that need none.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from .patterns import CLOCK

Gender = str | None  # "m", "f", "n" or None for the counting form


def _same(word: str, gender: Gender) -> str:
    return word


def _exactly_one(value: Decimal) -> bool:
    return abs(value) == 1


def _digits(hour: int, minute: int, meridiem: str) -> str:
    """A clock time in num2words-free form: "15 30", which XTTS reads as two numbers."""
    return f"{hour} {minute:02d}" if minute else str(hour)


def _no_ending(m: re.Match[str]) -> str:
    return ""


@dataclass(frozen=True, eq=False)
class Dates:
    """How a language writes and says dates."""

    months: tuple[str, ...]
    # a whole date, from its day, month name and year in words
    say: str = "{day} {month} {year}"
    # which days are said as ordinals: "premier novembre" but "vingt et un novembre"
    ordinal_days: Literal["every", "first", "none"] = "first"
    # whether "11/05/2026" is read month first
    month_first: bool = False
    # what an ordinal day takes from the words before the date: "am einundzwanzigsten"
    day_ending: Callable[[re.Match[str]], str] = _no_ending
    # regexes for dates written with the month's name (groups month, day, year; day_first optional)
    named: tuple[str, ...] = ()
    # such a date said, from its match, its ordinal day (with its ending) and " year" or ""
    say_named: Callable[[re.Match[str], str, str], str] | None = None


@dataclass(frozen=True, eq=False)
class Money:
    """How a language says amounts of money."""

    # whether num2words' currency words are right in the language (else amounts are left to XTTS)
    num2words: bool = False
    # ISO code -> (singular, plural, cent singular, cent plural) where num2words has none
    currencies: dict[str, tuple[str, str, str, str]] = field(default_factory=dict)
    # how a scale word joins the currency that follows it: "de " in "cinq millions de dollars"
    scale_of: str = ""
    # the same before a vowel, where the language elides it: "d'" in "cinq millions d'euros"
    elided_of: str = ""
    scales: tuple[str, ...] = ()
    # scales written as a suffix, and their words: "$5m" -> "5 million dollars"
    scale_suffixes: dict[str, str] = field(default_factory=dict)
    # num2words' scale nouns that take `scale_of` before the currency: "un millón de euros"
    scale_nouns: tuple[str, ...] = ()
    # currencies whose noun is feminine, where num2words counts them in the masculine ("une livre")
    feminine: frozenset[str] = frozenset()
    # what num2words adds to a currency's name that nobody says: " sterling"
    drop: str = ""

    def of(self, noun: str) -> str:
        """What joins a scale word to `noun`: "de ", or "d'" before a vowel."""
        return self.elided_of if self.elided_of and noun[0] in "aeiouéèh" else self.scale_of


@dataclass(frozen=True, eq=False)
class Language:
    """The words one language needs; an empty field switches the rule that uses it off."""

    code: str
    decimal: str = ","
    # left as written: XTTS reads the script through its own converter (pypinyin, cutlet, hangul)
    left_to_xtts: bool = False
    and_: str = ""
    or_: str = ""
    at: str = ""
    dot: str = ""
    slash: str = ""
    dash: str = ""
    underscore: str = ""
    plus: str = ""
    minus: str = ""
    equals: str = ""
    to: str = ""
    per: str = ""
    number: str = ""
    hashtag: str = ""
    # symbol -> (singular, plural, gender of the noun or None when "1" needs no agreement)
    units: dict[str, tuple[str, str, Gender]] = field(default_factory=dict)
    # (regex, replacement, whether it gives back a full stop that also ended the sentence)
    abbreviations: tuple[tuple[str, str, bool], ...] = ()
    dates: Dates | None = None
    money: Money = field(default_factory=Money)
    # a num2words cardinal made to agree with a noun's gender: "eins" -> "ein", "un" -> "une"
    agree: Callable[[str, Gender], str] = _same
    # whether every count agrees with its noun ("duas milhas"), not only those ending in 1
    counts_agree: bool = False
    # whether a count takes the singular noun: 1 everywhere, below 2 in French ("1,5 kilomètre")
    singular: Callable[[Decimal], bool] = _exactly_one
    # a valid clock time in words, from hour, minute and "a"/"p" or ""
    clock: Callable[[int, int, str], str] = _digits
    # regexes for the ways the language writes a clock time (groups hour, minute, ampm)
    times: tuple[str, ...] = (CLOCK,)
    # the last four-digit number that reads differently as a year: 2026 is "twenty twenty-six"
    last_year: int = 1999
    # the words after which a four-digit number is a year ("in 1999")
    year_after: re.Pattern[str] | None = None
    # a decade in words from its first year: 1990 -> "nineteen nineties"
    decade: Callable[[int], str] | None = None
    # words that start a sentence, where XTTS reads any "5." before a space as an ordinal
    sentence_openers: str = ""
