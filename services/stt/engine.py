"""Speech-to-text engine: streaming voice activity detection, end of turn, Whisper.

Everything here is synchronous and CPU/GPU-bound; the async service runs it through
``asyncio.to_thread``. One ``Segmenter`` per live audio stream decides where utterances
start and end; the Silero VAD model behind it and the ``WhisperEngine`` are loaded once
per process and shared by every stream.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import deque
from concurrent.futures import Future
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


@dataclass(frozen=True)
class SpeechStarted:
    """Speech has begun (confirmed after min_speech_ms of voice); start_s is its onset."""

    utterance_index: int
    start_s: float


@dataclass(frozen=True, eq=False)
class UtteranceWindow:
    """A window of an utterance still going on, cut at a pause: its audio runs from where
    the previous window ended to ``end_s``; the next window (or the end) starts there."""

    utterance_index: int
    window_index: int
    audio: np.ndarray
    end_s: float


@dataclass(frozen=True, eq=False)
class UtteranceEnded:
    """A finished utterance: start_s..end_s is the speech, seconds since the stream began;
    audio (float32, 16 kHz) spans it plus up to pad_ms on either side, or, when the
    utterance was read in ``windows`` earlier windows, the part after the last of them."""

    utterance_index: int
    audio: np.ndarray
    start_s: float
    end_s: float
    windows: int = 0

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


SegmenterEvent = SpeechStarted | UtteranceWindow | UtteranceEnded

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
        start_sample: int = 0,
    ) -> None:
        """``first_utterance_index`` and ``start_sample`` let a worker that takes a session
        over go on where the previous one stopped: the same utterance numbers, the same times."""
        self.config = config or VadConfig()
        self._vad = (vad or SileroVad.shared()).new_stream()
        self._next_index = first_utterance_index
        self._pending = np.zeros(0, dtype=np.float32)
        self._odd_byte = b""
        self._processed = start_sample
        self._windows: deque[np.ndarray] = deque()
        self._probs: deque[float] = deque()
        self._buf_start = start_sample
        self._pad = self.config.samples(self.config.pad_ms)
        self._eot = self.config.samples(self.config.end_of_turn_ms)
        self._min_speech = self.config.samples(self.config.min_speech_ms)
        self._max_utt = self.config.samples(self.config.max_utterance_ms)
        self._max_window = self.config.samples(self.config.window_ms)
        self._seam_search = self.config.samples(self.config.seam_search_ms) // WINDOW
        self._reset_turn()

    def _reset_turn(self) -> None:
        self._state = _IDLE
        self._speech_start = 0
        self._last_voiced_end = 0
        self._voiced = 0
        self._silence = 0
        self._cut_at = 0
        self._window_index = 0

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
                self._probs.append(0.0)
            end = min(self._last_voiced_end + self._pad, self._processed + len(tail))
            events.append(self._end_utterance(end))
        self._processed += len(self._pending)
        self._pending = np.zeros(0, dtype=np.float32)
        self._odd_byte = b""
        self._windows.clear()
        self._probs.clear()
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
        self._probs.append(prob)

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
            elif self._processed - self._speech_start >= self._max_utt:
                self._last_voiced_end = self._processed
                events.append(self._end_utterance(self._processed))
                self._reset_turn()
                self._trim(self._processed)
            elif self._processed - self._audio_start() >= self._max_window:
                # Never past the end this utterance would get if the silence goes on to end
                # the turn, so a window holds no audio that the utterance read whole would not.
                events.append(self._cut_window(min(self._seam(), self._last_voiced_end + self._pad)))

        if self._state == _IDLE:
            self._trim(self._processed - self._pad)
        elif self._state == _CANDIDATE:
            self._trim(self._speech_start - self._pad)

    def _audio_start(self) -> int:
        """Where the current utterance's audio (or its current window) begins: pad_ms before
        the speech, unless the stream or the last window cut began later."""
        return max(self._speech_start - self._pad, self._buf_start, self._cut_at, 0)

    def _seam(self) -> int:
        """Where to cut the running window: the middle of the longest run of non-speech
        windows among the last ``seam_search_ms`` (the latest such run on a tie), else the
        end of the least speech-like window. Cutting inside a pause keeps every word whole
        in exactly one window."""
        n = min(self._seam_search, len(self._probs) - 1)
        first = len(self._probs) - n
        probs = list(self._probs)[first:]
        best_len, best_mid, run = 0, -1, 0
        for i, prob in enumerate(probs):
            run = run + 1 if prob < self.config.neg_threshold else 0
            if run and run >= best_len:
                best_len, best_mid = run, i - run // 2
        if best_mid < 0:
            best_mid = int(np.argmin(probs))
            return self._buf_start + (first + best_mid + 1) * WINDOW
        return self._buf_start + (first + best_mid) * WINDOW

    def _cut_window(self, cut: int) -> UtteranceWindow:
        event = UtteranceWindow(
            utterance_index=self._next_index,
            window_index=self._window_index,
            audio=self._slice(self._audio_start(), cut),
            end_s=cut / self.config.sample_rate,
        )
        self._window_index += 1
        self._cut_at = cut
        self._trim(cut)
        return event

    def _end_utterance(self, audio_end: int) -> UtteranceEnded:
        sr = self.config.sample_rate
        audio = self._slice(self._audio_start(), audio_end)
        event = UtteranceEnded(
            utterance_index=self._next_index,
            audio=audio,
            start_s=self._speech_start / sr,
            end_s=self._last_voiced_end / sr,
            windows=self._window_index,
        )
        self._next_index += 1
        return event

    def _trim(self, keep_from: int) -> None:
        """Drop buffered windows that end before keep_from (outside any future padding)."""
        while self._windows and self._buf_start + len(self._windows[0]) <= keep_from:
            self._buf_start += len(self._windows.popleft())
            self._probs.popleft()

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


def join_transcripts(parts: list[Transcript]) -> Transcript:
    """One utterance read in several windows: texts in order, confidence weighted by length."""
    spoken = [p for p in parts if p.text]
    total = sum(p.duration_s for p in parts)
    weight = sum(p.duration_s for p in spoken)
    return Transcript(
        text=" ".join(p.text for p in spoken),
        language=spoken[0].language if spoken else (parts[0].language if parts else ""),
        confidence=sum(p.confidence * p.duration_s for p in spoken) / weight if weight else 0.0,
        duration_s=total,
    )


def natural_token_limit(seconds: float) -> int:
    """The most tokens a real model may write for this much audio: over twice what the fastest
    speech needs (about 5 tokens a second), so a model caught repeating itself on noise stops
    there instead of at Whisper's 448, holding up every session's decodes behind it."""
    return 16 + math.ceil(12 * seconds)


def is_local_model(model: str | os.PathLike) -> bool:
    """A folder, not a hub name: what exists, or reads as a path (absolute, ./, ../, ~)."""
    text = os.fspath(model)
    return os.path.exists(text) or text.startswith(("/", "./", "../", "~"))


def check_model_folder(path: str | os.PathLike) -> Path:
    """A CTranslate2 Whisper conversion that faster-whisper can load with no hub, or a
    ValueError saying what is wrong (a missing folder or file, another kind of model)."""
    folder = Path(os.path.expanduser(os.fspath(path)))
    if not folder.is_dir():
        raise ValueError(f"Whisper model folder {folder} does not exist")
    missing = [n for n in ("model.bin", "config.json", "tokenizer.json") if not (folder / n).is_file()]
    if missing:
        raise ValueError(f"{folder} is not a faster-whisper model folder: no {', '.join(missing)}")
    try:
        config = json.loads((folder / "config.json").read_text())
    except ValueError as exc:
        raise ValueError(f"{folder}/config.json is not JSON: {exc}") from None
    if not isinstance(config, dict) or not {"lang_ids", "suppress_ids"} <= config.keys():
        raise ValueError(f"{folder} holds a CTranslate2 model that is not Whisper (config.json has no lang_ids)")
    return folder


@dataclass(frozen=True)
class DecodeRequest:
    """One piece of audio to transcribe: at most 30 s of float32 mono 16 kHz."""

    audio: np.ndarray
    language: str | None = None
    """None: detect it."""
    prompt: str | None = None
    """Words to bias towards (an avatar's names and terms), given to Whisper as hotwords."""
    prefix: str | None = None
    """Words the transcript must begin with: the ones partials already showed as stable."""


class WhisperEngine:
    """faster-whisper's model with pinned, fast decoding, many utterances per model call.

    Greedy, single temperature, no timestamps, no conditioning on earlier text (each piece
    stands alone, and a bad guess cannot snowball). ``transcribe_batch`` runs the encoder
    and the decoder once for a whole batch through CTranslate2's batch API, each item with
    its own language (requests with hotword prompts of different lengths take one call per
    length): the worker's ``DecodeBatcher`` gathers the pending utterances of all its
    sessions into such batches.
    """

    max_audio_s = 30.0

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

        if is_local_model(model):
            model = check_model_folder(model)
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
        self._tokenizers: dict[str, object] = {}
        self.model_calls = 0
        """Batched model calls made so far (tests count them)."""

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    def transcribe(self, audio: np.ndarray, language: str | None = None, prompt: str | None = None) -> Transcript:
        """Transcribe one utterance (float32 mono 16 kHz); language None means detect it.

        Audio over 30 s is read in 30 s pieces (the worker's segmenter cuts long speech at
        pauses before it gets here, so this is a last resort that may split a word)."""
        audio = np.ascontiguousarray(np.asarray(audio, dtype=np.float32).reshape(-1))
        step = int(self.max_audio_s * SAMPLE_RATE)
        pieces = [audio[i : i + step] for i in range(0, len(audio), step)] or [audio]
        results = self.transcribe_batch([DecodeRequest(p, language, prompt) for p in pieces])
        if len(results) == 1:
            return results[0]
        return join_transcripts(results)

    def transcribe_batch(self, requests: list[DecodeRequest]) -> list[Transcript]:
        """Transcribe several pieces of audio (each at most 30 s) in one model call."""
        out: list[Transcript | None] = [None] * len(requests)
        todo: list[int] = []
        for i, req in enumerate(requests):
            n = len(req.audio)
            if n > self.max_audio_s * SAMPLE_RATE + WINDOW:
                raise ValueError(f"a decode request holds {n / SAMPLE_RATE:.1f} s of audio; the most is 30 s")
            if n == 0:
                out[i] = Transcript("", req.language or self.language or "", 0.0, 0.0)
            else:
                todo.append(i)
        # CTranslate2 needs <|startoftranscript|> at one position across a batch, so requests
        # whose hotword prompts differ in length go in separate calls (no prompt: one group);
        # prefixes come after it and may differ in length within a call.
        groups: dict[int, list[int]] = {}
        for i in todo:
            groups.setdefault(self._prefix_length(requests[i].prompt), []).append(i)
        for members in groups.values():
            for i, result in zip(members, self._decode([requests[i] for i in members])):
                out[i] = result
        return [t for t in out if t is not None]

    def _prefix_length(self, prompt: str | None) -> int:
        """Tokens in front of <|startoftranscript|>: the hotwords and their marker."""
        return len(self._hotword_tokens(self._tokenizer("en"), prompt))

    def _hotword_tokens(self, tok, prompt: str | None) -> list[int]:
        """Hotwords as the "previous text" Whisper is conditioned on, which is what
        faster-whisper's `hotwords` is; written out here because faster-whisper drops its
        hotwords whenever a prefix is given, and a request may have both."""
        if not prompt:
            return []
        tokens = tok.encode(" " + prompt.strip())[: self.model.max_length // 2 - 1]
        return [tok.sot_prev, *tokens]

    def _prompt(self, tok, req: DecodeRequest) -> list[int]:
        prompt = [*self._hotword_tokens(tok, req.prompt), *tok.sot_sequence, tok.no_timestamps]
        if req.prefix:
            prompt += tok.encode(" " + req.prefix.strip())[: self.model.max_length // 2 - 1]
        return prompt

    def _decode(self, requests: list[DecodeRequest]) -> list[Transcript]:
        """One encoder and one decoder call for requests whose prompts have one length."""
        from faster_whisper.audio import pad_or_trim

        wm = self.model
        features = np.stack(
            [pad_or_trim(wm.feature_extractor(np.asarray(r.audio, dtype=np.float32))[..., :-1]) for r in requests]
        )
        encoder_output = wm.encode(features)
        languages = [r.language or self.language for r in requests]
        if any(lang is None for lang in languages):
            if wm.model.is_multilingual:
                detected = wm.model.detect_language(encoder_output)
                languages = [lang or det[0][0][2:-2] for lang, det in zip(languages, detected)]
            else:
                languages = [lang or "en" for lang in languages]
        prompts = []
        tokenizers = []
        for req, lang in zip(requests, languages):
            tok = self._tokenizer(lang)
            tokenizers.append(tok)
            prompts.append(self._prompt(tok, req))
        longest = max(len(p) for p in prompts)
        budget = max(natural_token_limit(len(r.audio) / SAMPLE_RATE) for r in requests)
        if self.max_new_tokens is not None:
            budget = min(budget, self.max_new_tokens)
        max_length = min(wm.max_length, longest + budget)
        results = wm.model.generate(
            encoder_output,
            prompts,
            beam_size=self.beam_size,
            max_length=max_length,
            suppress_blank=True,
            suppress_tokens=[-1],
            return_scores=True,
        )
        self.model_calls += 1
        transcripts = []
        for req, lang, tok, result in zip(requests, languages, tokenizers, results):
            tokens = result.sequences_ids[0]
            seq_len = len(tokens)
            avg_logprob = result.scores[0] * seq_len / (seq_len + 1)
            transcripts.append(
                Transcript(
                    text=tok.decode(tokens).strip(),
                    language=lang,
                    confidence=min(max(math.exp(avg_logprob), 0.0), 1.0),
                    duration_s=len(req.audio) / SAMPLE_RATE,
                )
            )
        return transcripts

    def _tokenizer(self, language: str):
        from faster_whisper.tokenizer import Tokenizer

        if language not in self._tokenizers:
            wm = self.model
            self._tokenizers[language] = Tokenizer(
                wm.hf_tokenizer, wm.model.is_multilingual, task="transcribe", language=language
            )
        return self._tokenizers[language]

    def warmup(self) -> None:
        """Run one tiny transcription so the first real utterance pays no lazy set-up."""
        silence = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
        self.transcribe(silence, language=self.language or "en")


class Superseded(Exception):
    """A partial decode replaced by a newer one of the same session before it ran."""


class DecodeBatcher:
    """Every decode of a worker goes through one thread that batches what is pending.

    Requests of all sessions wait in two queues, finals and partials; each model call takes
    up to ``max_batch`` of them, finals first (a person is waiting on those), then the
    oldest partials. Nothing waits for a batch to fill: whatever arrived while the previous
    call ran forms the next one, so one session alone is decoded at once and many sessions
    share calls. A session has at most one partial pending; a newer one replaces it.
    ``on_batch(size, audio_seconds, seconds)`` reports each call (metrics).
    """

    def __init__(self, engine: WhisperEngine, max_batch: int = 16, on_batch=None) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.on_batch = on_batch
        self._cv = threading.Condition()
        self._finals: deque[tuple[DecodeRequest, Future]] = deque()
        self._partials: dict[object, tuple[DecodeRequest, Future]] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="stt-decode", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        with self._cv:
            return len(self._finals) + len(self._partials)

    def submit(self, request: DecodeRequest) -> Future:
        """Queue a final decode (of an utterance or a window of one)."""
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the decoder is closed")
            self._finals.append((request, fut))
            self._cv.notify()
        return fut

    def submit_partial(self, key: object, request: DecodeRequest) -> Future:
        """Queue a partial decode for ``key`` (a session), replacing one still pending."""
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the decoder is closed")
            old = self._partials.pop(key, None)
            if old is not None:
                old[1].set_exception(Superseded())
            self._partials[key] = (request, fut)
            self._cv.notify()
        return fut

    def drop_partial(self, key: object) -> None:
        """Forget ``key``'s pending partial: its utterance or window has ended, and the final
        decode supersedes it (nor should it share the final's batch)."""
        with self._cv:
            old = self._partials.pop(key, None)
        if old is not None:
            old[1].set_exception(Superseded())

    def close(self) -> None:
        """Decode what is queued, then stop the thread."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join()

    def _take(self) -> list[tuple[DecodeRequest, Future]] | None:
        with self._cv:
            while not self._finals and not self._partials:
                if self._closed:
                    return None
                self._cv.wait()
            batch = []
            while self._finals and len(batch) < self.max_batch:
                batch.append(self._finals.popleft())
            while self._partials and len(batch) < self.max_batch:
                key = next(iter(self._partials))
                batch.append(self._partials.pop(key))
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            live = [(req, fut) for req, fut in batch if fut.set_running_or_notify_cancel()]
            if not live:
                continue
            start = time.perf_counter()
            try:
                results = self.engine.transcribe_batch([req for req, _ in live])
            except BaseException as exc:
                for _, fut in live:
                    fut.set_exception(exc)
                continue
            if self.on_batch is not None:
                audio_s = sum(len(req.audio) for req, _ in live) / SAMPLE_RATE
                self.on_batch(len(live), audio_s, time.perf_counter() - start)
            for (_, fut), result in zip(live, results):
                fut.set_result(result)
