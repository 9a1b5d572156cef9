"""A local OpenAI-compatible streaming server standing in for a hosted LLM in tests.

It streams a deterministic reply word by word as server-sent events, records every request
(so tests can check the prompt), and can be switched to fail the way real providers do.
"""

from __future__ import annotations

import asyncio
import json
import threading

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from ops.devstack import free_port, wait_for_port


def reply_for(user_text: str) -> str:
    return (
        f"Hello there! You said {len(user_text.split())} words. "
        "Parley streams every sentence as soon as it is complete, see e.g. this one. "
        "That is all for now."
    )


class FakeLLM:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.requests: list[dict] = []
        self.mode = "ok"  # ok | http_500 | http_401 | http_429 | malformed | silent | endless
        self.token_delay_s = 0.005
        app = Starlette(routes=[Route("/v1/chat/completions", self._completions, methods=["POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeLLM:
        self._thread.start()
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(5)

    async def _completions(self, request: Request):
        body = await request.json()
        self.requests.append(body)
        if self.mode == "http_500":
            return JSONResponse({"error": {"message": "upstream exploded"}}, status_code=500)
        if self.mode == "http_401":
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        if self.mode == "http_429":
            return JSONResponse({"error": {"message": "slow down"}}, status_code=429)
        user_text = body["messages"][-1]["content"]
        words = reply_for(user_text).split(" ")

        async def stream():
            if self.mode == "silent":
                await asyncio.sleep(5)
            while self.mode == "endless":
                yield 'data: {"choices": [{"index": 0, "delta": {"content": " more"}}]}\n\n'
                await asyncio.sleep(0.01)
            for i, word in enumerate(words):
                if self.mode == "malformed" and i == 3:
                    yield "data: {not json\n\n"
                    return
                piece = word if i == 0 else " " + word
                chunk = {
                    "id": "x",
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                }
                yield f"data: {json.dumps(chunk)}\n\n"
                await asyncio.sleep(self.token_delay_s)
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")


def main() -> None:
    """Run the stand-in alone (benchmarks keep it out of the measuring process)."""
    import argparse
    import time

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--token-delay", type=float, default=0.005)
    args = ap.parse_args()
    server = FakeLLM(port=args.port)
    server.token_delay_s = args.token_delay
    server.start()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
