"""Italian: "ventun chilometri", "una sterlina", "quindici e trenta", "primo novembre"."""

from __future__ import annotations

import re

from ..language import Dates, Gender, Language, Money
from ..numbers import cardinal, words

_MONTHS = (
    "gennaio",
    "febbraio",
    "marzo",
    "aprile",
    "maggio",
    "giugno",
    "luglio",
    "agosto",
    "settembre",
    "ottobre",
    "novembre",
    "dicembre",
)


def _agree(word: str, gender: Gender) -> str:
    """num2words' "uno" before a noun: "un chilometro", "ventun chilometri", "una sterlina"."""
    if gender == "f":
        return "una" if word == "uno" else word
    return re.sub(r"(?<!o)uno$", "un", word)


def _clock(hour: int, minute: int, meridiem: str) -> str:
    """The hour counted in the feminine: "quindici e trenta", "una"."""
    spoken = cardinal(hour, LANGUAGE, "f")
    return f"{spoken} e {words(minute, 'it')}" if minute else spoken


LANGUAGE = Language(
    code="it",
    and_="e",
    or_="o",
    at="chiocciola",
    dot="punto",
    slash="slash",
    dash="trattino",
    underscore="trattino basso",
    plus="più",
    minus="meno",
    equals="uguale a",
    to="a",
    per="per",
    number="numero",
    hashtag="hashtag",
    units={
        "°C": ("grado Celsius", "gradi Celsius", "m"),
        "°F": ("grado Fahrenheit", "gradi Fahrenheit", "m"),
        "°": ("grado", "gradi", "m"),
        "km/h": ("chilometro orario", "chilometri orari", "m"),
        "mph": ("miglio orario", "miglia orarie", "m"),
        "km": ("chilometro", "chilometri", "m"),
        "cm": ("centimetro", "centimetri", "m"),
        "mm": ("millimetro", "millimetri", "m"),
        "m": ("metro", "metri", "m"),
        "kg": ("chilogrammo", "chilogrammi", "m"),
        "mg": ("milligrammo", "milligrammi", "m"),
        "g": ("grammo", "grammi", "m"),
        "ml": ("millilitro", "millilitri", "m"),
        "l": ("litro", "litri", "m"),
        "GB": ("gigabyte", "gigabyte", "m"),
        "MB": ("megabyte", "megabyte", "m"),
        "kB": ("kilobyte", "kilobyte", "m"),
        "%": ("per cento", "per cento", None),
        "‰": ("per mille", "per mille", None),
    },
    abbreviations=(
        (r"[Pp]\.\s?es\.", "per esempio", False),
        (r"[Ee]cc\.", "eccetera", True),
        (r"Sig\.ra", "signora", False),
        (r"Sig\.na", "signorina", False),
        (r"Sig\.", "signor", False),
        (r"[Dd]ott\.ssa", "dottoressa", False),
        (r"[Dd]ott\.", "dottor", False),
        (r"[Nn](?:\.|°|º)(?=\s?[0-9])", "numero", False),
    ),
    dates=Dates(months=_MONTHS),
    money=Money(
        num2words=True,
        currencies={
            "JPY": ("yen", "yen", "", ""),
            "CHF": ("franco svizzero", "franchi svizzeri", "centesimo", "centesimi"),
        },
        scale_of="di ",
        scales=("mila", "milione", "milioni", "miliardo", "miliardi"),
        scale_nouns=("milione", "milioni", "miliardo", "miliardi"),
    ),
    agree=_agree,
    clock=_clock,
)
