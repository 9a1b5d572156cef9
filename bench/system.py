"""What the system itself adds to voice-to-voice, with the three model stages stood in for.

    python -m bench.system [--conversations 1,10,50,100] [--turns 5] [--sentences 2]
    python -m bench.system --mode overlap [--conversations 1] [--lengths 1,3,6] [--turns 5]

The whole stack as separate processes: a real nats-server, Postgres and S3 stand-in (moto),
the real gateway, orchestrator (`python -m services.llm`) and storage service, and the three
model stages replaced by the stand-ins in bench/standins (each its own process, speaking
the real protocol on the bus; see bench/standins/__init__.py). Clients (in a separate
process, a minimal asyncio WebSocket client each, bench/gateway.py's) stream PCM16 16 kHz
mic audio in real time in 20 ms frames the whole session, speak an utterance (`--speech-s`),
wait for the reply's audio to end, report playback ended and their latency as the web
client does, pause (`--think-s`), and speak again. Conversations start at random moments
within the first few seconds, as independent users would.

Voice-to-voice is timed from the client sending its last speech frame to the first byte of
reply audio reaching it. Every process shares the host's wall clock, so the turn is cut
into hops with the marks already in the pipeline (the STT stand-in's `speech_end`, `eot`
and `final` on the `UserTurn`, the orchestrator's `llm_received`, `started`,
`first_token`, `first_sentence` on the reply row) and the LLM and TTS stand-ins' own logs
(request in and first token out; job in and first chunk out):

    mic in        last speech frame sent -> STT stand-in has it (WebSocket, gateway, AUDIO_IN)
    stt (stand-in)   its own time (0 in overhead mode)
    turn hop      final transcript -> orchestrator handler (transcript event + UserTurn fact)
    orchestrator  handler -> LLM request sent (turn gate, history, prompt)
    http out      request sent -> LLM stand-in has it
    llm (stand-in)   request in -> first token out
    http back     first token out -> orchestrator has it
    cut           first token -> first piece dispatched; it waits for the piece's tokens,
                  whose pace is the LLM stand-in's (logged, counted as stand-in time)
    job hop       first piece -> TTS stand-in has its job (TtsJob fact, work queue)
    tts (stand-in)   job in -> first chunk out
    audio out     first chunk out -> client (live audio, gateway playout, WebSocket)

"Overhead" is voice-to-voice minus the stand-ins' own times (STT final delay, LLM first
token and the first piece's further tokens, TTS first chunk): the bus, the database, the
services and the clients' sockets, under the load of N live conversations.

`--mode overhead` (default): stand-ins at zero latency, N concurrent conversations per step.
`--mode overlap`: stand-ins with latencies typical of local GPU models (STT final 50 ms after
the end of speech, LLM first token 150 ms then 30 tokens/s, TTS first chunk 150 ms then
real time), replies of 1, 3 and 6 sentences: voice-to-voice should stay at the first
piece's path (STT + LLM first token + the first piece's tokens + TTS first chunk) whatever
the reply's length, while the reply's audio end grows with it.

Prints a table, writes JSON (bench/results/system.json, or system_overlap.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import numpy as np
import uvloop

from bench.common import ROOT, pct, write_result
from bench.standins import end_frame, speech_frame
from ops import devstack
from services.common import db, ids

SECRET = "parley-bench-secret-not-for-production-use"
RATE = 16000
OUT_RATE = 24000
AUDIO_HEAD = 28
"""The gateway's audio frame header (services/gateway/protocol.py AUDIO_HEADER)."""

PROFILES = {
    "overhead": {"stt_final_ms": 0.0, "llm_first_token_ms": 0.0, "llm_tokens_per_s": 0.0, "tts_first_chunk_ms": 0.0},
    "overlap": {
        "stt_final_ms": 50.0,
        "llm_first_token_ms": 150.0,
        "llm_tokens_per_s": 30.0,
        "tts_first_chunk_ms": 150.0,
    },
}
FIRST_PIECE_TOKENS = 6
"""The LLM stand-in's first piece is cut when its sixth token arrives (bench/standins/llm.py)."""

