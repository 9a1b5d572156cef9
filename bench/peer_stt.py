"""Parley's STT worker beside a published streaming Whisper server (WhisperLive), one run.

    bench/peers/install-whisperlive.sh            # once: WhisperLive in its own virtualenv
    python -m bench.peer_stt [--model tiny.en|base|DIR] [--streams 1,2,4] [--seconds 20]
                             [--pause 10,14] [--tokens N] [--partial-ms 500] [--cpu-threads N]
                             [--peer-same-output 10] [--systems parley,whisperlive]

The peer is WhisperLive (PyPI `whisper-live`, pinned in bench/peers/install-whisperlive.sh),
its own `TranscriptionServer` with the faster_whisper backend, started by
bench/peers/whisperlive_server.py from its own virtualenv (never Parley's). Parley's side is
the real worker process (`python -m services.stt`) on a real nats-server, fed the way the
gateway feeds it (PCM16 frames on `parley.audio.<conv>` after `parley.stt.open`).

Held the same for both:
- the model: the same CTranslate2 folder (the tiny random-weight Whisper that
  tools/testmodels/whisper.py builds under .cache/models/whisper-tiny), int8, on the CPU;
  CTranslate2 gets ``--cpu-threads`` intra-op threads in both (default: all cores);
- decoding: greedy, one temperature, at most ``--tokens`` generated tokens, no timestamps.
  WhisperLive's defaults (beam 5, temperature fallback, no token limit) are overridden in its
  launcher: a random model never emits end-of-text, and with those defaults each call takes
  tens of seconds. Timestamps are off in both because the random model's timestamp tokens are
  noise: with them, WhisperLive "completes" a segment about every second, mid-word, where a
  real model cuts at pauses;
- the audio: each stream is the same espeak-ng utterances (bench/stt.py's phrases) on the
  same seeded schedule for both, one turn after another with ``--pause`` seconds of silence
  between them, streamed in real time in 20 ms PCM16 frames; streams start staggered
  within a second;
- one server process for all streams (WhisperLive: one shared model, as its run_server.py
  does for a custom model path; Parley: one worker, one model, one decode batcher).

Where the two differ, and what "final" means in each:
- Parley ends a turn with its streaming end-of-turn detector (Silero VAD state kept per
  stream, 300 ms of silence) and then decodes the utterance once: its final is the
  `transcript.final` event. Partials (``--partial-ms``, `PARLEY_STT_PARTIAL_INTERVAL_MS`) are
  extra decodes every that much speech; Parley's own default on a CPU is none (0).
- WhisperLive has no end-of-turn detector. Each connection's thread re-decodes the audio
  since its last committed point over and over (faster-whisper's batch Silero VAD drops the
  silence in it), sending the newest text as an incomplete segment (its partial). A segment
  is committed ("completed": true, its final) when Whisper's output holds more than one
  segment (a real model placing a later segment; the random model without timestamps never
  does) or when the same text came back more than ``same_output_threshold`` times in a row
  (client default 10, a 0.1 s sleep each). At a turn end (the speaker stops and waits) the
  repetition rule is the one that commits the last words with a real model as well, so that
  is what is measured here; turns must be separated by enough silence for it to happen.
  An utterance whose speech was followed by the next turn before it was committed is
  counted as committed only when a later completed segment covers it. WhisperLive does not
  send a committed text equal to the previous committed one; the random model often says
  the same words for different utterances, so the bench takes the commit itself as the final:
  the first message in which the pending (incomplete) segment is gone.
- Parley's worker runs every decode of every session through one batcher thread (finals
  first); WhisperLive runs one transcription thread per connection around one shared model.
  faster-whisper versions differ by WhisperLive's own pin (1.2.0, Silero v5 inside) against
  Parley's (1.2.1, Silero v6); CTranslate2 is 4.8.5 in both.
- Parley's path carries the bus (nats-server, counted in Parley's CPU); WhisperLive's is a
  direct websocket.

With a real model (`--model tiny.en` or `base`, the packaged Whisper, or any CTranslate2
folder) neither system's decode is capped (a real model ends its text itself) and WhisperLive
keeps Whisper's timestamps, so it commits segments where the speaker pauses, as it is meant to
run; both are greedy. Each system's word error rate is scored per stream: every final it sent
(WhisperLive: every committed segment) in order, against every phrase the stream spoke, through
Whisper's English normaliser (tools/wer.py). The `batch` row is the same model reading each
phrase whole with faster-whisper's own `transcribe()`: a system's WER above it is what its
streaming segmentation costs.

Measured per system and concurrency, on the client's clock: finalization latency (the
moment the last speech sample of an utterance was sent to the final transcript covering
it: each system's end-of-turn wait included), time to first partial (first speech sample
sent to the first partial covering that utterance), the servers' CPU (user+system seconds
per wall second), and whether each stream kept up with real time (every utterance
finalized, and its last utterance's latency within ``--keepup-s`` of its first: a backlog
that builds up over the stream shows as a rising latency). Prints a table with the
Parley/WhisperLive ratio per load, writes JSON (bench/results/peer_stt.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.common import ROOT, pct, write_result
from bench.stt import FRAME, PHRASES, SR, utterances
from tools.wer import corpus_wer

PEER_VENV = ROOT / ".cache" / "peers" / "whisperlive-venv"
PEER_INSTALL = ROOT / "bench" / "peers" / "install-whisperlive.sh"
PEER_SERVER = ROOT / "bench" / "peers" / "whisperlive_server.py"
COVER_TOL_S = 0.35
"""A transcript's [start, end] counts as covering an utterance within this much."""


