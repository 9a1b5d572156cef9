"""Speech-to-text engine: streaming voice activity detection, end of turn, Whisper.

Everything here is synchronous and CPU/GPU-bound; the async service runs it through
``asyncio.to_thread``. One ``Segmenter`` per live audio stream decides where utterances
start and end; the Silero VAD model behind it and the ``WhisperEngine`` are loaded once
per process and shared by every stream.
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
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
    max_utterance_ms: int = 30_000
    """An utterance is cut here even mid-speech: Whisper reads at most 30 s at once."""

    def __post_init__(self) -> None:
        if self.sample_rate != SAMPLE_RATE:
            raise ValueError("the Silero VAD model here runs at 16 kHz only")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must lie in (0, 1)")

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


@dataclass(frozen=True)
class SpeechStarted:
    """Speech has begun (confirmed after min_speech_ms of voice); start_s is its onset."""

    utterance_index: int
    start_s: float


@dataclass(frozen=True, eq=False)
class UtteranceEnded:
    """A finished utterance: start_s..end_s is the speech, seconds since the stream began;
    audio (float32, 16 kHz) spans it plus up to pad_ms on either side."""

    utterance_index: int
    audio: np.ndarray
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


SegmenterEvent = SpeechStarted | UtteranceEnded

_IDLE, _CANDIDATE, _SPEECH = "idle", "candidate", "speech"


class Segmenter:
    """End-of-turn detection on one live stream of 16 kHz mono PCM16.

    Feed frames of any size; audio is scored in 512-sample windows. Speech starts when a
    window reaches ``threshold`` and is confirmed once ``min_speech_ms`` of windows stayed
    above ``threshold - 0.15`` before ``end_of_turn_ms`` of silence; it ends after
    ``end_of_turn_ms`` below that. Times count samples fed, so they are exact and
    independent of wall-clock jitter. Not thread-safe: one owner per stream.
    """

    def __init__(
        self,
        vad: SileroVad | None = None,
        config: VadConfig | None = None,
        first_utterance_index: int = 0,
    ) -> None:
        self.config = config or VadConfig()
        self._vad = (vad or SileroVad.shared()).new_stream()
        self._next_index = first_utterance_index
        self._pending = np.zeros(0, dtype=np.float32)
        self._odd_byte = b""
        self._processed = 0
        self._windows: deque[np.ndarray] = deque()
        self._buf_start = 0
        self._pad = self.config.samples(self.config.pad_ms)
        self._eot = self.config.samples(self.config.end_of_turn_ms)
        self._min_speech = self.config.samples(self.config.min_speech_ms)
        self._max_utt = self.config.samples(self.config.max_utterance_ms)
        self._reset_turn()

    def _reset_turn(self) -> None:
        self._state = _IDLE
        self._speech_start = 0
        self._last_voiced_end = 0
        self._voiced = 0
        self._silence = 0

    @property
    def samples_fed(self) -> int:
        """Samples received so far, including any not yet scored (under one window)."""
        return self._processed + len(self._pending)

    @property
    def in_speech(self) -> bool:
        return self._state == _SPEECH

    @property
    def next_utterance_index(self) -> int:
        return self._next_index

    def feed(self, pcm16: bytes | bytearray | memoryview | np.ndarray) -> list[SegmenterEvent]:
        """Take the next frame of PCM16 (any length) and return the events it caused."""
        samples = self._to_float(pcm16)
        if len(samples):
            self._pending = np.concatenate([self._pending, samples])
        n = len(self._pending) // WINDOW
        if n == 0:
            return []
        windows = self._pending[: n * WINDOW].reshape(n, WINDOW)
        self._pending = self._pending[n * WINDOW :].copy()
        probs = self._vad.probabilities(windows)
        events: list[SegmenterEvent] = []
        for window, prob in zip(windows, probs):
            self._step(window, float(prob), events)
        return events

    def flush(self) -> list[SegmenterEvent]:
        """End the stream: close an utterance in progress, drop unconfirmed speech, and
        start afresh (sample times keep counting)."""
        events: list[SegmenterEvent] = []
        if self._state == _SPEECH:
            tail = self._pending
            if len(tail):
                self._windows.append(tail)
            end = min(self._last_voiced_end + self._pad, self._processed + len(tail))
            events.append(self._end_utterance(end))
        self._processed += len(self._pending)
        self._pending = np.zeros(0, dtype=np.float32)
        self._odd_byte = b""
        self._windows.clear()
        self._buf_start = self._processed
        self._vad.reset()
        self._reset_turn()
        return events

    def active_audio(self) -> np.ndarray | None:
        """Audio of the utterance in progress so far (pre-padding included), or None."""
        if self._state != _SPEECH:
            return None
        audio = self._slice(self._audio_start(), self._processed)
        return np.concatenate([audio, self._pending]) if len(self._pending) else audio

    def _to_float(self, pcm16: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
        if isinstance(pcm16, np.ndarray):
            if pcm16.dtype != np.int16:
                raise TypeError(f"expected int16 PCM, got {pcm16.dtype}")
            ints = pcm16.reshape(-1)
        else:
            data = self._odd_byte + bytes(pcm16)
            cut = len(data) - len(data) % 2
            self._odd_byte = data[cut:]
            ints = np.frombuffer(data[:cut], dtype="<i2")
        return ints.astype(np.float32) / 32768.0

    def _step(self, window: np.ndarray, prob: float, events: list[SegmenterEvent]) -> None:
        cfg = self.config
        start = self._processed
        self._processed += WINDOW
        self._windows.append(window)

        if self._state == _IDLE:
            if prob >= cfg.threshold:
                self._state = _CANDIDATE
                self._speech_start = start
                self._voiced = WINDOW
                self._silence = 0
                self._last_voiced_end = self._processed
        elif prob >= cfg.neg_threshold:
            self._voiced += WINDOW
            self._silence = 0
            self._last_voiced_end = self._processed
        else:
            self._silence += WINDOW

        if self._state == _CANDIDATE:
            if self._voiced >= self._min_speech:
                self._state = _SPEECH
                events.append(SpeechStarted(self._next_index, self._speech_start / cfg.sample_rate))
            elif self._silence >= self._eot:
                self._reset_turn()
        if self._state == _SPEECH:
            if self._silence >= self._eot:
                end = min(self._last_voiced_end + self._pad, self._processed)
                events.append(self._end_utterance(end))
                self._reset_turn()
            elif self._processed + WINDOW - self._audio_start() > self._max_utt:
                self._last_voiced_end = self._processed
                events.append(self._end_utterance(self._processed))
                self._reset_turn()
                self._buf_start = self._processed
                self._windows.clear()

        if self._state == _IDLE:
            self._trim(self._processed - self._pad)
        elif self._state == _CANDIDATE:
            self._trim(self._speech_start - self._pad)

    def _audio_start(self) -> int:
        """Where the current utterance's audio begins: pad_ms before the speech, unless the
        stream (or a forced cut) began later."""
        return max(self._speech_start - self._pad, self._buf_start, 0)

    def _end_utterance(self, audio_end: int) -> UtteranceEnded:
        sr = self.config.sample_rate
        audio = self._slice(self._audio_start(), audio_end)
        event = UtteranceEnded(
            utterance_index=self._next_index,
            audio=audio,
            start_s=self._speech_start / sr,
            end_s=self._last_voiced_end / sr,
        )
        self._next_index += 1
        return event

    def _trim(self, keep_from: int) -> None:
        """Drop buffered windows that end before keep_from (outside any future padding)."""
        while self._windows and self._buf_start + len(self._windows[0]) <= keep_from:
            self._buf_start += len(self._windows.popleft())

    def _slice(self, start: int, end: int) -> np.ndarray:
        if not self._windows or end <= start:
            return np.zeros(0, dtype=np.float32)
        audio = np.concatenate(self._windows)
        lo = max(start - self._buf_start, 0)
        return audio[lo : max(end - self._buf_start, lo)].copy()


@dataclass
class Transcript:
    """One utterance's final text. confidence is exp(mean token log-probability), 0..1."""

    text: str
    language: str
    confidence: float
    duration_s: float


