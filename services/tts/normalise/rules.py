"""The rules, in the order they must run, built from what a language's object provides.

No rule here tests a language code: each reads the language's words and hooks, and is left
out where the language has none for it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

from . import addresses, clock, dates, money, quantities, symbols
from .language import Language
from .patterns import (
    AFTER_DATE,
    AFTER_DECADE,
    AFTER_MONEY,
    AFTER_RANGE,
    AFTER_WORD,
    CODES,
    NUMBER,
    amount,
    amount_tail,
)

Replace = Callable[[re.Match[str]], str]

_DIGIT = re.compile("[0-9]")


@dataclass(frozen=True)
class Rule:
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


class _Rules:
    """The list being built; a rule needs a digit unless it says otherwise."""

    def __init__(self) -> None:
        self.rules: list[Rule] = []

    def add(self, pattern: str, replace: Replace, flags: int = 0, needs: str | None = "[0-9]") -> None:
        trigger = _DIGIT if needs == "[0-9]" else re.compile(needs) if needs else None
        self.rules.append(Rule(re.compile(pattern, flags), _safe(replace), trigger))


def _iso_date_time(rules: _Rules, language: Language) -> None:
    rules.add(r"(?<=[0-9]{4}-[0-9]{2}-[0-9]{2})T(?=[0-9]{2}:[0-9]{2})", lambda m: " ")


def _addresses(rules: _Rules, language: Language) -> None:
    if not language.at:
        return
    rules.add(
        r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])",
        lambda m: addresses.email(m, language),
        needs="@",
    )
    rules.add(
        r"(?<![\w@./-])(?:https?://|www\.)[^\s<>\"]+"
        r"|(?<![\w@./-])(?:[a-z0-9-]+\.)+(?:com|org|net|dev|io|ai|app|eu|de|fr|es|it|pt|co|uk|info)"
        r"(?:/[^\s<>\"]*)?(?![\w@-])",
        lambda m: addresses.url(m, language),
        re.IGNORECASE,
        needs=r"\w\.\w|://",
    )


def _dates(rules: _Rules, language: Language) -> None:
    written = language.dates
    if not written:
        return
    lead, tail = AFTER_DATE, r"(?![0-9]|[./:-][0-9])"
    iso = functools.partial(dates.iso_date, language=language, dates=written)
    numeric = functools.partial(dates.numeric_date, language=language, dates=written)
    rules.add(rf"({lead}[0-9]{{3}})[-/]([0-9]{{1,2}})[-/]([0-9]{{1,2}}){tail}", iso)
    rules.add(rf"({lead}[0-9]?)/([0-9]{{1,2}})/([0-9]{{4}}){tail}", numeric)
    rules.add(rf"({lead}[0-9]?)\.\s?([0-9]{{1,2}})\.\s?([0-9]{{4}}){tail}", numeric)
    named = functools.partial(dates.named_date, language=language, dates=written)
    for pattern in written.named:
        rules.add(pattern, named)


def _time_ranges(rules: _Rules, language: Language) -> None:
    if not language.to:
        return
    rules.add(
        r"(?:(?<=[0-9])|(?<=[0-9]h)|(?<=[0-9][ap]m)|(?<=[0-9] [ap]m)|(?<=[ap]\.m\.))\s?[-–]\s?"
        r"(?=[0-9]{1,2}(?::[0-9]{2}|h|\s?[ap]\.?m))",
        lambda m: f" {language.to} ",
        re.IGNORECASE,
    )


def _times(rules: _Rules, language: Language) -> None:
    time = functools.partial(clock.time, language=language)
    for pattern in language.times:
        rules.add(pattern, time)


def _number_ranges(rules: _Rules, language: Language) -> None:
    if not language.to:
        return
    number = r"[0-9]*(?:[.,][0-9]+)*"
    rules.add(
        rf"(?P<low>{AFTER_RANGE}{number})(?:-|\s?–\s?)(?P<high>[$€£¥]?[0-9]{number})(?![0-9]|[-–.,:/][0-9])",
        lambda m: quantities.number_range(m, language),
    )


def _signs(rules: _Rules, language: Language) -> None:
    if language.minus:
        rules.add(r"-(?<![\w.,)\]}-]-)(?=[$€£¥]?[0-9])", lambda m: f"{language.minus} ", needs=r"-[$€£¥]?[0-9]")
        rules.add(r"\+(?<![\w+]\+)(?=[0-9])", lambda m: f"{language.plus} ", needs=r"\+[0-9]")
    if language.per:
        rules.add(
            r"(?:(?<=[0-9$€£¥%‰])|(?<=USD|EUR|GBP|JPY|CHF))\s?/\s?(?=[^\W\d_])",
            lambda m: f" {language.per} ",
            needs="/",
        )


def _scale(language: Language) -> str:
    """The optional scale after an amount: " million", " Millionen", "m", "bn"."""
    alternatives = []
    if language.money.scales:
        alternatives.append(r"\s(?:" + "|".join(sorted(language.money.scales, key=len, reverse=True)) + ")")
    if language.money.scale_suffixes:
        alternatives.append("(?:" + "|".join(sorted(language.money.scale_suffixes, key=len, reverse=True)) + ")")
    return rf"(?P<scale>(?:{'|'.join(alternatives)})(?!\w))?" if alternatives else ""


def _money(rules: _Rules, language: Language) -> None:
    written, scale = amount(language.decimal), _scale(language)
    codes = "|".join(CODES)
    end, after = r"(?![0-9]|[.,][0-9])", r"(?![\w$€£¥])"
    currency = functools.partial(money.currency, language=language)
    rules.add(
        rf"(?P<symbol>[$€£¥])(?<![\w$€£¥][$€£¥])\s?(?P<amount>{written}){end}{scale}{after}",
        currency,
        needs="[$€£¥]",
    )
    rules.add(rf"\b(?P<code>{codes})\s?(?P<amount>{written}){end}{scale}{after}", currency, needs=codes)
    rules.add(
        rf"(?P<amount>{AFTER_MONEY}(?:{amount_tail(language.decimal)})){end}{scale}\s?"
        rf"(?:(?P<symbol_after>[$€£¥])|(?P<code_after>{codes})(?![A-Za-z]))",
        currency,
        needs=rf"[$€£¥]|{codes}",
    )


def _units(rules: _Rules, language: Language) -> None:
    if not language.units:
        return
    units = "|".join(re.escape(u) for u in sorted(language.units, key=len, reverse=True))
    rules.add(rf"(?P<number>{NUMBER})\s?(?P<unit>{units})(?![\w/'’²³])", lambda m: quantities.unit(m, language))


def _years(rules: _Rules, language: Language) -> None:
    if language.year_after:
        rules.add(rf"{AFTER_WORD}[0-9]{{3}}(?![0-9]|[.,][0-9]|\s?[%‰$€£¥])", lambda m: quantities.year(m, language))
    if language.decade:
        rules.add(rf"({AFTER_DECADE}[0-9]{{2}}0)s(?!\w)", lambda m: language.decade(int(m.group(1))))


def _abbreviations(rules: _Rules, language: Language) -> None:
    if language.abbreviations:
        rules.add(*symbols.abbreviations(language), needs=None)


def _symbols(rules: _Rules, language: Language) -> None:
    if not language.and_:
        return
    rules.add(r"\s*&\s*", lambda m: f" {language.and_} ", needs="&")
    rules.add(r"\s*@\s*", lambda m: f" {language.at} ", needs="@")
    rules.add(r"#(?<![\w&#]#)(?=(\w))", lambda m: symbols.hash_sign(m, language), needs="#")
    rules.add(r"(?<=\w)\s*\+\s*(?=\w)", lambda m: f" {language.plus} ", needs=r"\+")
    rules.add(r"(?<=[\w)\]])\s*(?<![=<>!])=(?![=>])\s*(?=[\w(-])", lambda m: f" {language.equals} ", needs="=")
    rules.add(r"/(?<=[^\W\d_]/)(?=[^\W\d_])", lambda m: symbols.slash(m, language), needs="/")


def _sentence_end_numbers(rules: _Rules, language: Language) -> None:
    if not language.sentence_openers:
        return
    rules.add(
        rf"({AFTER_WORD}[0-9]*)\.(?=[^\S\n]*(?:\n|$)|\s+(?:{language.sentence_openers})\b)"
        rf"|(?<={re.escape(language.number)} )([0-9]+)\.(?=\s)",
        lambda m: quantities.sentence_end_number(m, language),
        needs=r"[0-9]\.(?:\s|$)",
    )


def _ellipses(rules: _Rules, language: Language) -> None:
    rules.add(r"\.{3,}|…", symbols.ellipsis, needs=r"\.\.\.|…")


_PIECES = (
    _iso_date_time,
    _addresses,
    _dates,
    _time_ranges,
    _times,
    _number_ranges,
    _signs,
    _money,
    _units,
    _years,
    _abbreviations,
    _symbols,
    _sentence_end_numbers,
    _ellipses,
)


def rules(language: Language) -> list[Rule]:
    """Every rule the language's words allow, in the order they must run."""
    if language.left_to_xtts:
        return []
    built = _Rules()
    for piece in _PIECES:
        piece(built, language)
    return built.rules
