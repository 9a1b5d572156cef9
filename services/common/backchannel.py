"""Backchannels: what a listener says to show they are listening, not to take the turn.

"Mhm", "yeah", "okay" said over a playing reply neither stop it nor make a turn of their own
(livekit/agents and pipecat both get this asked of them). The STT worker drops an utterance
over a reply whose words are all backchannels; a partial barges in once it holds enough words
that are not. Lists per language, written as Whisper spells them once lower-cased, with
punctuation and hyphens gone ("Mm-hmm." is "mmhmm"), a two-word phrase joined by "_"; a
language not listed uses English's.
"""

from __future__ import annotations

import re

_WORDS: dict[str, frozenset[str]] = {
    "en": frozenset(
        "aha ah oh ooh yeah yea yep yup yes ya "
        "okay ok kay alright right sure cool nice great wow exactly totally true indeed gotcha "
        "uh um er i_see got_it of_course for_sure makes_sense thats_right".split()
    ),
    "de": frozenset("ja jaja genau okay ok klar stimmt aha ach_so richtig gut super echt".split()),
    "fr": frozenset("oui ouais daccord ok okay ah oh bon voilà exactement".split()),
    "es": frozenset("sí si vale claro ajá aja ah oh ok okay bueno exacto ya".split()),
    "it": frozenset("sì si certo ok okay ah oh già esatto bene va".split()),
    "pt": frozenset("sim é ah oh ok okay certo claro tá ta beleza exato".split()),
    "nl": frozenset("ja jaja oké ok okay precies klopt ah oh goed".split()),
}

_NOT_WORD = re.compile(r"[^\w\s']|_")
_HUM = re.compile(r"[mh]*m[mh]*|u+h+u+h*")
"""Hums in any language, however Whisper spells them: "mm", "mhm", "mmhmm", "mm-mm", "uh-huh"."""


def words(text: str) -> list[str]:
    """Lower-cased words, punctuation and hyphens dropped ("Mm-hmm, yeah." -> mmhmm yeah)."""
    text = text.lower().replace("-", "").replace("'", "").replace("’", "")
    return _NOT_WORD.sub(" ", text).split()


def _listed(language: str | None) -> frozenset[str]:
    return _WORDS.get((language or "en").split("-")[0].lower(), _WORDS["en"])


def counted(text: str, language: str | None = None) -> int:
    """How many of the words are not backchannels (what a barge-in counts)."""
    listed, said = _listed(language), words(text)
    n = i = 0
    while i < len(said):
        if i + 1 < len(said) and f"{said[i]}_{said[i + 1]}" in listed:
            i += 2
            continue
        n += said[i] not in listed and not _HUM.fullmatch(said[i])
        i += 1
    return n


def only_backchannel(text: str, language: str | None = None) -> bool:
    """Words, and every one a backchannel ("Mhm.", "Yeah, okay."); False for no words."""
    return bool(words(text)) and counted(text, language) == 0
