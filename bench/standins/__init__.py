"""Model stand-ins for whole-system benchmarks (bench/system.py): no model, known latency.

Each runs as its own process and speaks the real protocol of the stage it replaces, so the
gateway, the orchestrator and the storage service run unchanged around them:

- `bench.standins.stt`: answers `parley.stt.open`, beats on `parley.stt.alive.<id>`, reads
  each session's mic audio from AUDIO_IN and publishes `speech.started`, `speech.stopped`,
  `transcript.final` and the `UserTurn` fact exactly as services/stt does. It finds the end
  of speech from a marker the bench client writes into its last speech frame (below), so it
  needs no VAD and no decoder; `--final-ms` delays the final transcript to stand for a model.
- `bench.standins.llm`: an OpenAI-compatible streaming endpoint; `--first-token-ms` and
  `--tokens-per-s` pace it, the user's text says how many sentences to answer with.
- `bench.standins.tts`: pulls the real `PARLEY_TTS` work queue and publishes live audio
  chunks, the end-of-sentence marker and the stored sentence (`PARLEY_SPEECH`) exactly as
  services/tts does; `--first-chunk-ms` and `--rtf` pace it.

Each stand-in that has a clock of its own to report (LLM: request in, first token out; TTS:
job in, first chunk out) appends one JSON line per item to its `--log`, so the bench can
subtract the stand-in's own time from the end-to-end figure; the STT stand-in's marks travel
in the `UserTurn` (`speech_end`, `eot`, `final`), as the real worker's do.

Mic frames: PCM16 as usual. A speech frame begins with `MAGIC` and `b"S"`, the last speech
frame with `MAGIC`, `b"E"`, the wall-clock time it was sent and the words "said"; silence is
zeros. The bytes are still valid PCM, so the gateway relays them like any other audio.
"""

from __future__ import annotations

import re
import struct

MAGIC = b"PARLEY-BENCH-MK"
"""15 bytes; then a kind byte: S (speech) or E (end of speech)."""
_END = struct.Struct("<dH")
ID_TAG = re.compile(r"\[id=([0-9a-f-]{36})\]")
SENTENCES_TAG = re.compile(r"\[sentences=(\d+)\]")


def speech_frame(size: int, noise: bytes) -> bytes:
    """A frame of `size` bytes that the STT stand-in takes as speech."""
    return (MAGIC + b"S" + noise)[:size]


def end_frame(size: int, sent_at: float, text: str, noise: bytes = b"") -> bytes:
    """The last frame of an utterance: when it was sent (epoch seconds) and what was said."""
    words = text.encode()
    head = MAGIC + b"E" + _END.pack(sent_at, len(words)) + words
    frame = (head + noise)[: max(size, len(head))]
    return frame + b"\0" * (len(frame) % 2)


def parse_frame(data: bytes) -> tuple[str, float, str] | None:
    """("S", 0, "") for speech, ("E", sent_at, text) for the end of speech, None for silence."""
    if not data.startswith(MAGIC) or len(data) <= len(MAGIC):
        return None
    kind = chr(data[len(MAGIC)])
    if kind == "E":
        sent_at, n = _END.unpack_from(data, len(MAGIC) + 1)
        start = len(MAGIC) + 1 + _END.size
        return "E", sent_at, data[start : start + n].decode()
    return kind, 0.0, ""
