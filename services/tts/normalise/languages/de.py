"""German: ordinal days that agree with the word before them, "ein"/"eine", "15.30 Uhr", and numbers
ending a sentence said as cardinals."""

from __future__ import annotations

import re

from ..language import Dates, Gender, Language, Money
from ..numbers import cardinal, words
from ..patterns import AFTER_WORD, CLOCK, HOUR, MINUTE, NAMED_YEAR

_MONTHS = (
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
)

_NAMES = "|".join(_MONTHS)

# The ending an ordinal day takes after these words; "r" ("einundzwanzigster November") otherwise.
_ENDINGS = {
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

# Words that start a sentence but cannot follow an ordinal ("der 5. Platz" is an ordinal, "habe 5. Dann" is not).
_SENTENCE_OPENERS = (
    "Ich|Du|Er|Sie|Es|Wir|Ihr|Man|Das|Der|Die|Den|Dem|Ein|Eine|Dies|Diese|Dieser|Mein|Meine|Unser|Unsere|"
    "Und|Aber|Oder|Denn|Doch|Also|Dann|Danach|Außerdem|Trotzdem|Bitte|Danke|Ja|Nein|Wie|Was|Wo|Wann|Warum|"
    "Wenn|Heute|Morgen|Hier|Jetzt|Auch|Nur|Noch|So|Da"
)


def _day_ending(m: re.Match[str]) -> str:
    """How the ordinal day agrees with the word before it: "am einundzwanzigsten", "der einundzwanzigste"."""
    before = _WORD_BEFORE.search(m.string[max(0, m.start() - 12) : m.start()])
    return _ENDINGS.get(before.group(1).lower(), "r") if before else "r"


def _named_date(m: re.Match[str], ordinal: str, year: str) -> str:
    return f"{ordinal} {m['month']}{year}"


def _agree(word: str, gender: Gender) -> str:
    """num2words' "eins" before a noun: "ein Kilometer", "eine Meile"."""
    return re.sub(r"eins$", "eine" if gender == "f" else "ein", word)


def _clock(hour: int, minute: int, meridiem: str) -> str:
    """The hour counted as in "ein Uhr": "fünfzehn Uhr dreißig"."""
    spoken = f"{cardinal(hour, LANGUAGE, 'm')} Uhr"
    return f"{spoken} {words(minute, 'de')}" if minute else spoken


LANGUAGE = Language(
    code="de",
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
    dates=Dates(
        months=_MONTHS,
        ordinal_days="every",
        day_ending=_day_ending,
        named=(
            rf"(?P<day>{AFTER_WORD}[0-9]?)\.\s?(?P<month>{_NAMES})(?!\w){NAMED_YEAR}",
            rf"\b(?P<month>{_NAMES})\s(?P<year>[0-9]{{4}})(?![0-9]|[.,][0-9])",
        ),
        say_named=_named_date,
    ),
    money=Money(
        num2words=True,
        currencies={
            "JPY": ("Yen", "Yen", "", ""),
            "CHF": ("Franken", "Franken", "Rappen", "Rappen"),
        },
        scales=("Tausend", "Million", "Millionen", "Milliarde", "Milliarden"),
    ),
    agree=_agree,
    clock=_clock,
    times=(CLOCK, rf"{HOUR}\.{MINUTE}\s?Uhr(?!\w)"),
    year_after=re.compile(r"\b(?:im Jahre?|Jahr|seit|bis|von|ab|vor|nach|um|zwischen|und|Anfang|Mitte|Ende)\s$"),
    sentence_openers=_SENTENCE_OPENERS,
)
