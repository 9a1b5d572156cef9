"""Amounts of money in words, from the language's own table or num2words."""

from __future__ import annotations

import functools
import inspect
import re
from decimal import Decimal

from num2words import CONVERTER_CLASSES

from .language import Language
from .numbers import cardinal, parse
from .patterns import SYMBOLS

_CURRENCY_SEPARATOR = "\x00"


@functools.cache
def _separator(lang: str) -> str:
    """What num2words puts between units and cents in the language: ",", " und", " et", " con"."""
    return inspect.signature(CONVERTER_CLASSES[lang].to_currency).parameters["separator"].default


def _drop(text: str, language: Language) -> str:
    return text.replace(language.money.drop, "") if language.money.drop else text


def _scale_of(whole: str, language: Language) -> str:
    """The "de"/"di" a round million takes before its currency: "un millón de euros"."""
    said = whole.split()
    if len(said) < 2 or said[-2] not in language.money.scale_nouns:
        return whole
    return " ".join(said[:-1]) + f" {language.money.of(said[-1])}{said[-1]}"


@functools.lru_cache(maxsize=4096)
def _num2words_currency(amount: Decimal, code: str, language: Language) -> str:
    """num2words' amount in words, without its "and zero cents" and "zero euro and"."""
    converter = CONVERTER_CLASSES[language.code]
    if code not in getattr(converter, "CURRENCY_FORMS", {}):
        raise NotImplementedError(code)
    text = converter.to_currency(amount, currency=code, separator=_CURRENCY_SEPARATOR)
    whole, _, cents = text.partition(_CURRENCY_SEPARATOR)
    whole = _drop(whole, language)
    if code in language.money.feminine:
        number, noun = whole.rsplit(" ", 1)
        whole = f"{language.agree(number, 'f')} {noun}"
    whole = _scale_of(whole, language)
    if amount == amount.to_integral_value() or not cents:
        return whole.strip()
    if amount < 1:
        return cents.strip()
    return f"{whole.strip()}{_separator(language.code)} {cents.strip()}"


def _table_currency(amount: Decimal, code: str, language: Language) -> str:
    """An amount in a currency num2words lacks for the language, from the language's own table."""
    singular, plural, cent, cents_plural = language.money.currencies[code]
    whole = int(amount)
    cents = int((amount - whole) * 100)
    if cents and not cent:
        raise ValueError("this currency has no subunit")
    spoken = f"{cardinal(whole, language, 'm')} {singular if language.singular(Decimal(whole)) else plural}"
    if not cents:
        return spoken
    cent_words = f"{cardinal(cents, language, 'm')} {cent if cents == 1 else cents_plural}"
    return cent_words if not whole else f"{spoken}{_separator(language.code)} {cent_words}"


def _currency_words(amount: Decimal, code: str, language: Language) -> str:
    """An amount in words, from the language's own table or num2words; raises where neither can say it."""
    if amount != amount.quantize(Decimal("0.01")):
        raise ValueError("more than two decimals")
    amount = amount.quantize(Decimal("0.01"))
    if code in language.money.currencies:
        return _table_currency(amount, code, language)
    if not language.money.num2words:
        raise NotImplementedError(language.code)
    return _num2words_currency(amount, code, language)


def _currency_plural(code: str, language: Language) -> str:
    """The currency's plural name, for "5 million dollars"."""
    if code in language.money.currencies:
        return language.money.currencies[code][1]
    return _drop(CONVERTER_CLASSES[language.code].CURRENCY_FORMS[code][0][1], language)


def currency(m: re.Match[str], language: Language) -> str:
    """A matched amount: "$12.50", "12,50 €", "EUR 3", "$5 million" (the scale keeps its digits for XTTS)."""
    groups = m.groupdict()
    marker = groups.get("symbol") or groups.get("code") or groups.get("symbol_after") or groups.get("code_after")
    code = SYMBOLS.get(marker, marker)
    amount = parse(groups["amount"], language.decimal)
    scale = groups.get("scale")
    if scale:
        scale = language.money.scale_suffixes.get(scale.strip(), scale.strip())
        plural = _currency_plural(code, language)
        return f"{groups['amount']} {scale} {language.money.of(plural)}{plural}"
    return _currency_words(amount, code, language)
