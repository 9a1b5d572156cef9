"""Barge-in, labelled: which speech over a playing reply stops it, leaves it playing, resumes it.

    python -m bench.barge_in [--whisper tiny.en,base] [--min-ms 300,450,600,800,1000]
                             [--min-conf 0,0.3,0.4,0.5] [--min-words 1,2]

Three kinds of sound said over a reply: backchannels ("mhm", "yeah", "okay": the reply should
play on), interruptions ("wait", "hold on", "can you repeat that": it should stop), and
sounds with no words (espeak-ng's grunts, coughs and sighs; synthetic knocks and claps: it
should play on, or resume). espeak-ng only, 2 voices x 3 rates: no recording on the package
index holds backchannels or coughs.

Each streams in 20 ms frames through the STT worker's own `Segmenter` (Silero VAD), and its
utterance is read by real Whisper, as the worker reads one begun over a reply: voiced
`min_ms`, the reply pauses; the final is a backchannel (no turn, play on), unsure (confidence
under `min_conf`: no words, resume) or words (a turn: stop). With partials (a GPU worker
makes one every 500 ms of speech) a partial holding `min_words` words that are not
backchannels stops the reply at once: simulated by reading the audio so far at that cadence.

Per kind and setting: how often the reply plays on, is paused and resumed, or is stopped;
for interruptions, when the reply falls silent (from the speech's start, audio time plus
the decodes' own time); for resumed replies, how long they were silent. Prints a table,
writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.common import ROOT, pct, write_result

SR = 16000
FRAME = 320
PARTIAL_EVERY_MS = 500
VOICES = (("en-us", 140), ("en-us", 175), ("en-us", 210), ("en-gb", 140), ("en-gb", 175), ("en-gb", 210))

BACKCHANNELS = (
    "Mm-hmm.",
    "Mhm.",
    "Uh-huh.",
    "Yeah.",
    "Yep.",
    "Okay.",
    "Right.",
    "Sure.",
    "I see.",
    "Got it.",
    "Yeah, yeah.",
    "Oh.",
    "Alright.",
    "Exactly.",
    "Cool.",
    "Yes.",
)
INTERRUPTIONS = (
    "Wait.",
    "Stop.",
    "No, no, no.",
    "Hold on.",
    "Sorry, what?",
    "Wait a second.",
    "That's not right.",
    "Can you repeat that?",
    "Actually, I meant Tuesday.",
    "Excuse me.",
    "One moment, please.",
    "Stop talking.",
    "No, that's wrong.",
    "Hang on a minute.",
    "What did you say?",
    "Let me ask something.",
)
SOUNDS = ("Hmph.", "tsk tsk", "ahem", "achoo", "kuh kuh kuh", "uh", "hm hm hm", "er", "khh khh", "ehem")


@dataclass
class Heard:
    """One sound over a reply, as the worker heard it."""

    kind: str
    name: str
    start: int | None = None
    """Sample where the VAD's speech began; None: the VAD heard no speech (the reply plays on)."""
    voiced_at: dict[int, int] = field(default_factory=dict)
    """Per barge-in wait (ms): the sample where the speech had been voiced that long."""
    end: int = 0
    """Sample where the utterance ended (its final is read then)."""
    text: str = ""
    confidence: float = 0.0
    decode_s: float = 0.0
    partials: list[tuple[int, str, float]] = field(default_factory=list)
    """(sample when asked, text, seconds it took)."""


def _sounds(tmp: Path) -> list[tuple[str, str, np.ndarray]]:
    from tools.speech import espeak

    out = []
    for kind, texts in (("backchannel", BACKCHANNELS), ("interruption", INTERRUPTIONS), ("no words", SOUNDS)):
        for i, text in enumerate(texts):
            for voice, rate in VOICES:
                audio = espeak(text, tmp / f"{kind[:2]}{i}-{voice}-{rate}.wav", voice=voice, rate=rate)
                out.append((kind, f"{text} ({voice} {rate})", audio))
    rng = np.random.default_rng(7)
    for n in range(6):
        t = np.arange(int(0.4 * SR)) / SR
        burst = rng.standard_normal(len(t)) * np.exp(-t / (0.02 + 0.02 * n))
        out.append(("no words", f"knock {n}", (burst / np.abs(burst).max() * 20000).astype(np.int16)))
    return out


