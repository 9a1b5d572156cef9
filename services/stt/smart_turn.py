"""Smart Turn v3.2: the probability, from the sound of the turn, that the speaker is done.

Pipecat's open end-of-turn model (BSD-2-Clause): an 8.7 MB ONNX file that reads the last 8 s
of a turn at 16 kHz as Whisper's 80-bin log-mel features (the waveform normalised to zero
mean and unit variance first, shorter audio zero-padded at the front) and returns one
probability per row. The file comes out of the `pipecat-ai` wheel into the model cache at
setup (ops/localmodels.py); Parley does not install pipecat.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .vad import SAMPLE_RATE

SECONDS = 8
SAMPLES = SECONDS * SAMPLE_RATE
MODEL_FILE = "smart-turn-v3.2-cpu.onnx"


class TurnModelError(RuntimeError):
    """The turn model is missing or unreadable; the worker falls back to silence alone."""


class SmartTurn:
    """One ONNX session; `probabilities` takes any number of turns in one call."""

    def __init__(self, path: str | os.PathLike, threads: int = 1):
        import onnxruntime as ort
        from faster_whisper.feature_extractor import FeatureExtractor

        path = Path(path)
        if not path.is_file():
            raise TurnModelError(f"turn model {path} does not exist")
        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise TurnModelError(f"turn model {path} cannot be loaded: {exc}") from None
        inputs = {i.name for i in self._session.get_inputs()}
        if "input_features" not in inputs:
            raise TurnModelError(f"{path} is not a Smart Turn model (its inputs are {sorted(inputs)})")
        self._features = FeatureExtractor(feature_size=80, chunk_length=SECONDS)
        self.path = path

    @staticmethod
    def last_seconds(audio: np.ndarray) -> np.ndarray:
        """The model's window: the last 8 s, silence in front when the turn is shorter."""
        audio = np.asarray(audio, dtype=np.float32)[-SAMPLES:]
        return np.pad(audio, (SAMPLES - len(audio), 0)) if len(audio) < SAMPLES else audio

    def features(self, audio: np.ndarray) -> np.ndarray:
        x = self.last_seconds(audio)
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        return self._features(x, padding=0).astype(np.float32)

    def probabilities(self, turns: list[np.ndarray]) -> np.ndarray:
        """P(the speaker is done) for each turn (float32 mono 16 kHz audio, any length)."""
        if not turns:
            return np.zeros(0, dtype=np.float32)
        batch = np.stack([self.features(t) for t in turns])
        (out,) = self._session.run(None, {"input_features": batch})
        return np.asarray(out, dtype=np.float32).reshape(len(turns), -1)[:, 0]
