"""G.711 µ-law and A-law (ITU-T G.711), vectorised: the telephone codecs of Twilio Media Streams
and of the Realtime API's `audio/pcmu` and `audio/pcma`.

Python's `audioop` is gone from 3.13; this is the standard's segment arithmetic, computed
once into tables (65536 entries to encode, 256 to decode) and applied with numpy indexing.
tests/unit/common/test_g711.py holds it to reference vectors and to `audioop` sample by sample.
"""

from __future__ import annotations

import numpy as np

_BIAS = 0x84
_ULAW_SEGMENT_ENDS = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)


def _ulaw_encode_one(sample: int) -> int:
    """The reference encoder's arithmetic (Sun's g711.c, as audioop had it): 14-bit magnitude,
    biased, its segment and four mantissa bits, all bits inverted."""
    value, mask = sample >> 2, 0xFF
    if value < 0:
        value, mask = -value, 0x7F
    value = min(value, 8159) + 33
    segment = next((n for n, end in enumerate(_ULAW_SEGMENT_ENDS) if value <= end), 8)
    if segment >= 8:
        return 0x7F ^ mask
    return ((segment << 4) | ((value >> (segment + 1)) & 0x0F)) ^ mask


def _ulaw_decode_one(code: int) -> int:
    code = ~code & 0xFF
    exponent, mantissa = (code >> 4) & 0x07, code & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return -magnitude if code & 0x80 else magnitude


def _alaw_encode_one(sample: int) -> int:
    sign = 0x80 if sample >= 0 else 0
    magnitude = min(-sample - 1 if sample < 0 else sample, 32767) >> 3
    if magnitude < 32:
        code = magnitude >> 1
    else:
        exponent = magnitude.bit_length() - 5
        code = (exponent << 4) | ((magnitude >> exponent) & 0x0F)
    return (sign | code) ^ 0x55


def _alaw_decode_one(code: int) -> int:
    code ^= 0x55
    exponent, mantissa = (code >> 4) & 0x07, code & 0x0F
    magnitude = (mantissa << 4) + 8 if exponent == 0 else ((mantissa << 4) + 0x108) << (exponent - 1)
    return magnitude if code & 0x80 else -magnitude


_SAMPLES = range(-32768, 32768)
_ULAW_ENC = np.array([_ulaw_encode_one(s) for s in _SAMPLES], np.uint8)
_ALAW_ENC = np.array([_alaw_encode_one(s) for s in _SAMPLES], np.uint8)
_ULAW_DEC = np.array([_ulaw_decode_one(c) for c in range(256)], np.int16)
_ALAW_DEC = np.array([_alaw_decode_one(c) for c in range(256)], np.int16)


def encode(pcm16: bytes, law: str) -> bytes:
    """PCM16 little-endian mono to one G.711 byte per sample (`law`: "ulaw" or "alaw")."""
    table = _ULAW_ENC if law == "ulaw" else _ALAW_ENC
    samples = np.frombuffer(pcm16, "<i2").astype(np.int32) + 32768
    return table[samples].tobytes()


def decode(data: bytes, law: str) -> bytes:
    """G.711 bytes to PCM16 little-endian mono."""
    table = _ULAW_DEC if law == "ulaw" else _ALAW_DEC
    return table[np.frombuffer(data, np.uint8)].astype("<i2").tobytes()
