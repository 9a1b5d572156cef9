"""Turn latency through the whole stack, from the client's side, stage by stage.

    python -m bench.turn_latency [--turns 10] [--models local|random] [--whisper base|tiny.en]
                                 [--llm local|standin] [--out bench/results/turn_latency.json]

Runs the five services as separate processes on the real bus, database and S3 stand-in. By
default everything `parley dev` runs offline: real Whisper (`--whisper`, base by default) and
the real local LLM (SmolLM2-135M on llama.cpp's server), XTTS on tiny random weights.
`--models random` puts the tiny random-weight Whisper back; `--llm standin` the local
OpenAI-compatible stand-in from tests/fakes (a fixed reply, 5 ms a word), which leaves the
LLM's own time out. PARLEY_STT_MODEL / PARLEY_TTS_MODEL, when set, win. A client does spoken
turns (espeak-ng speech streamed in real time) and typed turns one after another and records
when each event arrived. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
import wave
from pathlib import Path

from bench.common import ROOT, pct, write_result
from ops import devstack
from ops.cli import seed
from ops.localmodels import LlamaServer, gguf_path, local_llm_env, local_model_env, random_model_env
from services.common import db
from services.common.settings import ServiceSettings
from tests.client import TEST_JWT_SECRET, AudioChunk, Client
from tests.conftest import SPOKEN, make_speech
from tests.fakes.llm_server import FakeLLM


def _given() -> set[str]:
    """Stages whose model the caller named in the environment (STT_MODEL, TTS_MODEL)."""
    return {k.removeprefix("PARLEY_") for k in ("PARLEY_STT_MODEL", "PARLEY_TTS_MODEL") if k in os.environ}


def _arrival(client: Client, pred, since: int) -> float:
    r = client.received
    for item, at in zip(r.items[since:], r.times[since:]):
        if pred(item):
            return at
    raise AssertionError("missing event")


async def _turn(client: Client, spoken: Path | None, speech_s: float, text: str) -> dict:
    start_items = len(client.received.items)
    stored_before = len(client.received.events("audio.stored"))
    if spoken:
        t_start = time.monotonic()
        await client.stream_wav(spoken)
        t0 = t_start + speech_s  # the end of speech, streamed in real time
    else:
        t0 = time.monotonic()
        await client.send_json({"type": "text", "text": text})
    await client.wait_for(lambda r: len(r.events("audio.stored")) > stored_before, 120)
    await asyncio.sleep(0.01)
    is_ev = lambda t: lambda i: isinstance(i, dict) and i["type"] == t  # noqa: E731
    row = {
        "first_token_s": _arrival(client, is_ev("reply.delta"), start_items) - t0,
        "first_audio_s": _arrival(client, lambda i: isinstance(i, AudioChunk), start_items) - t0,
        "audio_end_s": _arrival(client, is_ev("audio.end"), start_items) - t0,
        "stored_url_s": _arrival(client, is_ev("audio.stored"), start_items) - t0,
    }
    if spoken:
        row["final_transcript_s"] = _arrival(client, is_ev("transcript.final"), start_items) - t0
    return row


def _metric_means(base_url: str) -> dict[str, float]:
    """Mean of each `parley_*_seconds` histogram (per label set) from a service's /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for fam in text_string_to_metric_families(httpx.get(f"{base_url}/metrics").text):
        if not fam.name.startswith("parley_") or fam.type != "histogram":
            continue
        for s in fam.samples:
            key = fam.name + "".join(f"[{v}]" for k, v in sorted(s.labels.items()) if k != "le")
            if s.name.endswith("_sum"):
                sums[key] = s.value
            elif s.name.endswith("_count"):
                counts[key] = s.value
    return {k: sums[k] / counts[k] for k in sums if counts.get(k)}


