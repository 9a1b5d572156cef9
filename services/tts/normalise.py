"""Text made speakable for XTTS-v2 in the avatar's language.

XTTS's own cleaner (``multilingual_cleaners`` in coqui-tts) lowercases, spells out plain
numbers, decimals, ordinals such as "2nd", a few symbols and $/£/€ amounts, and knows a
handful of title abbreviations. Everything else reaches the model as-is and is mumbled or
read letter by letter: "3:30 pm" becomes "three:thirty pm", "21/11/2026" a string of
cardinals, "-5°C" "-five degree c", "12,50 €" in German a decimal with a silent euro,
"e.g." and "M. Dupont" stay abbreviations, e-mail addresses and URLs are read as one word.

This pass runs first and turns those into words in the avatar's language: clock times,
dates, currency amounts, signs and ranges, units, abbreviations, symbols, e-mail addresses
and URLs. Numbers that XTTS reads correctly on its own are left as digits; a number is
spelled out here only where the phrase needs it (a German "ein Kilometer", a French "une
heure", a date's ordinal day). English, German, French, Spanish, Italian and Portuguese
have full word tables; other languages get the rules that need no words beyond num2words'
(currency amounts, clock times), and Chinese, Japanese and Korean are left alone.

Every rule is a precompiled regular expression whose replacement falls back to the text it
matched if anything goes wrong, so ``normalise`` never raises, and no rule's output matches
another rule, so running it twice is harmless.
"""

from __future__ import annotations

import datetime
import functools
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from num2words import CONVERTER_CLASSES, num2words

__all__ = ["normalise"]

Gender = str | None  # "m", "f", "n" or None for the counting form


@dataclass(frozen=True)
class _Language:
    """The words one language needs; an empty field switches the rule that uses it off."""

    code: str
    decimal: str = ","
    months: tuple[str, ...] = ()
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
    # ISO code -> (singular, plural, cent singular, cent plural) where num2words has none
    currencies: dict[str, tuple[str, str, str, str]] = field(default_factory=dict)
    # how a scale word joins the currency that follows it: "de " in "cinq millions de dollars"
    scale_of: str = ""
    scales: tuple[str, ...] = ()


_EN = _Language(
    code="en",
    decimal=".",
    months=(
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
    ),
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
    currencies={
        "JPY": ("yen", "yen", "", ""),
        "CHF": ("Swiss franc", "Swiss francs", "centime", "centimes"),
    },
    scales=("thousand", "million", "billion", "trillion"),
)

_DE = _Language(
    code="de",
    months=(
        "Januar",
        "Februar",
        "März",
        "April",
        "Mai",
        "Juni",
        "Juli",
        "August",
        "September",
        "Oktober",
        "November",
        "Dezember",
    ),
    and_="und",
    or_="oder",
    at="at",
    dot="Punkt",
    slash="Slash",
    dash="Bindestrich",
    underscore="Unterstrich",
    plus="plus",
    minus="minus",
    equals="gleich",
    to="bis",
    per="pro",
    number="Nummer",
    hashtag="Hashtag",
    units={
        "°C": ("Grad Celsius", "Grad Celsius", "m"),
        "°F": ("Grad Fahrenheit", "Grad Fahrenheit", "m"),
        "°": ("Grad", "Grad", "m"),
        "km/h": ("Kilometer pro Stunde", "Kilometer pro Stunde", "m"),
        "mph": ("Meile pro Stunde", "Meilen pro Stunde", "f"),
        "km": ("Kilometer", "Kilometer", "m"),
        "cm": ("Zentimeter", "Zentimeter", "m"),
        "mm": ("Millimeter", "Millimeter", "m"),
        "m": ("Meter", "Meter", "m"),
        "kg": ("Kilogramm", "Kilogramm", "n"),
        "mg": ("Milligramm", "Milligramm", "n"),
        "g": ("Gramm", "Gramm", "n"),
        "ml": ("Milliliter", "Milliliter", "m"),
        "l": ("Liter", "Liter", "m"),
        "GB": ("Gigabyte", "Gigabyte", "n"),
        "MB": ("Megabyte", "Megabyte", "n"),
        "kB": ("Kilobyte", "Kilobyte", "n"),
        "%": ("Prozent", "Prozent", "n"),
        "‰": ("Promille", "Promille", "n"),
    },
    abbreviations=(
        (r"[Zz]\.\s?B\.", "zum Beispiel", False),
        (r"[Dd]\.\s?h\.", "das heißt", False),
        (r"[Uu]\.\s?a\.", "unter anderem", False),
        (r"usw\.", "und so weiter", True),
        (r"bzw\.", "beziehungsweise", False),
        (r"[Cc]a\.", "circa", False),
        (r"[Ee]vtl\.", "eventuell", False),
        (r"[Gg]gf\.", "gegebenenfalls", False),
        (r"[Ii]nkl\.", "inklusive", False),
        (r"[Zz]zgl\.", "zuzüglich", False),
        (r"Nr\.", "Nummer", False),
        (r"Dr\.", "Doktor", False),
        (r"Hr\.", "Herr", False),
        (r"Fr\.(?=\s+[A-ZÄÖÜ])", "Frau", False),
        (r"Str\.", "Straße", True),
    ),
    currencies={
        "JPY": ("Yen", "Yen", "", ""),
        "CHF": ("Franken", "Franken", "Rappen", "Rappen"),
    },
    scales=("Tausend", "Million", "Millionen", "Milliarde", "Milliarden"),
)