def _hear(engine, kind: str, name: str, audio: np.ndarray, waits: list[int]) -> Heard:
    from services.stt.segmenter import Segmenter, SpeechStarted, UtteranceEnded
    from services.stt.vad import VadConfig
    from services.stt.whisper import DecodeRequest

    heard = Heard(kind, name)
    padded = np.concatenate([np.zeros(SR // 2, np.int16), audio, np.zeros(SR, np.int16)])
    seg = Segmenter(config=VadConfig())
    next_partial = PARTIAL_EVERY_MS
    for at in range(0, len(padded), FRAME):
        for ev in seg.feed(padded[at : at + FRAME]):
            if isinstance(ev, SpeechStarted) and heard.start is None:
                heard.start = round(ev.start_s * SR)
            elif isinstance(ev, UtteranceEnded) and not heard.end:
                heard.end = at + FRAME
                t0 = time.perf_counter()
                (result,) = engine.transcribe_batch([DecodeRequest(ev.audio, "en")])
                heard.decode_s = time.perf_counter() - t0
                heard.text, heard.confidence = result.text, result.confidence
        if heard.start is None or heard.end:
            continue
        for wait in waits:
            if wait not in heard.voiced_at and seg.voiced_ms >= wait:
                heard.voiced_at[wait] = at + FRAME
        so_far = seg.active_audio()
        if so_far is not None and len(so_far) * 1000 / SR >= next_partial:
            next_partial += PARTIAL_EVERY_MS
            t0 = time.perf_counter()
            (partial,) = engine.transcribe_batch([DecodeRequest(so_far, "en")])
            heard.partials.append((at + FRAME, partial.text, time.perf_counter() - t0))
    return heard


def outcome(h: Heard, min_ms: int, min_conf: float, min_words: int) -> tuple[str, float | None]:
    """(plays on | resumed | stopped, ms from the speech's start until the reply fell silent);
    `min_words` 0: no partials."""
    from services.common import backchannel

    if h.start is None or not h.end:
        return "plays on", None
    silent = []
    if min_ms in h.voiced_at:
        silent.append(h.voiced_at[min_ms])
    if min_words:
        for at, text, took in h.partials:
            if backchannel.counted(text, "en") >= min_words:
                stop = at + round(took * SR)
                return "stopped", (min([stop, *silent]) - h.start) * 1000 / SR
    final_at = h.end + round(h.decode_s * SR)
    words = not backchannel.only_backchannel(h.text, "en") and h.confidence >= min_conf and bool(h.text)
    if words:
        return "stopped", (min([final_at, *silent]) - h.start) * 1000 / SR
    if silent:
        return "resumed", (final_at - silent[0]) * 1000 / SR
    return "plays on", None


OUTCOMES = ("plays on", "resumed", "stopped")


def _row(heard: list[Heard], min_ms: int, min_conf: float, min_words: int) -> dict:
    row: dict = {"partial_words": min_words, "min_ms": min_ms, "min_conf": min_conf}
    for kind in ("backchannel", "interruption", "no words"):
        got = [outcome(h, min_ms, min_conf, min_words) for h in heard if h.kind == kind]
        row[kind] = {o: round(100 * sum(g[0] == o for g in got) / len(got), 1) for o in OUTCOMES}
        timed = "stopped" if kind == "interruption" else "resumed"
        times = [t for o, t in got if o == timed and t is not None]
        if times:
            row[kind]["silent_ms"] = [round(statistics.median(times)), round(pct(times, 0.9))]
    return row


def _print(model: str, rows: list[dict]) -> None:
    print(f"\nWhisper {model}: % plays on / resumed / stopped; ms silent (median/p90): interruptions")
    print("from their start to the stop, sounds with no words while paused")
    head = f"{'partials':>8} {'min_ms':>6} {'conf':>4} | {'backchannel':>17} |"
    print("(partials: none, or the words a partial must hold that are not backchannels)")
    print(f"{head} {'interruption':>17} {'silent':>9} | {'no words':>17} {'silent':>9}")

    def three(d: dict) -> str:
        return " ".join(f"{d[o]:5.1f}" for o in OUTCOMES)

    def silent(d: dict) -> str:
        return "/".join(str(x) for x in d.get("silent_ms", ["-", "-"]))

    for r in rows:
        b, i, s = r["backchannel"], r["interruption"], r["no words"]
        head = f"{r['partial_words'] or 'none':>8} {r['min_ms']:>6} {r['min_conf']:>4}"
        print(f"{head} | {three(b)} | {three(i)} {silent(i):>9} | {three(s)} {silent(s):>9}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--whisper", default="tiny.en,base")
    ap.add_argument("--min-ms", default="300,450,600,800,1000")
    ap.add_argument("--min-conf", default="0,0.3,0.4,0.5")
    ap.add_argument("--min-words", default="1,2", help="words a partial must hold (partials rows)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "barge_in.json"))
    args = ap.parse_args()
    from ops.localmodels import whisper_path
    from services.stt.whisper import WhisperEngine
    from tests.conftest import MODEL_CACHE

    waits = [int(x) for x in args.min_ms.split(",")]
    confs = [float(x) for x in args.min_conf.split(",")]
    words = [int(x) for x in args.min_words.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        sounds = _sounds(Path(tmp))
    result: dict = {"sounds": {k: sum(s[0] == k for s in sounds) for k in ("backchannel", "interruption", "no words")}}
    for model in args.whisper.split(","):
        engine = WhisperEngine(str(whisper_path(model, MODEL_CACHE)), language="en")
        heard = [_hear(engine, kind, name, audio, waits) for kind, name, audio in sounds]
        rows = [_row(heard, w, c, n) for n in (0, *words) for w in waits for c in confs]
        _print(model, rows)
        result[model] = {
            "rows": rows,
            "decode_ms_median": round(1000 * statistics.median(h.decode_s for h in heard if h.end)),
            "heard": [
                {
                    "kind": h.kind,
                    "name": h.name,
                    "text": h.text,
                    "confidence": round(h.confidence, 3),
                    "longest_wait_reached_ms": max(h.voiced_at, default=0),
                    "vad_speech": h.start is not None,
                }
                for h in heard
            ],
        }
    print(f"\nwritten to {write_result(args.out, result, whisper=args.whisper)}")


if __name__ == "__main__":
    main()