HOPS = [
    ("mic_in", "mic in (client -> STT)"),
    ("stt_standin", "stt stand-in"),
    ("turn_hop", "turn hop (final -> orchestrator)"),
    ("orchestrator", "orchestrator (gate, prompt)"),
    ("http_out", "http out (request -> LLM)"),
    ("llm_standin", "llm stand-in (first token)"),
    ("http_back", "http back (token -> orchestrator)"),
    ("cut", "cut (first token -> first piece)"),
    ("job_hop", "job hop (piece -> TTS)"),
    ("tts_standin", "tts stand-in (first chunk)"),
    ("audio_out", "audio out (chunk -> client)"),
]
STANDINS = ("stt_standin", "llm_standin", "tts_standin")


# --- the clients (a separate process) -------------------------------------------------------


@dataclass
class ClientConfig:
    port: int
    conversations: int
    turns: int
    sentences: int
    speech_s: float
    think_s: tuple[float, float]
    frame_ms: int
    start_spread_s: float
    turn_timeout_s: float
    tag: str
    seed: int


class Conv:
    """One client session: its mic pump state, the turn in progress, what arrived when."""

    def __init__(self, index: int, cfg: ClientConfig, noise: bytes):
        self.index = index
        self.cfg = cfg
        self.frame_bytes = RATE * 2 * cfg.frame_ms // 1000
        self.speech = speech_frame(self.frame_bytes, noise)
        self.silence = b"\0" * self.frame_bytes
        self.noise = noise
        self.ws = None
        self.conv = ""
        self.started: asyncio.Future = asyncio.get_running_loop().create_future()
        self.frames_left = 0
        self.text = ""
        self.turn: dict | None = None
        self.done = asyncio.Event()
        self.first_audio: dict[bytes, float] = {}
        self.audio_s: dict[bytes, float] = {}
        self.gap_s: dict[bytes, float] = {}
        """Per reply, the longest a player starting at its first frame would have waited for audio."""
        self.stored: set[str] = set()
        self.errors: list[str] = []
        self.records: list[dict] = []

    def next_frame(self, due: float) -> bytes:
        if self.frames_left > 1:
            self.frames_left -= 1
            return self.speech
        if self.frames_left == 1:
            self.frames_left = 0
            now = time.time()
            self.turn["end"] = now
            self.turn["late_ms"] = (time.monotonic() - due) * 1000
            return end_frame(self.frame_bytes, now, self.text, self.noise)
        return self.silence

    def on_audio(self, payload: bytes, _now: float) -> None:
        mid = payload[2:18]
        now = time.time()
        first = self.first_audio.setdefault(mid, now)
        before = self.audio_s.get(mid, 0.0)
        self.gap_s[mid] = max(self.gap_s.get(mid, 0.0), now - first - before)
        self.audio_s[mid] = before + (len(payload) - AUDIO_HEAD) / 2 / OUT_RATE

    def on_text(self, payload: bytes) -> None:
        ev = json.loads(payload)
        kind = ev.get("type")
        t = self.turn
        if kind == "session.started":
            self.conv = ev["conversation_id"]
            if not self.started.done():
                self.started.set_result(ev.get("speech_input", False))
        elif kind == "transcript.final" and t is not None:
            t["user_message_id"] = ev["message_id"]
            t["reply_id"] = ids.reply_id(ev["message_id"], ids.DEMO_AVATAR_ID)
            t["final_at_client"] = time.time()
        elif kind == "audio.end" and t is not None and ev["message_id"] == t.get("reply_id"):
            t["audio_end"] = time.time()
            self.done.set()
        elif kind == "audio.stored":
            self.stored.add(ev["message_id"])
        elif kind == "error":
            self.errors.append(ev.get("code", "?"))
            if t is not None and ev.get("message_id") in (t.get("reply_id"), t.get("user_message_id")):
                t["error"] = ev.get("code")
                self.done.set()

    async def open(self) -> None:
        from bench.gateway import WsClient
        from services.gateway.auth import mint_token

        loop = asyncio.get_running_loop()
        _, self.ws = await loop.create_connection(
            lambda: WsClient("127.0.0.1", self.cfg.port, False, self.on_audio, self.on_text), "127.0.0.1", self.cfg.port
        )
        await asyncio.wait_for(self.ws.upgraded, 30)
        token = mint_token(SECRET, f"bench-{self.cfg.tag}-{self.index}")
        self.ws.send_text(json.dumps({"type": "session.start", "token": token}))
        if not await asyncio.wait_for(asyncio.shield(self.started), 30):
            raise RuntimeError("no speech input for the session")

    async def talk(self, rng: random.Random) -> None:
        cfg = self.cfg
        await asyncio.sleep(rng.uniform(0, cfg.start_spread_s))
        speech_frames = max(2, round(cfg.speech_s * 1000 / cfg.frame_ms))
        for n in range(cfg.turns):
            self.done.clear()
            self.turn = {"conv": self.index, "turn": n}
            self.text = f"Question {n} from client {self.index}. [sentences={cfg.sentences}]"
            self.frames_left = speech_frames
            try:
                await asyncio.wait_for(self.done.wait(), cfg.speech_s + cfg.turn_timeout_s)
            except TimeoutError:
                self.turn["error"] = "timeout"
            t = self.turn
            reply = t.get("reply_id")
            if reply:
                key = uuid.UUID(reply).bytes
                if key in self.first_audio:
                    t["first_audio"] = self.first_audio[key]
                    t["audio_s"] = self.audio_s.get(key, 0.0)
                    t["gap_s"] = self.gap_s.get(key, 0.0)
                    played = t["audio_s"] * 1000
                    self.ws.send_text(
                        json.dumps({"type": "playback", "message_id": reply, "played_ms": played, "ended": True})
                    )
                    v2v = (t["first_audio"] - t["end"]) * 1000
                    if 0 < v2v < 120000:
                        self.ws.send_text(
                            json.dumps({"type": "latency", "message_id": reply, "voice_to_voice_ms": v2v})
                        )
            self.records.append(t)
            self.turn = None
            await asyncio.sleep(rng.uniform(*cfg.think_s))
        # Let the last reply's audio be stored before the session ends (storage works beside).
        deadline = time.monotonic() + 10
        last = self.records[-1].get("reply_id")
        while last and last not in self.stored and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for r in self.records:
            r["stored"] = r.get("reply_id") in self.stored


