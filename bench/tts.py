"""XTTS worker engine under concurrent streams: time to first audio and real-time factor.

    python -m bench.tts [--size tiny|full] [--streams 1,2,4] [--sentences 4] [--tokens N]
                        [--device auto|cpu|cuda] [--model PATH]

The real coqui-tts code path on a random-weight XTTS-v2 that the project builds itself
(tools/testmodels/xtts.py): `tiny` for this CPU, `full` (XTTS-v2's real size, 453 M
parameters) for a GPU. A random GPT never emits its stop token, so every sentence generates
exactly `--tokens` audio tokens (the model's cap): the token count is pinned, and so is the
amount of audio per sentence.

For each number of concurrent streams C, C threads each speak `--sentences` sentences one
after another through one `XttsEngine`, as C conversations on one worker would. It runs
twice: with C lanes (the worker's design: one lane per stream over shared weights) and with
one lane (the streams queue for the model, as one engine per worker would). Reported per
run: time to first audio p50/p95 (from asking for the sentence to its first PCM chunk,
including any wait for a lane), the real-time factor per sentence (synthesis time / audio
length, p50), and the aggregate audio seconds produced per wall second. Prints a table,
writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path

from bench.common import ROOT, Usage, pct, write_result

TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away into the woods."
DEMO_VOICE = ROOT / "services" / "common" / "assets" / "demo_voice.wav"


def run(engine, voice, streams: int, sentences: int) -> dict:
    ttfa: list[float] = []
    rtf: list[float] = []
    audio_s = 0.0
    lock = threading.Lock()
    start = threading.Barrier(streams)

    def speaker() -> None:
        nonlocal audio_s
        start.wait()
        for _ in range(sentences):
            t0 = time.perf_counter()
            first = None
            samples = 0
            for chunk in engine.stream(TEXT, "en", voice):
                if first is None:
                    first = time.perf_counter() - t0
                samples += chunk.size
            took = time.perf_counter() - t0
            with lock:
                ttfa.append(first)
                rtf.append(took / (samples / engine.sample_rate))
                audio_s += samples / engine.sample_rate

    threads = [threading.Thread(target=speaker) for _ in range(streams)]
    usage = Usage()
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        **usage.done(),
        "streams": streams,
        "sentences": len(ttfa),
        "ttfa_p50_ms": statistics.median(ttfa) * 1000,
        "ttfa_p95_ms": pct(ttfa, 0.95) * 1000,
        "rtf_p50": statistics.median(rtf),
        "rtf_p95": pct(rtf, 0.95),
        "audio_s_per_s": audio_s / wall,
        "wall_s": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--model", help="an XTTS checkpoint folder instead of a built random model")
    ap.add_argument("--tokens", type=int, default=None, help="audio tokens per sentence (the random model's cap)")
    ap.add_argument("--streams", default="1,2,4")
    ap.add_argument("--sentences", type=int, default=4, help="sentences per stream")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--chunk", type=int, default=20, help="stream chunk size in audio tokens")
    ap.add_argument("--bound-ms", type=float, default=300.0, help="p95 time to first audio bound for capacity")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "tts.json"))
    args = ap.parse_args()

    import torch

    from services.tts.engine import XttsEngine
    from tools.testmodels.xtts import build_xtts

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if args.model:
        model_dir = Path(args.model)
    else:
        cache = Path(ROOT / ".cache" / "models")
        name = f"xtts-{args.size}" + (f"-{args.tokens}" if args.tokens else "")
        model_dir = build_xtts(cache / name, args.size, max_audio_tokens=args.tokens)
    counts = [int(x) for x in args.streams.split(",")]
    rows = []
    for lanes_of in ("per stream", "one"):
        for streams in counts:
            lanes = streams if lanes_of == "per stream" else 1
            engine = XttsEngine(str(model_dir), device=device, stream_chunk_size=args.chunk, lanes=lanes)
            engine.load()
            voice = engine.voice(DEMO_VOICE.read_bytes())
            run(engine, voice, 1, 1)  # warm-up: kernels, allocator, caches
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            row = {"lanes": lanes, **run(engine, voice, streams, args.sentences)}
            if device == "cuda":
                row["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
            rows.append(row)
            print(
                f"lanes {lanes:2d}  streams {streams:2d}  ttfa p50 {row['ttfa_p50_ms']:8.1f} ms  "
                f"p95 {row['ttfa_p95_ms']:8.1f} ms  rtf p50 {row['rtf_p50']:6.3f}  "
                f"audio/s {row['audio_s_per_s']:6.2f}  cpu {row['cpu_cores']:4.2f} cores  rss {row['rss_mib']:6.0f} MiB"
                + (f"  gpu peak {row['gpu_peak_mib']:.0f} MiB" if "gpu_peak_mib" in row else ""),
                flush=True,
            )
            del engine
            if device == "cuda":
                torch.cuda.empty_cache()
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    # A worker sustains a load when every stream's first audio comes within the bound and each
    # sentence is synthesised at least as fast as it plays (the player never runs dry).
    within = [r for r in rows if r["lanes"] == r["streams"] and r["ttfa_p95_ms"] <= args.bound_ms and r["rtf_p95"] <= 1]
    at = max(within, key=lambda r: r["streams"]) if within else None
    capacity = at["streams"] if at else 0
    use = f" ({at['cpu_cores']:.2f} cores, {at['rss_mib']:.0f} MiB resident)" if at else ""
    bound = f"first audio p95 <= {args.bound_ms:.0f} ms and RTF p95 <= 1"
    print(f"\nmost streams with {bound} (of those run): {capacity}{use}")
    out = write_result(
        args.out,
        {"args": vars(args), "model": str(model_dir), "rows": rows, "capacity": capacity},
        device=device,
        gpu=gpu,
        torch_threads=torch.get_num_threads(),
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
