"""Spanish: "veintiún kilómetros", "una libra", "doce y treinta", "un millón de euros"."""

from __future__ import annotations

import re

from ..language import Dates, Gender, Language, Money
from ..numbers import cardinal, words

_MONTHS = (
    "enero",
    "febrero",
    "marzo",
    "abril",
    "mayo",
    "junio",
    "julio",
    "agosto",
    "septiembre",
    "octubre",
    "noviembre",
    "diciembre",
)


def _agree(word: str, gender: Gender) -> str:
    """num2words' "uno" before a noun: "un kilómetro", "veintiún kilómetros", "una milla", "doscientas"."""
    if gender == "f":
        word = re.sub(r"ientos\b", "ientas", word)
        return re.sub(r"uno$", "una", word)
    return re.sub(r"(\buno|veintiuno)$", lambda m: "un" if m.group(1) == "uno" else "veintiún", word)


def _clock(hour: int, minute: int, meridiem: str) -> str:
    """The hour counted in the feminine (la una): "quince y treinta", "una en punto"."""
    spoken = cardinal(hour, LANGUAGE, "f")
    return f"{spoken} y {words(minute, 'es')}" if minute else f"{spoken} en punto"


LANGUAGE = Language(
    code="es",
    and_="y",
    or_="o",
    at="arroba",
    dot="punto",
    slash="barra",
    dash="guion",
    underscore="guion bajo",
    plus="más",
    minus="menos",
    equals="igual a",
    to="a",
    per="por",
    number="número",
    hashtag="hashtag",
    units={
        "°C": ("grado Celsius", "grados Celsius", "m"),
        "°F": ("grado Fahrenheit", "grados Fahrenheit", "m"),
        "ºC": ("grado Celsius", "grados Celsius", "m"),
        "ºF": ("grado Fahrenheit", "grados Fahrenheit", "m"),
        "°": ("grado", "grados", "m"),
        "km/h": ("kilómetro por hora", "kilómetros por hora", "m"),
        "mph": ("milla por hora", "millas por hora", "f"),
        "km": ("kilómetro", "kilómetros", "m"),
        "cm": ("centímetro", "centímetros", "m"),
        "mm": ("milímetro", "milímetros", "m"),
        "m": ("metro", "metros", "m"),
        "kg": ("kilogramo", "kilogramos", "m"),
        "mg": ("miligramo", "miligramos", "m"),
        "g": ("gramo", "gramos", "m"),
        "ml": ("mililitro", "mililitros", "m"),
        "l": ("litro", "litros", "m"),
        "GB": ("gigabyte", "gigabytes", "m"),
        "MB": ("megabyte", "megabytes", "m"),
        "kB": ("kilobyte", "kilobytes", "m"),
        "%": ("por ciento", "por ciento", None),
        "‰": ("por mil", "por mil", None),
    },
    abbreviations=(
        (r"[Pp]\.\s?ej\.", "por ejemplo", False),
        (r"Srta\.", "señorita", False),
        (r"Sra\.", "señora", False),
        (r"Sr\.", "señor", False),
        (r"Uds\.", "ustedes", False),
        (r"Ud\.", "usted", False),
        (r"[Ee]tc\.", "etcétera", True),
        (r"[Aa]prox\.", "aproximadamente", False),
        (r"(?:[Nn]\.?º|[Nn]úm\.)(?=\s?[0-9])", "número", False),
    ),
    dates=Dates(months=_MONTHS, say="{day} de {month} de {year}", ordinal_days="none"),
    money=Money(
        num2words=True,
        scale_of="de ",
        scales=("mil", "millón", "millones"),
        scale_nouns=("millón", "millones"),
    ),
    agree=_agree,
    counts_agree=True,
    clock=_clock,
)
