"""STT worker engine under concurrent live sessions: finalization latency and capacity.

    python -m bench.stt [--size tiny|base|small|large-v3] [--sessions 1,4,8,16] [--seconds 20]
                        [--tokens 12] [--bound-ms 500] [--device auto|cpu|cuda] [--no-partials]

What one STT worker does, in one process without the bus: C sessions stream speech in real
time (20 ms frames of espeak-ng utterances between pauses of 0.4-1.2 s, each session on
its own schedule), each through its own streaming `Segmenter` (Silero VAD, end of turn
after 300 ms), and every decode goes through one `DecodeBatcher`, finals first, with a
partial every 500 ms of speech as the service asks for them. Whisper is a random-weight
model of the given published size built by tools/testmodels/whisper.py, with the number
of generated tokens pinned (`--tokens`), since a random model never stops by itself.

Finalization latency: from the moment the segmenter closes an utterance (end of turn
decided) to its final text. Reported per C: p50/p95 and the mean batch size of the model
calls; then the most sessions whose p95 stays within `--bound-ms`. Prints a table, writes
JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from bench.common import ROOT, Usage, pct, write_result

SR = 16000
FRAME = 320
PHRASES = [
    "Hello there, could you tell me the weather for tomorrow?",
    "I would like to book a table for two at eight.",
    "What was the name of that book you mentioned?",
    "Thank you, that is all for today.",
    "Can you say that again, a little slower please?",
    "Tell me a story about a dragon and a small village.",
]


def utterances(tmp: Path) -> list[np.ndarray]:
    out = []
    for i, text in enumerate(PHRASES):
        wav = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", text], check=True, capture_output=True).stdout
        path = tmp / f"{i}.wav"
        subprocess.run(
            ["sox", "-t", "wav", "-", "-r", str(SR), "-c", "1", "-b", "16", "-e", "signed-integer", str(path)],
            input=wav,
            check=True,
        )
        pcm, _ = sf.read(path, dtype="int16")
        out.append(pcm)
    return out


async def session(n: int, speech: list[np.ndarray], seconds: float, batcher, vad, partials: bool, lat: list):
    from services.stt.segmenter import Segmenter, UtteranceEnded, UtteranceWindow
    from services.stt.whisper import DecodeRequest

    rng = random.Random(n)
    seg = Segmenter(vad)
    parts = []
    total = 0
    while total < seconds * SR:
        pause = np.zeros(int(rng.uniform(0.4, 1.2) * SR), dtype=np.int16)
        words = speech[rng.randrange(len(speech))]
        parts += [pause, words]
        total += len(pause) + len(words)
    parts.append(np.zeros(SR, dtype=np.int16))
    pcm = np.concatenate(parts)
    loop = asyncio.get_running_loop()
    start = loop.time() + rng.uniform(0, 1.0)
    every = SR // 2
    next_partial = every
    pending: list[asyncio.Task] = []

    async def final(audio, windows, closed_at):
        result = await asyncio.wrap_future(batcher.submit(DecodeRequest(audio, "en")))
        for w in windows:
            await w
        lat.append(time.perf_counter() - closed_at)
        return result

    windows: list = []
    for i in range(0, len(pcm), FRAME):
        await asyncio.sleep(max(0.0, start + i / SR - loop.time()))
        for ev in seg.feed(pcm[i : i + FRAME]):
            if isinstance(ev, UtteranceWindow):
                windows.append(asyncio.wrap_future(batcher.submit(DecodeRequest(ev.audio, "en"))))
            elif isinstance(ev, UtteranceEnded):
                pending.append(asyncio.create_task(final(ev.audio, windows, time.perf_counter())))
                windows, next_partial = [], every
        if partials and seg.in_speech:
            active = seg.active_audio()
            if active is not None and len(active) >= next_partial:
                next_partial = len(active) + every
                batcher.submit_partial(n, DecodeRequest(active, "en"))
    await asyncio.gather(*pending)


def run(engine, vad, speech, sessions: int, seconds: float, partials: bool, max_batch: int) -> dict:
    from services.stt.batcher import DecodeBatcher

    sizes: list[int] = []
    batcher = DecodeBatcher(engine, max_batch=max_batch, on_batch=lambda n, a, s: sizes.append(n))
    lat: list[float] = []

    async def main():
        await asyncio.gather(*(session(n, speech, seconds, batcher, vad, partials, lat) for n in range(sessions)))

    usage = Usage()
    asyncio.run(main())
    batcher.close()
    return {
        **usage.done(),
        "sessions": sessions,
        "utterances": len(lat),
        "final_p50_ms": statistics.median(lat) * 1000,
        "final_p95_ms": pct(lat, 0.95) * 1000,
        "model_calls": len(sizes),
        "mean_batch": statistics.mean(sizes) if sizes else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=["tiny", "base", "small", "large-v3"], default="tiny")
    ap.add_argument("--model", help="a CTranslate2 Whisper folder instead of a built random model")
    ap.add_argument("--sessions", default="1,4,8,16")
    ap.add_argument("--seconds", type=float, default=20.0, help="speech and pauses per session")
    ap.add_argument("--tokens", type=int, default=12, help="tokens generated per decode")
    ap.add_argument("--bound-ms", type=float, default=500.0, help="p95 finalization bound for capacity")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compute-type", default="default")
    ap.add_argument("--no-partials", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "stt.json"))
    args = ap.parse_args()

    import ctranslate2

    from services.stt.vad import SileroVad
    from services.stt.whisper import WhisperEngine
    from tools.testmodels.whisper import build_whisper

    device = args.device
    if device == "auto":
        device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    model = args.model or str(build_whisper(ROOT / ".cache" / "models" / f"whisper-{args.size}", size=args.size))
    engine = WhisperEngine(model, device=device, compute_type=args.compute_type, max_new_tokens=args.tokens)
    vad = SileroVad.shared()
    speech = utterances(Path(tempfile.mkdtemp(prefix="parley-bench-stt-")))
    engine.transcribe(np.zeros(SR, dtype=np.float32), language="en")  # warm-up
    rows = []
    for c in [int(x) for x in args.sessions.split(",")]:
        row = run(engine, vad, speech, c, args.seconds, not args.no_partials, args.max_batch)
        rows.append(row)
        print(
            f"sessions {c:3d}  utterances {row['utterances']:4d}  final p50 {row['final_p50_ms']:8.1f} ms  "
            f"p95 {row['final_p95_ms']:8.1f} ms  model calls {row['model_calls']:5d}  "
            f"mean batch {row['mean_batch']:5.2f}  cpu {row['cpu_cores']:4.2f} cores  rss {row['rss_mib']:6.0f} MiB",
            flush=True,
        )
    within = [r["sessions"] for r in rows if r["final_p95_ms"] <= args.bound_ms]
    capacity = max(within) if within else 0
    at = next((r for r in rows if r["sessions"] == capacity), None)
    use = f" ({at['cpu_cores']:.2f} cores, {at['rss_mib']:.0f} MiB resident)" if at else ""
    print(f"\nmost sessions with p95 finalization <= {args.bound_ms:.0f} ms (of those run): {capacity}{use}")
    out = write_result(
        args.out,
        {"args": vars(args), "model": model, "rows": rows, "capacity": capacity},
        device=device,
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