@dataclass
class Stream:
    """One stream's audio, where its speech lies (samples) and what each utterance says."""

    pcm: np.ndarray
    speech: list[tuple[int, int]]
    offset_s: float
    said: list[int] = field(default_factory=list)
    """Per utterance, its index in PHRASES."""


def speech_bounds(pcm: np.ndarray, level: int = 500) -> tuple[int, int]:
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > level)
    return (int(loud[0]), int(loud[-1]) + 1) if len(loud) else (0, len(pcm))


def make_stream(n: int, speech: list[np.ndarray], seconds: float, pause: tuple[float, float]) -> Stream:
    rng = random.Random(n)
    parts, spans, said, total = [], [], [], 0
    while total < seconds * SR:
        gap = np.zeros(int(rng.uniform(*pause) * SR) if parts else int(0.5 * SR), dtype=np.int16)
        phrase = rng.randrange(len(speech))
        said.append(phrase)
        words = speech[phrase]
        lo, hi = speech_bounds(words)
        start = total + len(gap)
        spans.append((start + lo, start + hi))
        parts += [gap, words]
        total += len(gap) + len(words)
    parts.append(np.zeros(int(pause[1] * SR), dtype=np.int16))
    return Stream(np.concatenate(parts), spans, rng.uniform(0, 1.0), said)


@dataclass
class Observed:
    """What the client saw of one stream: frame send times and transcripts as they came."""

    sent_at: list[float] = field(default_factory=list)
    finals: list[tuple[float, float, float]] = field(default_factory=list)
    """(arrival, start_s, end_s) of each final transcript."""
    partials: list[tuple[float, float, float]] = field(default_factory=list)
    texts: list[tuple[float, str]] = field(default_factory=list)
    """(arrival, text) of each final transcript or committed segment."""
    late_s: float = 0.0
    """The most a frame was sent behind its real-time schedule (the bench's own pace)."""
    trace: list[tuple[float, str]] = field(default_factory=list)
    """Every message from the server as it came (written next to the logs, to check by eye)."""


async def pace(stream: Stream, obs: Observed, send, done: asyncio.Event, drain_s: float) -> None:
    """Send the stream in real time, 20 ms frames; then silence until `done` or `drain_s`."""
    loop = asyncio.get_running_loop()
    start = loop.time() + stream.offset_s
    await asyncio.sleep(max(0.0, start - loop.time()))
    silence = np.zeros(FRAME, dtype=np.int16).tobytes()
    i = 0
    end = len(stream.pcm) + int(drain_s * SR)
    while i < end:
        due = start + i / SR
        wait = due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        else:
            obs.late_s = max(obs.late_s, -wait)
        if i >= len(stream.pcm) and done.is_set():
            break
        frame = stream.pcm[i : i + FRAME].tobytes() if i < len(stream.pcm) else silence
        obs.sent_at.append(time.perf_counter())
        await send(frame, i)
        i += FRAME