_FR = _Language(
    code="fr",
    months=(
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
    ),
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
    currencies={
        "JPY": ("yen", "yens", "", ""),
        "CHF": ("franc suisse", "francs suisses", "centime", "centimes"),
    },
    scale_of="de ",
    scales=("mille", "million", "millions", "milliard", "milliards"),
)

_ES = _Language(
    code="es",
    months=(
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
    ),
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
    scale_of="de ",
    scales=("mil", "millón", "millones"),
)

_IT = _Language(
    code="it",
    months=(
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
    ),
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
    currencies={
        "JPY": ("yen", "yen", "", ""),
        "CHF": ("franco svizzero", "franchi svizzeri", "centesimo", "centesimi"),
    },
    scale_of="di ",
    scales=("mila", "milione", "milioni", "miliardo", "miliardi"),
)

_PT = _Language(
    code="pt",
    months=(
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
    ),
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
    currencies={
        "JPY": ("iene", "ienes", "", ""),
        "CHF": ("franco suíço", "francos suíços", "cêntimo", "cêntimos"),
    },
    scale_of="de ",
    scales=("mil", "milhão", "milhões"),
)

_TABLES = {lang.code: lang for lang in (_EN, _DE, _FR, _ES, _IT, _PT)}
# Left as written: XTTS reads these scripts through its own converters (pypinyin, cutlet, hangul).
_UNTOUCHED = frozenset({"zh", "ja", "ko"})
# num2words' currency words are right for these; for others (ar: always riyal, hu: English plurals,
# tr: no currency argument) an amount is left to XTTS.
_NUM2WORDS_CURRENCY = frozenset({"en", "de", "fr", "es", "it", "pt", "nl", "pl", "ru", "cs"})
_DOT_DECIMAL = frozenset({"en", "hi", "ja", "ko", "zh"})


def _lead(excluded: str) -> str:
    """A first digit not preceded by any of `excluded`. The lookbehind comes after the digit so that
    the regex engine can skip ahead to digits instead of trying it at every position."""
    return rf"[0-9](?<![{excluded}][0-9])"


_AFTER_WORD = _lead(r"\w.,")
_AFTER_DATE = _lead(r"\w./:-")
_AFTER_TIME = _lead(r"\w:.,")
_AFTER_RANGE = _lead(r"\w.,:/-")
_AFTER_DECADE = _lead(r"\w.,'")
_AFTER_MONEY = _lead(r"\w.,$€£¥")
_NUMBER = rf"{_AFTER_MONEY}(?:[0-9]{{0,2}}(?:[.,][0-9]{{3}})+(?:[.,][0-9]+)?|[0-9]*(?:[.,][0-9]+)?)"
_SYMBOLS = {"$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY"}
_CODES = ("USD", "EUR", "GBP", "JPY", "CHF")
_EN_SCALE_SUFFIX = {"k": "thousand", "K": "thousand", "m": "million", "M": "million", "bn": "billion", "B": "billion"}


# ---------------------------------------------------------------- numbers


@functools.lru_cache(maxsize=4096)
def _words(n: int | Decimal, lang: str, to: str = "cardinal") -> str:
    """num2words, remembered: a call costs tens of microseconds and the same few numbers keep coming."""
    return num2words(n, lang=lang, to=to)


@functools.lru_cache(maxsize=4096)
def _cardinal(n: int, lang: str, gender: Gender = None) -> str:
    """A cardinal that agrees with a noun: "ein Kilometer", "une heure", "veintiún kilómetros"."""
    word = _words(n, lang)
    if gender is None:
        return word
    if lang == "de":
        return re.sub(r"eins$", "eine" if gender == "f" else "ein", word)
    if lang == "fr" and gender == "f":
        return re.sub(r"\bun$", "une", word)
    if lang == "es":
        if gender == "f":
            word = re.sub(r"ientos\b", "ientas", word)
            return re.sub(r"uno$", "una", word)
        return re.sub(r"(\buno|veintiuno)$", lambda m: "un" if m.group(1) == "uno" else "veintiún", word)
    if lang == "it":
        if gender == "f":
            return "una" if word == "uno" else word
        return re.sub(r"(?<!o)uno$", "un", word)
    if lang == "pt" and gender == "f":
        return _feminine(word, lang)
    return word


_GROUPING = re.compile(r"[\s'\u00a0\u202f]")


def _parse(number: str, decimal: str) -> Decimal:
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


def _is_one(value: Decimal, lang: str) -> bool:
    """Whether a count takes the singular: 1 everywhere, below 2 in French ("1,5 kilomètre")."""
    return abs(value) < 2 if lang == "fr" else abs(value) == 1


