"""A call's audio: µ-law at 8 kHz from the phone network to the STT worker's PCM16 at 16 kHz,
and a reply's PCM16 (24 kHz from XTTS) to µ-law at 8 kHz, each direction one soxr stream."""

from __future__ import annotations

import numpy as np
import soxr

from services.common import g711

PHONE_RATE = 8000
STT_RATE = 16000


class CallerAudio:
    """The caller's side: each `media` payload decoded and resampled, the stream kept across
    payloads so 20 ms chunks join without a seam."""

    def __init__(self) -> None:
        # Upsampling adds nothing above 4 kHz to filter; soxr's HQ filter would hold back 66 ms
        # of every utterance's end (and so delay end-of-turn), its quick cubic holds 0.25 ms.
        self._resampler = soxr.ResampleStream(PHONE_RATE, STT_RATE, 1, dtype="int16", quality="QQ")

    def pcm16k(self, mulaw: bytes) -> bytes:
        samples = np.frombuffer(g711.decode(mulaw, "ulaw"), "<i2")
        return self._resampler.resample_chunk(samples).astype("<i2").tobytes()


class ReplyAudio:
    """One reply's audio to the phone, resampled as one stream; `restart` after a clear (what
    follows is not the continuation of what was dropped)."""

    def __init__(self) -> None:
        self._resampler: soxr.ResampleStream | None = None
        self._rate = 0

    def mulaw(self, pcm: bytes, rate: int) -> bytes:
        if self._resampler is None or rate != self._rate:
            self._resampler, self._rate = soxr.ResampleStream(rate, PHONE_RATE, 1, dtype="int16"), rate
        return self._encode(self._resampler.resample_chunk(np.frombuffer(pcm, "<i2")))

    def flush(self) -> bytes:
        """What the resampler still holds, at the reply's end."""
        if self._resampler is None:
            return b""
        tail = self._resampler.resample_chunk(np.zeros(0, "<i2"), last=True)
        self._resampler = None
        return self._encode(tail)

    def restart(self) -> None:
        self._resampler = None

    @staticmethod
    def _encode(samples: np.ndarray) -> bytes:
        return g711.encode(samples.astype("<i2").tobytes(), "ulaw") if len(samples) else b""
