"""The STT engine: streaming VAD, end-of-turn segmentation, and Whisper.

Speech fixtures come from espeak-ng + sox; Whisper is the real tiny.en from its package
(tests/unit/stt/test_real_whisper.py measures its words on human speech too). The random-weight
builder that benchmarks use at real sizes is checked here as well.
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from services.stt.segmenter import Segmenter, SpeechStarted, UtteranceEnded, UtteranceWindow
from services.stt.vad import WINDOW, SileroVad, VadConfig
from services.stt.whisper import Transcript, WhisperEngine
from tools.wer import corpus_wer, wer

SR = 16000
REPO = Path(__file__).resolve().parents[3]
FRAME = 320  # 20 ms, what the gateway forwards


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.int16)


def say(text: str, out: Path) -> np.ndarray:
    """Synthesise text with espeak-ng and resample it to 16 kHz mono PCM16 with sox."""
    wav = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", text], check=True, capture_output=True).stdout
    subprocess.run(
        ["sox", "-t", "wav", "-", "-r", str(SR), "-c", "1", "-b", "16", "-e", "signed-integer"] + [str(out)],
        input=wav,
        check=True,
        capture_output=True,
    )
    pcm, sr = sf.read(out, dtype="int16")
    assert sr == SR and pcm.ndim == 1
    return pcm


def voiced_bounds(pcm: np.ndarray) -> tuple[float, float]:
    """First and last sample (in seconds) louder than -40 dBFS: where the speech really is."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 328)
    return loud[0] / SR, (loud[-1] + 1) / SR


def feed_all(seg: Segmenter, pcm: np.ndarray, sizes=(FRAME,), as_bytes: bool = True) -> list:
    events, i, k = [], 0, 0
    while i < len(pcm):
        n = sizes[k % len(sizes)]
        chunk = pcm[i : i + n]
        events += seg.feed(chunk.tobytes() if as_bytes else chunk)
        i += n
        k += 1
    return events


def kinds(events) -> list[str]:
    return [type(e).__name__ for e in events]


SAID = ["Hello there, could you tell me the weather for tomorrow?", "Thank you very much, that is all for today."]


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> dict[str, np.ndarray]:
    tmp = tmp_path_factory.mktemp("speech")
    return {"hello": say(SAID[0], tmp / "hello.wav"), "thanks": say(SAID[1], tmp / "thanks.wav")}


@pytest.fixture(scope="module")
def tiny_model() -> Path:
    from tools.testmodels.whisper import build_whisper

    cache = Path(os.environ.get("PARLEY_MODEL_CACHE", REPO / ".cache" / "models"))
    return build_whisper(cache / "whisper-tiny", size="tiny", seed=0)


@pytest.fixture(scope="module")
def engine() -> WhisperEngine:
    from ops.localmodels import whisper_path

    cache = Path(os.environ.get("PARLEY_MODEL_CACHE", REPO / ".cache" / "models"))
    return WhisperEngine(str(whisper_path("tiny.en", cache)), device="cpu", compute_type="int8", cpu_threads=1)


# --- Silero VAD -------------------------------------------------------------------------


def test_vad_model_is_shared_and_streams_keep_their_own_state(speech):
    vad = SileroVad.shared()
    assert SileroVad.shared() is vad
    audio = speech["hello"][: 40 * WINDOW].astype(np.float32) / 32768.0
    windows = audio.reshape(-1, WINDOW)

    one_by_one = vad.new_stream()
    sequential = np.array([one_by_one.probability(w) for w in windows])
    assert sequential.max() > 0.5 > sequential.min()

    batched = vad.new_stream().probabilities(windows)
    np.testing.assert_allclose(batched, sequential, atol=1e-5)

    # Two streams interleaved on the same session do not disturb each other.
    a, b = vad.new_stream(), vad.new_stream()
    quiet = np.zeros(WINDOW, dtype=np.float32)
    interleaved = []
    for w in windows:
        interleaved.append(a.probability(w))
        b.probability(quiet)
    np.testing.assert_allclose(interleaved, sequential, atol=1e-5)

    a.reset()
    np.testing.assert_allclose(a.probabilities(windows), sequential, atol=1e-5)


def test_vad_rejects_wrong_window_shape():
    with pytest.raises(ValueError):
        SileroVad.shared().new_stream().probabilities(np.zeros((2, 480), dtype=np.float32))


# --- Segmenter --------------------------------------------------------------------------