# ---------------------------------------------------------------- e-mail and URLs


_ADDRESS_SEPARATORS = re.compile(r"([./_+-])")
_SCHEME = re.compile(r"^(?:[a-zA-Z]+://)?(?:www\.)?", re.IGNORECASE)


def _spell_address(part: str, table: _Language) -> str:
    """Separators in an address as words: "docs.parley.dev" -> "docs dot parley dot dev"."""
    words = {".": table.dot, "-": table.dash, "_": table.underscore, "+": table.plus, "/": table.slash}
    pieces = _ADDRESS_SEPARATORS.split(part)
    return " ".join(words[p] if p in words else p for p in pieces if p)


def _email(m: re.Match[str], table: _Language) -> str:
    """An address read out: "ada at example dot com"."""
    local, domain = m.group(0).split("@", 1)
    return f"{_spell_address(local, table)} {table.at} {_spell_address(domain, table)}"


def _url(m: re.Match[str], table: _Language) -> str:
    """Host and path, without scheme, "www.", port, query or fragment: what a person would read out."""
    url = m.group(0)
    trailing = ""
    while url and url[-1] in ".,;:!?)]}'\"":
        trailing = url[-1] + trailing
        url = url[:-1]
    url = _SCHEME.sub("", url).split("?", 1)[0].split("#", 1)[0]
    host, _, path = url.partition("/")
    host = host.split(":", 1)[0]
    spoken = _spell_address(host, table)
    for segment in path.split("/"):
        if segment:
            spoken += f" {table.slash} {_spell_address(segment, table)}"
    return spoken + trailing


# ---------------------------------------------------------------- dates


def _date_words(day: int, month: int, year: int, table: _Language, ending: str) -> str:
    """A date as it is said: "November twenty-first, twenty twenty-six", "vingt et un novembre ..."."""
    datetime.date(year, month, day)  # raises for 31/02 and friends: the date is left alone
    lang = table.code
    name = table.months[month - 1]
    year_words = _words(year, lang, to="year")
    if lang == "en":
        return f"{name} {_words(day, lang, to='ordinal')}, {year_words}"
    if lang == "de":
        return f"{_words(day, lang, to='ordinal')}{ending} {name} {year_words}"
    if day == 1 and lang in ("fr", "it", "pt"):
        day_words = _words(1, lang, to="ordinal")
    else:
        day_words = _words(day, lang)
    if lang in ("es", "pt"):
        return f"{day_words} de {name} de {year_words}"
    return f"{day_words} {name} {year_words}"


# The ending a German ordinal day takes after these words; "r" ("einundzwanzigster November") otherwise.
_GERMAN_ENDINGS = {
    "am": "n",
    "vom": "n",
    "zum": "n",
    "beim": "n",
    "dem": "n",
    "den": "n",
    "der": "",
    "die": "",
    "das": "",
}
_WORD_BEFORE = re.compile(r"(\w+)\s+$")


def _german_ending(m: re.Match[str]) -> str:
    """How the German ordinal day agrees with the word before it: "am einundzwanzigsten", "der einundzwanzigste"."""
    before = _WORD_BEFORE.search(m.string[max(0, m.start() - 12) : m.start()])
    return _GERMAN_ENDINGS.get(before.group(1).lower(), "r") if before else "r"


def _iso_date(m: re.Match[str], table: _Language) -> str:
    """2026-11-21 (or 2026/11/21): year, month, day."""
    year, month, day = (int(g) for g in m.groups())
    return _date_words(day, month, year, table, _german_ending(m) if table.code == "de" else "")


def _numeric_date(m: re.Match[str], table: _Language) -> str:
    """d/m/y or m/d/y: English reads month first, every other language day first, and the other order
    is tried when the first is not a date; dotted dates are always day first."""
    first, second, year = (int(g) for g in m.groups())
    if "." in m.group(0):
        orders = [(first, second)]
    elif table.code == "en":
        orders = [(second, first), (first, second)]
    else:
        orders = [(first, second), (second, first)]
    for day, month in orders:
        try:
            return _date_words(day, month, year, table, _german_ending(m) if table.code == "de" else "")
        except ValueError:
            continue
    return m.group(0)


_THE_BEFORE = re.compile(r"\bthe\s+$", re.IGNORECASE)


def _named_date(m: re.Match[str], table: _Language) -> str:
    """A date written with its month name: "21 November 2026", "November 21st", "21. November"."""
    groups = m.groupdict()
    month = table.months.index(groups["month"]) + 1
    year = int(groups["year"]) if groups.get("year") else None
    if not groups.get("day"):
        return f"{groups['month']} {_words(year, table.code, to='year')}"
    day = int(groups["day"])
    datetime.date(year or 2000, month, day)
    year_words = f" {_words(year, table.code, to='year')}" if year else ""
    ordinal = _words(day, table.code, to="ordinal")
    if table.code == "de":
        return f"{ordinal}{_german_ending(m)} {groups['month']}{year_words}"
    if groups.get("day_first"):
        the = "" if _THE_BEFORE.search(m.string[max(0, m.start() - 8) : m.start()]) else "the "
        return f"{the}{ordinal} of {groups['month']}{',' if year else ''}{year_words}"
    return f"{groups['month']} {ordinal}{',' if year else ''}{year_words}"


