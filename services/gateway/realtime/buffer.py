"""The input audio buffer: what `input_audio_buffer.append` brought, decoded and resampled for
the STT worker (PCM16 at 24 kHz, or G.711 µ-law / A-law at 8 kHz as phone bridges send it)."""

from __future__ import annotations

import base64
import binascii

import numpy as np
import soxr

from services.common import g711

from .config import FORMATS, Refused

STT_RATE = 16000
LAWS = {"audio/pcmu": "ulaw", "audio/pcma": "alaw"}


def _resampler(rate: int) -> soxr.ResampleStream:
    """8 kHz up to 16 kHz has nothing to filter: the quick cubic holds back 0.25 ms of audio
    where soxr's HQ filter holds 66 ms (end-of-turn waits for it)."""
    return soxr.ResampleStream(rate, STT_RATE, 1, dtype="int16", quality="QQ" if rate < STT_RATE else "HQ")


class InputBuffer:
    def __init__(self, fmt: str = "audio/pcm"):
        self.speaking: str | None = None
        """The user item whose speech the VAD hears now."""
        self.buffered = 0
        """Samples (at the format's rate) appended since the last commit or clear."""
        self.format = fmt
        self.rate = FORMATS[fmt]
        self._resampler = _resampler(self.rate)

    def append(self, audio: str, max_frame_bytes: int) -> list[bytes]:
        """Base64 audio in the session's format in; PCM16 at 16 kHz out, in frames of at most
        `max_frame_bytes`."""
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise Refused("invalid_value", f"audio must be base64-encoded {self._what()}", "audio") from None
        law = LAWS.get(self.format)
        if law is None and len(data) % 2:
            raise Refused("invalid_value", "audio must be PCM16: an even number of bytes", "audio")
        if not data:
            return []
        pcm = g711.decode(data, law) if law else data
        samples = np.frombuffer(pcm, "<i2")
        self.buffered += len(samples)
        out = self._resampler.resample_chunk(samples).astype("<i2").tobytes()
        step = max_frame_bytes - max_frame_bytes % 2
        return [out[offset : offset + step] for offset in range(0, len(out), step)]

    def committed(self, item_id: str) -> None:
        """The VAD closed the utterance `item_id`: the buffer starts afresh."""
        if self.speaking == item_id:
            self.speaking = None
        self.buffered = 0

    def refuse_commit(self) -> None:
        """A commit with no speech in the buffer: say why there is nothing to commit."""
        buffered, self.buffered = self.buffered, 0
        if buffered < self.rate // 10:
            held = buffered / (self.rate / 1000)
            message = f"buffer too small: at least 100 ms of audio is needed, the buffer holds {held:.0f} ms"
        else:
            message = "no speech was detected in the buffer, so there is nothing to commit"
        raise Refused("input_audio_buffer_commit_empty", message)

    def clear(self) -> None:
        self.speaking = None
        self.buffered = 0
        self._resampler = _resampler(self.rate)

    def _what(self) -> str:
        return {"audio/pcmu": "G.711 µ-law", "audio/pcma": "G.711 A-law"}.get(self.format, "PCM16")