def test_one_utterance_in_20ms_frames(speech):
    pcm = np.concatenate([silence(0.5), speech["hello"], silence(1.0)])
    onset, offset = voiced_bounds(pcm)
    seg = Segmenter()
    events = feed_all(seg, pcm)

    assert kinds(events) == ["SpeechStarted", "UtteranceEnded"]
    started, ended = events
    assert started.utterance_seq == ended.utterance_seq == 0
    assert started.start_s == ended.start_s
    assert onset - 0.1 <= ended.start_s <= onset + 0.25
    assert offset - 0.4 <= ended.end_s <= offset + 0.1
    pad = VadConfig().pad_ms / 1000
    assert ended.audio.dtype == np.float32
    assert ended.duration_s <= len(ended.audio) / SR <= ended.duration_s + 2 * pad + 1e-6
    assert np.abs(ended.audio).max() > 0.1
    assert seg.samples_fed == len(pcm)
    assert not seg.in_speech and seg.active_audio() is None
    assert seg.flush() == []


def test_two_utterances_separated_by_a_second(speech):
    first = np.concatenate([silence(0.3), speech["hello"]])
    pcm = np.concatenate([first, silence(1.0), speech["thanks"], silence(1.0)])
    seg = Segmenter(first_utterance_seq=7)
    events = feed_all(seg, pcm)

    assert kinds(events) == ["SpeechStarted", "UtteranceEnded"] * 2
    ends = [e for e in events if isinstance(e, UtteranceEnded)]
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    assert [e.utterance_seq for e in starts] == [7, 8]
    assert [e.utterance_seq for e in ends] == [7, 8]
    assert seg.next_utterance_seq == 9
    second_onset = (len(first) + SR) / SR + voiced_bounds(speech["thanks"])[0]
    assert ends[0].end_s < len(first) / SR + 0.1
    assert second_onset - 0.1 <= ends[1].start_s <= second_onset + 0.25


@pytest.mark.parametrize("kind", ["silence", "noise"])
def test_silence_and_low_noise_give_nothing(kind):
    if kind == "silence":
        pcm = silence(3.0)
    else:
        rng = np.random.default_rng(0)
        pcm = (rng.normal(0.0, 0.003, 3 * SR) * 32768).astype(np.int16)  # about -50 dBFS
    seg = Segmenter()
    assert feed_all(seg, pcm) == []
    assert seg.flush() == []
    assert seg.samples_fed == len(pcm)


def test_short_burst_is_ignored(speech):
    onset, _ = voiced_bounds(speech["hello"])
    burst = speech["hello"][int(onset * SR) : int((onset + 0.12) * SR)]
    pcm = np.concatenate([silence(0.5), burst, silence(1.0)])
    seg = Segmenter()
    assert feed_all(seg, pcm) == [] and seg.flush() == []


def test_odd_frame_sizes_give_the_same_utterances(speech):
    parts = [silence(0.4), speech["hello"], silence(0.8), speech["thanks"], silence(0.6)]
    pcm = np.concatenate(parts)
    reference = feed_all(Segmenter(), pcm)
    assert kinds(reference) == ["SpeechStarted", "UtteranceEnded"] * 2

    odd_bytes = Segmenter()
    raw = pcm.tobytes()
    byte_sizes = [1, 3, 641, 1023, 7, 8191, 2]  # some odd: a sample split across frames
    events, i, k = [], 0, 0
    while i < len(raw):
        n = byte_sizes[k % len(byte_sizes)]
        events += odd_bytes.feed(raw[i : i + n])
        i, k = i + n, k + 1
    arrays = feed_all(Segmenter(), pcm, sizes=(1, 17, 333, 5000, 511, 513), as_bytes=False)
    whole = Segmenter()
    at_once = whole.feed(pcm)

    for other in (events, arrays, at_once):
        assert kinds(other) == kinds(reference)
        for got, want in zip(other, reference):
            assert got.utterance_seq == want.utterance_seq
            assert got.start_s == pytest.approx(want.start_s, abs=1e-9)
            if isinstance(want, UtteranceEnded):
                assert got.end_s == pytest.approx(want.end_s, abs=1e-9)
                np.testing.assert_allclose(got.audio, want.audio, atol=1e-6)
    assert odd_bytes.samples_fed == whole.samples_fed == len(pcm)


