"""Clock times: the match checked, then said by the language."""

from __future__ import annotations

import re

from .language import Language
from .symbols import keep_stop


def time(m: re.Match[str], language: Language) -> str:
    """A matched clock time; invalid ones ("25:99", "13 pm") raise and are left as written."""
    meridiem = m.groupdict().get("ampm") or ""
    hour, minute = int(m.group("hour")), int(m.groupdict().get("minute") or 0)
    if not (0 <= hour <= 23 and 0 <= minute <= 59) or (meridiem and not 1 <= hour <= 12):
        raise ValueError("not a clock time")
    return language.clock(hour, minute, meridiem) + (keep_stop(m) if meridiem else "")
