"""Load soak: N concurrent conversations for M minutes, ending in the ledger check.

    python -m bench.soak [--conversations 20] [--minutes 10] [--token-delay 0.02]
                         [--out bench/results/soak.json]

Runs the five services as separate processes on the real bus, database and S3 stand-in,
with real Whisper tiny.en from its package and XTTS's code on tiny random weights (or
whatever PARLEY_STT_MODEL / PARLEY_TTS_MODEL name) and the stand-in LLM from tests/fakes in its own process, streaming
at `--token-delay` seconds a token. Each conversation is a protocol client doing turns
back to back with a short pause: mostly typed, the first and every `--spoken-every`-th after it spoken
(espeak-ng speech streamed in real time). At the end every conversation must balance in the
ledger (ops/ledger.py). The resident memory of each service process is sampled
throughout: at the start, after every conversation's first turn (warm), and at the end.
Prints a table, writes JSON. `soak()` is the reusable part: tests/e2e/test_soak.py runs it
for a short while on the test stack.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import ROOT, pct, write_result
from tests.client import TEST_JWT_SECRET, AudioChunk, Client

DEFAULT_CONVERSATIONS = 20
DEFAULT_MINUTES = 10.0
TURN_TIMEOUT_S = 120.0


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (psutil when installed, else /proc)."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except ImportError:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    return 0


@dataclass
class Memory:
    """RSS samples per service process."""

    pids: dict[str, int]
    samples: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    marks: dict[str, dict[str, int]] = field(default_factory=dict)

    def sample(self) -> dict[str, int]:
        now = time.monotonic()
        out = {}
        for name, pid in self.pids.items():
            try:
                out[name] = rss_bytes(pid)
            except (OSError, ProcessLookupError):
                continue
            self.samples.setdefault(name, []).append((now, out[name]))
        return out

    def mark(self, label: str) -> None:
        self.marks[label] = self.sample()

    def report(self) -> dict[str, dict[str, float]]:
        """MiB at the start, once warm, at the end, the peak, and end / warm."""
        mib = 1 / (1 << 20)
        rows = {}
        for name in self.pids:
            start = self.marks.get("start", {}).get(name)
            warm = self.marks.get("warm", {}).get(name, start)
            end = self.marks.get("end", {}).get(name)
            if start is None or end is None:
                continue
            rows[name] = {
                "start_mib": start * mib,
                "warm_mib": warm * mib,
                "end_mib": end * mib,
                "peak_mib": max(v for _, v in self.samples[name]) * mib,
                "growth_after_warm": end / warm if warm else 0.0,
            }
        return rows


def _arrival(client: Client, since: int, pred) -> float | None:
    r = client.received
    for item, at in zip(r.items[since:], r.times[since:]):
        if pred(item):
            return at
    return None


def _is(kind: str):
    return lambda i: isinstance(i, dict) and i.get("type") == kind


async def _turn(client: Client, n: int, speech: Path | None, speech_s: float) -> dict:
    """One turn, timed from the end of speech (spoken) or the send (typed) to each stage."""
    since = len(client.received.items)
    stored_before = len(client.received.events("audio.stored"))
    failures_before = len(client.received.events("error"))
    if speech is not None:
        started = time.monotonic()
        await client.stream_wav(speech)
        t0 = started + speech_s
    else:
        t0 = time.monotonic()
        await client.send_json({"type": "text", "text": f"Soak question number {n}, tell me more?"})

    def finished(r):
        return len(r.events("audio.stored")) > stored_before or len(r.events("error")) > failures_before

    row = {"kind": "spoken" if speech else "typed", "ok": True}
    try:
        await client.wait_for(finished, TURN_TIMEOUT_S)
    except AssertionError:
        row["ok"] = False
        row["timed_out"] = True
    errors = client.received.events("error")[failures_before:]
    if errors:
        row["ok"] = False
        row["errors"] = sorted({e["code"] for e in errors})
    for key, pred in (
        ("first_token_s", _is("reply.delta")),
        ("first_audio_s", lambda i: isinstance(i, AudioChunk)),
        ("reply_done_s", _is("reply.done")),
        ("audio_stored_s", _is("audio.stored")),
    ):
        at = _arrival(client, since, pred)
        if at is not None:
            row[key] = at - t0
    return row


async def _conversation(
    ws_url: str,
    index: int,
    deadline: float,
    warm: asyncio.Barrier | None,
    speech: Path | None,
    speech_s: float,
    spoken_every: int,
    think_s: float,
    user_prefix: str,
    clients: list[Client],
) -> list[dict]:
    client = Client(ws_url)
    clients.append(client)
    await client.connect(user=f"{user_prefix}-{index}", barge_in=False)
    rng = random.Random(index)
    await asyncio.sleep(rng.uniform(0, think_s))  # stagger the starts
    rows = []
    n = 0
    try:
        while not rows or time.monotonic() < deadline:
            spoken = speech is not None and spoken_every > 0 and n % spoken_every == 0
            rows.append(await _turn(client, n, speech if spoken else None, speech_s))
            n += 1
            if n == 1 and warm is not None:
                await warm.wait()
            await asyncio.sleep(rng.uniform(0.5, 1.5) * think_s)
    finally:
        await client.close()
    return rows


async def ledger_problems(settings, clients: list[Client], deadline_s: float = 60.0) -> list[str]:
    """The ledger over the clients' conversations, within a deadline (what stays unsettled)."""
    from ops import ledger

    conversations = [
        c.received.events("session.started")[0]["conversation_id"]
        for c in clients
        if c.received.events("session.started")
    ]
    give_up = time.monotonic() + deadline_s
    while True:
        problems = await ledger.run(settings, conversations, [c.received.events() for c in clients])
        if not problems or time.monotonic() > give_up:
            return problems
        await asyncio.sleep(1.0)