def test_flush_ends_an_utterance_cut_mid_speech(speech):
    hello = speech["hello"]
    onset, offset = voiced_bounds(hello)
    cut = int((onset + offset) / 2 * SR)
    pcm = np.concatenate([silence(0.5), hello[:cut]])
    seg = Segmenter(first_utterance_seq=3)
    events = feed_all(seg, pcm)

    assert kinds(events) == ["SpeechStarted"]
    assert seg.in_speech
    partial = seg.active_audio()
    assert partial is not None and len(partial) > 0.3 * SR

    flushed = seg.flush()
    assert kinds(flushed) == ["UtteranceEnded"]
    (ended,) = flushed
    assert ended.utterance_seq == 3
    assert ended.start_s == events[0].start_s
    assert ended.end_s <= len(pcm) / SR
    assert ended.end_s >= len(pcm) / SR - 0.3
    assert len(ended.audio) >= len(partial)
    assert not seg.in_speech and seg.active_audio() is None
    assert seg.flush() == []

    # The segmenter carries on after a flush, with times still counted from the start.
    more = feed_all(seg, np.concatenate([silence(0.5), hello, silence(1.0)]))
    assert kinds(more) == ["SpeechStarted", "UtteranceEnded"]
    assert more[1].utterance_seq == 4
    assert more[1].start_s > len(pcm) / SR


def test_long_speech_is_read_in_windows_cut_at_pauses_without_losing_a_sample(speech):
    """The seam test: windows of one utterance, laid end to end, are exactly the audio the
    utterance has when read whole; each cut falls where the voice is quiet."""
    pcm = np.concatenate([silence(0.3), speech["hello"], speech["thanks"], silence(1.0)])
    patient = VadConfig(end_of_turn_ms=1000)  # the pause between the two sentences stays inside the turn
    whole = [e for e in feed_all(Segmenter(config=patient), pcm) if isinstance(e, UtteranceEnded)]
    assert len(whole) == 1 and whole[0].windows == 0

    config = VadConfig(end_of_turn_ms=1000, window_ms=2000, seam_search_ms=1500)
    events = feed_all(Segmenter(config=config), pcm)
    windows = [e for e in events if isinstance(e, UtteranceWindow)]
    ends = [e for e in events if isinstance(e, UtteranceEnded)]
    assert kinds(events)[0] == "SpeechStarted" and kinds(events)[-1] == "UtteranceEnded"
    assert len(ends) == 1 and ends[0].windows == len(windows) >= 3
    assert [w.window_index for w in windows] == list(range(len(windows)))
    assert all(len(w.audio) <= 2.0 * SR for w in windows)
    joined = np.concatenate([w.audio for w in windows] + [ends[0].audio])
    assert np.array_equal(joined, whole[0].audio)  # nothing dropped, nothing doubled
    assert (ends[0].start_s, ends[0].end_s) == (whole[0].start_s, whole[0].end_s)

    level = np.abs(pcm.astype(np.float32)) / 32768.0
    for w in windows:
        cut = int(w.end_s * SR)
        around = level[cut - 160 : cut + 160]  # 10 ms either side
        assert around.max() < 0.01, f"cut at {w.end_s:.2f} s is not in a pause"


def test_endless_speech_ends_the_utterance_at_max_utterance(speech):
    config = VadConfig(window_ms=1500, seam_search_ms=1000, max_utterance_ms=4000, end_of_turn_ms=1000)
    pcm = np.concatenate([silence(0.3), *[speech["hello"]] * 4, silence(1.0)])
    events = feed_all(Segmenter(config=config), pcm)
    ends = [e for e in events if isinstance(e, UtteranceEnded)]
    assert len(ends) >= 2
    assert ends[0].end_s - ends[0].start_s == pytest.approx(4.0, abs=0.05)
    assert all(len(e.audio) <= 1.5 * SR for e in events if isinstance(e, (UtteranceWindow, UtteranceEnded)))


def test_ten_minutes_of_speech_and_of_silence_stay_bounded(speech):
    """Non-stop speech ends a turn every max_utterance_ms and is read in windows; silence
    keeps nothing but the padding. The audio held never exceeds one window plus padding."""
    config = VadConfig(end_of_turn_ms=1000)
    seg = Segmenter(config=config)
    words = np.concatenate([speech["hello"], speech["thanks"]])
    talk = np.tile(words, int(600 * SR / len(words)) + 1)[: 600 * SR]
    held = 0
    events = []
    for i in range(0, len(talk), SR):  # a second at a time, far faster than real time
        events += seg.feed(talk[i : i + SR])
        held = max(held, sum(len(w) for w in seg._windows))
    ends = [e for e in events if isinstance(e, UtteranceEnded)]
    assert len(ends) >= 600 * 1000 // config.max_utterance_ms - 1
    assert all(e.end_s - e.start_s <= config.max_utterance_ms / 1000 + 0.05 for e in ends)
    longest = max(len(e.audio) for e in events if isinstance(e, (UtteranceWindow, UtteranceEnded)))
    assert longest <= config.samples(config.window_ms) + WINDOW
    assert held <= config.samples(config.window_ms + config.pad_ms) + 2 * SR

    quiet = Segmenter(config=config)
    for _ in range(600):
        assert quiet.feed(silence(1.0)) == []
    assert sum(len(w) for w in quiet._windows) <= config.samples(config.pad_ms) + WINDOW