async def _clients(cfg: ClientConfig, conn) -> None:
    rng = random.Random(cfg.seed)
    noise = np.random.default_rng(cfg.seed).normal(0, 900, RATE).clip(-32768, 32767).astype("<i2").tobytes()
    convs = [Conv(i, cfg, noise) for i in range(cfg.conversations)]
    gate = asyncio.Semaphore(8)

    async def open_one(c: Conv) -> None:
        async with gate:
            await c.open()

    outcomes = await asyncio.gather(*(open_one(c) for c in convs), return_exceptions=True)
    failed = [f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)]
    live = [c for c, o in zip(convs, outcomes) if not isinstance(o, BaseException)]
    cpu0 = time.process_time()
    t0 = time.monotonic()
    stop = asyncio.Event()
    period = cfg.frame_ms / 1000
    late: list[float] = []

    async def pump() -> None:
        """Every session's mic frames in real time, sessions at phases spread over a frame."""
        k = 0
        phased = [(period * i / max(1, len(live)), c) for i, c in enumerate(live)]
        while not stop.is_set():
            base = t0 + k * period
            for phase, c in phased:
                due = base + phase
                delay = due - time.monotonic()
                if delay > 0.0005:
                    await asyncio.sleep(delay)
                late.append((time.monotonic() - due) * 1000)
                c.ws.send_audio(c.next_frame(due), False)
            k += 1

    pumping = asyncio.create_task(pump())
    await asyncio.gather(*(c.talk(random.Random(rng.random())) for c in live))
    stop.set()
    await pumping
    busy_s = time.monotonic() - t0
    cpu_s = time.process_time() - cpu0
    for c in live:
        c.ws.send_text(json.dumps({"type": "session.end"}))
    await asyncio.gather(*(c.ws.close() for c in live), return_exceptions=True)
    conn.send(
        {
            "records": [r for c in live for r in c.records],
            "opened": len(live),
            "open_failures": failed[:5],
            "errors": [e for c in live for e in c.errors],
            "client_cpu": cpu_s / busy_s if busy_s else 0.0,
            "pump_late_ms": {"p50": pct(late, 0.5), "p99": pct(late, 0.99)} if late else {},
        }
    )


def client_main(cfg: ClientConfig, conn) -> None:
    uvloop.run(_clients(cfg, conn))