class WhisperEngine:
    """faster-whisper with pinned, fast decoding for short, already segmented utterances.

    Greedy, single temperature, no timestamps, no VAD filter (the Segmenter did that), no
    conditioning on earlier text (each utterance stands alone, and a bad guess cannot
    snowball). One instance serves a process; CTranslate2 runs concurrent ``transcribe``
    calls from a thread pool on ``num_workers`` model replicas.
    """

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        compute_type: str = "int8",
        beam_size: int = 1,
        language: str | None = None,
        max_new_tokens: int | None = None,
        cpu_threads: int = 0,
        num_workers: int = 1,
        download_root: str | None = None,
    ) -> None:
        from faster_whisper import WhisperModel

        self.model_name = str(model)
        self.beam_size = beam_size
        self.language = language
        self.max_new_tokens = max_new_tokens
        self.model = WhisperModel(
            os.fspath(model),
            device=device,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=num_workers,
            download_root=download_root,
        )

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        """Transcribe one utterance (float32 mono 16 kHz); language None means detect it."""
        audio = np.ascontiguousarray(np.asarray(audio, dtype=np.float32).reshape(-1))
        duration = len(audio) / SAMPLE_RATE
        language = language or self.language
        if len(audio) == 0:
            return Transcript("", language or "", 0.0, 0.0)
        segments, info = self.model.transcribe(
            audio,
            language=language,
            task="transcribe",
            beam_size=self.beam_size,
            best_of=1,
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=True,
            word_timestamps=False,
            vad_filter=False,
            max_new_tokens=self.max_new_tokens,
        )
        texts: list[str] = []
        logprob_sum = 0.0
        tokens = 0
        for segment in segments:
            texts.append(segment.text)
            n = max(len(segment.tokens), 1)
            logprob_sum += segment.avg_logprob * n
            tokens += n
        confidence = math.exp(logprob_sum / tokens) if tokens else 0.0
        return Transcript(
            text="".join(texts).strip(),
            language=info.language,
            confidence=min(max(confidence, 0.0), 1.0),
            duration_s=duration,
        )

    def warmup(self) -> None:
        """Run one tiny transcription so the first real utterance pays no lazy set-up."""
        silence = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
        self.transcribe(silence, language=self.language or "en")
