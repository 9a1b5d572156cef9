"""The orchestrator's own added latency: final transcript in, first TTS job out.

    python -m bench.orchestrator_overhead [--turns 200] [--conversations 20] [--concurrency 1]

A real nats-server, a throwaway Postgres and one orchestrator process; the LLM is the local
OpenAI-compatible stand-in answering at once (tests/fakes/llm_server.py, no token delay).
For each turn the bench publishes a `UserTurn` fact, as the STT worker does, and times the
first `reply.delta` event and the first `TtsJob` seen on the bus. The stand-in's own time to
first token, measured by the same HTTP client beforehand, is reported beside it. The
"orchestrator only" row subtracts, turn by turn, the time the orchestrator itself waited
for the provider's first token (its reply's `started` and `first_token` marks in Postgres),
so what remains is the bus, the turn gate, the prompt, the cut and the TTS job publish.
It is given twice: up to the moment a subscriber (this bench) received the job, and up to
the job's own publish stamp (`TtsJob.created_at`, the orchestrator's clock, which is this
host's), which leaves out the job's delivery and the bench process's own wake-up.
Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import uvloop

from bench.common import ROOT, pct, write_result
from ops import devstack
from services.common import bus as busmod
from services.common import db, ids, schemas, subjects
from services.common.settings import ServiceSettings


async def llm_first_byte(base_url: str, n: int) -> list[float]:
    """The stand-in's own time to first token, through a kept-alive connection."""
    out = []
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=base_url) as http:
        for _ in range(n):
            t0 = time.perf_counter()
            async with http.stream("POST", "/chat/completions", json=body) as resp:
                async for line in resp.aiter_lines():
                    if line.startswith("data:") and "content" in line:
                        out.append(time.perf_counter() - t0)
                        break
    return out


