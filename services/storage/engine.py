"""Reply audio assembly: the sentences of one reply, in order, into one WAV."""

from __future__ import annotations

from services.common import audio
from services.common.speech import StoredSentence


class MixedRates(ValueError):
    pass


def assemble(sentences: list[StoredSentence]) -> tuple[bytes, float, int]:
    """Concatenate the sentences that were synthesised; failed ones contribute nothing.

    Returns (wav bytes, duration in seconds, sample rate).
    """
    spoken = [s for s in sorted(sentences, key=lambda s: s.index) if s.ok and s.pcm16]
    if not spoken:
        return b"", 0.0, 0
    rates = {s.sample_rate for s in spoken}
    if len(rates) != 1:
        raise MixedRates(f"sentences at several sample rates: {sorted(rates)}")
    rate = rates.pop()
    pcm = b"".join(s.pcm16 for s in spoken)
    return audio.wav_bytes(pcm, rate), audio.duration_s(len(pcm), rate), rate