def test_rejects_non_int16_arrays():
    with pytest.raises(TypeError):
        Segmenter().feed(np.zeros(320, dtype=np.float32))


# --- Whisper ----------------------------------------------------------------------------


@pytest.mark.engine
def test_build_whisper_is_idempotent(tiny_model):
    from tools.testmodels.whisper import build_whisper, is_complete

    assert is_complete(tiny_model, "tiny", 0)
    for name in ("model.bin", "tokenizer.json", "preprocessor_config.json", "config.json"):
        assert (tiny_model / name).is_file()
    before = (tiny_model / "model.bin").stat().st_mtime_ns
    assert build_whisper(tiny_model, size="tiny", seed=0) == tiny_model
    assert (tiny_model / "model.bin").stat().st_mtime_ns == before


@pytest.mark.engine
def test_engine_transcribes_speech_from_a_local_model(engine, speech):
    audio = speech["hello"].astype(np.float32) / 32768.0
    result = engine.transcribe(audio)
    assert isinstance(result, Transcript)
    assert result.text and result.text == result.text.strip()
    assert wer("Hello there, could you tell me the weather for tomorrow?", result.text) <= 0.2, result.text
    assert result.language
    assert 0.0 <= result.confidence <= 1.0
    assert result.duration_s == pytest.approx(len(audio) / SR)

    pinned = engine.transcribe(audio, language="en")
    assert pinned.language == "en" and pinned.text


@pytest.mark.engine
def test_engine_transcribes_segmenter_utterances_from_threads(engine, speech):
    parts = [silence(0.3), speech["hello"], silence(1.0), speech["thanks"], silence(1.0)]
    pcm = np.concatenate(parts)
    utterances = [e for e in feed_all(Segmenter(), pcm) if isinstance(e, UtteranceEnded)]
    assert len(utterances) == 2
    sequential = [engine.transcribe(u.audio, language="en") for u in utterances]
    with ThreadPoolExecutor(max_workers=2) as pool:
        threaded = list(pool.map(lambda u: engine.transcribe(u.audio, language="en"), utterances))
    assert [t.text for t in threaded] == [t.text for t in sequential]
    # The segmenter's cut (speech plus padding) costs at most a word each against the same
    # model reading each sentence's whole file.
    whole = [engine.transcribe(speech[k].astype(np.float32) / 32768.0, language="en").text for k in ("hello", "thanks")]
    heard = [(said, t.text) for said, t in zip(SAID, threaded)]
    words = sum(len(x.split()) for x in SAID)
    assert corpus_wer(heard) <= corpus_wer(list(zip(SAID, whole))) + 2 / words, (heard, whole)


@pytest.mark.engine
def test_engine_returns_empty_transcript_for_empty_audio(engine):
    result = engine.transcribe(np.zeros(0, dtype=np.float32), language="en")
    assert result == Transcript(text="", language="en", confidence=0.0, duration_s=0.0)


@pytest.mark.engine
def test_a_model_that_never_ends_its_text_stops_at_the_natural_limit(tiny_model):
    """The random-weight model never writes end-of-text, as a real one caught repeating itself
    on noise may not: each decode is capped by its audio's length, not at Whisper's 448."""
    from services.stt.whisper import natural_token_limit

    engine = WhisperEngine(str(tiny_model), device="cpu", compute_type="int8", cpu_threads=1)
    calls = []

    class Spy:
        def __init__(self, model):
            self._model = model

        def __getattr__(self, name):
            return getattr(self._model, name)

        def generate(self, encoder_output, prompts, **kw):
            calls.append((max(len(p) for p in prompts), kw["max_length"]))
            return self._model.generate(encoder_output, prompts, **kw)

    engine.model.model = Spy(engine.model.model)
    result = engine.transcribe(np.zeros(SR, dtype=np.float32) + 0.01, language="en")
    assert result.text
    ((prompt, max_length),) = calls
    assert max_length == prompt + natural_token_limit(1.0) < 448