async def measure(nats_url: str, convs: list[str], turns: int, concurrency: int) -> dict[str, list[float]]:
    bus = await busmod.connect(ServiceSettings(nats_url=nats_url), "bench")
    waiting: dict[str, dict] = {}

    async def on_msg(msg):
        now = time.perf_counter()
        conv = msg.subject.split(".")[2]
        w = waiting.get(conv)
        if w is None:
            return
        if msg.subject.startswith("parley.tts.") and "job" not in w:
            w["job"] = now
            w["job_published"] = schemas.decode(msg.data, schemas.TtsJob).created_at
            w["done"].set()
        elif msg.subject.endswith(".reply_delta") and "delta" not in w:
            w["delta"] = now

    await bus.nc.subscribe("parley.tts.*", cb=on_msg)
    await bus.nc.subscribe("parley.live.*.reply_delta", cb=on_msg)
    results: dict[str, list[float]] = {"first_delta": [], "first_tts_job": [], "first_tts_job_published": []}
    replies: list[str] = []
    counter = 0
    sem = asyncio.Semaphore(concurrency)

    async def one(conv: str, n: int) -> None:
        async with sem:
            session = ids.new_id()
            msg_id = ids.user_message_id(conv, session, "text", n)
            w = waiting[conv] = {"done": asyncio.Event()}
            turn = schemas.UserTurn(
                conversation_id=conv,
                message_id=msg_id,
                session_id=session,
                turn_seq=n,
                source="text",
                text="Hi",
                marks={"received": time.time()},
            )
            t0 = time.perf_counter()
            await bus.publish_fact(subjects.turn(conv), turn, msg_id)
            await asyncio.wait_for(w["done"].wait(), 10)
            results["first_tts_job"].append(w["job"] - t0)
            # The job's own stamp (the orchestrator's clock: the same host's) against the turn's.
            results["first_tts_job_published"].append(w["job_published"] - turn.marks["received"])
            replies.append(ids.reply_id(msg_id, ids.DEMO_AVATAR_ID))
            results["first_delta"].append(w["delta"] - t0)
            await asyncio.sleep(0.3)  # let the reply finish before this conversation's next turn

    per_conv = max(1, turns // len(convs))
    for round_ in range(per_conv):
        await asyncio.gather(*(one(c, round_) for c in convs))
        counter += len(convs)
    await bus.close()
    results["replies"] = replies
    return results


async def stage_marks(database_url: str, replies: list[str]) -> dict[str, list[float]]:
    """Per reply, the orchestrator's own wall-clock marks (stored on the reply row) turned
    into stage durations; "provider wait" is how long it waited for the first token."""
    pool = await db.create_pool(database_url)
    rows = await pool.fetch("SELECT id::text, timings FROM messages WHERE id = ANY($1::uuid[])", replies)
    await pool.close()
    by_id = {r["id"]: r["timings"] for r in rows}
    marks = [by_id[r] for r in replies]
    return {
        "provider_wait": [m["first_token"] - m["started"] for m in marks],
        "bus_hop": [m["llm_received"] - m["received"] for m in marks],
        "received_to_started": [m["started"] - m["llm_received"] for m in marks],
        "first_token_to_sentence": [m["first_sentence"] - m["first_token"] for m in marks],
    }


async def setup_db(url: str, n: int) -> list[str]:
    pool = await db.create_pool(url)
    database = db.Database(pool)
    user = ids.user_id_for("bench")
    await database.users.ensure(user, "bench")
    avatar = db.Avatar(ids.DEMO_AVATAR_ID, "Ada", None, "You are {name}.", "en", "voices/none.wav", None)
    await database.avatars.upsert(avatar)
    convs = []
    for _ in range(n):
        conv = ids.new_id()
        await database.conversations.create(conv, user, [avatar.id])
        convs.append(conv)
    await pool.close()
    return convs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--turns", type=int, default=200)
    ap.add_argument("--conversations", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument(
        "--orchestrator-cpu",
        type=int,
        default=None,
        help="run the orchestrator alone on this core, everything else on the others (default: all share)",
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "orchestrator_overhead.json"))
    args = ap.parse_args()

    all_cpus = os.sched_getaffinity(0)
    orch_cpus = other_cpus = all_cpus
    if args.orchestrator_cpu is not None:
        orch_cpus, other_cpus = {args.orchestrator_cpu}, all_cpus - {args.orchestrator_cpu}
        os.sched_setaffinity(0, other_cpus)  # everything started from here inherits it
    work = Path(tempfile.mkdtemp(prefix="parley-bench-"))
    nats = devstack.NatsServer(work / "nats").start()
    pg = devstack.PostgresCluster().start()
    llm_port = devstack.free_port()
    llm = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.llm_server", "--port", str(llm_port), "--token-delay", "0"], cwd=ROOT
    )
    devstack.wait_for_port(llm_port, proc=llm)
    llm_url = f"http://127.0.0.1:{llm_port}/v1"
    proc = None
    try:
        db.migrate(pg.url)
        convs = uvloop.run(setup_db(pg.url, args.conversations))
        env = {
            "PARLEY_NATS_URL": nats.url,
            "PARLEY_DATABASE_URL": pg.url,
            "PARLEY_LLM_BASE_URL": llm_url,
            "PARLEY_LOG_LEVEL": "WARNING",
        }
        os.sched_setaffinity(0, orch_cpus)
        try:
            proc = devstack.ServiceProcess("llm", env, work / "llm.log").start()
        finally:
            os.sched_setaffinity(0, other_cpus)
        proc.wait_ready()
        baseline = uvloop.run(llm_first_byte(llm_url, 100))
        uvloop.run(measure(nats.url, convs[:2], 4, 1))  # warm-up: connections, caches
        results = uvloop.run(measure(nats.url, convs, args.turns, args.concurrency))
        stages = uvloop.run(stage_marks(pg.url, results.pop("replies")))
    finally:
        if proc:
            proc.stop()
        llm.terminate()
        llm.wait()
        pg.stop()
        nats.stop()

    rows = {
        "stand-in LLM first token (HTTP, alone)": baseline,
        "turn -> first reply.delta": results["first_delta"],
        "turn -> first TTS job (received by a subscriber)": results["first_tts_job"],
        "turn -> first TTS job (published)": results["first_tts_job_published"],
        "provider wait seen by the orchestrator": stages["provider_wait"],
        "orchestrator only, to the job received (- provider wait)": [
            x - w for x, w in zip(results["first_tts_job"], stages["provider_wait"], strict=True)
        ],
        "orchestrator only, to the job published (- provider wait)": [
            x - w for x, w in zip(results["first_tts_job_published"], stages["provider_wait"], strict=True)
        ],
        "  of which: turn publish -> handler": stages["bus_hop"],
        "  of which: handler -> LLM request (gate, context)": stages["received_to_started"],
        "  of which: first token -> first sentence cut": stages["first_token_to_sentence"],
    }
    summary = {
        k: {"n": len(v), "p50_ms": statistics.median(v) * 1000, "p99_ms": pct(v, 0.99) * 1000} for k, v in rows.items()
    }
    samples = {k: [round(x * 1000, 3) for x in v] for k, v in rows.items()}
    out = write_result(
        args.out,
        {"args": vars(args), "summary": summary, "samples_ms": samples},
        orchestrator_cpus=sorted(orch_cpus),
        other_cpus=sorted(other_cpus),
    )
    print(f"{'measure':58} {'n':>5} {'p50 ms':>8} {'p99 ms':>8}")
    for k, v in summary.items():
        print(f"{k:58} {v['n']:5d} {v['p50_ms']:8.2f} {v['p99_ms']:8.2f}")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
