"""Portuguese: "duas milhas", "duzentas libras", "quinze e trinta", "primeiro de novembro"."""

from __future__ import annotations

import re

from ..language import Dates, Gender, Language, Money
from ..numbers import cardinal, words
from ..patterns import CLOCK, HOUR

_MONTHS = (
    "janeiro",
    "fevereiro",
    "março",
    "abril",
    "maio",
    "junho",
    "julho",
    "agosto",
    "setembro",
    "outubro",
    "novembro",
    "dezembro",
)


def _agree(word: str, gender: Gender) -> str:
    """The feminine count ("uma", "duas", "duzentas"); millions keep the masculine ("dois milhões")."""
    if gender != "f" or re.search(r"milh|bilh|trilh", word):
        return word
    word = re.sub(r"\bum\b", "uma", word)
    word = re.sub(r"\bdois\b", "duas", word)
    return re.sub(r"entos\b", "entas", word)


def _clock(hour: int, minute: int, meridiem: str) -> str:
    """The hour counted in the feminine: "quinze e trinta", "duas horas"."""
    spoken = cardinal(hour, LANGUAGE, "f")
    if minute:
        return f"{spoken} e {words(minute, 'pt')}"
    return f"{spoken} {'hora' if hour == 1 else 'horas'}"


LANGUAGE = Language(
    code="pt",
    and_="e",
    or_="ou",
    at="arroba",
    dot="ponto",
    slash="barra",
    dash="hífen",
    underscore="sublinhado",
    plus="mais",
    minus="menos",
    equals="igual a",
    to="a",
    per="por",
    number="número",
    hashtag="hashtag",
    units={
        "°C": ("grau Celsius", "graus Celsius", "m"),
        "°F": ("grau Fahrenheit", "graus Fahrenheit", "m"),
        "ºC": ("grau Celsius", "graus Celsius", "m"),
        "ºF": ("grau Fahrenheit", "graus Fahrenheit", "m"),
        "°": ("grau", "graus", "m"),
        "km/h": ("quilómetro por hora", "quilómetros por hora", "m"),
        "mph": ("milha por hora", "milhas por hora", "f"),
        "km": ("quilómetro", "quilómetros", "m"),
        "cm": ("centímetro", "centímetros", "m"),
        "mm": ("milímetro", "milímetros", "m"),
        "m": ("metro", "metros", "m"),
        "kg": ("quilograma", "quilogramas", "m"),
        "mg": ("miligrama", "miligramas", "m"),
        "g": ("grama", "gramas", "m"),
        "ml": ("mililitro", "mililitros", "m"),
        "l": ("litro", "litros", "m"),
        "GB": ("gigabyte", "gigabytes", "m"),
        "MB": ("megabyte", "megabytes", "m"),
        "kB": ("kilobyte", "kilobytes", "m"),
        "%": ("por cento", "por cento", None),
        "‰": ("por mil", "por mil", None),
    },
    abbreviations=(
        (r"[Pp]\.\s?ex\.", "por exemplo", False),
        (r"Srta\.", "senhorita", False),
        (r"Sra\.", "senhora", False),
        (r"Sr\.", "senhor", False),
        (r"[Ee]tc\.", "et cetera", True),
        (r"[Nn]\.?º(?=\s?[0-9])", "número", False),
    ),
    dates=Dates(months=_MONTHS, say="{day} de {month} de {year}"),
    money=Money(
        num2words=True,
        currencies={
            "JPY": ("iene", "ienes", "", ""),
            "CHF": ("franco suíço", "francos suíços", "cêntimo", "cêntimos"),
        },
        scale_of="de ",
        scales=("mil", "milhão", "milhões"),
        feminine=frozenset({"GBP"}),
    ),
    agree=_agree,
    counts_agree=True,
    clock=_clock,
    times=(CLOCK, rf"{HOUR}\s?[hH](?:\s?(?P<minute>[0-5][0-9]))?(?![\w:])"),
)
