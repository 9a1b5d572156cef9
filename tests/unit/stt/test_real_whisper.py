"""Real Whisper weights from their packages, on the CPU: the words that were said come back.

Human speech is pocketsphinx's LibriVox readings and a spoken command (tools/speech.py);
synthetic speech is espeak-ng. Word error rates are Whisper's normalised WER (tools/wer.py).
The bounds sit above what these models measured on this audio (docs/benchmarks.md, "Real
models offline": tiny.en 0.067 and base 0.013 on the human set, greedy) with room for one or
two words of drift between CTranslate2 builds, and far below what a broken front end or a
wrong tokenizer gives (nearly 1.0).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ops.localmodels import whisper_path
from services.stt.segmenter import Segmenter, UtteranceEnded, UtteranceWindow
from services.stt.vad import VadConfig
from services.stt.whisper import DecodeRequest, WhisperEngine, check_model_folder
from tests.conftest import MODEL_CACHE
from tools.speech import espeak, human_recordings
from tools.wer import corpus_wer, normalise

pytestmark = pytest.mark.engine

SR = 16000

MONOLOGUE = [
    "On Monday we walked along the river to the old mill.",
    "The baker on the corner sells fresh bread every morning.",
    "My sister keeps a green parrot in her kitchen.",
    "In the winter the lake freezes and children skate on it.",
    "Our neighbour repairs bicycles in his garage.",
    "The library opens at nine and closes at six.",
    "Last summer we climbed a mountain near the coast.",
    "A small orchestra played music in the park.",
    "The train to the city leaves from platform two.",
    "Grandfather planted apple trees behind the barn.",
    "We painted the fence white before the storm came.",
    "The museum has a famous painting of a ship.",
    "Every evening the farmer counts his sheep.",
    "The doctor told him to drink more water.",
    "We bought a new carpet for the living room.",
    "At night the lighthouse guides the boats home.",
]
KEYS = ["river", "corner", "kitchen", "winter", "garage", "library", "mountain", "orchestra"]
KEYS += ["train", "behind", "fence", "museum", "farmer", "doctor", "carpet", "night"]
"""One word of each sentence, in order: a sentence lost or doubled at a window cut shows as
its word missing or counted twice."""


def _float(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) / 32768.0


@pytest.fixture(scope="module")
def tiny_en() -> WhisperEngine:
    return WhisperEngine(str(whisper_path("tiny.en", MODEL_CACHE)), language="en", cpu_threads=2)


def test_tiny_en_hears_human_speech(tiny_en):
    recordings = human_recordings()
    heard = [(r.text, tiny_en.transcribe(_float(r.pcm())).text) for r in recordings]
    assert corpus_wer(heard) <= 0.12, heard


def test_base_the_local_stacks_default_hears_human_speech():
    base = WhisperEngine(str(whisper_path("base", MODEL_CACHE)), language="en", cpu_threads=2)
    heard = [(r.text, base.transcribe(_float(r.pcm())).text) for r in human_recordings()]
    assert corpus_wer(heard) <= 0.06, heard


def test_a_monologue_read_in_windows_keeps_every_word_once(tiny_en, tmp_path):
    gap = np.zeros(SR // 2, dtype=np.int16)
    parts = [np.zeros(SR // 2, dtype=np.int16)]
    for i, sentence in enumerate(MONOLOGUE):
        parts += [espeak(sentence, tmp_path / f"{i}.wav"), gap]
    pcm = np.concatenate([*parts, np.zeros(SR, dtype=np.int16)])
    assert len(pcm) / SR >= 45

    events = Segmenter(config=VadConfig(end_of_turn_ms=1000)).feed(pcm)
    pieces = [e for e in events if isinstance(e, (UtteranceWindow, UtteranceEnded))]
    assert isinstance(pieces[-1], UtteranceEnded) and len(pieces) == pieces[-1].windows + 1 >= 2
    text = " ".join(tiny_en.transcribe(p.audio).text for p in pieces)

    words = normalise(text).split()
    assert [w for w in words if w in KEYS] == KEYS, text
    assert corpus_wer([(" ".join(MONOLOGUE), text)]) <= 0.2, text


def test_a_name_heard_wrong_is_heard_right_with_the_hotword(tiny_en, tmp_path):
    audio = _float(espeak("Hello Kaelith, what can you do?", tmp_path / "name.wav"))
    plain, hinted, both = tiny_en.transcribe_batch(
        [
            DecodeRequest(audio, "en"),
            DecodeRequest(audio, "en", prompt="Kaelith"),
            DecodeRequest(audio, "en", prompt="Kaelith", prefix="Hello"),
        ]
    )
    assert "kaelith" not in plain.text.lower()
    assert "Kaelith" in hinted.text
    assert "Kaelith" in both.text and both.text.startswith("Hello")


def test_a_prefix_begins_the_transcript_even_where_the_model_would_say_otherwise(tiny_en, tmp_path):
    audio = _float(espeak("Hello Ada, please tell me something nice about the weather today", tmp_path / "p.wav"))
    assert not tiny_en.transcribe(audio).text.startswith("Hello Ada")
    forced = tiny_en.transcribe_batch([DecodeRequest(audio, "en", prefix="Hello Ada, please")])[0]
    assert forced.text.startswith("Hello Ada, please tell me something nice")


@pytest.mark.parametrize("kind", ["missing", "empty", "no_tokenizer", "not_whisper", "not_json"])
def test_a_folder_that_is_no_whisper_model_is_refused_with_the_reason(tmp_path, kind):
    folder = tmp_path / "model"
    if kind != "missing":
        folder.mkdir()
    if kind in ("no_tokenizer", "not_whisper", "not_json"):
        (folder / "model.bin").write_bytes(b"\0")
        (folder / "config.json").write_text("{" if kind == "not_json" else json.dumps({"layer_norm_epsilon": 1e-5}))
    if kind in ("not_whisper", "not_json"):
        (folder / "tokenizer.json").write_text("{}")
    reasons = {
        "missing": "does not exist",
        "empty": "no model.bin, config.json, tokenizer.json",
        "no_tokenizer": "no tokenizer.json",
        "not_whisper": "not Whisper",
        "not_json": "not JSON",
    }
    with pytest.raises(ValueError, match=reasons[kind]):
        check_model_folder(folder)
    with pytest.raises(ValueError, match=reasons[kind]):
        WhisperEngine(str(folder))


def test_the_packaged_models_are_whisper_folders():
    for name in ("tiny.en", "base"):
        assert check_model_folder(whisper_path(name, MODEL_CACHE)) == Path(whisper_path(name, MODEL_CACHE))
