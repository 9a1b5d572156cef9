"""A stand-in LLM: OpenAI-compatible streaming chat completions with a set pace.

    python -m bench.standins.llm --port P [--first-token-ms 0] [--tokens-per-s 0]
                                 [--sentences 2] [--log FILE]

Why: the orchestrator talks to its provider over HTTP; to time the orchestrator and the
bus, not a model, the provider must answer at once (or after a fixed, known delay). This is
a bare ASGI app under uvicorn (uvloop, httptools), lighter than tests/fakes/llm_server.py's
Starlette app, which also sleeps 5 ms per token by default. A reply has as many sentences as
the user's text asks with `[sentences=N]` (else `--sentences`), one token per word; its first
sentence has a clause after five words, so the orchestrator's first piece goes out at the
sixth token, as with a real model's typical opening. With `--log`, one JSON line per request:
the turn (`[id=...]` in the user's text), when the request arrived and when each of the first
eight tokens went out (epoch seconds), so the bench can subtract this stand-in's own time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import uvicorn

from bench.standins import ID_TAG, SENTENCES_TAG

SENTENCES = [
    "That is a good question, and I have thought about it.",
    "The short answer is that it depends on the weather.",
    "On a sunny day I would walk along the river.",
    "On a rainy day I would rather stay inside and read.",
    "Either way, the evening is best spent with good friends.",
    "Let me know what you would like to do next.",
]


def reply_words(n: int) -> list[str]:
    text = " ".join(SENTENCES[i % len(SENTENCES)] for i in range(max(1, n)))
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _chunk(piece: str) -> bytes:
    body = {"id": "b", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class App:
    def __init__(self, first_token_s: float, token_s: float, sentences: int, log_path: str | None):
        self.first_token_s = first_token_s
        self.token_s = token_s
        self.sentences = sentences
        self.log = open(log_path, "a", buffering=1) if log_path else None  # noqa: SIM115

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        received = time.time()
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        req = json.loads(body)
        user = next((m["content"] for m in reversed(req.get("messages", [])) if m["role"] == "user"), "")
        m = SENTENCES_TAG.search(user)
        words = reply_words(int(m.group(1)) if m else self.sentences)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
            }
        )
        if self.first_token_s:
            await asyncio.sleep(self.first_token_s - (time.time() - received))
        sent: list[float] = []
        for i, word in enumerate(words):
            if i and self.token_s:
                await asyncio.sleep(self.token_s)
            if len(sent) < 8:
                sent.append(time.time())
            await send({"type": "http.response.body", "body": _chunk(word), "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        if self.log is not None:
            turn = ID_TAG.search(user)
            rec = {"turn": turn.group(1) if turn else "", "received": received, "first_token": sent[0], "tokens": sent}
            self.log.write(json.dumps(rec) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--first-token-ms", type=float, default=0.0)
    ap.add_argument("--tokens-per-s", type=float, default=0.0, help="0: every token at once")
    ap.add_argument("--sentences", type=int, default=2)
    ap.add_argument("--log")
    args = ap.parse_args()
    app = App(args.first_token_ms / 1000, 1 / args.tokens_per_s if args.tokens_per_s else 0.0, args.sentences, args.log)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", loop="uvloop", http="httptools")


if __name__ == "__main__":
    main()
