"""Numbers read and said: num2words, remembered, and written numbers parsed the language's way."""

from __future__ import annotations

import functools
import re
from decimal import Decimal
from typing import TYPE_CHECKING

from num2words import num2words

if TYPE_CHECKING:
    from .language import Gender, Language


@functools.lru_cache(maxsize=4096)
def words(n: int | Decimal, lang: str, to: str = "cardinal") -> str:
    """num2words, remembered: a call costs tens of microseconds and the same few numbers keep coming."""
    return num2words(n, lang=lang, to=to)


@functools.lru_cache(maxsize=4096)
def cardinal(n: int, language: Language, gender: Gender = None) -> str:
    """A cardinal that agrees with a noun: "ein Kilometer", "une heure", "veintiún kilómetros"."""
    word = words(n, language.code)
    return word if gender is None else language.agree(word, gender)


_GROUPING = re.compile(r"[\s'\u00a0\u202f]")


def parse(number: str, decimal: str) -> Decimal:
    """A written number as a value, reading "." and "," the way the language does."""
    text = _GROUPING.sub("", number)
    thousands = "," if decimal == "." else "."
    if thousands in text and decimal in text:
        return Decimal(text.replace(thousands, "").replace(decimal, "."))
    if thousands in text:
        parts = text.split(thousands)
        if len(parts) > 2 or len(parts[-1]) == 3:
            return Decimal("".join(parts))
        return Decimal(".".join(parts))
    return Decimal(text.replace(decimal, "."))


def is_year(number: str, language: Language) -> bool:
    """A number that reads differently as a year than as a count: 1999 in English and German,
    2026 in English ("twenty twenty-six")."""
    return number.isdigit() and len(number) == 4 and (1100 <= int(number) <= language.last_year)
