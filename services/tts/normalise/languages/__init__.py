"""Every XTTS language as a `Language`: six with full word tables, the rest with what they share.

This is the one place a language code is looked at: everything a code implies is set here or in
the language's own module.
"""

from __future__ import annotations

from ..language import Language, Money
from . import de, en, es, fr, it, pt

XTTS_CODES = ("en", "de", "fr", "es", "it", "pt", "nl", "pl", "tr", "ru", "cs", "ar", "zh", "ja", "hu", "ko", "hi")

_WORDED = {lang.code: lang for lang in (en.LANGUAGE, de.LANGUAGE, fr.LANGUAGE, es.LANGUAGE, it.LANGUAGE, pt.LANGUAGE)}
# Left as written: XTTS reads these scripts through its own converters (pypinyin, cutlet, hangul).
_LEFT_TO_XTTS = frozenset({"zh", "ja", "ko"})
# num2words' currency words are right for these; for others (ar: always riyal, hu: English plurals,
# tr: no currency argument) an amount is left to XTTS.
_NUM2WORDS_CURRENCY = frozenset({"nl", "pl", "ru", "cs"})
_DOT_DECIMAL = frozenset({"hi", "ja", "ko", "zh"})

UNKNOWN = Language(code="")
"""For a language XTTS does not have: only the rules that need no words at all."""


def language(code: str) -> Language:
    """The language for an XTTS code without its region ("zh", "pt")."""
    if code in _WORDED:
        return _WORDED[code]
    return Language(
        code=code,
        decimal="." if code in _DOT_DECIMAL else ",",
        left_to_xtts=code in _LEFT_TO_XTTS,
        money=Money(num2words=code in _NUM2WORDS_CURRENCY),
    )