def covers(s: float, e: float, span: tuple[int, int]) -> bool:
    return span[0] / SR < e + COVER_TOL_S and span[1] / SR > s - COVER_TOL_S


def score(stream: Stream, obs: Observed, keepup_s: float) -> dict:
    """Per utterance: finalization latency and time to first partial, on the client's clock."""
    finals, partials = sorted(obs.finals), sorted(obs.partials)
    lat: list[float | None] = []
    ttfp: list[float] = []
    for span in stream.speech:
        first = span[0] // FRAME
        last = (span[1] - 1) // FRAME
        if last >= len(obs.sent_at):
            lat.append(None)
            continue
        start_at, end_at = obs.sent_at[first], obs.sent_at[last]
        got = next((t for t, s, e in finals if t >= end_at and covers(s, e, span)), None)
        lat.append(None if got is None else got - end_at)
        part = next((t for t, s, e in partials if t >= start_at and covers(s, e, span)), None)
        if part is not None and (got is None or part <= got):
            ttfp.append(part - start_at)
    done = [x for x in lat if x is not None]
    kept = len(done) == len(lat) and bool(done) and done[-1] - done[0] <= keepup_s
    return {"latencies": lat, "ttfp": ttfp, "kept_up": kept, "late_s": obs.late_s}


def all_final(stream: Stream, obs: Observed) -> bool:
    """Every utterance of the stream has a final covering it."""
    return all(any(covers(s, e, span) for _, s, e in obs.finals) for span in stream.speech)


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


# ---------------------------------------------------------------- Parley: worker over NATS


class Parley:
    name = "parley"

    def __init__(self, model: str, args, tmp: Path):
        from ops import devstack

        self.nats = devstack.NatsServer(tmp / "nats").start()
        env = {
            "PARLEY_NATS_URL": self.nats.url,
            "PARLEY_STT_MODEL": model,
            "PARLEY_STT_DEVICE": "cpu",
            "PARLEY_STT_COMPUTE_TYPE": "int8",
            "PARLEY_STT_CPU_THREADS": str(args.cpu_threads),
            "PARLEY_STT_PARTIAL_INTERVAL_MS": str(args.partial_ms),
            "PARLEY_STT_LANGUAGE": "en",
            "PARLEY_STT_CAPACITY": "1000",
            "PARLEY_LOG_LEVEL": "WARNING",
        }
        if args.tokens:
            env["PARLEY_STT_MAX_NEW_TOKENS"] = str(args.tokens)
        self.worker = devstack.ServiceProcess("stt", env, tmp / "stt.log").start()
        self.worker.wait_ready()
        self.pids = [self.worker.proc.pid, self.nats.proc.pid]

    async def run_stream(self, stream: Stream, obs: Observed, drain_s: float) -> None:
        import nats

        from services.common import schemas, subjects

        conv, session = str(uuid.uuid4()), str(uuid.uuid4())
        nc = await nats.connect(self.nats.url, name="bench-peer-stt")
        starts: dict[int, float] = {}
        done = asyncio.Event()

        async def on_msg(msg) -> None:
            now = time.perf_counter()
            obs.trace.append((now, msg.data.decode()))
            ev = json.loads(msg.data)
            kind = ev.get("type")
            if kind == "speech.started":
                starts[ev["utterance_seq"]] = ev["start_s"]
            elif kind == "transcript.partial" and ev["text"]:
                s = starts.get(ev["utterance_seq"])
                if s is not None:
                    obs.partials.append((now, s, s))
            elif kind == "transcript.final":
                obs.finals.append((now, ev["start_s"], ev["end_s"]))
                obs.texts.append((now, ev["text"]))
                if all_final(stream, obs):
                    done.set()

        subs = [
            await nc.subscribe(subjects.live_all(conv), cb=on_msg),
            await nc.subscribe(subjects.event_all(conv), cb=on_msg),
        ]
        req = schemas.SttOpen(conversation_id=conv, session_id=session, language="en")
        reply = await nc.request(subjects.STT_OPEN, schemas.encode(req), timeout=10)
        if not schemas.decode(reply.data, schemas.SttOpened).ok:
            raise RuntimeError(f"stt.open refused: {reply.data!r}")
        seq = 0

        async def send(frame: bytes, offset: int) -> None:
            nonlocal seq
            meta = schemas.AudioMeta(conversation_id=conv, session_id=session, chunk_seq=seq, offset=offset)
            seq += 1
            await nc.publish(subjects.audio_in(conv), frame, headers=meta.headers())

        await pace(stream, obs, send, done, drain_s)
        end = schemas.SessionEnd(conversation_id=conv, session_id=session)
        await nc.publish(subjects.control(conv, end.KIND), schemas.encode(end))
        for sub in subs:
            await sub.unsubscribe()
        await nc.drain()

    def close(self) -> None:
        self.worker.stop()
        self.nats.stop()


