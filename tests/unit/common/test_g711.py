"""G.711 µ-law and A-law against the standard's reference points and, sample by sample over the
whole 16-bit range, against the reference encoder Python's `audioop` carried (still in 3.11)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from services.common import g711

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

EVERY_SAMPLE = np.arange(-32768, 32768, dtype="<i2").tobytes()
EVERY_CODE = bytes(range(256))


@pytest.mark.parametrize(
    ("law", "encode", "decode"),
    [("ulaw", audioop.lin2ulaw, audioop.ulaw2lin), ("alaw", audioop.lin2alaw, audioop.alaw2lin)],
)
def test_every_sample_and_every_code_as_the_reference_codes_them(law, encode, decode):
    assert g711.encode(EVERY_SAMPLE, law) == encode(EVERY_SAMPLE, 2)
    assert g711.decode(EVERY_CODE, law) == decode(EVERY_CODE, 2)


def test_the_standards_reference_points():
    points = np.array([0, -1, 32767, -32768], "<i2").tobytes()
    assert g711.encode(points, "ulaw") == bytes([0xFF, 0x7E, 0x80, 0x00])  # silence is 0xFF
    assert g711.encode(points, "alaw") == bytes([0xD5, 0x55, 0xAA, 0x2A])  # silence is 0xD5
    assert np.frombuffer(g711.decode(bytes([0x80, 0x00, 0xFF]), "ulaw"), "<i2").tolist() == [32124, -32124, 0]
    assert np.frombuffer(g711.decode(bytes([0xAA, 0x2A, 0xD5]), "alaw"), "<i2").tolist() == [32256, -32256, 8]


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_a_round_trip_keeps_a_tone_within_the_codecs_step(law):
    tone = (8000 * np.sin(np.arange(8000) * 2 * np.pi * 440 / 8000)).astype("<i2")
    back = np.frombuffer(g711.decode(g711.encode(tone.tobytes(), law), law), "<i2")
    assert np.max(np.abs(back.astype(int) - tone)) <= 256 and len(back) == len(tone)
