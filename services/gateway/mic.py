"""Mic audio in: each frame checked, held to real time, and published for the STT worker."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from services.common import bus as busmod
from services.common import metrics, subjects
from services.common.audio import AudioError, pcm16_to_array
from services.common.schemas import AudioMeta

from .config import GatewaySettings


class AudioBudget:
    """A token bucket of mic audio: real time times `rate`, after a burst allowance."""

    def __init__(self, burst_s: float, rate: float, sample_rate: int = 16000):
        self.capacity = burst_s * sample_rate
        self.refill = rate * sample_rate
        self._left = self.capacity
        self._at = time.monotonic()

    def take(self, samples: int) -> bool:
        now = time.monotonic()
        self._left = min(self.capacity, self._left + (now - self._at) * self.refill)
        self._at = now
        if samples > self._left:
            return False
        self._left -= samples
        return True


class MicInput:
    def __init__(
        self,
        bus: busmod.Bus,
        settings: GatewaySettings,
        conversation_id: str,
        session_id: str,
        on_error: Callable[..., None],
    ):
        self.bus = bus
        self.settings = settings
        self.conv = conversation_id
        self.session_id = session_id
        self._error = on_error
        self.seq = 0
        self.samples = 0
        """Samples published so far: each frame's offset in the session."""
        self._budget = AudioBudget(settings.audio_burst_s, settings.max_audio_rate)
        self._rate_error_at = 0.0
        self._held: deque[tuple[bytes, AudioMeta]] = deque()
        """Frames that came while the bus was down, oldest first."""
        self._held_samples = 0
        self._unheard_error_at = 0.0

    async def publish(self, frame: bytes) -> None:
        """Mic audio (PCM16, 16 kHz) onto the bus, within the frame-size and rate limits."""
        s = self.settings
        if len(frame) > s.max_audio_frame_bytes:
            self._error("frame_too_large", f"audio frames are limited to {s.max_audio_frame_bytes} bytes")
            return
        try:
            pcm16_to_array(frame)
        except AudioError as exc:
            self._error("bad_audio_frame", str(exc))
            return
        if not self._budget.take(len(frame) // 2):
            metrics.EVENTS.labels("gateway", "audio_dropped_too_fast").inc()
            now = time.monotonic()
            if now - self._rate_error_at >= 1.0:
                self._rate_error_at = now
                message = f"mic audio arrives faster than {s.max_audio_rate:g}x real time; frames are dropped"
                self._error("audio_too_fast", message)
            return
        meta = AudioMeta(
            conversation_id=self.conv,
            session_id=self.session_id,
            chunk_seq=self.seq,
            offset=self.samples,
        )
        self.seq += 1
        self.samples += len(frame) // 2
        if not self.bus.nc.is_connected:
            self._hold(frame, meta)
            return
        while self._held:
            held, held_meta = self._held.popleft()
            await self.bus.nc.publish(subjects.audio_in(self.conv), held, headers=held_meta.headers())
        self._held_samples = 0
        await self.bus.nc.publish(subjects.audio_in(self.conv), frame, headers=meta.headers())

    def _hold(self, frame: bytes, meta: AudioMeta) -> None:
        """Keep a frame for when the bus is back, or drop it once the hold is full. Offsets
        go on counting, so the STT worker hears a dropped stretch as the gap it was (and an
        utterance cut by it ends there)."""
        samples = len(frame) // 2
        if self._held_samples + samples <= self.settings.mic_outage_hold_s * 16000:
            self._held.append((frame, meta))
            self._held_samples += samples
            return
        metrics.EVENTS.labels("gateway", "audio_dropped_bus_down").inc()
        now = time.monotonic()
        if now - self._unheard_error_at >= 5.0:
            self._unheard_error_at = now
            message = "the bus is down: mic audio is not reaching speech recognition and what is said now is not heard"
            self._error("audio_not_heard", message, retryable=True)