async def run(turns: int, env: dict, procs: dict, speech: Path, speech_s: float) -> dict:
    client = Client(f"ws://127.0.0.1:{procs['gateway'].port}/v1/ws")
    await client.connect(user="bench")
    spoken = [await _turn(client, speech, speech_s, "") for _ in range(turns)]
    typed = [await _turn(client, None, 0, f"Typed question number {i}?") for i in range(turns)]
    await client.close()
    stages: dict[str, float] = {}
    for name in ("gateway", "stt", "llm", "tts"):
        stages.update(_metric_means(procs[name].base_url))
    return {"spoken": spoken, "typed": typed, "server_stage_means_s": stages}


def open_stack(
    stack: contextlib.ExitStack, work: Path, models: str, whisper: str, llm: str, **extra: str
) -> tuple[dict, dict]:
    """nats-server, Postgres, the S3 stand-in, the LLM (`local` or the stand-in) and the five
    services as processes, each stopped when `stack` closes; their environment and processes.
    `extra`: more settings for the services."""
    cache = Path(os.environ.get("PARLEY_MODEL_CACHE", ROOT / ".cache" / "models"))
    nats = devstack.NatsServer(work / "nats").start()
    stack.callback(nats.stop)
    pg = devstack.PostgresCluster().start()
    stack.callback(pg.stop)
    s3 = devstack.S3StandIn().start()
    stack.callback(s3.stop)
    if llm == "local":
        server = LlamaServer(gguf_path(), work / "llama-server.log").start()
        llm_env = local_llm_env(server).env
    else:
        server = FakeLLM().start()
        llm_env = {"PARLEY_LLM_BASE_URL": server.base_url}
    stack.callback(server.stop)
    env = {
        "PARLEY_NATS_URL": nats.url,
        "PARLEY_DATABASE_URL": pg.url,
        "PARLEY_S3_ENDPOINT_URL": s3.url,
        "PARLEY_S3_ACCESS_KEY_ID": "bench",
        "PARLEY_S3_SECRET_ACCESS_KEY": "bench",
        "PARLEY_S3_REGION": "us-east-1",
        "PARLEY_LOG_LEVEL": "WARNING",
        "PARLEY_AUTH_JWT_SECRET": TEST_JWT_SECRET,
        **llm_env,
        **extra,
    }
    chosen = random_model_env(cache) if models == "random" else local_model_env(cache, whisper)
    env.update({k: v for k, v in chosen.env.items() if k.split("_")[1] + "_MODEL" not in _given()})
    os.environ.update(env)
    db.migrate(pg.url)
    asyncio.run(seed(ServiceSettings()))
    procs = devstack.start_services(env, work / "logs")
    for p in procs.values():
        stack.callback(p.stop)
    return env, procs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--models", choices=("local", "random"), default="local")
    ap.add_argument("--whisper", choices=("base", "tiny.en"), default="base")
    ap.add_argument("--llm", choices=("local", "standin"), default="local")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "turn_latency.json"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="parley-bench-"))
    with contextlib.ExitStack() as stack:
        env, procs = open_stack(stack, work, args.models, args.whisper, args.llm)
        speech = make_speech(SPOKEN, work / "speech.wav")  # one utterance: no pause the VAD takes for an end
        with wave.open(str(speech.with_suffix(".raw.wav"))) as w:
            speech_s = 0.3 + w.getnframes() / w.getframerate()
        result = asyncio.run(run(args.turns, env, procs, speech, speech_s))

    out = write_result(
        args.out,
        result,
        stt_model=os.environ.get("PARLEY_STT_MODEL"),
        tts_model=os.environ.get("PARLEY_TTS_MODEL"),
        llm=os.environ.get("PARLEY_LLM_MODEL", "stand-in"),
    )

    print(f"{'turn':8} {'measure (s, from end of speech / send)':40} {'p50':>8} {'p95':>8} {'max':>8}")
    for kind in ("spoken", "typed"):
        for key in result[kind][0]:
            vals = [r[key] for r in result[kind]]
            print(f"{kind:8} {key:40} {statistics.median(vals):8.3f} {pct(vals, 0.95):8.3f} {max(vals):8.3f}")
    print("\nserver-side stage means (s):")
    for k, v in sorted(result["server_stage_means_s"].items()):
        print(f"  {k:60} {v:8.4f}")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
