"""End of turn on a live audio stream: where each utterance starts, is cut into windows, and ends.

One ``Segmenter`` per live stream; the Silero model behind it is loaded once per process.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from .vad import WINDOW, SileroVad, VadConfig


@dataclass(frozen=True)
class SpeechStarted:
    """Speech has begun (confirmed after min_speech_ms of voice); start_s is its onset."""

    utterance_seq: int
    start_s: float


@dataclass(frozen=True, eq=False)
class UtteranceWindow:
    """A window of an utterance still going on, cut at a pause: its audio runs from where
    the previous window ended to ``end_s``; the next window (or the end) starts there."""

    utterance_seq: int
    window_index: int
    audio: np.ndarray
    end_s: float


@dataclass(frozen=True, eq=False)
class UtteranceEnded:
    """A finished utterance: start_s..end_s is the speech, seconds since the stream began;
    audio (float32, 16 kHz) spans it plus up to pad_ms on either side, or, when the
    utterance was read in ``windows`` earlier windows, the part after the last of them."""

    utterance_seq: int
    audio: np.ndarray
    start_s: float
    end_s: float
    windows: int = 0

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True, eq=False)
class PauseHeard:
    """Speech paused for ``pause_ms`` (smart turn taking): is the person done? ``audio`` is
    what the utterance would carry if it ended now, ``context`` the turn up to now (silence
    included), for the turn model. ``voiced_end`` names this pause for `end_at_pause`."""

    utterance_seq: int
    audio: np.ndarray
    context: np.ndarray
    voiced_end: int
    end_s: float


SegmenterEvent = SpeechStarted | UtteranceWindow | UtteranceEnded | PauseHeard

_IDLE, _CANDIDATE, _SPEECH = "idle", "candidate", "speech"


class Segmenter:
    """End-of-turn detection on one live stream of 16 kHz mono PCM16.

    Feed frames of any size; audio is scored in 512-sample windows. Speech starts when a
    window reaches ``threshold`` and is confirmed once ``min_speech_ms`` of windows stayed
    above ``threshold - 0.15`` before ``end_of_turn_ms`` of silence; it ends after
    ``end_of_turn_ms`` below that. With ``pause_ms`` set, a shorter silence is reported
    first (`PauseHeard`) and `end_at_pause` may end the utterance there: the turn policy's
    early end. Times count samples fed, so they are exact and independent of wall-clock
    jitter. Not thread-safe: one owner per stream.
    """

    def __init__(
        self,
        vad: SileroVad | None = None,
        config: VadConfig | None = None,
        first_utterance_seq: int = 0,
        start_sample: int = 0,
        pause_ms: int | None = None,
    ) -> None:
        """``first_utterance_seq`` and ``start_sample`` let a worker that takes a session
        over go on where the previous one stopped: the same utterance numbers, the same times."""
        self.config = config or VadConfig()
        self._vad = (vad or SileroVad.shared()).new_stream()
        self._next_seq = first_utterance_seq
        self._pending = np.zeros(0, dtype=np.float32)
        self._odd_byte = b""
        self._processed = start_sample
        self._windows: deque[np.ndarray] = deque()
        self._probs: deque[float] = deque()
        self._buf_start = start_sample
        self._pad = self.config.samples(self.config.pad_ms)
        self._eot = self.config.samples(self.config.end_of_turn_ms)
        # A blip that never became speech is dropped after the turn's silence, or 5 s when the
        # turn waits longer (push-to-talk): the audio kept for it stays bounded.
        self._candidate_eot = min(self._eot, self.config.samples(5000))
        self._pause = self.config.samples(pause_ms) if pause_ms and pause_ms < self.config.end_of_turn_ms else 0
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
    def next_utterance_seq(self) -> int:
        return self._next_seq

    @property
    def voiced_ms(self) -> float:
        """How long the utterance in progress has been voiced, its silences left out."""
        return self._voiced * 1000 / self.config.sample_rate if self._state == _SPEECH else 0.0

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
                events.append(SpeechStarted(self._next_seq, self._speech_start / cfg.sample_rate))
            elif self._silence >= self._candidate_eot:
                self._reset_turn()
        if self._state == _SPEECH:
            if self._silence >= self._eot:
                end = min(self._last_voiced_end + self._pad, self._processed)
                events.append(self._end_utterance(end))
                self._reset_turn()
            elif self._pause and self._pause <= self._silence < self._pause + WINDOW:
                events.append(self._paused())
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

    def end_at_pause(self, voiced_end: int) -> list[SegmenterEvent]:
        """End the utterance at the pause `voiced_end` names, unless speech came back since."""
        if self._state != _SPEECH or self._last_voiced_end != voiced_end or self._silence < self._pause:
            return []
        event = self._end_utterance(min(self._last_voiced_end + self._pad, self._processed))
        self._reset_turn()
        self._trim(self._processed - self._pad)
        return [event]

    def _paused(self) -> PauseHeard:
        start = self._audio_start()
        return PauseHeard(
            utterance_seq=self._next_seq,
            audio=self._slice(start, min(self._last_voiced_end + self._pad, self._processed)),
            context=self._slice(start, self._processed),
            voiced_end=self._last_voiced_end,
            end_s=self._last_voiced_end / self.config.sample_rate,
        )

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
            utterance_seq=self._next_seq,
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
            utterance_seq=self._next_seq,
            audio=audio,
            start_s=self._speech_start / sr,
            end_s=self._last_voiced_end / sr,
            windows=self._window_index,
        )
        self._next_seq += 1
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
