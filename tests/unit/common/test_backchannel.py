"""Which words are a backchannel, as Whisper writes them, per language."""

from __future__ import annotations

import pytest

from services.common import backchannel


@pytest.mark.parametrize(
    "text, language",
    [("Mm-hmm.", "en"), ("Uh-huh", None), ("Yeah, okay.", "en"), ("I see.", "en"), ("Got it!", "en"),
     ("Ja, genau.", "de"), ("Oui, d'accord.", "fr"), ("Sí, claro.", "es"), ("Right, right.", "en-GB")],
)
def test_backchannels_are_only_backchannels(text, language):
    assert backchannel.only_backchannel(text, language)
    assert backchannel.counted(text, language) == 0


@pytest.mark.parametrize(
    "text, counted",
    [("Wait, stop.", 2), ("No.", 1), ("Yeah, but what about Tuesday?", 4), ("I see it.", 1), ("Okay, so", 1)],
)
def test_other_words_count_towards_a_barge_in(text, counted):
    assert backchannel.counted(text, "en") == counted
    assert backchannel.only_backchannel(text, "en") is (counted == 0)


def test_no_words_are_no_backchannel():
    assert not backchannel.only_backchannel("", "en") and not backchannel.only_backchannel(" ... ", "en")


def test_a_language_not_listed_reads_as_english():
    assert backchannel.only_backchannel("Okay.", "sw")