# ---------------------------------------------------------------- clock times


def _clock(hour: int, minute: int, table: _Language, meridiem: str = "") -> str:
    """A clock time in words: "three thirty p m", "fünfzehn Uhr dreißig", "quinze heures trente"."""
    if not (0 <= hour <= 23 and 0 <= minute <= 59) or (meridiem and not 1 <= hour <= 12):
        raise ValueError("not a clock time")
    lang = table.code
    if lang == "en":
        spoken = _words(hour, lang)
        if minute:
            spoken += f" oh {_words(minute, lang)}" if minute < 10 else f" {_words(minute, lang)}"
        elif not meridiem:
            spoken += " o'clock" if 1 <= hour <= 12 else " hundred"
        return f"{spoken} {meridiem[0].lower()} m" if meridiem else spoken
    if lang == "de":
        spoken = f"{_cardinal(hour, lang, 'm')} Uhr"
        return f"{spoken} {_words(minute, lang)}" if minute else spoken
    if lang == "fr":
        spoken = f"{_cardinal(hour, lang, 'f')} {'heures' if hour >= 2 else 'heure'}"
        return f"{spoken} {_cardinal(minute, lang, 'f')}" if minute else spoken
    if lang in ("es", "it", "pt"):
        spoken = _cardinal(hour, lang, "f")
        if minute:
            joiner = "y" if lang == "es" else "e"
            return f"{spoken} {joiner} {_words(minute, lang)}"
        if lang == "es":
            return f"{spoken} en punto"
        if lang == "pt":
            return f"{spoken} {'hora' if hour == 1 else 'horas'}"
        return spoken
    return f"{hour} {minute:02d}" if minute else str(hour)


_SENTENCE_END = re.compile(r"\s*$|\s+[A-ZÀ-Ý]")


def _keep_stop(m: re.Match[str]) -> str:
    """The full stop an abbreviation swallowed, when it also ended the sentence."""
    if m.group(0).endswith(".") and _SENTENCE_END.match(m.string, m.end()):
        return "."
    return ""


def _time(m: re.Match[str], table: _Language) -> str:
    """A matched clock time; invalid ones ("25:99", "13 pm") raise and are left as written."""
    meridiem = m.groupdict().get("ampm") or ""
    minute = m.groupdict().get("minute")
    spoken = _clock(int(m.group("hour")), int(minute or 0), table, meridiem)
    return spoken + (_keep_stop(m) if meridiem else "")


# ---------------------------------------------------------------- currency


_CURRENCY_SEPARATOR = "\x00"


@functools.cache
def _separator(lang: str) -> str:
    """What num2words puts between units and cents in the language: ",", " und", " et", " con"."""
    return inspect.signature(CONVERTER_CLASSES[lang].to_currency).parameters["separator"].default


@functools.lru_cache(maxsize=4096)
def _num2words_currency(amount: Decimal, code: str, lang: str) -> str:
    """num2words' amount in words, without its "and zero cents" and "zero euro and"."""
    converter = CONVERTER_CLASSES[lang]
    if code not in getattr(converter, "CURRENCY_FORMS", {}):
        raise NotImplementedError(code)
    text = converter.to_currency(amount, currency=code, separator=_CURRENCY_SEPARATOR)
    whole, _, cents = text.partition(_CURRENCY_SEPARATOR)
    if lang == "en":
        whole = whole.replace(" sterling", "")
    if code == "GBP" and lang in ("fr", "pt"):
        number, noun = whole.rsplit(" ", 1)
        whole = f"{_feminine(number, lang)} {noun}"
    whole = _scale_of(whole, lang)
    if amount == amount.to_integral_value() or not cents:
        return whole.strip()
    if amount < 1:
        return cents.strip()
    return f"{whole.strip()}{_separator(lang)} {cents.strip()}"


def _feminine(number_words: str, lang: str) -> str:
    """num2words' masculine count before a feminine currency ("un livre" -> "une livre")."""
    if lang == "fr":
        return re.sub(r"\bun$", "une", number_words)
    if re.search(r"milh|bilh|trilh", number_words):
        return number_words
    number_words = re.sub(r"\bum\b", "uma", number_words)
    number_words = re.sub(r"\bdois\b", "duas", number_words)
    return re.sub(r"entos\b", "entas", number_words)


_SCALE_NOUNS = {
    "fr": ("million", "millions", "milliard", "milliards"),
    "es": ("millón", "millones"),
    "it": ("milione", "milioni", "miliardo", "miliardi"),
}


def _scale_of(whole: str, lang: str) -> str:
    """The "de"/"di" a round million takes before its currency: "un millón de euros"."""
    words = whole.split()
    if len(words) < 2 or words[-2] not in _SCALE_NOUNS.get(lang, ()):
        return whole
    of = {"fr": "de ", "es": "de ", "it": "di "}[lang]
    if lang == "fr" and words[-1][0] in "aeiouéèh":
        of = "d'"
    return " ".join(words[:-1]) + f" {of}{words[-1]}"


