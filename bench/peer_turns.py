"""Parley's turn taking beside Pipecat's, live, on the same turns and the same Smart Turn file.

    bench/peers/install-pipecat.sh                 # once: Pipecat in its own virtualenv
    python -m bench.peer_turns [--sessions 1,4,8] [--espeak-pairs 16] [--whisper tiny.en]
                               [--systems parley,pipecat]

The turns are bench/turns.py's (eot-bench's method): the 14 human turns (LibriVox readings,
ten of them with a pause mid-sentence) and espeak-ng sentence pairs, one voice and rate per
pair in turn, each said whole and with a 300-1500 ms pause mid-thought, every turn followed
by 4 s of silence. At a load of N sessions the same turns are dealt out to N sessions that
stream at once, in real time, 20 ms frames; so every load hears every turn once and the
rates compare across loads.

- **Parley**: the real STT worker process (`python -m services.stt`) on a real nats-server at
  its defaults (policy `smart`, signals `all`, 200/1600 ms: Smart Turn v3.2 and the words of
  real Whisper scored by SmolLM2 on its own llama-server, as `parley dev` runs it), fed as the
  gateway feeds it. The end of a turn is the `speech.stopped` event's arrival.
- **Pipecat** 1.14 (bench/peers/pipecat_turns.py, in its own virtualenv): one process per
  session, as its runner starts a bot per call, each with `SileroVADAnalyzer` and
  `LocalSmartTurnAnalyzerV3` (the same ONNX file) in an `LLMUserAggregator`, its default turn
  strategies; the end of a turn is its `on_user_turn_stopped`.

Both clocks are the sample clock of the pacing: an event at wall time t is at sample
(t - t0) x 16000 of its stream, so compute that falls behind shows as dead air. A false
cut-off: a turn ended before its true end. Dead air: true end to the end of the turn, over
turns not cut off (median, p90). CPU: every process of the system (Parley: worker, nats-server,
llama-server; Pipecat: its session processes) in milliseconds per second of audio streamed,
which is cores per live session; memory: resident, per session. What they do not do alike:
Parley's CPU includes transcribing every utterance (its words signal needs it, and the worker
is the STT); Pipecat's pipeline has no STT, which it would need beside this. Prints a table
with Parley/Pipecat ratios per load, writes JSON (bench/results/peer_turns.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.common import ROOT, pct, rss_mib, write_result
from bench.peer_stt import cpu_seconds
from bench.turns import SR, Turn, espeak_turns, human_turns

FRAME = 320
TAIL_S = 0.5
"""Silence added after bench/turns.py's 3.5 s, so Pipecat's 3 s fallback ends every turn."""
PEER_VENV = ROOT / ".cache" / "peers" / "pipecat-venv"
PEER_INSTALL = ROOT / "bench" / "peers" / "install-pipecat.sh"
PEER_SESSION = ROOT / "bench" / "peers" / "pipecat_turns.py"


@dataclass
class Session:
    """One stream: its turns back to back, where each starts, and what the system did."""

    turns: list[Turn]
    audio: np.ndarray = field(init=False)
    starts: list[int] = field(init=False)
    stops: list[int] = field(default_factory=list)
    """Samples of the stream at which the system ended a turn."""
    cpu_s: float = 0.0
    rss_mib: float = 0.0

    def __post_init__(self) -> None:
        parts, self.starts, at = [], [], 0
        for t in self.turns:
            audio = np.concatenate([t.audio, np.zeros(int(TAIL_S * SR), np.int16)])
            self.starts.append(at)
            parts.append(audio)
            at += len(audio)
        self.audio = np.concatenate(parts) if parts else np.zeros(FRAME, np.int16)


def outcomes(s: Session) -> list[tuple[Turn, bool, float | None]]:
    """Per turn: cut off, and the dead air (ms) if not (None: never ended within its slot)."""
    out = []
    bounds = [*s.starts[1:], len(s.audio)]
    for t, start, end in zip(s.turns, s.starts, bounds):
        inside = [x for x in s.stops if start <= x < end]
        cut = any(x < start + t.true_end for x in inside)
        after = [x for x in inside if x >= start + t.true_end]
        out.append((t, cut, None if cut or not after else (after[0] - start - t.true_end) / SR * 1000))
    return out


async def pace(audio: np.ndarray, send) -> float:
    """Send in real time, frame k once its last sample is due; returns t0 (monotonic)."""
    t0 = time.monotonic()
    for k, at in enumerate(range(0, len(audio) - FRAME + 1, FRAME)):
        await asyncio.sleep(max(0.0, t0 + (k + 1) * FRAME / SR - time.monotonic()))
        await send(audio[at : at + FRAME].tobytes(), at)
    return t0


class Parley:
    name = "parley"

    def __init__(self, args, tmp: Path):
        from ops import devstack, localmodels

        cache = ROOT / ".cache" / "models"
        self.nats = devstack.NatsServer(tmp / "nats").start()
        self.scorer = localmodels.LlamaServer(localmodels.gguf_path(), tmp / "scorer.log", threads=1, context=512)
        self.scorer.start()
        env = {
            **localmodels.local_model_env(cache, args.whisper).env,
            **localmodels.turn_scorer_env(self.scorer).env,
            "PARLEY_NATS_URL": self.nats.url,
            "PARLEY_STT_CAPACITY": "1000",
            "PARLEY_LOG_LEVEL": "WARNING",
        }
        self.worker = devstack.ServiceProcess("stt", env, tmp / "stt.log").start()
        self.worker.wait_ready()
        self.pids = [self.worker.proc.pid, self.nats.proc.pid, self.scorer.proc.pid]

    def run(self, sessions: list[Session]) -> None:
        cpu0 = cpu_seconds(self.pids)
        asyncio.run(self._all(sessions))
        per = (cpu_seconds(self.pids) - cpu0) / len(sessions)
        rss = sum(rss_mib(p) for p in self.pids) / len(sessions)
        for s in sessions:
            s.cpu_s, s.rss_mib = per, rss

    async def _all(self, sessions: list[Session]) -> None:
        await asyncio.gather(*(self._one(s) for s in sessions))

    async def _one(self, s: Session) -> None:
        import nats

        from services.common import schemas, subjects

        conv, session = str(uuid.uuid4()), str(uuid.uuid4())
        nc = await nats.connect(self.nats.url, name="bench-peer-turns")
        clock = {"t0": time.monotonic()}

        async def on_msg(msg) -> None:
            if json.loads(msg.data).get("type") == "speech.stopped":
                s.stops.append(int((time.monotonic() - clock["t0"]) * SR))

        sub = await nc.subscribe(subjects.live_all(conv), cb=on_msg)
        req = schemas.SttOpen(conversation_id=conv, session_id=session, language="en")
        reply = await nc.request(subjects.STT_OPEN, schemas.encode(req), timeout=10)
        if not schemas.decode(reply.data, schemas.SttOpened).ok:
            raise RuntimeError(f"stt.open refused: {reply.data!r}")
        seq = 0

        async def send(frame: bytes, offset: int) -> None:
            nonlocal seq
            if seq == 0:
                clock["t0"] = time.monotonic() - FRAME / SR
            meta = schemas.AudioMeta(conversation_id=conv, session_id=session, chunk_seq=seq, offset=offset)
            seq += 1
            await nc.publish(subjects.audio_in(conv), frame, headers=meta.headers())

        await pace(s.audio, send)
        await asyncio.sleep(1.0)
        end = schemas.SessionEnd(conversation_id=conv, session_id=session)
        await nc.publish(subjects.control(conv, end.KIND), schemas.encode(end))
        await sub.unsubscribe()
        await nc.drain()

    def close(self) -> None:
        self.worker.stop()
        self.scorer.stop()
        self.nats.stop()


class Pipecat:
    name = "pipecat"

    def __init__(self, args, tmp: Path):
        from ops.localmodels import smart_turn_path

        if not (PEER_VENV / "bin" / "python").exists():
            subprocess.run([str(PEER_INSTALL), str(PEER_VENV)], check=True)
        self.tmp = tmp
        self.model = str(smart_turn_path(ROOT / ".cache" / "models"))

    def run(self, sessions: list[Session]) -> None:
        procs = []
        for n, s in enumerate(sessions):
            path = self.tmp / f"pipecat-{len(sessions)}-{n}.npy"
            np.save(path, s.audio)
            cmd = [str(PEER_VENV / "bin" / "python"), str(PEER_SESSION), str(path), "--smart-turn", self.model]
            log = open(self.tmp / f"pipecat-{len(sessions)}-{n}.log", "ab")
            procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True))
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a Pipecat session did not start: see {self.tmp}")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        for s, p in zip(sessions, procs):
            out = json.loads(p.stdout.readline())
            p.wait(timeout=30)
            s.stops, s.cpu_s = out["stops"], out["cpu_s"]
            s.rss_mib = out["rss_mib"]

    def close(self) -> None:
        pass


def deal(turns: list[Turn], n: int, seed: int) -> list[Session]:
    """The same turns over n sessions, shuffled once, each session's share about as long."""
    order = list(turns)
    random.Random(seed).shuffle(order)
    shares: list[list[Turn]] = [[] for _ in range(n)]
    load = [0] * n
    for t in sorted(order, key=lambda t: -len(t.audio)):
        i = load.index(min(load))
        shares[i].append(t)
        load[i] += len(t.audio)
    for share in shares:
        random.Random(seed).shuffle(share)
    return [Session(share) for share in shares]


