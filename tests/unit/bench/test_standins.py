"""The benchmark stand-ins' own contracts (bench/standins): cheap checks, no processes."""

from __future__ import annotations

from bench.standins import end_frame, parse_frame, speech_frame
from bench.standins.llm import reply_words
from bench.system import FIRST_PIECE_TOKENS
from services.llm.sentences import SentenceCutter


def test_marker_frames_round_trip_and_stay_pcm():
    noise = bytes(range(256)) * 4
    speech = speech_frame(640, noise)
    end = end_frame(640, 1234.5, "Question 1 [sentences=3]", noise)
    assert len(speech) == 640 and len(end) == 640
    assert parse_frame(speech) == ("S", 0.0, "")
    assert parse_frame(end) == ("E", 1234.5, "Question 1 [sentences=3]")
    assert parse_frame(b"\0" * 640) is None
    assert len(end_frame(20, 1.0, "a longer text than the frame holds")) % 2 == 0


def test_first_piece_is_cut_at_the_token_the_bench_assumes():
    """bench/system.py counts the first piece's tokens as the LLM stand-in's time."""
    cutter = SentenceCutter("en", first_clause_words=4)
    for n, token in enumerate(reply_words(3), start=1):
        if cutter.push(token):
            assert n == FIRST_PIECE_TOKENS
            return
    raise AssertionError("no piece was cut")
