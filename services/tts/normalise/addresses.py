"""E-mail addresses and URLs read out the way a person would: separators as words."""

from __future__ import annotations

import re

from .language import Language

_ADDRESS_SEPARATORS = re.compile(r"([./_+-])")
_SCHEME = re.compile(r"^(?:[a-zA-Z]+://)?(?:www\.)?", re.IGNORECASE)


def _spell_address(part: str, language: Language) -> str:
    """Separators in an address as words: "docs.parley.dev" -> "docs dot parley dot dev"."""
    said = {".": language.dot, "-": language.dash, "_": language.underscore, "+": language.plus, "/": language.slash}
    pieces = _ADDRESS_SEPARATORS.split(part)
    return " ".join(said[p] if p in said else p for p in pieces if p)


def email(m: re.Match[str], language: Language) -> str:
    """An address read out: "ada at example dot com"."""
    local, domain = m.group(0).split("@", 1)
    return f"{_spell_address(local, language)} {language.at} {_spell_address(domain, language)}"


def url(m: re.Match[str], language: Language) -> str:
    """Host and path, without scheme, "www.", port, query or fragment: what a person would read out."""
    text = m.group(0)
    trailing = ""
    while text and text[-1] in ".,;:!?)]}'\"":
        trailing = text[-1] + trailing
        text = text[:-1]
    text = _SCHEME.sub("", text).split("?", 1)[0].split("#", 1)[0]
    host, _, path = text.partition("/")
    host = host.split(":", 1)[0]
    spoken = _spell_address(host, language)
    for segment in path.split("/"):
        if segment:
            spoken += f" {language.slash} {_spell_address(segment, language)}"
    return spoken + trailing
