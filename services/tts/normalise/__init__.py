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

The rules (`rules.py`) are shared and read a `Language` (`language.py`); each language with
word tables is its own module under `languages/`, with hooks where its grammar differs.
"""

from __future__ import annotations

import re

from . import languages
from .rules import Rule, rules

__all__ = ["normalise"]

_PIPELINES: dict[str, list[Rule]] = {code: rules(languages.language(code)) for code in languages.XTTS_CODES}
_FALLBACK = rules(languages.UNKNOWN)
_SPACES = re.compile(r"[\u00a0\u202f\u2007\t][\u00a0\u202f\u2007\t ]*| [\u00a0\u202f\u2007\t ]+")
_SPACE_BEFORE_STOP = re.compile(r" +(?=[,.](?:\s|$))")


def _pipeline(language: str) -> list[Rule]:
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