def _table_currency(amount: Decimal, code: str, table: _Language) -> str:
    """An amount in a currency num2words lacks for the language, from the language's own table."""
    singular, plural, cent, cents_plural = table.currencies[code]
    whole = int(amount)
    cents = int((amount - whole) * 100)
    if cents and not cent:
        raise ValueError("this currency has no subunit")
    spoken = f"{_cardinal(whole, table.code, 'm')} {singular if _is_one(Decimal(whole), table.code) else plural}"
    if not cents:
        return spoken
    cent_words = f"{_cardinal(cents, table.code, 'm')} {cent if cents == 1 else cents_plural}"
    return cent_words if not whole else f"{spoken}{_separator(table.code)} {cent_words}"


def _currency_words(amount: Decimal, code: str, table: _Language) -> str:
    """An amount in words, from the language's own table or num2words; raises where neither can say it."""
    lang = table.code
    if amount != amount.quantize(Decimal("0.01")):
        raise ValueError("more than two decimals")
    amount = amount.quantize(Decimal("0.01"))
    if code in table.currencies:
        return _table_currency(amount, code, table)
    if lang not in _NUM2WORDS_CURRENCY:
        raise NotImplementedError(lang)
    return _num2words_currency(amount, code, lang)


def _currency_plural(code: str, table: _Language) -> str:
    """The currency's plural name, for "5 million dollars"."""
    if code in table.currencies:
        return table.currencies[code][1]
    forms = CONVERTER_CLASSES[table.code].CURRENCY_FORMS[code]
    return forms[0][1].replace(" sterling", "") if table.code == "en" else forms[0][1]


def _currency(m: re.Match[str], table: _Language) -> str:
    """A matched amount: "$12.50", "12,50 €", "EUR 3", "$5 million" (the scale keeps its digits for XTTS)."""
    groups = m.groupdict()
    marker = groups.get("symbol") or groups.get("code") or groups.get("symbol_after") or groups.get("code_after")
    code = _SYMBOLS.get(marker, marker)
    amount = _parse(groups["amount"], table.decimal)
    scale = groups.get("scale")
    if scale:
        scale = _EN_SCALE_SUFFIX.get(scale.strip(), scale.strip())
        plural = _currency_plural(code, table)
        of = table.scale_of
        if table.code == "fr" and plural[0] in "aeiouéèh":
            of = "d'"
        return f"{groups['amount']} {scale} {of}{plural}"
    return _currency_words(amount, code, table)


# ---------------------------------------------------------------- units, ranges, signs


def _unit(m: re.Match[str], table: _Language) -> str:
    """A unit after a number, in the number's singular or plural; the number stays digits unless it must
    agree with the unit ("ein Kilometer", "veintiún kilómetros")."""
    number, unit = m.group("number"), m.group("unit")
    singular, plural, gender = table.units[unit]
    value = _parse(number, table.decimal)
    noun = singular if _is_one(value, table.code) else plural
    if gender and number.isdigit() and (number[-1] == "1" or table.code in ("es", "pt")):
        agreeing = _cardinal(int(number), table.code, gender)
        if agreeing != _words(int(number), table.code):
            number = agreeing
    return f"{number} {noun}"


def _range(m: re.Match[str], table: _Language) -> str:
    """A range said with its word ("5 to 10"): XTTS would read the hyphen as nothing or a pause."""
    low, high = m.group("low"), m.group("high")
    if len(low) == 4 and re.fullmatch(r"0[0-9]", high):
        return m.group(0)  # "2026-05": a year and a month, not a range
    if _is_year(low, table.code) and _is_year(high, table.code) and int(low) < int(high):
        return f"{_words(int(low), table.code, to='year')} {table.to} {_words(int(high), table.code, to='year')}"
    return f"{low} {table.to} {high}"


def _is_year(number: str, lang: str) -> bool:
    """A number that reads differently as a year than as a count: 1999 in English and German,
    2026 in English ("twenty twenty-six")."""
    return number.isdigit() and len(number) == 4 and (1100 <= int(number) <= (2099 if lang == "en" else 1999))


# The words after which a four-digit number is a year.
_YEAR_WORDS = {
    "en": re.compile(
        r"\b(?:in|since|from|until|till|by|of|around|before|after|during|between|and|to|year|circa)\s$", re.IGNORECASE
    ),
    "de": re.compile(r"\b(?:im Jahre?|Jahr|seit|bis|von|ab|vor|nach|um|zwischen|und|Anfang|Mitte|Ende)\s$"),
}


def _year(m: re.Match[str], table: _Language) -> str:
    """A year after "in", "since", ...: XTTS would read 1999 as "one thousand, nine hundred and ..."."""
    year = m.group(0)
    before = m.string[max(0, m.start() - 12) : m.start()]
    if not _is_year(year, table.code) or not _YEAR_WORDS[table.code].search(before):
        return year
    return _words(int(year), table.code, to="year")


