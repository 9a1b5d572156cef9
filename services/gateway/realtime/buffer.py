"""The input audio buffer: what `input_audio_buffer.append` brought, resampled for the STT worker."""

from __future__ import annotations

import base64
import binascii

import numpy as np
import soxr

from .config import IN_RATE, Refused

STT_RATE = 16000
MIN_COMMIT_SAMPLES = IN_RATE // 10


class InputBuffer:
    def __init__(self):
        self.speaking: str | None = None
        """The user item whose speech the VAD hears now."""
        self.buffered = 0
        """Samples (24 kHz) appended since the last commit or clear."""
        self._resampler = soxr.ResampleStream(IN_RATE, STT_RATE, 1, dtype="int16")

    def append(self, audio: str, max_frame_bytes: int) -> list[bytes]:
        """Base64 PCM16 at 24 kHz in; PCM16 at 16 kHz out, in frames of at most `max_frame_bytes`."""
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise Refused("invalid_value", "audio must be base64-encoded PCM16", "audio") from None
        if len(pcm) % 2:
            raise Refused("invalid_value", "audio must be PCM16: an even number of bytes", "audio")
        if not pcm:
            return []
        samples = np.frombuffer(pcm, "<i2")
        self.buffered += len(samples)
        data = self._resampler.resample_chunk(samples).astype("<i2").tobytes()
        step = max_frame_bytes - max_frame_bytes % 2
        return [data[offset : offset + step] for offset in range(0, len(data), step)]

    def committed(self, item_id: str) -> None:
        """The VAD closed the utterance `item_id`: the buffer starts afresh."""
        if self.speaking == item_id:
            self.speaking = None
        self.buffered = 0

    def refuse_commit(self) -> None:
        """A commit with no speech in the buffer: say why there is nothing to commit."""
        buffered, self.buffered = self.buffered, 0
        if buffered < MIN_COMMIT_SAMPLES:
            message = f"buffer too small: at least 100 ms of audio is needed, the buffer holds {buffered / 24:.0f} ms"
        else:
            message = "no speech was detected in the buffer, so there is nothing to commit"
        raise Refused("input_audio_buffer_commit_empty", message)

    def clear(self) -> None:
        self.speaking = None
        self.buffered = 0
        self._resampler = soxr.ResampleStream(IN_RATE, STT_RATE, 1, dtype="int16")
