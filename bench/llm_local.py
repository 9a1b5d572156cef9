"""The local LLM on this machine: how soon it is ready, its first token and its tokens/s.

    python -m bench.llm_local [--requests 10] [--max-tokens 120] [--threads 2]
                              [--out bench/results/llm_local.json]

The server and model `parley dev` runs (llama.cpp's `llama-server` on SmolLM2-135M-Instruct
Q4_1, ops/localmodels.py), asked as the orchestrator asks it: the demo avatar's persona
as the system message, one user question, streamed, with the usage chunk. Each question is
asked twice: once with the server's prompt cache dropped (`cache_prompt: false`, a new
conversation) and once with it kept (a conversation's next turn, whose persona and history
the server has seen). Time to first token is to the first content delta on this client;
tokens/s is the completion tokens after the first over the rest of the stream.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import ROOT, pct, rss_mib, write_result
from ops.localmodels import LlamaServer, gguf_path
from services.common.personas import DEFAULT_PERSONA

QUESTIONS = [
    "Hello Ada, what can you do?",
    "What is your favourite season, and why?",
    "Can you tell me a short story about a lighthouse?",
    "How do I make a good cup of tea?",
    "What should I see first in Paris?",
]


def ask(server: LlamaServer, question: str, max_tokens: int, cached: bool) -> dict:
    persona = DEFAULT_PERSONA.replace("{name}", "Ada").replace("{role}", "Parley's demo avatar")
    body = {
        "model": server.model_name,
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "stream_options": {"include_usage": True},
        "cache_prompt": cached,
        "messages": [
            {"role": "system", "content": persona + "\nAlways answer in English."},
            {"role": "user", "content": question},
        ],
    }
    start = time.perf_counter()
    first = None
    usage = {}
    text = ""
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body, timeout=120) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", []):
                piece = choice.get("delta", {}).get("content")
                if piece:
                    first = first or time.perf_counter()
                    text += piece
    end = time.perf_counter()
    tokens = usage.get("completion_tokens", 0)
    rate = (tokens - 1) / (end - first) if first and tokens > 1 and end > first else 0.0
    return {"ttft_s": (first or end) - start, "tokens": tokens, "tokens_per_s": rate, "text": text}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=120)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "llm_local.json"))
    args = ap.parse_args()

    server = LlamaServer(gguf_path(), Path(tempfile.mkdtemp(prefix="parley-llm-")) / "server.log")
    server.threads = args.threads
    t0 = time.perf_counter()
    server.start()
    ready_s = time.perf_counter() - t0
    try:
        rows = {"new": [], "next_turn": []}
        for i in range(args.requests):
            question = QUESTIONS[i % len(QUESTIONS)]
            rows["new"].append(ask(server, question, args.max_tokens, cached=False))
            rows["next_turn"].append(ask(server, question, args.max_tokens, cached=True))
        rss = rss_mib(server.proc.pid)
    finally:
        server.stop()

    result = {"ready_s": ready_s, "rss_mib": rss, "threads": args.threads, "rows": rows}
    out = write_result(args.out, result, llm=server.model_name, max_tokens=args.max_tokens)
    print(f"ready in {ready_s:.2f} s, {rss:.0f} MiB resident, {args.threads} threads")
    print(f"{'prompt':10} {'TTFT p50':>9} {'TTFT p95':>9} {'tok/s p50':>10} {'tokens p50':>11}")
    for kind, runs in rows.items():
        ttft = [r["ttft_s"] for r in runs]
        rates = [r["tokens_per_s"] for r in runs if r["tokens_per_s"]]
        print(
            f"{kind:10} {statistics.median(ttft):9.3f} {pct(ttft, 0.95):9.3f} "
            f"{statistics.median(rates) if rates else 0:10.1f} {statistics.median(r['tokens'] for r in runs):11.0f}"
        )
    print(f"sample answer: {rows['next_turn'][0]['text']!r}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