def _decade(m: re.Match[str]) -> str:
    """A decade as it is said: "the 1990s" -> "the nineteen nineties"."""
    words = _words(int(m.group(1)), "en", to="year")
    return re.sub(r"y$", "ies", words) if words.endswith("y") else f"{words}s"


# Words that start a sentence but cannot follow an ordinal ("der 5. Platz" is an ordinal, "habe 5. Dann" is not).
_GERMAN_SENTENCE_START = (
    "Ich|Du|Er|Sie|Es|Wir|Ihr|Man|Das|Der|Die|Den|Dem|Ein|Eine|Dies|Diese|Dieser|Mein|Meine|Unser|Unsere|"
    "Und|Aber|Oder|Denn|Doch|Also|Dann|Danach|Außerdem|Trotzdem|Bitte|Danke|Ja|Nein|Wie|Was|Wo|Wann|Warum|"
    "Wenn|Heute|Morgen|Hier|Jetzt|Auch|Nur|Noch|So|Da"
)


def _german_cardinal(m: re.Match[str]) -> str:
    """A number that ends a sentence: XTTS's German cleaner reads any "5." before a space as "fünfte"."""
    return f"{_words(int(m.group(1) or m.group(2)), 'de')}."


# ---------------------------------------------------------------- abbreviations and symbols


_LETTERS = re.compile(r"[^\W\d_]+")
_LETTERS_BEFORE = re.compile(r"[^\W\d_]+$")


def _slash(m: re.Match[str], table: _Language) -> str:
    """A slash between words as it is said: "he or she", "and or", "TCP IP"."""
    left = _LETTERS_BEFORE.search(m.string[max(0, m.start() - 40) : m.start()])
    right = _LETTERS.match(m.string, m.end())
    if not left or not right:
        return m.group(0)
    left_word, right_word = left.group(0), right.group(0)
    if left_word.lower() == table.and_ or (left_word.isupper() and right_word.isupper()):
        return " "
    return f" {table.or_} "


def _hash(m: re.Match[str], table: _Language) -> str:
    """A hash before digits is a number sign, before letters a hashtag."""
    return f"{table.number} " if m.group(1)[0].isdigit() else f"{table.hashtag} "


def _ellipsis(m: re.Match[str]) -> str:
    """An ellipsis as the pause it stands for: a comma mid-sentence, a full stop at the end."""
    rest = m.string[m.end() :]
    if not rest.strip():
        return "."
    if rest[0] in "?!.,;:" or m.start() == 0:
        return ""
    return ", "


# ---------------------------------------------------------------- the pipeline


Replace = Callable[[re.Match[str]], str]


@dataclass(frozen=True)
class _Rule:
    """One rewrite; `needs` is a cheap search that must hit before the rule is worth running."""

    pattern: re.Pattern[str]
    replace: Replace
    needs: re.Pattern[str] | None


def _safe(replace: Replace) -> Replace:
    """A replacement that leaves the match as it was when it cannot say it."""

    def guarded(m: re.Match[str]) -> str:
        try:
            return replace(m)
        except Exception:
            return m.group(0)

    return guarded


def _amount_tail(decimal: str) -> str:
    """An amount after its first digit, as written in the language: "2,500.50" in English, "2.500,50"
    or "2 500,50" elsewhere."""
    if decimal == ".":
        return r"[0-9]{0,2}(?:,[0-9]{3})+(?:\.[0-9]{1,2})?|[0-9]*(?:[.,][0-9]{1,2})?"
    return r"[0-9]{0,2}(?:[.' ][0-9]{3})+(?:,[0-9]{1,2})?|[0-9]*(?:[.,][0-9]{1,2})?"


def _amount_pattern(decimal: str) -> str:
    return rf"[0-9](?:{_amount_tail(decimal)})"


def _abbreviations(table: _Language) -> tuple[str, Replace]:
    """All of a language's abbreviations as one alternation, so that they cost one pass."""
    alternatives = [rf"(?P<a{i}>{pattern})" for i, (pattern, _, _) in enumerate(table.abbreviations)]

    def replace(m: re.Match[str]) -> str:
        _, replacement, keeps_stop = table.abbreviations[int(m.lastgroup[1:])]
        if m.group(0)[0].isupper():
            replacement = replacement[0].upper() + replacement[1:]
        return replacement + (_keep_stop(m) if keeps_stop else "")

    return rf"(?<![\w.])(?:{'|'.join(alternatives)})(?!\w)", replace


_DIGIT = re.compile("[0-9]")


