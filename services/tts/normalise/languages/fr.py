"""French: "une heure", "15h30", "premier novembre", "1,5 kilomètre", "cinq millions d'euros"."""

from __future__ import annotations

import re
from decimal import Decimal

from ..language import Dates, Gender, Language, Money
from ..numbers import cardinal
from ..patterns import CLOCK, HOUR

_MONTHS = (
    "janvier",
    "février",
    "mars",
    "avril",
    "mai",
    "juin",
    "juillet",
    "août",
    "septembre",
    "octobre",
    "novembre",
    "décembre",
)


def _agree(word: str, gender: Gender) -> str:
    """num2words' "un" before a feminine noun: "une heure", "vingt et une livres"."""
    return re.sub(r"\bun$", "une", word) if gender == "f" else word


def _singular(value: Decimal) -> bool:
    """French counts below two in the singular: "1,5 kilomètre"."""
    return abs(value) < 2


def _clock(hour: int, minute: int, meridiem: str) -> str:
    """The hour counted in the feminine (une heure): "quinze heures trente", "une heure"."""
    spoken = f"{cardinal(hour, LANGUAGE, 'f')} {'heures' if hour >= 2 else 'heure'}"
    return f"{spoken} {cardinal(minute, LANGUAGE, 'f')}" if minute else spoken


LANGUAGE = Language(
    code="fr",
    and_="et",
    or_="ou",
    at="arobase",
    dot="point",
    slash="slash",
    dash="tiret",
    underscore="tiret bas",
    plus="plus",
    minus="moins",
    equals="égale",
    to="à",
    per="par",
    number="numéro",
    hashtag="hashtag",
    units={
        "°C": ("degré Celsius", "degrés Celsius", "m"),
        "°F": ("degré Fahrenheit", "degrés Fahrenheit", "m"),
        "°": ("degré", "degrés", "m"),
        "km/h": ("kilomètre par heure", "kilomètres par heure", "m"),
        "mph": ("mile par heure", "miles par heure", "m"),
        "km": ("kilomètre", "kilomètres", "m"),
        "cm": ("centimètre", "centimètres", "m"),
        "mm": ("millimètre", "millimètres", "m"),
        "m": ("mètre", "mètres", "m"),
        "kg": ("kilogramme", "kilogrammes", "m"),
        "mg": ("milligramme", "milligrammes", "m"),
        "g": ("gramme", "grammes", "m"),
        "ml": ("millilitre", "millilitres", "m"),
        "l": ("litre", "litres", "m"),
        "GB": ("gigaoctet", "gigaoctets", "m"),
        "Go": ("gigaoctet", "gigaoctets", "m"),
        "MB": ("mégaoctet", "mégaoctets", "m"),
        "Mo": ("mégaoctet", "mégaoctets", "m"),
        "kB": ("kilooctet", "kilooctets", "m"),
        "ko": ("kilooctet", "kilooctets", "m"),
        "%": ("pour cent", "pour cent", None),
        "‰": ("pour mille", "pour mille", None),
    },
    abbreviations=(
        (r"[Pp]\.\s?ex\.", "par exemple", False),
        (r"MM\.(?=\s+[A-ZÀ-Ý])", "Messieurs", False),
        (r"M\.(?=\s+[A-ZÀ-Ý])", "Monsieur", False),
        (r"Mmes\.?", "Mesdames", False),
        (r"Mme\.?", "Madame", False),
        (r"Mlles\.?", "Mesdemoiselles", False),
        (r"Mlle\.?", "Mademoiselle", False),
        (r"Dr(?=\s+[A-ZÀ-Ý])", "Docteur", False),
        (r"[Ee]tc\.", "et cetera", True),
        (r"[Ee]nv\.", "environ", False),
        (r"[Nn]°(?=\s?[0-9])", "numéro", False),
    ),
    dates=Dates(months=_MONTHS),
    money=Money(
        num2words=True,
        currencies={
            "JPY": ("yen", "yens", "", ""),
            "CHF": ("franc suisse", "francs suisses", "centime", "centimes"),
        },
        scale_of="de ",
        scales=("mille", "million", "millions", "milliard", "milliards"),
        elided_of="d'",
        scale_nouns=("million", "millions", "milliard", "milliards"),
        feminine=frozenset({"GBP"}),
    ),
    agree=_agree,
    singular=_singular,
    clock=_clock,
    times=(CLOCK, rf"{HOUR}\s?[hH](?:\s?(?P<minute>[0-5][0-9]))?(?![\w:])"),
)