# --- the stack ------------------------------------------------------------------------------


class Stack:
    """Infrastructure, the stand-ins and the real services, each its own process (moto's S3
    runs in a thread of this process, which only waits while clients run)."""

    def __init__(self, args, profile: dict):
        self.args = args
        self.profile = profile
        self.work = Path(tempfile.mkdtemp(prefix="parley-bench-system-"))
        self.standins: dict[str, subprocess.Popen] = {}
        self.procs: dict[str, devstack.ServiceProcess] = {}
        self.nats = self.pg = self.s3 = None
        self.llm_log = self.work / "llm-standin.jsonl"
        self.tts_log = self.work / "tts-standin.jsonl"

    def _standin(self, name: str, *argv: str) -> None:
        log = open(self.work / f"{name}-standin.log", "ab")  # noqa: SIM115
        self.standins[name] = subprocess.Popen(
            [sys.executable, "-m", f"bench.standins.{name}", *argv], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )

    def start(self) -> Stack:
        from ops.cli import seed
        from services.common.settings import ServiceSettings

        a, p = self.args, self.profile
        self.nats = devstack.NatsServer(self.work / "nats").start()
        self.pg = devstack.PostgresCluster().start()
        self.s3 = devstack.S3StandIn().start()
        llm_port = devstack.free_port()
        env = {
            "PARLEY_NATS_URL": self.nats.url,
            "PARLEY_DATABASE_URL": self.pg.url,
            "PARLEY_S3_ENDPOINT_URL": self.s3.url,
            "PARLEY_S3_ACCESS_KEY_ID": "bench",
            "PARLEY_S3_SECRET_ACCESS_KEY": "bench",
            "PARLEY_S3_REGION": "us-east-1",
            "PARLEY_LLM_BASE_URL": f"http://127.0.0.1:{llm_port}/v1",
            "PARLEY_LOG_LEVEL": "WARNING",
            "PARLEY_AUTH_JWT_SECRET": SECRET,
            "PARLEY_MAX_SESSIONS_PER_USER": "100000",
        }
        os.environ.update(env)
        db.migrate(self.pg.url)
        asyncio.run(seed(ServiceSettings()))
        self._standin("stt", "--nats", self.nats.url, "--final-ms", str(p["stt_final_ms"]))
        self._standin(
            "llm",
            "--port",
            str(llm_port),
            "--first-token-ms",
            str(p["llm_first_token_ms"]),
            "--tokens-per-s",
            str(p["llm_tokens_per_s"]),
            "--log",
            str(self.llm_log),
        )
        self._standin(
            "tts",
            "--nats",
            self.nats.url,
            "--first-chunk-ms",
            str(p["tts_first_chunk_ms"]),
            "--rtf",
            str(a.tts_rtf),
            "--capacity",
            str(a.tts_capacity),
            "--log",
            str(self.tts_log),
        )
        devstack.wait_for_port(llm_port, proc=self.standins["llm"])
        self.procs = devstack.start_services(env, self.work / "logs", names=("gateway", "llm", "storage"))
        time.sleep(1.0)  # the stand-ins' consumers and first heartbeat
        return self

    def pids(self) -> dict[str, int]:
        out = {n: p.proc.pid for n, p in self.procs.items()}
        out["nats"] = self.nats.proc.pid
        out.update({f"{n}-standin": p.pid for n, p in self.standins.items()})
        out["bench (moto S3)"] = os.getpid()
        try:
            postmaster = int((self.pg.data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
            for n, pid in enumerate([postmaster, *_children(postmaster)]):
                out[f"postgres/{n}"] = pid
        except (OSError, ValueError):
            pass
        return out

    def stop(self) -> None:
        for p in self.procs.values():
            p.stop()
        for p in self.standins.values():
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        for part in (self.s3, self.pg, self.nats):
            if part is not None:
                part.stop()


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _host_busy() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole host since boot, from /proc/stat."""
    vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(vals) - vals[3] - vals[4] - vals[7]) / tick, sum(vals) / tick


def _children(ppid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rpartition(")")[2].split()[1]) == ppid:
                    out.append(int(d.name))
            except (OSError, ValueError):
                pass
    return out


def _read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def _timings(url: str, message_ids: list[str]) -> dict[str, dict]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT id::text, timings FROM messages WHERE id = ANY($1::uuid[])", message_ids)
    finally:
        await conn.close()
    return {r["id"]: (json.loads(r["timings"]) if isinstance(r["timings"], str) else r["timings"]) for r in rows}


def _hops(records: list[dict], stack: Stack) -> list[dict]:
    """Join each turn's client times with the pipeline's marks and the stand-ins' logs."""
    ok = [r for r in records if "first_audio" in r and "reply_id" in r and "end" in r]
    marks = asyncio.run(_timings(stack.pg.url, [r["user_message_id"] for r in ok] + [r["reply_id"] for r in ok]))
    llm = {x["turn"]: x for x in _read_log(stack.llm_log)}
    tts = {x["message_id"]: x for x in _read_log(stack.tts_log) if x["sentence_index"] == 0}
    out = []
    for r in ok:
        user, reply = marks.get(r["user_message_id"]), marks.get(r["reply_id"])
        lg, tt = llm.get(r["user_message_id"]), tts.get(r["reply_id"])
        if not (user and reply and lg and tt and "first_sentence" in reply):
            continue
        a = r["end"]
        points = [
            a,
            user["eot"],
            user["final"],
            reply["llm_received"],
            reply["started"],
            lg["received"],
            lg["first_token"],
            reply["first_token"],
            reply["first_sentence"],
            tt["received"],
            tt["first_chunk"],
            r["first_audio"],
        ]
        h = {key: (points[i + 1] - points[i]) * 1000 for i, (key, _) in enumerate(HOPS)}
        h["voice_to_voice"] = (r["first_audio"] - a) * 1000
        # The cut waits for the first piece's tokens: the model's pace, not ours.
        tokens = lg.get("tokens") or [lg["first_token"]]
        h["llm_piece_tokens"] = (tokens[min(len(tokens), FIRST_PIECE_TOKENS) - 1] - tokens[0]) * 1000
        h["cut_own"] = h["cut"] - h["llm_piece_tokens"]
        h["overhead"] = h["voice_to_voice"] - sum(h[k] for k in STANDINS) - h["llm_piece_tokens"]
        h["audio_end"] = (r["audio_end"] - a) * 1000
        h["audio_s"] = r.get("audio_s", 0.0)
        h["playback_gap"] = r.get("gap_s", 0.0) * 1000
        h["at"] = a
        h["conv"], h["turn"] = r["conv"], r["turn"]
        out.append(h)
    return out


def _summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": pct(values, 0.5),
        "p95": pct(values, 0.95),
        "p99": pct(values, 0.99),
        "max": max(values),
    }


def run_step(stack: Stack, args, n: int, sentences: int, turns: int, tag: str) -> dict:
    ctx = mp.get_context("spawn")
    cfg = ClientConfig(
        port=stack.procs["gateway"].port,
        conversations=n,
        turns=turns,
        sentences=sentences,
        speech_s=args.speech_s,
        think_s=(args.think_s * 0.5, args.think_s * 1.5),
        frame_ms=args.frame_ms,
        start_spread_s=args.start_spread_s,
        turn_timeout_s=args.turn_timeout_s,
        tag=tag,
        seed=zlib.crc32(tag.encode()) & 0xFFFF,
    )
    parent, child = ctx.Pipe()
    gen = ctx.Process(target=client_main, args=(cfg, child), daemon=True)
    pids = stack.pids()
    t0 = time.monotonic()
    cpu0 = {k: _cpu_s(p) for k, p in pids.items()}
    host0 = _host_busy()
    load0 = os.getloadavg()[0]
    gen.start()
    try:
        out = parent.recv()
    finally:
        gen.join(30)
        if gen.is_alive():
            gen.terminate()
    wall = time.monotonic() - t0
    host1 = _host_busy()
    cpu = {k: (_cpu_s(p) - cpu0[k]) / wall for k, p in pids.items()}
    pg_cpu = sum(v for k, v in cpu.items() if k.startswith("postgres/"))
    cpu = {k: v for k, v in cpu.items() if not k.startswith("postgres/")} | {"postgres": pg_cpu}
    host_cores = (host1[0] - host0[0]) / wall
    outside = max(0.0, host_cores - sum(cpu.values()) - out["client_cpu"])
    time.sleep(0.5)  # the stand-ins' last log lines
    hops = _hops(out["records"], stack)
    keys = ["voice_to_voice", "overhead", *[k for k, _ in HOPS], "llm_piece_tokens", "cut_own"]
    keys += ["audio_end", "audio_s", "playback_gap"]
    return {
        "conversations": n,
        "sentences": sentences,
        "turns": len(out["records"]),
        "timed": len(hops),
        "failed_turns": sum(1 for r in out["records"] if "first_audio" not in r),
        "stored": sum(1 for r in out["records"] if r.get("stored")),
        "opened": out["opened"],
        "open_failures": out["open_failures"],
        "errors": out["errors"],
        "ms": {k: _summary([h[k] for h in hops]) for k in keys},
        "cpu": cpu,
        "client_cpu": out["client_cpu"],
        "host_busy_cores": host_cores,
        "host_cores": os.cpu_count(),
        "outside_bench_cores": outside,
        "pump_late_ms": out["pump_late_ms"],
        "load_avg_1m": (load0, os.getloadavg()[0]),
        "wall_s": wall,
        "samples_ms": [{k: round(v, 3) for k, v in h.items()} for h in hops],
    }


def _f(s: dict, k: str) -> str:
    return f"{s[k]:7.2f}" if k in s else "      -"


def print_overhead(r: dict) -> None:
    ms = r["ms"]
    print(
        f"\n{r['conversations']} conversations: {r['timed']}/{r['turns']} turns timed, {r['failed_turns']} failed, "
        f"{r['stored']} replies stored; load {r['load_avg_1m'][0]:.1f}->{r['load_avg_1m'][1]:.1f}; "
        f"client mic pump late p99 {r['pump_late_ms'].get('p99', float('nan')):.1f} ms"
    )
    if r["errors"]:
        print(f"  errors sent to clients: {sorted(set(r['errors']))}")
    print(f"  {'ms':40} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7}")
    rows = [("voice_to_voice", "voice-to-voice (client)"), ("overhead", "OVERHEAD (minus stand-ins)")]
    rows += [(k, "  " + label) for k, label in HOPS] + [("llm_piece_tokens", "  (llm stand-in: first piece's tokens)")]
    for key, label in rows:
        s = ms[key]
        print(f"  {label:40} {_f(s, 'p50')} {_f(s, 'p95')} {_f(s, 'p99')} {_f(s, 'max')}")
    busy = ", ".join(f"{k} {v * 100:.0f}" for k, v in sorted(r["cpu"].items(), key=lambda kv: -kv[1]))
    print(f"  CPU % of a core: {busy}, clients {r['client_cpu'] * 100:.0f}")
    print(
        f"  host: {r['host_busy_cores']:.2f} of {r['host_cores']} cores busy, "
        f"{r['outside_bench_cores']:.2f} of them outside this bench"
    )


def print_overlap(results: list[dict], profile: dict) -> None:
    path = (
        profile["stt_final_ms"]
        + profile["llm_first_token_ms"]
        + (FIRST_PIECE_TOKENS - 1) * 1000 / profile["llm_tokens_per_s"]
        + profile["tts_first_chunk_ms"]
    )
    print(
        f"\nfirst-piece path as configured: STT {profile['stt_final_ms']:g} + LLM first token "
        f"{profile['llm_first_token_ms']:g} + {FIRST_PIECE_TOKENS - 1} more tokens at "
        f"{profile['llm_tokens_per_s']:g}/s + TTS first chunk {profile['tts_first_chunk_ms']:g} = {path:.0f} ms"
    )
    cols = [
        ("voice_to_voice", "v2v"),
        ("stt_standin", "stt"),
        ("turn_hop", "turn"),
        ("orchestrator", "orch"),
        ("llm_standin", "llm1st"),
        ("llm_piece_tokens", "tokens"),
        ("cut_own", "cut"),
        ("job_hop", "job"),
        ("tts_standin", "tts1st"),
        ("audio_out", "out"),
        ("overhead", "ovhd"),
        ("audio_end", "end"),
        ("playback_gap", "gap"),
    ]
    print(
        "p50 ms per stage (v2v also p95); tokens: the first piece's tokens after the first; end: last audio "
        "byte at the client; gap: longest wait a player starting at the first byte would have; audio: seconds"
    )
    head = f"{'conv':>4} {'sent':>4} {'turns':>5} {'v2v p95':>8} " + " ".join(f"{c:>7}" for _, c in cols)
    print(head + f" {'audio':>6}")
    for r in results:
        ms = r["ms"]
        row = f"{r['conversations']:4d} {r['sentences']:4d} {r['timed']:5d} {_f(ms['voice_to_voice'], 'p95'):>8} "
        row += " ".join(_f(ms[k], "p50") for k, _ in cols)
        row += f" {ms['audio_s'].get('p50', float('nan')):6.1f}"
        print(row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=sorted(PROFILES), default="overhead")
    ap.add_argument("--conversations", default=None, help="comma-separated steps (overhead 1,10,50,100; overlap 1)")
    ap.add_argument("--turns", type=int, default=5, help="turns per conversation")
    ap.add_argument("--sentences", type=int, default=2, help="sentences per reply (overhead mode)")
    ap.add_argument("--lengths", default="1,3,6", help="sentences per reply, one step each (overlap mode)")
    ap.add_argument("--speech-s", type=float, default=1.0, help="speech per utterance, streamed in real time")
    ap.add_argument("--think-s", type=float, default=1.0, help="mean pause after a reply (0.5x..1.5x)")
    ap.add_argument("--frame-ms", type=int, default=20)
    ap.add_argument("--start-spread-s", type=float, default=2.0, help="conversations start within this")
    ap.add_argument("--turn-timeout-s", type=float, default=20.0)
    ap.add_argument("--tts-rtf", type=float, default=None, help="TTS stand-in pace after the first chunk")
    ap.add_argument("--tts-capacity", type=int, default=64, help="TTS stand-in sentences at once")
    ap.add_argument("--bound-ms", type=float, default=15.0, help="goal for the overhead's p99")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    profile = PROFILES[args.mode]
    if args.tts_rtf is None:
        args.tts_rtf = 1.0 if args.mode == "overlap" else 0.0
    convs = [int(x) for x in (args.conversations or ("1,10,50,100" if args.mode == "overhead" else "1")).split(",")]
    lengths = [int(x) for x in args.lengths.split(",")] if args.mode == "overlap" else [args.sentences]
    out_path = args.out or str(
        ROOT / "bench" / "results" / ("system.json" if args.mode == "overhead" else "system_overlap.json")
    )

    stack = Stack(args, profile)
    results = []
    try:
        stack.start()
        print(f"stack up in {stack.work}; {args.mode} mode, stand-ins {profile}, TTS rtf {args.tts_rtf}", flush=True)
        if not args.no_warmup:
            run_step(stack, args, min(2, max(convs)), lengths[0], 2, "warmup")
        for n in convs:
            for s in lengths:
                r = run_step(stack, args, n, s, args.turns, f"{n}-{s}-{uuid.uuid4().hex[:6]}")
                results.append(r)
                if args.mode == "overhead":
                    print_overhead(r)
                else:
                    print(
                        f"  {n} conversations, {s} sentences: {r['timed']}/{r['turns']} timed, "
                        f"v2v p50 {r['ms']['voice_to_voice'].get('p50', float('nan')):.1f} ms; "
                        f"{r['outside_bench_cores']:.2f} cores busy outside this bench",
                        flush=True,
                    )
                time.sleep(1.0)
    finally:
        stack.stop()

    if args.mode == "overlap":
        print_overlap(results, profile)
    else:
        print(f"\n{'conv':>5} {'turns':>6} {'v2v p50':>8} {'p99':>7} {'ovhd p50':>9} {'p95':>7} {'p99':>7}  goal")
        for r in results:
            v, o = r["ms"]["voice_to_voice"], r["ms"]["overhead"]
            ok = "yes" if o.get("p99", 1e9) < args.bound_ms and not r["failed_turns"] else "no"
            print(
                f"{r['conversations']:5d} {r['timed']:6d} {_f(v, 'p50')} {_f(v, 'p99')}  {_f(o, 'p50')} "
                f"{_f(o, 'p95')} {_f(o, 'p99')}  {ok} (p99 < {args.bound_ms:g} ms)"
            )
    out = write_result(out_path, {"args": vars(args), "profile": profile, "steps": results})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