def _rules(table: _Language) -> list[_Rule]:
    """Every rule the language's words allow, in the order they must run."""
    rules: list[_Rule] = []

    def add(pattern: str, replace: Replace, flags: int = 0, needs: str | None = "[0-9]") -> None:
        trigger = _DIGIT if needs == "[0-9]" else re.compile(needs) if needs else None
        rules.append(_Rule(re.compile(pattern, flags), _safe(replace), trigger))

    lang = table.code
    if lang not in _UNTOUCHED:
        add(r"(?<=[0-9]{4}-[0-9]{2}-[0-9]{2})T(?=[0-9]{2}:[0-9]{2})", lambda m: " ")  # ISO 8601 date and time
    if table.at:
        add(
            r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])",
            lambda m: _email(m, table),
            needs="@",
        )
        add(
            r"(?<![\w@./-])(?:https?://|www\.)[^\s<>\"]+"
            r"|(?<![\w@./-])(?:[a-z0-9-]+\.)+(?:com|org|net|dev|io|ai|app|eu|de|fr|es|it|pt|co|uk|info)"
            r"(?:/[^\s<>\"]*)?(?![\w@-])",
            lambda m: _url(m, table),
            re.IGNORECASE,
            needs=r"\w\.\w|://",
        )
    if table.months:
        lead, tail = _AFTER_DATE, r"(?![0-9]|[./:-][0-9])"
        add(rf"({lead}[0-9]{{3}})[-/]([0-9]{{1,2}})[-/]([0-9]{{1,2}}){tail}", lambda m: _iso_date(m, table))
        add(rf"({lead}[0-9]?)/([0-9]{{1,2}})/([0-9]{{4}}){tail}", lambda m: _numeric_date(m, table))
        add(rf"({lead}[0-9]?)\.\s?([0-9]{{1,2}})\.\s?([0-9]{{4}}){tail}", lambda m: _numeric_date(m, table))
        months = "|".join(table.months)
        year = r"(?:,?\s(?P<year>[0-9]{4}))?(?![0-9]|[.,][0-9])"
        named = functools.partial(_named_date, table=table)
        if lang == "en":
            day = r"(?P<day>[0-9]{1,2})(?:st|nd|rd|th)?"
            add(rf"\b(?P<month>{months})\s{day}(?!\w){year}", named)
            add(
                rf"(?P<day_first>(?P<day>{_AFTER_WORD}[0-9]?)(?:st|nd|rd|th)?)\s(?:of\s)?(?P<month>{months})(?!\w){year}",
                named,
            )
            add(rf"\b(?P<month>{months}),?\s(?P<year>[0-9]{{4}})(?![0-9]|[.,][0-9])", named)
        elif lang == "de":
            add(rf"(?P<day>{_AFTER_WORD}[0-9]?)\.\s?(?P<month>{months})(?!\w){year}", named)
            add(rf"\b(?P<month>{months})\s(?P<year>[0-9]{{4}})(?![0-9]|[.,][0-9])", named)
    if table.to:
        add(
            r"(?:(?<=[0-9])|(?<=[0-9]h)|(?<=[0-9][ap]m)|(?<=[0-9] [ap]m)|(?<=[ap]\.m\.))\s?[-–]\s?"
            r"(?=[0-9]{1,2}(?::[0-9]{2}|h|\s?[ap]\.?m))",
            lambda m: f" {table.to} ",
            re.IGNORECASE,
        )
    if lang not in _UNTOUCHED:
        time = functools.partial(_time, table=table)
        hh, mm = rf"(?P<hour>{_AFTER_TIME}[0-9]?)", r"(?P<minute>[0-9]{2})(?::00Z?)?(?![0-9]|:[0-9])"
        meridiem = r"\s?(?P<ampm>[AaPp])\.?\s?[Mm](?:\.|(?!\w))"
        add(rf"{hh}:{mm}(?:{meridiem})?" if lang == "en" else rf"{hh}:{mm}(?:\s?Uhr(?!\w))?", time)
        if lang == "en":
            add(rf"{hh}{meridiem}", time)
        elif lang == "de":
            add(rf"{hh}\.{mm}\s?Uhr(?!\w)", time)
        elif lang in ("fr", "pt"):
            add(rf"{hh}\s?[hH](?:\s?(?P<minute>[0-5][0-9]))?(?![\w:])", time)
    if table.to:
        number = r"[0-9]*(?:[.,][0-9]+)*"
        add(
            rf"(?P<low>{_AFTER_RANGE}{number})(?:-|\s?–\s?)(?P<high>[$€£¥]?[0-9]{number})(?![0-9]|[-–.,:/][0-9])",
            lambda m: _range(m, table),
        )
    if table.minus:
        add(r"-(?<![\w.,)\]}-]-)(?=[$€£¥]?[0-9])", lambda m: f"{table.minus} ", needs=r"-[$€£¥]?[0-9]")
        add(r"\+(?<![\w+]\+)(?=[0-9])", lambda m: f"{table.plus} ", needs=r"\+[0-9]")
    if table.per:
        add(
            r"(?:(?<=[0-9$€£¥%‰])|(?<=USD|EUR|GBP|JPY|CHF))\s?/\s?(?=[^\W\d_])",
            lambda m: f" {table.per} ",
            needs="/",
        )
    if lang not in _UNTOUCHED:
        amount = _amount_pattern(table.decimal)
        alternatives = []
        if table.scales:
            alternatives.append(r"\s(?:" + "|".join(sorted(table.scales, key=len, reverse=True)) + ")")
        if lang == "en":
            alternatives.append("(?:" + "|".join(sorted(_EN_SCALE_SUFFIX, key=len, reverse=True)) + ")")
        scale = rf"(?P<scale>(?:{'|'.join(alternatives)})(?!\w))?" if alternatives else ""
        codes = "|".join(_CODES)
        end = r"(?![0-9]|[.,][0-9])"
        currency = functools.partial(_currency, table=table)
        after = r"(?![\w$€£¥])"
        add(
            rf"(?P<symbol>[$€£¥])(?<![\w$€£¥][$€£¥])\s?(?P<amount>{amount}){end}{scale}{after}",
            currency,
            needs="[$€£¥]",
        )
        add(rf"\b(?P<code>{codes})\s?(?P<amount>{amount}){end}{scale}{after}", currency, needs=codes)
        add(
            rf"(?P<amount>{_AFTER_MONEY}(?:{_amount_tail(table.decimal)})){end}{scale}\s?"
            rf"(?:(?P<symbol_after>[$€£¥])|(?P<code_after>{codes})(?![A-Za-z]))",
            currency,
            needs=rf"[$€£¥]|{codes}",
        )
    if table.units:
        units = "|".join(re.escape(u) for u in sorted(table.units, key=len, reverse=True))
        add(
            rf"(?P<number>{_NUMBER})\s?(?P<unit>{units})(?![\w/'’²³])",
            lambda m: _unit(m, table),
        )
    if lang in _YEAR_WORDS:
        add(rf"{_AFTER_WORD}[0-9]{{3}}(?![0-9]|[.,][0-9]|\s?[%‰$€£¥])", lambda m: _year(m, table))
    if lang == "en":
        add(rf"({_AFTER_DECADE}[0-9]{{2}}0)s(?!\w)", _decade)
    if table.abbreviations:
        add(*_abbreviations(table), needs=None)
    if table.and_:
        add(r"\s*&\s*", lambda m: f" {table.and_} ", needs="&")
        add(r"\s*@\s*", lambda m: f" {table.at} ", needs="@")
        add(r"#(?<![\w&#]#)(?=(\w))", lambda m: _hash(m, table), needs="#")
        add(r"(?<=\w)\s*\+\s*(?=\w)", lambda m: f" {table.plus} ", needs=r"\+")
        add(r"(?<=[\w)\]])\s*(?<![=<>!])=(?![=>])\s*(?=[\w(-])", lambda m: f" {table.equals} ", needs="=")
        add(r"/(?<=[^\W\d_]/)(?=[^\W\d_])", lambda m: _slash(m, table), needs="/")
    if lang == "de":
        add(
            rf"({_AFTER_WORD}[0-9]*)\.(?=[^\S\n]*(?:\n|$)|\s+(?:{_GERMAN_SENTENCE_START})\b)"
            r"|(?<=Nummer )([0-9]+)\.(?=\s)",
            _german_cardinal,
            needs=r"[0-9]\.(?:\s|$)",
        )
    if lang not in _UNTOUCHED:
        add(r"\.{3,}|…", _ellipsis, needs=r"\.\.\.|…")
    return rules


