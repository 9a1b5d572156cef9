"""Turn taking, labelled: how often a policy cuts the speaker off, and how long it leaves dead air.

    python -m bench.turns [--pairs 32] [--short 200,300] [--long 800,1200,1600,2400]
                          [--vad 200,300,500,800,1200,1600] [--whisper tiny.en]

Modelled on LiveKit's eot-bench: every turn has a true end, and some pause mid-thought first.
Complete turns are said in one go; paused ones stop mid-sentence ("I would like to book a
table for"), stay silent 300-1500 ms, and finish ("four people at seven."). Two sources,
reported apart: espeak-ng (2 voices x 2 rates over sentence pairs) and real human speech,
the LibriVox readings in pocketsphinx's source distribution (tools/speech.py), whose chunks
end where the reader paused, mid-sentence or at a full stop (labelled from the book's text).

Each turn streams in 20 ms frames through the STT worker's own `Segmenter` (Silero VAD) and,
for the smart policy, its own signals: Smart Turn v3.2 on the turn so far, and the words so
far (the pause's audio decoded by real Whisper, scored by SmolLM2 on llama-server). Time is
audio time: a verdict takes effect once as much audio has streamed in as its models took to
run, so a slow model costs dead air exactly as it would live. A verdict for one pause does
not depend on the long wait or on how the signals combine, so each is computed once per
short wait and reused across the sweep.

A false cut-off: the turn ended before its true end (inside a pause). Dead air: from the true
end of speech to the end of the turn (median, p90), over turns not cut off. Prints a table
and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.common import ROOT, Usage, pct, write_result
from bench.turn_data import HUMAN_TURNS, PAIRS

SR = 16000
FRAME = 320
TRAILING_S = 3.5
VOICES = (("en-us", 160), ("en-us", 200), ("en-gb", 160), ("en-gb", 200))


@dataclass
class Turn:
    source: str
    name: str
    audio: np.ndarray
    """int16, with TRAILING_S of silence after the true end."""
    true_end: int
    """Sample where the last word ends."""
    paused: bool


@dataclass
class Signals:
    sound: float
    words: float
    sound_s: float
    words_s: float
    """Seconds each signal took (the words: Whisper's decode and the scoring)."""
    decode_s: float


@dataclass(frozen=True)
class Policy:
    name: str
    end_ms: int
    pause_ms: int | None = None
    signals: str = ""
    """`sound`, `words`, `all` (both must say done) or `any`."""


@dataclass
class Outcome:
    cut: list[bool] = field(default_factory=list)
    dead_ms: list[float] = field(default_factory=list)
    """From the true end to the end of the turn."""
    ready_ms: list[float] = field(default_factory=list)
    """From the true end to its transcript: the end of the turn, plus a decode unless it was
    decoded at the pause already (the median decode of this run, as the decode runs after)."""


def _trim(x: np.ndarray) -> np.ndarray:
    """The clip from its first to its last window Silero hears as speech (a recording's room
    noise around the words is not speech; the true end is where the words end)."""
    from services.stt.vad import WINDOW, SileroVad

    n = len(x) // WINDOW
    probs = SileroVad.shared().new_stream().probabilities(x[: n * WINDOW].reshape(n, WINDOW).astype(np.float32) / 32768)
    voiced = np.nonzero(probs >= 0.5)[0]
    return x[voiced[0] * WINDOW : (voiced[-1] + 1) * WINDOW] if len(voiced) else x


def _pad(parts: list[np.ndarray], tail_s: float = TRAILING_S) -> tuple[np.ndarray, int]:
    audio = np.concatenate([np.zeros(SR // 4, np.int16), *parts])
    return np.concatenate([audio, np.zeros(int(tail_s * SR), np.int16)]), len(audio)


def espeak_turns(pairs: int, tmp: Path, rng: random.Random) -> list[Turn]:
    from tools.speech import espeak

    turns = []
    for i, (head, tail) in enumerate(PAIRS[:pairs]):
        for v, (voice, rate) in enumerate(VOICES):

            def say(text: str, n: str, i=i, v=v, voice=voice, rate=rate) -> np.ndarray:
                return _trim(espeak(text, tmp / f"{i}-{v}-{n}.wav", voice=voice, rate=rate))

            whole, true_end = _pad([say(f"{head} {tail}", "w")])
            turns.append(Turn("espeak-ng", f"{i}/{voice}/{rate}", whole, true_end, False))
            gap = np.zeros(int(rng.uniform(0.3, 1.5) * SR), np.int16)
            split, true_end = _pad([say(head, "h"), gap, say(tail, "t")])
            turns.append(Turn("espeak-ng", f"{i}/{voice}/{rate}/paused", split, true_end, True))
    return turns


def human_turns(rng: random.Random) -> list[Turn]:
    from tools.speech import human_recordings

    by_name = {r.name: _trim(r.pcm()) for r in human_recordings()}
    turns = []
    for names in HUMAN_TURNS:
        chunks = [by_name[n] for n in names]
        whole, true_end = _pad(chunks)
        turns.append(Turn("human", "+".join(names), whole, true_end, False))
        if len(chunks) > 1:
            for k in range(5):
                gap = np.zeros(int((0.3 + 0.3 * k) * SR), np.int16)
                split, true_end = _pad([chunks[0], gap, *chunks[1:]])
                turns.append(Turn("human", f"{'|'.join(names)}/{300 + 300 * k}ms", split, true_end, True))
    return turns


class Judge:
    """The worker's two signals, timed, each pause's verdict computed once per short wait."""

    def __init__(self, whisper: str):
        from ops.localmodels import LlamaServer, gguf_path, smart_turn_path, whisper_path
        from services.stt.smart_turn import SmartTurn
        from services.stt.whisper import WhisperEngine
        from services.stt.words import WordsScorer

        cache = ROOT / ".cache" / "models"
        self.sound = SmartTurn(smart_turn_path(cache))
        self.engine = WhisperEngine(
            str(whisper_path(whisper, cache)), device="cpu", compute_type="int8", language="en", beam_size=1
        )
        self.server = LlamaServer(gguf_path(), Path(tempfile.mkdtemp()) / "llm.log").start()
        self.words = WordsScorer(self.server.base_url, timeout_s=30)
        self.loop = asyncio.new_event_loop()
        self.cache: dict[tuple[int, int, int], Signals] = {}

    def signals(self, key: tuple[int, int, int], context: np.ndarray, audio: np.ndarray) -> Signals:
        if key not in self.cache:
            from services.stt.whisper import DecodeRequest

            t0 = time.perf_counter()
            sound = float(self.sound.probabilities([context])[0])
            t1 = time.perf_counter()
            (text,) = self.engine.transcribe_batch([DecodeRequest(audio, "en")])
            t_decoded = time.perf_counter()
            words = self.loop.run_until_complete(self.words.probability(text.text))
            t2 = time.perf_counter()
            self.cache[key] = Signals(sound, words, t1 - t0, t2 - t1, t_decoded - t1)
        return self.cache[key]

    def decode_ms(self) -> float:
        return 1000 * statistics.median(s.decode_s for s in self.cache.values()) if self.cache else 0.0

    def close(self) -> None:
        self.loop.run_until_complete(self.words.close())
        self.server.stop()


def decide(s: Signals, signals: str, sound_threshold: float, words_threshold: float) -> tuple[bool, float]:
    """(done, seconds the verdict took) for one combination of the signals. The words wait for
    the pause's decode, which is the utterance's own final decode when it ends there."""
    sound, words = s.sound >= sound_threshold, s.words >= words_threshold
    if signals == "sound":
        return sound, s.sound_s
    if signals == "words":
        return words, s.words_s
    both = max(s.sound_s, s.words_s)
    return (sound and words, both) if signals == "all" else (sound or words, both)


def stream(
    turn_index: int, turn: Turn, policy: Policy, judge: Judge | None, thresholds: tuple[float, float]
) -> tuple[int, bool]:
    """The sample at which the turn ended (its audio's end if it never did), and whether its
    transcript was decoded by then (a words verdict at the pause it ended at)."""
    words = policy.signals in ("words", "all", "any")
    from services.stt.segmenter import PauseHeard, Segmenter, UtteranceEnded
    from services.stt.vad import VadConfig

    seg = Segmenter(config=VadConfig(end_of_turn_ms=policy.end_ms), pause_ms=policy.pause_ms)
    due: list[tuple[int, int]] = []
    voiced_ends: set[float] = set()
    for at in range(0, len(turn.audio) - FRAME + 1, FRAME):
        for ev in seg.feed(turn.audio[at : at + FRAME]):
            if isinstance(ev, UtteranceEnded):
                return seg.samples_fed, words and ev.end_s in voiced_ends
            if isinstance(ev, PauseHeard) and judge is not None:
                s = judge.signals((turn_index, ev.voiced_end, policy.pause_ms), ev.context, ev.audio)
                voiced_ends.add(ev.end_s)
                done, took = decide(s, policy.signals, *thresholds)
                if done:
                    due.append((seg.samples_fed + int(took * SR), ev.voiced_end))
        while due and due[0][0] <= seg.samples_fed:
            _, voiced_end = due.pop(0)
            if seg.end_at_pause(voiced_end):
                return seg.samples_fed, words
    return len(turn.audio), False


def evaluate(turns: list[Turn], policy: Policy, judge: Judge, thresholds) -> dict[str, Outcome]:
    out: dict[str, Outcome] = {}
    for i, turn in enumerate(turns):
        ended, decoded = stream(i, turn, policy, judge if policy.pause_ms else None, thresholds)
        o = out.setdefault(turn.source, Outcome())
        cut = ended < turn.true_end
        o.cut.append(cut)
        if not cut:
            dead = (ended - turn.true_end) / SR * 1000
            o.dead_ms.append(dead)
            o.ready_ms.append(dead + (0.0 if decoded else judge.decode_ms()))
    return out


def model_costs(judge: Judge, turns: list[Turn]) -> dict[str, float]:
    """Smart Turn's time per turn scored, alone and eight at once; the words' per call."""
    contexts = [t.audio[: t.true_end].astype(np.float32) / 32768 for t in turns[:8]]
    judge.sound.probabilities(contexts[:1])
    t0 = time.perf_counter()
    for c in contexts:
        judge.sound.probabilities([c])
    single = (time.perf_counter() - t0) / len(contexts)
    t0 = time.perf_counter()
    judge.sound.probabilities(contexts)
    batched = (time.perf_counter() - t0) / len(contexts)
    words = [s.words_s for s in judge.cache.values()]
    return {
        "sound_ms_per_turn_unbatched": single * 1000,
        "sound_ms_per_turn_batch8": batched * 1000,
        "words_ms_per_call_median": statistics.median(words) * 1000 if words else 0.0,
        "of_which_decode_ms_median": judge.decode_ms(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=len(PAIRS))
    ap.add_argument("--short", default="200,300")
    ap.add_argument("--long", default="800,1200,1600,2400")
    ap.add_argument("--vad", default="200,300,500,800,1200,1600")
    ap.add_argument("--sound-threshold", type=float, default=0.5)
    ap.add_argument("--words-threshold", type=float, default=0.02)
    ap.add_argument("--whisper", default="tiny.en", choices=("tiny.en", "base"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "turns.json"))
    args = ap.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        turns = espeak_turns(args.pairs, Path(tmp), rng) + human_turns(rng)
    policies = []
    for short in map(int, args.short.split(",")):
        for long_ms in map(int, args.long.split(",")):
            for signals in ("sound", "words", "all", "any"):
                policies.append(Policy(f"smart {signals} {short}/{long_ms}", long_ms, short, signals))
    policies += [Policy(f"vad {ms}", ms) for ms in map(int, args.vad.split(","))]
    judge = Judge(args.whisper)
    usage = Usage()
    rows = []
    try:
        for policy in policies:
            outcome = evaluate(turns, policy, judge, (args.sound_threshold, args.words_threshold))
            for source, o in outcome.items():
                row = {
                    "policy": policy.name,
                    "source": source,
                    "turns": len(o.cut),
                    "cut_off_pct": 100 * sum(o.cut) / len(o.cut),
                    "dead_air_p50_ms": statistics.median(o.dead_ms) if o.dead_ms else None,
                    "dead_air_p90_ms": pct(o.dead_ms, 0.9) if o.dead_ms else None,
                    "transcript_p50_ms": statistics.median(o.ready_ms) if o.ready_ms else None,
                }
                rows.append(row)
                p50 = f"{row['dead_air_p50_ms']:.0f}" if o.dead_ms else "-"
                p90 = f"{row['dead_air_p90_ms']:.0f}" if o.dead_ms else "-"
                ready = f"{row['transcript_p50_ms']:.0f}" if o.ready_ms else "-"
                print(
                    f"{policy.name:28s} {source:10s} n={row['turns']:3d} cut-off {row['cut_off_pct']:5.1f} %"
                    f"  dead air p50 {p50:>5s} ms  p90 {p90:>5s} ms  transcript p50 {ready:>5s} ms",
                    flush=True,
                )
        costs = model_costs(judge, turns)
    finally:
        judge.close()
    print(" ".join(f"{k}={v:.1f}" for k, v in costs.items()))
    write_result(
        args.out,
        {"rows": rows, "costs": costs, "usage": usage.done(), "args": vars(args)},
        whisper=args.whisper,
    )


if __name__ == "__main__":
    main()