async def soak(
    ws_url: str,
    pids: dict[str, int],
    settings,
    conversations: int,
    duration_s: float,
    speech: Path | None = None,
    spoken_every: int = 4,
    think_s: float = 1.0,
    user_prefix: str = "soak",
    sample_every_s: float = 5.0,
) -> dict:
    """Run the conversations until `duration_s` has passed (each finishes its turn), then the
    ledger check; returns per-turn rows, latency percentiles, memory and ledger problems."""
    speech_s = 0.0
    if speech is not None:
        with wave.open(str(speech)) as w:
            speech_s = w.getnframes() / w.getframerate() - 1.5  # the trailing silence is not speech
    memory = Memory(pids)
    memory.mark("start")
    warm = asyncio.Barrier(conversations + 1)
    clients: list[Client] = []
    started = time.monotonic()
    deadline = started + duration_s
    tasks = [
        asyncio.create_task(
            _conversation(ws_url, i, deadline, warm, speech, speech_s, spoken_every, think_s, user_prefix, clients)
        )
        for i in range(conversations)
    ]

    async def sampler() -> None:
        await warm.wait()
        memory.mark("warm")
        while True:
            await asyncio.sleep(sample_every_s)
            memory.sample()

    sampling = asyncio.create_task(sampler())
    try:
        per_conversation = await asyncio.gather(*tasks)
    finally:
        sampling.cancel()
    elapsed_s = time.monotonic() - started
    memory.mark("end")
    problems = await ledger_problems(settings, clients)
    turns = [row for rows in per_conversation for row in rows]
    return {
        "conversations": conversations,
        "duration_s": duration_s,
        "elapsed_s": elapsed_s,
        "turns": turns,
        "turns_ok": sum(1 for t in turns if t["ok"]),
        "latency": latency_table(turns),
        "memory": memory.report(),
        "ledger_problems": problems,
    }


def latency_table(turns: list[dict]) -> dict[str, dict[str, float]]:
    out = {}
    for kind in ("typed", "spoken"):
        for key in ("first_token_s", "first_audio_s", "reply_done_s", "audio_stored_s"):
            vals = [t[key] for t in turns if t["kind"] == kind and key in t]
            if vals:
                out[f"{kind} {key}"] = {
                    "n": len(vals),
                    "p50": pct(vals, 0.5),
                    "p95": pct(vals, 0.95),
                    "p99": pct(vals, 0.99),
                    "max": max(vals),
                }
    return out


