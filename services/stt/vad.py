"""Streaming voice activity detection: Silero VAD (ONNX) with state per audio stream."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

WINDOW = 512
"""Samples per VAD window at 16 kHz (32 ms): the size Silero v5/v6 was trained on."""
CONTEXT = 64
"""Samples of the previous window that Silero sees in front of each window."""
STATE_SHAPE = (1, 1, 128)
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class VadConfig:
    """Thresholds of the end-of-turn detector; the defaults favour fast turn-taking."""

    threshold: float = 0.5
    """Speech probability that starts speech; speech continues above threshold - 0.15."""
    end_of_turn_ms: int = 300
    """Silence that ends a turn: the main latency knob (every ms here is a ms of reply delay)."""
    min_speech_ms: int = 250
    """Voiced time needed before speech counts; shorter bursts (clicks, coughs) are ignored."""
    pad_ms: int = 200
    """Audio kept before speech start and after speech end; Whisper clips words without it."""
    sample_rate: int = SAMPLE_RATE
    window_ms: int = 28_000
    """Longer speech is read in windows of at most this much (Whisper reads 30 s at once),
    each cut at the quietest moment of its last ``seam_search_ms``."""
    seam_search_ms: int = 6_000
    max_utterance_ms: int = 120_000
    """An utterance (one user turn) ends here even mid-speech: memory and turn size stay bounded."""

    def __post_init__(self) -> None:
        if self.sample_rate != SAMPLE_RATE:
            raise ValueError("the Silero VAD model here runs at 16 kHz only")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must lie in (0, 1)")
        if not 0 < self.seam_search_ms < self.window_ms:
            raise ValueError("seam_search_ms must be positive and shorter than window_ms")

    @property
    def neg_threshold(self) -> float:
        return max(self.threshold - 0.15, 0.01)

    def samples(self, ms: int) -> int:
        return ms * self.sample_rate // 1000


def silero_model_path() -> Path:
    """The Silero VAD ONNX file that ships inside faster-whisper (no download needed)."""
    from faster_whisper.utils import get_assets_path

    return Path(get_assets_path()) / "silero_vad_v6.onnx"


class SileroVad:
    """The Silero VAD model: one onnxruntime session shared by all streams of a process.

    The ONNX graph takes ``input`` [n, 576] float32 (n consecutive 512-sample windows of ONE
    stream, each led by the 64 samples before it), ``h`` and ``c`` [1, 1, 128] (LSTM state),
    and returns ``speech_probs`` [n] and the new ``hn``, ``cn``. The first axis is time, not
    a batch: the state has a fixed batch of 1, so windows of several streams cannot share a
    run, but a stream that has fallen behind scores all its pending windows in one run
    (bit-identical to scoring them one by one). ``InferenceSession.run`` is thread-safe, so
    streams on different threads share the session; the state lives in each ``VadStream``.
    """

    _shared: ClassVar[SileroVad | None] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: str | Path | None = None) -> None:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(
            str(path or silero_model_path()),
            sess_options=opts,
            providers=["CPUExecutionProvider"],
        )

    @classmethod
    def shared(cls) -> SileroVad:
        """The process-wide model, loaded on first use."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def new_stream(self) -> VadStream:
        return VadStream(self)

    def run(self, inputs: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        probs, hn, cn = self.session.run(None, {"input": inputs, "h": h, "c": c})
        return np.asarray(probs, dtype=np.float32).reshape(-1), hn, cn


class VadStream:
    """The recurrent state of one audio stream over the shared Silero model."""

    def __init__(self, model: SileroVad) -> None:
        self.model = model
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)

    def probability(self, window: np.ndarray) -> float:
        """Speech probability of the next 512-sample float32 window of this stream."""
        return float(self.probabilities(np.asarray(window, dtype=np.float32).reshape(1, WINDOW))[0])

    def probabilities(self, windows: np.ndarray) -> np.ndarray:
        """Speech probabilities of the next n consecutive windows ([n, 512]) in one run."""
        windows = np.asarray(windows, dtype=np.float32)
        if windows.ndim != 2 or windows.shape[1] != WINDOW:
            raise ValueError(f"expected windows of shape [n, {WINDOW}], got {windows.shape}")
        if len(windows) == 0:
            return np.zeros(0, dtype=np.float32)
        contexts = np.empty((len(windows), CONTEXT), dtype=np.float32)
        contexts[0] = self._context
        contexts[1:] = windows[:-1, -CONTEXT:]
        inputs = np.concatenate([contexts, windows], axis=1)
        probs, self._h, self._c = self.model.run(inputs, self._h, self._c)
        self._context = windows[-1, -CONTEXT:].copy()
        return probs
