"""Reference voices as uploaded: checked, then normalised to what XTTS clones a voice from.

Every upload becomes mono PCM16 WAV at 22050 Hz (XTTS's reference rate), at most `max_s`
long, so what storage keeps, what a TTS worker fetches and what fits in one NATS message
are the same small file whatever the caller sent.
"""

from __future__ import annotations

import numpy as np
import soxr

from services.common.audio import AudioError, float_to_pcm16, read_audio, wav_bytes

REFERENCE_RATE = 22050
MIN_SOURCE_RATE = 8000
SILENT_PEAK = 1e-3
"""About -60 dBFS: a recording whose loudest sample is quieter than this holds no voice."""


class VoiceRejected(Exception):
    """The upload cannot be a reference voice; `status` is the HTTP status that says why."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def normalise_voice(data: bytes, *, max_bytes: int, min_s: float, max_s: float) -> tuple[bytes, float]:
    """The upload as a mono PCM16 WAV at 22050 Hz holding its first `max_s` seconds, and
    that WAV's duration. Raises `VoiceRejected` for a file too large (413), not decodable
    (415), or too short, too coarse or silent to clone a voice from (422)."""
    if len(data) > max_bytes:
        raise VoiceRejected(413, f"the voice file is over {max_bytes} bytes; send a shorter or compressed recording")
    if not data:
        raise VoiceRejected(422, "the voice file is empty")
    try:
        audio, rate = read_audio(data, max_s=max_s)
    except AudioError:
        raise VoiceRejected(
            415, "the voice file is not audio that can be decoded; send WAV, FLAC, OGG or MP3"
        ) from None
    if rate < MIN_SOURCE_RATE:
        raise VoiceRejected(422, f"the voice is sampled at {rate} Hz; at least {MIN_SOURCE_RATE} Hz is needed")
    seconds = len(audio) / rate
    if seconds < min_s:
        raise VoiceRejected(
            422, f"the voice recording is {seconds:.1f} s long; at least {min_s:g} s of speech is needed to clone it"
        )
    audio = np.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0)
    if float(np.abs(audio).max()) < SILENT_PEAK:
        raise VoiceRejected(422, "the voice recording is silent")
    if rate != REFERENCE_RATE:
        audio = soxr.resample(audio, rate, REFERENCE_RATE, quality="HQ")
    pcm = float_to_pcm16(audio)
    return wav_bytes(pcm, REFERENCE_RATE), len(pcm) / 2 / REFERENCE_RATE
