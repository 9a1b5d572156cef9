"""DecodeBatcher over the real tiny Whisper: many sessions' decodes share model calls,
finals go first, a newer partial replaces an older one, and batching changes no result.

The engine is wrapped only to hold its first call until the test has queued the rest (so
what "pending at once" means is decided by the test, not by the machine's speed)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from services.stt.batcher import DecodeBatcher, Superseded
from services.stt.whisper import DecodeRequest, WhisperEngine

pytestmark = pytest.mark.engine

SR = 16000
REPO = Path(__file__).resolve().parents[3]


class HeldEngine:
    """The real engine; its first call waits for `release`, and every call's batch is kept."""

    def __init__(self, engine: WhisperEngine):
        self.engine = engine
        self.release = threading.Event()
        self.started = threading.Event()
        self.batches: list[list[DecodeRequest]] = []

    def transcribe_batch(self, requests):
        self.batches.append(list(requests))
        if len(self.batches) == 1:
            self.started.set()
            assert self.release.wait(30)
        return self.engine.transcribe_batch(requests)


@pytest.fixture(scope="module")
def engine() -> WhisperEngine:
    from tools.testmodels.whisper import build_whisper

    cache = Path(os.environ.get("PARLEY_MODEL_CACHE", REPO / ".cache" / "models"))
    model = build_whisper(cache / "whisper-tiny", size="tiny", seed=0)
    return WhisperEngine(str(model), device="cpu", compute_type="int8", max_new_tokens=8, cpu_threads=1)


def tone(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def held(engine: WhisperEngine, max_batch: int = 16) -> tuple[HeldEngine, DecodeBatcher, object]:
    wrapped = HeldEngine(engine)
    batcher = DecodeBatcher(wrapped, max_batch=max_batch)
    first = batcher.submit(DecodeRequest(tone(0.5, 200.0), "en"))
    assert wrapped.started.wait(30)
    return wrapped, batcher, first


def test_sessions_pending_together_share_one_model_call(engine):
    sessions = 8
    audio = [tone(0.5 + 0.25 * i, 150.0 + 40 * i) for i in range(sessions)]
    alone = [engine.transcribe(a, language="en") for a in audio]

    wrapped, batcher, first = held(engine)
    futures = [batcher.submit(DecodeRequest(a, "en")) for a in audio]
    assert batcher.pending == sessions
    wrapped.release.set()
    together = [f.result(timeout=60) for f in futures]
    first.result(timeout=60)
    batcher.close()

    assert len(wrapped.batches) == 2 < sessions + 1  # the held call, then all eight at once
    assert len(wrapped.batches[1]) == sessions
    for a, b in zip(alone, together):
        assert b.text == a.text and b.language == a.language
        assert b.confidence == pytest.approx(a.confidence, abs=1e-3)
        assert b.duration_s == pytest.approx(a.duration_s)


def test_finals_go_ahead_of_partials(engine):
    wrapped, batcher, first = held(engine, max_batch=2)
    partial_a = batcher.submit_partial("a", DecodeRequest(tone(1.0, 300.0), "en"))
    partial_b = batcher.submit_partial("b", DecodeRequest(tone(1.0, 320.0), "en"))
    final_c = batcher.submit(DecodeRequest(tone(0.7, 340.0), "en"))
    final_d = batcher.submit(DecodeRequest(tone(0.8, 360.0), "en"))
    wrapped.release.set()
    for f in (first, partial_a, partial_b, final_c, final_d):
        f.result(timeout=60)
    batcher.close()
    sizes = [[len(r.audio) for r in batch] for batch in wrapped.batches[1:]]
    assert sizes == [[int(0.7 * SR), int(0.8 * SR)], [SR, SR]]


def test_a_newer_partial_replaces_the_pending_one(engine):
    wrapped, batcher, first = held(engine)
    older = batcher.submit_partial("a", DecodeRequest(tone(0.5, 300.0), "en"))
    newer = batcher.submit_partial("a", DecodeRequest(tone(1.0, 300.0), "en"))
    other = batcher.submit_partial("b", DecodeRequest(tone(0.5, 500.0), "en"))
    with pytest.raises(Superseded):
        older.result(timeout=1)
    wrapped.release.set()
    assert newer.result(timeout=60).duration_s == pytest.approx(1.0)
    other.result(timeout=60)
    first.result(timeout=60)
    batcher.close()
    assert len(wrapped.batches[1]) == 2


def test_close_finishes_what_is_queued_and_refuses_more(engine):
    wrapped, batcher, first = held(engine)
    queued = batcher.submit(DecodeRequest(tone(0.5, 250.0), "en"))
    wrapped.release.set()
    batcher.close()
    assert first.done() and queued.done() and queued.result().text is not None
    with pytest.raises(RuntimeError):
        batcher.submit(DecodeRequest(tone(0.5, 250.0), "en"))


def test_audio_over_thirty_seconds_is_refused_per_request(engine):
    with pytest.raises(ValueError, match="30 s"):
        engine.transcribe_batch([DecodeRequest(np.zeros(31 * SR, dtype=np.float32), "en")])
    long = engine.transcribe(np.zeros(45 * SR, dtype=np.float32), language="en")
    assert long.duration_s == pytest.approx(45.0)


def test_each_request_keeps_its_language_and_hotwords(engine):
    """Languages mix freely in one call; hotword prompts of one length share a call too
    (CTranslate2 wants the start-of-transcript token at one position in a batch)."""
    mixed = [
        DecodeRequest(tone(0.6, 220.0), "en", prompt="Ada, Parley"),
        DecodeRequest(tone(0.6, 240.0), "fr", prompt="Ada, Parley"),
        DecodeRequest(tone(0.6, 260.0), "de"),
        DecodeRequest(tone(0.6, 300.0), None),
    ]
    calls = engine.model_calls
    results = engine.transcribe_batch(mixed)
    assert engine.model_calls == calls + 2  # the two prompted requests, then the two others
    assert [r.language for r in results[:3]] == ["en", "fr", "de"] and results[3].language
    alone = engine.transcribe(mixed[0].audio, language="en", prompt="Ada, Parley")
    assert results[0].text == alone.text