# ---------------------------------------------------------------- WhisperLive: its websocket


class WhisperLive:
    name = "whisperlive"

    def __init__(self, model: str, args, tmp: Path):
        from ops import devstack

        python = Path(args.peer_venv) / "bin" / "python"
        if not python.exists():
            subprocess.run([str(PEER_INSTALL), str(args.peer_venv)], check=True)
        self.port = devstack.free_port()
        self.same_output = args.peer_same_output
        self.log = tmp / "whisperlive.log"
        cmd = [str(python), str(PEER_SERVER), "--port", str(self.port), "--model", model]
        cmd += ["--tokens", str(args.tokens), "--cpu-threads", str(args.cpu_threads)]
        cmd += ["--max-clients", str(max(args.stream_counts) + 1)]
        if args.model:
            cmd.append("--timestamps")  # a real model places segments where the speaker pauses
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        devstack.wait_for_port(self.port, timeout=60, proc=self.proc)
        self.pids = [self.proc.pid]

    async def run_stream(self, stream: Stream, obs: Observed, drain_s: float) -> None:
        import websockets

        done = asyncio.Event()
        seen: set[tuple[str, str, str]] = set()
        pending: list[tuple[float, float, str] | None] = [None]
        async with websockets.connect(f"ws://127.0.0.1:{self.port}", max_size=None) as ws:
            options = {
                "uid": str(uuid.uuid4()),
                "language": "en",
                "task": "transcribe",
                "model": "tiny",
                "use_vad": True,
                "audio_format": "int16",
                "send_last_n_segments": 10,
                "no_speech_thresh": 0.45,
                "clip_audio": False,
                "same_output_threshold": self.same_output,
            }
            await ws.send(json.dumps(options))
            ready = json.loads(await asyncio.wait_for(ws.recv(), 60))
            if ready.get("message") != "SERVER_READY":
                raise RuntimeError(f"WhisperLive did not accept the stream: {ready}")

            async def receive() -> None:
                async for raw in ws:
                    now = time.perf_counter()
                    obs.trace.append((now, raw if isinstance(raw, str) else raw.decode()))
                    segments = json.loads(raw).get("segments")
                    if segments is None:
                        continue
                    open_now = None
                    added = set()
                    for seg in segments:
                        s, e, text = float(seg["start"]), float(seg["end"]), seg["text"].strip()
                        if not text:
                            continue
                        if seg.get("completed"):
                            key = (seg["start"], seg["end"], seg["text"])
                            if key not in seen:
                                seen.add(key)
                                obs.finals.append((now, s, e))
                                obs.texts.append((now, text))
                                added.add(text)
                        else:
                            open_now = (s, e, text)
                            obs.partials.append((now, s, e))
                    if open_now is None and pending[0] is not None and pending[0][2] not in added:
                        # The pending segment was committed; WhisperLive sends it as a new
                        # completed segment unless its text equals the previous one's.
                        obs.finals.append((now, *pending[0][:2]))
                        obs.texts.append((now, pending[0][2]))
                    pending[0] = open_now
                    if all_final(stream, obs):
                        done.set()

            async def send(frame: bytes, offset: int) -> None:
                await ws.send(frame)

            rx = asyncio.create_task(receive())
            try:
                await pace(stream, obs, send, done, drain_s)
                await ws.send(b"END_OF_AUDIO")
            finally:
                rx.cancel()

    def close(self) -> None:
        from ops import devstack

        devstack._stop(self.proc)


# ---------------------------------------------------------------- the run


