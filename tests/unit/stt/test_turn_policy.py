"""The smart policy's logic without a model: how the two signals decide, what a session asks
for against the worker's settings, and the segmenter's pause that may end an utterance early
(the real Silero VAD on espeak-ng speech with a pause mid-thought)."""

from __future__ import annotations

import numpy as np
import pytest

from services.common import schemas
from services.stt.config import SttSettings
from services.stt.pauses import turn_policy
from services.stt.segmenter import PauseHeard, Segmenter, SpeechStarted, UtteranceEnded
from services.stt.turns import TurnJudge, TurnPolicy, decide
from services.stt.vad import VadConfig
from tools.speech import espeak

SR = 16000


@pytest.mark.parametrize(
    "signals,sound,words,done",
    [
        ("words", 0.1, 0.3, True),
        ("words", 0.9, 0.001, False),
        ("sound", 0.9, 0.001, True),
        ("all", 0.9, 0.3, True),
        ("all", 0.2, 0.3, False),
        ("any", 0.2, 0.3, True),
        ("any", 0.2, 0.001, False),
        ("all", None, 0.3, True),  # a signal that could not be had leaves the other to decide
        ("words", 0.9, None, False),  # nothing to go by: the long wait ends the turn
    ],
)
def test_each_signal_is_held_to_its_own_threshold_and_combined_as_configured(signals, sound, words, done):
    policy = TurnPolicy(signals=signals, threshold=0.5, words_threshold=0.02)
    assert decide(policy, sound, words) is done


def test_a_policy_is_checked():
    with pytest.raises(ValueError):
        TurnPolicy(policy="fast")
    with pytest.raises(ValueError):
        TurnPolicy(short_ms=900, long_ms=800)
    assert (TurnPolicy("vad", vad_ms=400).end_of_turn_ms, TurnPolicy("vad").pause_ms) == (400, None)
    assert (TurnPolicy("smart", long_ms=1500).end_of_turn_ms, TurnPolicy("smart", short_ms=250).pause_ms) == (1500, 250)


class _Words:
    """Stands for a scorer: the judge only asks whether there is one."""


def test_a_session_gets_what_it_asked_for_and_smart_without_signals_is_vad():
    s = SttSettings(stt_turn_policy="smart", stt_turn_signals="words", vad_end_of_turn_ms=300, stt_turn_long_ms=1600)
    req = schemas.SttOpen(conversation_id="c", session_id="s", turn_long_ms=2000, turn_short_ms=300)
    with_words = TurnJudge(None, _Words())
    assert turn_policy(req, s, with_words) == TurnPolicy("smart", 300, 300, 2000, 0.5, 0.02, "words")
    assert turn_policy(req, s, TurnJudge(None, None)).policy == "vad"
    vad = schemas.SttOpen(conversation_id="c", session_id="s", turn_policy="vad", end_of_turn_ms=700)
    assert turn_policy(vad, s, with_words).end_of_turn_ms == 700
    # Only a long wait given, shorter than the worker's short one: the short wait gives way.
    short = schemas.SttOpen(conversation_id="c", session_id="s", turn_long_ms=300)
    assert turn_policy(short, SttSettings(stt_turn_short_ms=200), with_words).short_ms == 150


def _paused_speech(tmp_path, pause_s: float) -> np.ndarray:
    head = espeak("I would like to book a table for", tmp_path / "h.wav")
    tail = espeak("four people at seven.", tmp_path / "t.wav")
    gap = np.zeros(int(pause_s * SR), np.int16)
    return np.concatenate([head, gap, tail, np.zeros(2 * SR, np.int16)])


def _feed(seg: Segmenter, audio: np.ndarray, on_pause=None) -> list:
    events = []
    for at in range(0, len(audio) - 320 + 1, 320):
        for ev in seg.feed(audio[at : at + 320]):
            events.append(ev)
            if isinstance(ev, PauseHeard) and on_pause is not None:
                events += on_pause(seg, ev)
    return events


def test_the_pause_is_reported_after_the_short_wait_and_the_turn_goes_on_without_a_verdict(tmp_path):
    seg = Segmenter(config=VadConfig(end_of_turn_ms=1200), pause_ms=200)
    events = _feed(seg, _paused_speech(tmp_path, 0.7))
    pauses = [e for e in events if isinstance(e, PauseHeard)]
    ended = [e for e in events if isinstance(e, UtteranceEnded)]
    assert len([e for e in events if isinstance(e, SpeechStarted)]) == 1 and len(ended) == 1
    assert len(pauses) >= 2 and ended[0].end_s == pauses[-1].end_s
    first = pauses[0]
    # What the utterance would carry if it ended there, and the turn so far with its silence.
    assert len(first.context) - len(first.audio) >= 0 and first.end_s < ended[0].end_s


def test_a_done_verdict_ends_the_utterance_at_its_pause_and_a_stale_one_does_nothing(tmp_path):
    audio = _paused_speech(tmp_path, 0.7)
    first_pause: list[PauseHeard] = []

    def end_at_first(seg, ev):
        if first_pause:
            return []
        first_pause.append(ev)
        return seg.end_at_pause(ev.voiced_end)

    events = _feed(Segmenter(config=VadConfig(end_of_turn_ms=1200), pause_ms=200), audio, end_at_first)
    ended = [e for e in events if isinstance(e, UtteranceEnded)]
    assert len(ended) == 2  # cut at the pause, and the rest as an utterance of its own
    assert ended[0].end_s == first_pause[0].end_s and len(ended[0].audio) == len(first_pause[0].audio)

    seg = Segmenter(config=VadConfig(end_of_turn_ms=1200), pause_ms=200)
    pauses = [e for e in _feed(seg, audio) if isinstance(e, PauseHeard)]
    assert seg.end_at_pause(pauses[0].voiced_end) == []  # speech came back since that pause
