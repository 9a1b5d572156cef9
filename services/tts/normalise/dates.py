"""Dates said in words: ISO, numeric and with the month's name."""

from __future__ import annotations

import datetime
import re

from .language import Dates, Language
from .numbers import words


def _date_words(day: int, month: int, year: int, language: Language, dates: Dates, ending: str) -> str:
    """A date as it is said: "November twenty-first, twenty twenty-six", "vingt et un novembre ..."."""
    datetime.date(year, month, day)  # raises for 31/02 and friends: the date is left alone
    code = language.code
    if dates.ordinal_days == "every" or (dates.ordinal_days == "first" and day == 1):
        day_words = words(day, code, to="ordinal") + ending
    else:
        day_words = words(day, code)
    return dates.say.format(day=day_words, month=dates.months[month - 1], year=words(year, code, to="year"))


def iso_date(m: re.Match[str], language: Language, dates: Dates) -> str:
    """2026-11-21 (or 2026/11/21): year, month, day."""
    year, month, day = (int(g) for g in m.groups())
    return _date_words(day, month, year, language, dates, dates.day_ending(m))


def numeric_date(m: re.Match[str], language: Language, dates: Dates) -> str:
    """d/m/y or m/d/y: the language's order first, then the other when the first is not a date;
    dotted dates are always day first."""
    first, second, year = (int(g) for g in m.groups())
    if "." in m.group(0):
        orders = [(first, second)]
    elif dates.month_first:
        orders = [(second, first), (first, second)]
    else:
        orders = [(first, second), (second, first)]
    for day, month in orders:
        try:
            return _date_words(day, month, year, language, dates, dates.day_ending(m))
        except ValueError:
            continue
    return m.group(0)


def named_date(m: re.Match[str], language: Language, dates: Dates) -> str:
    """A date written with its month name: "21 November 2026", "November 21st", "21. November"."""
    groups = m.groupdict()
    month = dates.months.index(groups["month"]) + 1
    year = int(groups["year"]) if groups.get("year") else None
    if not groups.get("day"):
        return f"{groups['month']} {words(year, language.code, to='year')}"
    day = int(groups["day"])
    datetime.date(year or 2000, month, day)
    year_words = f" {words(year, language.code, to='year')}" if year else ""
    ordinal = words(day, language.code, to="ordinal") + dates.day_ending(m)
    return dates.say_named(m, ordinal, year_words)
