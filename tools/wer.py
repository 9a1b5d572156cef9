"""Word error rate the way Whisper's authors score it: both texts through Whisper's English
normaliser (case, punctuation, spelled-out numbers, contractions), then jiwer's alignment.
Used by the tests that assert real words and by the STT benchmarks."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import jiwer
from whisper_normalizer.english import EnglishTextNormalizer


@lru_cache(maxsize=1)
def _normaliser() -> EnglishTextNormalizer:
    return EnglishTextNormalizer()


def normalise(text: str) -> str:
    return " ".join(_normaliser()(text).split())


def wer(reference: str, hypothesis: str) -> float:
    """Word errors (substitutions, deletions, insertions) per reference word, normalised."""
    return corpus_wer([(reference, hypothesis)])


def corpus_wer(pairs: Iterable[tuple[str, str]]) -> float:
    """Errors over all pairs divided by all reference words (not a mean of per-pair rates)."""
    refs, hyps = [], []
    for ref, hyp in pairs:
        refs.append(normalise(ref))
        hyps.append(normalise(hyp))
    if not any(refs):
        raise ValueError("no reference words")
    # jiwer refuses empty strings on either side; a lone marker keeps the count right.
    out = jiwer.process_words([r or "∅" for r in refs], [h or "∅" for h in hyps])
    return (out.substitutions + out.deletions + out.insertions) / sum(len(r.split()) for r in refs)


def recalled(reference: str, hypothesis: str) -> float:
    """The share of the reference's words that the hypothesis has, in order (insertions cost
    nothing): for audio that went through processing the reference never went through."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref:
        raise ValueError("no reference words")
    out = jiwer.process_words(ref, hyp or "∅")
    return out.hits / len(ref.split())
