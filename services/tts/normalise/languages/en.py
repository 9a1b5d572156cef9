"""English: month-first dates, a.m. and p.m., years to 2099 ("twenty twenty-six"), decades, "$5m"."""

from __future__ import annotations

import re

from ..language import Dates, Language, Money
from ..numbers import words
from ..patterns import AFTER_WORD, HOUR, MERIDIEM, MINUTE, NAMED_YEAR

_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)

_NAMES = "|".join(_MONTHS)
_DAY = r"(?P<day>[0-9]{1,2})(?:st|nd|rd|th)?"
_THE_BEFORE = re.compile(r"\bthe\s+$", re.IGNORECASE)


def _named_date(m: re.Match[str], ordinal: str, year: str) -> str:
    """Day first as "the twenty-first of November, twenty twenty-six", else "November twenty-first"."""
    comma = "," if year else ""
    if m.groupdict().get("day_first"):
        the = "" if _THE_BEFORE.search(m.string[max(0, m.start() - 8) : m.start()]) else "the "
        return f"{the}{ordinal} of {m['month']}{comma}{year}"
    return f"{m['month']} {ordinal}{comma}{year}"


def _clock(hour: int, minute: int, meridiem: str) -> str:
    """Said as people say it: "three thirty p m", "ten oh five", "ten o'clock", "fifteen hundred"."""
    spoken = words(hour, "en")
    if minute:
        spoken += f" oh {words(minute, 'en')}" if minute < 10 else f" {words(minute, 'en')}"
    elif not meridiem:
        spoken += " o'clock" if 1 <= hour <= 12 else " hundred"
    return f"{spoken} {meridiem[0].lower()} m" if meridiem else spoken


def _decade(start: int) -> str:
    """A decade as it is said: 1990 -> "nineteen nineties"."""
    said = words(start, "en", to="year")
    return re.sub(r"y$", "ies", said) if said.endswith("y") else f"{said}s"


LANGUAGE = Language(
    code="en",
    decimal=".",
    and_="and",
    or_="or",
    at="at",
    dot="dot",
    slash="slash",
    dash="dash",
    underscore="underscore",
    plus="plus",
    minus="minus",
    equals="equals",
    to="to",
    per="per",
    number="number",
    hashtag="hashtag",
    units={
        "°C": ("degree Celsius", "degrees Celsius", None),
        "°F": ("degree Fahrenheit", "degrees Fahrenheit", None),
        "°": ("degree", "degrees", None),
        "km/h": ("kilometre per hour", "kilometres per hour", None),
        "mph": ("mile per hour", "miles per hour", None),
        "km": ("kilometre", "kilometres", None),
        "cm": ("centimetre", "centimetres", None),
        "mm": ("millimetre", "millimetres", None),
        "m": ("metre", "metres", None),
        "kg": ("kilogram", "kilograms", None),
        "mg": ("milligram", "milligrams", None),
        "g": ("gram", "grams", None),
        "ml": ("millilitre", "millilitres", None),
        "l": ("litre", "litres", None),
        "GB": ("gigabyte", "gigabytes", None),
        "MB": ("megabyte", "megabytes", None),
        "kB": ("kilobyte", "kilobytes", None),
        "%": ("percent", "percent", None),
        "‰": ("per mille", "per mille", None),
    },
    abbreviations=(
        (r"[Ee]\.\s?g\.", "for example", False),
        (r"[Ii]\.\s?e\.", "that is", False),
        (r"[Ee]tc\.", "et cetera", True),
        (r"[Vv]s\.?", "versus", False),
        (r"[Aa]pprox\.", "approximately", False),
        (r"[Nn]o\.(?=\s?[0-9])", "number", False),
        (r"[Nn]os\.(?=\s?[0-9])", "numbers", False),
        (r"St\.(?=\s)", "Saint", False),
    ),
    dates=Dates(
        months=_MONTHS,
        say="{month} {day}, {year}",
        ordinal_days="every",
        month_first=True,
        named=(
            rf"\b(?P<month>{_NAMES})\s{_DAY}(?!\w){NAMED_YEAR}",
            rf"(?P<day_first>(?P<day>{AFTER_WORD}[0-9]?)(?:st|nd|rd|th)?)\s(?:of\s)?(?P<month>{_NAMES})(?!\w){NAMED_YEAR}",
            rf"\b(?P<month>{_NAMES}),?\s(?P<year>[0-9]{{4}})(?![0-9]|[.,][0-9])",
        ),
        say_named=_named_date,
    ),
    money=Money(
        num2words=True,
        currencies={
            "JPY": ("yen", "yen", "", ""),
            "CHF": ("Swiss franc", "Swiss francs", "centime", "centimes"),
        },
        scales=("thousand", "million", "billion", "trillion"),
        scale_suffixes={
            "k": "thousand",
            "K": "thousand",
            "m": "million",
            "M": "million",
            "bn": "billion",
            "B": "billion",
        },
        drop=" sterling",
    ),
    clock=_clock,
    times=(rf"{HOUR}:{MINUTE}(?:{MERIDIEM})?", rf"{HOUR}{MERIDIEM}"),
    last_year=2099,
    year_after=re.compile(
        r"\b(?:in|since|from|until|till|by|of|around|before|after|during|between|and|to|year|circa)\s$", re.IGNORECASE
    ),
    decade=_decade,
)