def run_load(system, streams: list[Stream], args) -> dict:
    observed = [Observed() for _ in streams]

    async def main() -> None:
        await asyncio.gather(*(system.run_stream(s, o, args.drain_s) for s, o in zip(streams, observed)))

    cpu0, wall0 = cpu_seconds(system.pids), time.perf_counter()
    asyncio.run(main())
    cpu1, wall1 = cpu_seconds(system.pids), time.perf_counter()
    scored = [score(s, o, args.keepup_s) for s, o in zip(streams, observed)]
    for n, (s, o) in enumerate(zip(streams, observed)):
        t0 = o.sent_at[0] if o.sent_at else 0.0
        with open(Path(args.trace_dir) / f"{system.name}-{len(streams)}-{n}.jsonl", "w") as f:
            spans = [(a / SR, b / SR) for a, b in s.speech]
            f.write(json.dumps({"speech_s": spans, "offset_s": s.offset_s}) + "\n")
            for t, raw in o.trace:
                f.write(json.dumps({"t": round(t - t0, 3), "msg": raw}) + "\n")
    heard = [
        (" ".join(PHRASES[i] for i in s.said), " ".join(t for _, t in sorted(o.texts)))
        for s, o in zip(streams, observed)
    ]
    lat = [x for sc in scored for x in sc["latencies"] if x is not None]
    ttfp = [x for sc in scored for x in sc["ttfp"]]
    utts = sum(len(s.speech) for s in streams)
    audio_s = sum(len(s.pcm) for s in streams) / SR
    return {
        "system": system.name,
        "streams": len(streams),
        "utterances": utts,
        "finalized": len(lat),
        "wer": corpus_wer(heard),
        "final_p50_ms": statistics.median(lat) * 1000 if lat else None,
        "final_p95_ms": pct(lat, 0.95) * 1000 if lat else None,
        "partial_p50_ms": statistics.median(ttfp) * 1000 if ttfp else None,
        "partials_seen": len(ttfp),
        "cpu_cores": (cpu1 - cpu0) / (wall1 - wall0),
        "cpu_s_per_audio_s": (cpu1 - cpu0) / audio_s,
        "kept_up": sum(sc["kept_up"] for sc in scored),
        "bench_late_ms": max(sc["late_s"] for sc in scored) * 1000,
        "per_stream": scored,
    }