def print_result(result: dict) -> None:
    turns = result["turns"]
    print(
        f"{result['conversations']} conversations for {result['elapsed_s']:.0f} s: "
        f"{len(turns)} turns, {result['turns_ok']} ok, "
        f"{len(turns) / max(result['elapsed_s'], 1e-9):.2f} turns/s"
    )
    print(f"\n{'measure (s, from end of speech / send)':40} {'n':>5} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}")
    for key, v in result["latency"].items():
        print(f"{key:40} {v['n']:5d} {v['p50']:8.3f} {v['p95']:8.3f} {v['p99']:8.3f} {v['max']:8.3f}")
    print(f"\n{'service RSS (MiB)':20} {'start':>8} {'warm':>8} {'end':>8} {'peak':>8} {'end/warm':>9}")
    for name, m in result["memory"].items():
        print(
            f"{name:20} {m['start_mib']:8.1f} {m['warm_mib']:8.1f} {m['end_mib']:8.1f} {m['peak_mib']:8.1f} "
            f"{m['growth_after_warm']:9.2f}"
        )
    problems = result["ledger_problems"]
    print("\nledger balances" if not problems else f"\nledger: {len(problems)} problem(s)")
    for line in problems[:20]:
        print(f"  {line}")


def main() -> None:
    from ops import devstack
    from ops.cli import seed
    from ops.localmodels import local_model_env
    from services.common import db
    from services.common.settings import ServiceSettings
    from tests.conftest import make_speech

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--conversations", type=int, default=int(os.environ.get("SOAK_CONVERSATIONS", DEFAULT_CONVERSATIONS))
    )
    ap.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", DEFAULT_MINUTES)))
    ap.add_argument("--token-delay", type=float, default=0.02, help="stand-in LLM seconds per token")
    ap.add_argument("--spoken-every", type=int, default=4, help="every n-th turn is spoken (0: typed only)")
    ap.add_argument("--think", type=float, default=1.0, help="mean pause between a reply and the next turn (s)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.json"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="parley-soak-"))
    nats = devstack.NatsServer(work / "nats").start()
    pg = devstack.PostgresCluster().start()
    s3 = devstack.S3StandIn().start()
    llm_port = devstack.free_port()
    llm = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.llm_server",
            "--port",
            str(llm_port),
            "--token-delay",
            str(args.token_delay),
        ],
        cwd=ROOT,
    )
    procs = {}
    try:
        devstack.wait_for_port(llm_port, proc=llm)
        env = {
            "PARLEY_NATS_URL": nats.url,
            "PARLEY_DATABASE_URL": pg.url,
            "PARLEY_S3_ENDPOINT_URL": s3.url,
            "PARLEY_S3_ACCESS_KEY_ID": "bench",
            "PARLEY_S3_SECRET_ACCESS_KEY": "bench",
            "PARLEY_S3_REGION": "us-east-1",
            "PARLEY_LLM_BASE_URL": f"http://127.0.0.1:{llm_port}/v1",
            "PARLEY_LOG_LEVEL": "WARNING",
            "PARLEY_AUTH_JWT_SECRET": TEST_JWT_SECRET,
        }
        if "PARLEY_STT_MODEL" not in os.environ:
            env.update(
                local_model_env(Path(os.environ.get("PARLEY_MODEL_CACHE", ROOT / ".cache" / "models")), "tiny.en").env
            )
        os.environ.update(env)
        db.migrate(pg.url)
        settings = ServiceSettings()
        asyncio.run(seed(settings))
        procs = devstack.start_services(env, work / "logs")
        speech = None
        if args.spoken_every > 0:
            speech = make_speech(
                "Hello Ada, please tell me something nice about the weather today", work / "speech.wav"
            )
        result = asyncio.run(
            soak(
                f"ws://127.0.0.1:{procs['gateway'].port}/v1/ws",
                {name: p.proc.pid for name, p in procs.items()},
                settings,
                args.conversations,
                args.minutes * 60,
                speech=speech,
                spoken_every=args.spoken_every,
                think_s=args.think,
            )
        )
    finally:
        for p in procs.values():
            p.stop()
        llm.terminate()
        llm.wait()
        s3.stop()
        pg.stop()
        nats.stop()

    out = write_result(
        args.out,
        {**result, "token_delay_s": args.token_delay, "spoken_every": args.spoken_every, "think_s": args.think},
        stt_model=os.environ.get("PARLEY_STT_MODEL"),
        tts_model=os.environ.get("PARLEY_TTS_MODEL"),
    )
    print_result(result)
    print(f"\nwrote {out}")
    sys.exit(1 if result["ledger_problems"] else 0)


if __name__ == "__main__":
    main()