def summarize(system: str, sessions: list[Session]) -> list[dict]:
    rows = []
    results = [r for s in sessions for r in outcomes(s)]
    audio_s = sum(len(s.audio) for s in sessions) / SR
    cpu = sum(s.cpu_s for s in sessions)
    for source in ("human", "espeak-ng", "all"):
        mine = [r for r in results if source in ("all", r[0].source)]
        dead = [d for _, cut, d in mine if not cut and d is not None]
        rows.append(
            {
                "system": system,
                "sessions": len(sessions),
                "source": source,
                "turns": len(mine),
                "cut_off_pct": 100 * sum(cut for _, cut, _ in mine) / len(mine),
                "never_ended": sum(1 for _, cut, d in mine if not cut and d is None),
                "dead_air_p50_ms": statistics.median(dead) if dead else None,
                "dead_air_p90_ms": pct(dead, 0.9) if dead else None,
                "cpu_ms_per_audio_s": 1000 * cpu / audio_s,
                "rss_mib_per_session": sum(s.rss_mib for s in sessions) / len(sessions),
            }
        )
    return rows


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


KEYS = ("cut_off_pct", "dead_air_p50_ms", "dead_air_p90_ms", "cpu_ms_per_audio_s", "rss_mib_per_session")


def compare(rows: list[dict]) -> list[dict]:
    """Parley over Pipecat, per load and source, printed."""
    peers = {(r["sessions"], r["source"]): r for r in rows if r["system"] == "pipecat"}
    out = []
    for row in rows:
        peer = peers.get((row["sessions"], row["source"]))
        if row["system"] != "parley" or peer is None:
            continue
        out.append({"sessions": row["sessions"], "source": row["source"], **{k: ratio(row[k], peer[k]) for k in KEYS}})
        print(f"parley/pipecat x{row['sessions']} {row['source']:9s} " + " ".join(f"{k}={out[-1][k]}" for k in KEYS))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", default="1,4,8")
    ap.add_argument("--espeak-pairs", type=int, default=16)
    ap.add_argument("--whisper", default="tiny.en", choices=("tiny.en", "base"))
    ap.add_argument("--systems", default="parley,pipecat")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "peer_turns.json"))
    args = ap.parse_args()
    rng = random.Random(7)
    tmp = Path(tempfile.mkdtemp(prefix="parley-bench-peer-turns-"))
    espeak = espeak_turns(args.espeak_pairs, tmp, rng)
    turns = [t for i, t in enumerate(espeak) if (i // 2) % 4 == (i // 8) % 4] + human_turns(rng)
    print(f"{len(turns)} turns, {sum(len(t.audio) for t in turns) / SR:.0f} s of audio; logs in {tmp}", flush=True)
    kinds = {"parley": Parley, "pipecat": Pipecat}
    rows = []
    for name in args.systems.split(","):
        system = kinds[name](args, tmp)
        try:
            if name == "parley":
                system.run(deal(turns[:1], 1, 0))
            for n in map(int, args.sessions.split(",")):
                sessions = deal(turns, n, 7)
                system.run(sessions)
                for row in summarize(name, sessions):
                    rows.append(row)
                    print(
                        f"{name:8s} x{n} {row['source']:9s} n={row['turns']:3d} cut-off {row['cut_off_pct']:5.1f} %"
                        f" dead air p50 {fmt(row['dead_air_p50_ms'], '.0f'):>5s} p90 "
                        f"{fmt(row['dead_air_p90_ms'], '.0f'):>5s} ms never {row['never_ended']}"
                        f" cpu {row['cpu_ms_per_audio_s']:.0f} ms/s rss {row['rss_mib_per_session']:.0f} MiB",
                        flush=True,
                    )
        finally:
            system.close()
    ratios = compare(rows)
    write_result(args.out, {"rows": rows, "ratios": ratios, "args": vars(args)}, whisper=args.whisper)


if __name__ == "__main__":
    main()