def warm_up(system, speech: list[np.ndarray], args) -> None:
    stream = Stream(np.concatenate([np.zeros(SR // 2, np.int16), speech[0]]), [speech_bounds(speech[0])], 0.0)
    stream.speech = [(a + SR // 2, b + SR // 2) for a, b in stream.speech]

    async def main() -> None:
        await system.run_stream(stream, Observed(), min(args.drain_s, 15.0))

    asyncio.run(main())


def batch_transcripts(model: str, speech: list[np.ndarray], args) -> list[str]:
    """Each phrase read whole by faster-whisper's own `transcribe()`, decoded as both systems
    decode: what streaming segmentation is measured against."""
    from faster_whisper import WhisperModel

    wm = WhisperModel(model, device="cpu", compute_type="int8", cpu_threads=args.cpu_threads)
    kw = {"max_new_tokens": args.tokens} if args.tokens else {}
    out = []
    for pcm in speech:
        segments, _ = wm.transcribe(
            pcm.astype(np.float32) / 32768.0, language="en", beam_size=1, temperature=0.0, without_timestamps=True, **kw
        )
        out.append(" ".join(seg.text.strip() for seg in segments))
    return out


def fmt(x: float | None, spec: str = "8.0f") -> str:
    if x is not None:
        return format(x, spec)
    width = int(spec.split(".")[0] or 1)
    return " " * (width - 1) + "-"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:6.2f}" if a is not None and b else "     -"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", default="1,2,4", help="concurrent streams, comma-separated")
    ap.add_argument("--seconds", type=float, default=20.0, help="speech and pauses per stream")
    ap.add_argument("--pause", default="10,14", help="silence between turns, min,max seconds")
    ap.add_argument(
        "--tokens",
        type=int,
        help="most tokens per decode, both (default: 12 for the random model, none for a real one)",
    )
    ap.add_argument("--partial-ms", type=int, default=500, help="Parley's partial interval (0: none)")
    ap.add_argument("--cpu-threads", type=int, default=os.cpu_count(), help="CTranslate2 threads (both)")
    ap.add_argument("--peer-same-output", type=int, default=10, help="WhisperLive same_output_threshold")
    ap.add_argument("--keepup-s", type=float, default=1.0, help="latency rise over a stream still kept up")
    ap.add_argument("--drain-s", type=float, default=60.0, help="longest wait for the last finals")
    ap.add_argument("--systems", default="parley,whisperlive")
    ap.add_argument(
        "--model",
        help="a real Whisper: tiny.en or base (packaged) or a CTranslate2 folder; default: the tiny random model",
    )
    ap.add_argument("--peer-venv", default=str(PEER_VENV))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "peer_stt.json"))
    args = ap.parse_args()
    args.stream_counts = [int(x) for x in args.streams.split(",")]
    pause = tuple(float(x) for x in args.pause.split(","))

    from ops.localmodels import WHISPER_MODELS, whisper_path
    from tools.testmodels.whisper import build_whisper

    cache = ROOT / ".cache" / "models"
    if args.model in WHISPER_MODELS:
        model = str(whisper_path(args.model, cache))
    else:
        model = args.model or str(build_whisper(cache / "whisper-tiny"))
    if args.tokens is None:
        args.tokens = 0 if args.model else 12
    tmp = Path(tempfile.mkdtemp(prefix="parley-bench-peer-"))
    args.trace_dir = str(tmp)
    print(f"logs and message traces in {tmp}", file=sys.stderr)
    speech = utterances(tmp)
    batch = batch_transcripts(model, speech, args)
    kinds = {"parley": Parley, "whisperlive": WhisperLive}
    systems = []
    try:
        for name in args.systems.split(","):
            system = kinds[name](model, args, tmp)
            systems.append(system)
            warm_up(system, speech, args)
        rows = []
        for c in args.stream_counts:
            streams = [make_stream(n, speech, args.seconds, pause) for n in range(c)]
            refs = [(" ".join(PHRASES[i] for i in st.said), " ".join(batch[i] for i in st.said)) for st in streams]
            rows.append({"system": "batch", "streams": c, "wer": corpus_wer(refs)})
            for system in systems:
                row = run_load(system, streams, args)
                rows.append(row)
                print(
                    f"{row['system']:12s} streams {c:3d}  finals {row['finalized']:3d}/{row['utterances']:<3d} "
                    f"WER {row['wer']:.3f} "
                    f"p50 {fmt(row['final_p50_ms'])} ms  p95 {fmt(row['final_p95_ms'])} ms  "
                    f"first partial p50 {fmt(row['partial_p50_ms'])} ms  cpu {row['cpu_cores']:4.2f} cores  "
                    f"kept up {row['kept_up']}/{c}  bench late {row['bench_late_ms']:.0f} ms",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for system in systems:
            system.close()

    by = {(r["system"], r["streams"]): r for r in rows}
    print(
        "\n| streams | system | WER | finals | final p50 ms | final p95 ms | first partial p50 ms | CPU cores "
        "| kept up |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["system"] == "batch":
            print(f"| {r['streams']} | same model, batch `transcribe()` per utterance | {r['wer']:.3f} | | | | | | |")
            continue
        print(
            f"| {r['streams']} | {r['system']} | {r['wer']:.3f} | {r['finalized']}/{r['utterances']} "
            f"| {fmt(r['final_p50_ms'], '.0f')} | {fmt(r['final_p95_ms'], '.0f')} | {fmt(r['partial_p50_ms'], '.0f')} "
            f"| {r['cpu_cores']:.2f} | {r['kept_up']}/{r['streams']} |"
        )
    ratios = []
    if len(systems) == 2:
        print("\nParley / WhisperLive (below 1: Parley lower)")
        print("| streams | final p50 | final p95 | first partial p50 | CPU |")
        print("|---|---|---|---|---|")
        for c in args.stream_counts:
            p, w = by[("parley", c)], by[("whisperlive", c)]
            keys = ("final_p50_ms", "final_p95_ms", "partial_p50_ms", "cpu_cores")
            ratios.append({"streams": c, **{k: (p[k] / w[k] if p[k] is not None and w[k] else None) for k in keys}})
            print(f"| {c} | " + " | ".join(ratio(p[k], w[k]).strip() for k in keys) + " |")
    out = write_result(
        args.out,
        {
            "args": {k: v for k, v in vars(args).items()},
            "model": model,
            "peer": {"package": "whisper-live", "version": "0.10.0", "venv": args.peer_venv},
            "rows": rows,
            "ratios": ratios,
        },
        device="cpu",
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
