"""Playout order of a reply's audio whatever the order, loss or repetition on the way."""

from __future__ import annotations

from services.gateway.playout import Playout


def heard(frames) -> list[tuple[int, int, bytes]]:
    return [(f.sentence_index, f.chunk_seq, f.pcm) for f in frames]


def test_sentences_play_in_order_even_when_synthesised_out_of_order():
    p = Playout()
    assert p.chunk(1, 0, b"B0", False, 24000) == []  # sentence 1 waits for sentence 0
    out = p.chunk(0, 0, b"A0", False, 24000)
    out += p.chunk(0, 1, b"", True, 24000)
    out += p.chunk(1, 1, b"", True, 24000)
    assert heard(out) == [(0, 0, b"A0"), (1, 0, b"B0")]
    assert not p.complete
    p.count(2)
    assert p.complete


def test_repeated_chunks_from_a_redelivered_job_are_heard_once():
    p = Playout()
    out = p.chunk(0, 0, b"A0", False, 24000) + p.chunk(0, 1, b"A1", False, 24000)
    out += p.chunk(0, 0, b"A0", False, 24000)  # another worker starts the sentence again
    out += p.chunk(0, 1, b"A1", False, 24000) + p.chunk(0, 2, b"", True, 24000)
    assert heard(out) == [(0, 0, b"A0"), (0, 1, b"A1")]


def test_a_lost_live_chunk_is_filled_from_the_stored_sentence():
    p = Playout()
    out = p.chunk(0, 0, b"aa", False, 24000)
    out += p.chunk(0, 2, b"cc", False, 24000)  # chunk 1 was lost
    assert heard(out) == [(0, 0, b"aa")]
    out = p.whole(0, b"aabbcc", 24000, ok=True)
    assert heard(out) == [(0, 1, b"bbcc")]
    assert heard(p.chunk(0, 3, b"", True, 24000)) == []  # late end marker: nothing more
    p.count(1)
    assert p.complete


def test_a_failed_sentence_is_skipped_and_the_reply_goes_on():
    p = Playout()
    assert p.chunk(1, 0, b"B0", False, 24000) == []
    out = p.failed(0) + p.chunk(1, 1, b"", True, 24000) + p.count(2)
    assert heard(out) == [(1, 0, b"B0")]
    assert p.complete


def test_a_reply_without_sentences_is_complete_at_once():
    p = Playout()
    assert p.count(0) == [] and p.complete
