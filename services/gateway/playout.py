"""Playout order of one reply's audio, independent of how it reached the gateway.

TTS workers may synthesise a reply's sentences in parallel, live chunks travel at most once,
and a redelivered job streams its sentence again from chunk 0. `Playout` turns whatever
arrives into what a listener should hear: sentences in order, each chunk once, a gap in the
live chunks filled from the sentence's stored whole audio, failed sentences skipped, and the
end of the message once every sentence is accounted for.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Frame:
    sentence_index: int
    chunk_seq: int
    sample_rate: int
    pcm: bytes


@dataclass
class _Sentence:
    next_chunk: int = 0
    sent_bytes: int = 0
    held: dict[int, tuple[bytes, bool, int]] = field(default_factory=dict)  # seq -> (pcm, last, rate)
    last_seq: int | None = None
    whole: tuple[bytes, int] | None = None
    failed: bool = False


@dataclass
class Playout:
    next_sentence: int = 0
    sentence_count: int | None = None
    ended: bool = False
    _sentences: dict[int, _Sentence] = field(default_factory=dict)

    def _sentence(self, index: int) -> _Sentence | None:
        if index < self.next_sentence:
            return None  # already played out
        return self._sentences.setdefault(index, _Sentence())

    def chunk(self, index: int, seq: int, pcm: bytes, last: bool, rate: int) -> list[Frame]:
        s = self._sentence(index)
        if s is not None and seq >= s.next_chunk:
            s.held[seq] = (pcm, last, rate)
        return self._advance()

    def whole(self, index: int, pcm: bytes, rate: int, ok: bool) -> list[Frame]:
        """The sentence as stored (or a marker that it failed): it is complete now."""
        s = self._sentence(index)
        if s is not None:
            if ok:
                s.whole = (pcm, rate)
            else:
                s.failed = True
        return self._advance()

    def failed(self, index: int) -> list[Frame]:
        return self.whole(index, b"", 0, ok=False)

    def count(self, sentence_count: int) -> list[Frame]:
        self.sentence_count = sentence_count
        return self._advance()

    @property
    def complete(self) -> bool:
        return self.sentence_count is not None and self.next_sentence >= self.sentence_count

    def _advance(self) -> list[Frame]:
        out: list[Frame] = []
        while (s := self._sentences.get(self.next_sentence)) is not None:
            idx = self.next_sentence
            while s.next_chunk in s.held:
                pcm, last, rate = s.held.pop(s.next_chunk)
                if pcm:
                    out.append(Frame(idx, s.next_chunk, rate, pcm))
                    s.sent_bytes += len(pcm)
                if last:
                    s.last_seq = s.next_chunk
                s.next_chunk += 1
            done = s.failed or s.last_seq is not None
            if not done and s.whole is not None:
                pcm, rate = s.whole
                if len(pcm) > s.sent_bytes:
                    out.append(Frame(idx, s.next_chunk, rate, pcm[s.sent_bytes :]))
                done = True
            if not done:
                break
            del self._sentences[idx]
            self.next_sentence += 1
        return out