_XTTS_CODES = ("en", "de", "fr", "es", "it", "pt", "nl", "pl", "tr", "ru", "cs", "ar", "zh", "ja", "hu", "ko", "hi")
_PIPELINES: dict[str, list[_Rule]] = {
    code: _rules(_TABLES.get(code) or _Language(code=code, decimal="." if code in _DOT_DECIMAL else ","))
    for code in _XTTS_CODES
}
_FALLBACK = _rules(_Language(code=""))
_SPACES = re.compile(r"[\u00a0\u202f\u2007\t][\u00a0\u202f\u2007\t ]*| [\u00a0\u202f\u2007\t ]+")
_SPACE_BEFORE_STOP = re.compile(r" +(?=[,.](?:\s|$))")


def _pipeline(language: str) -> list[_Rule]:
    """The rules for an XTTS code ("en", "zh-cn", "pt-BR"); unknown languages get the wordless ones."""
    code = language.strip().lower().replace("_", "-").split("-")[0]
    return _PIPELINES.get(code, _FALLBACK)


def normalise(text: str, language: str) -> str:
    """Text made speakable for XTTS in `language` (an XTTS code like "en", "de", "fr", "es", "it", "pt", "nl", "pl", "tr", "ru", "cs", "ar", "zh-cn", "ja", "hu", "ko", "hi")."""  # noqa: E501
    try:
        result = _SPACES.sub(" ", text.replace("−", "-"))
        # Each trigger is looked for once, when a rule first needs it: rules remove what later rules look
        # for and never write it, so a stale hit costs at most an idle pass.
        hits: dict[re.Pattern[str], bool] = {}
        for rule in _pipeline(language):
            if rule.needs is not None:
                hit = hits.get(rule.needs)
                if hit is None:
                    hit = hits[rule.needs] = rule.needs.search(result) is not None
                if not hit:
                    continue
            result = rule.pattern.sub(rule.replace, result)
        return _SPACE_BEFORE_STOP.sub("", _SPACES.sub(" ", result)).strip()
    except Exception:
        return text
