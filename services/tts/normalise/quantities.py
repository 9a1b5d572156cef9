"""Numbers in context: with a unit, as a range, as a year or decade, ending a sentence."""

from __future__ import annotations

import re

from .language import Language
from .numbers import cardinal, is_year, parse, words


def unit(m: re.Match[str], language: Language) -> str:
    """A unit after a number, in the number's singular or plural; the number stays digits unless it must
    agree with the unit ("ein Kilometer", "veintiún kilómetros")."""
    number, symbol = m.group("number"), m.group("unit")
    singular, plural, gender = language.units[symbol]
    noun = singular if language.singular(parse(number, language.decimal)) else plural
    if gender and number.isdigit() and (number[-1] == "1" or language.counts_agree):
        agreeing = cardinal(int(number), language, gender)
        if agreeing != words(int(number), language.code):
            number = agreeing
    return f"{number} {noun}"


def number_range(m: re.Match[str], language: Language) -> str:
    """A range said with its word ("5 to 10"): XTTS would read the hyphen as nothing or a pause."""
    low, high = m.group("low"), m.group("high")
    if len(low) == 4 and re.fullmatch(r"0[0-9]", high):
        return m.group(0)  # "2026-05": a year and a month, not a range
    if is_year(low, language) and is_year(high, language) and int(low) < int(high):
        code = language.code
        return f"{words(int(low), code, to='year')} {language.to} {words(int(high), code, to='year')}"
    return f"{low} {language.to} {high}"


def year(m: re.Match[str], language: Language) -> str:
    """A year after "in", "since", ...: XTTS would read 1999 as "one thousand, nine hundred and ..."."""
    written = m.group(0)
    before = m.string[max(0, m.start() - 12) : m.start()]
    if not is_year(written, language) or not language.year_after.search(before):
        return written
    return words(int(written), language.code, to="year")


def sentence_end_number(m: re.Match[str], language: Language) -> str:
    """A number that ends a sentence, in words: XTTS's cleaner would read "5." as an ordinal."""
    return f"{words(int(m.group(1) or m.group(2)), language.code)}."
