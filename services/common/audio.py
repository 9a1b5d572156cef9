"""PCM16 helpers shared by the services: validation, conversion, WAV assembly."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

OUTPUT_RATE = 24000


class AudioError(ValueError):
    """Audio the pipeline cannot take (odd byte count, undecodable file...)."""


def pcm16_to_array(data: bytes) -> np.ndarray:
    if len(data) % 2:
        raise AudioError(f"PCM16 frame has an odd byte count ({len(data)})")
    return np.frombuffer(data, dtype="<i2")


def float_to_pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def wav_bytes(pcm16: bytes, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, pcm16_to_array(pcm16), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def duration_s(pcm16_len: int, sample_rate: int) -> float:
    return pcm16_len / 2 / sample_rate


def read_audio(data: bytes, max_s: float | None = None) -> tuple[np.ndarray, int]:
    """Decode any file soundfile reads into mono float32 and its rate. With `max_s` only the
    first `max_s` seconds are decoded, so a long compressed file cannot take much memory."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate = f.samplerate
            frames = -1 if max_s is None else int(rate * max_s)
            audio = f.read(frames, dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(f"undecodable audio: {exc}") from exc
    return audio.mean(axis=1), rate
