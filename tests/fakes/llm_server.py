"""A local OpenAI-compatible streaming server standing in for a hosted LLM in tests.

It streams a deterministic reply word by word as server-sent events, records every request
(so tests can check the prompt), and can be switched to fail the way real providers do.

Tools, as OpenAI streams them: offered tools whose names the user's last message mentions are
called (several at once, each call's id and name first, its JSON arguments in three pieces,
`finish_reason` "tool_calls"), after a spoken "Let me check." when `say_before_tools`; the
arguments are `tool_arguments[name]` (default `{}`), or `bad_arguments` verbatim. Once the last
message is a tool result, the reply says what each tool answered.
"""

from __future__ import annotations

import asyncio
import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from tests.fakes.threaded import ThreadedServer


def _tokens(messages: list[dict]) -> int:
    """The stand-in's token count of a prompt: its words."""
    return sum(len(str(m.get("content") or "").split()) for m in messages)


def reply_for(user_text: str) -> str:
    return (
        f"Hello there! You said {len(user_text.split())} words. "
        "Parley streams every sentence as soon as it is complete, see e.g. this one. "
        "That is all for now."
    )


RATE_LIMIT_HEADERS = {
    "x-ratelimit-limit-requests": "500",
    "x-ratelimit-remaining-requests": "499",
    "x-ratelimit-reset-requests": "120ms",
    "x-ratelimit-limit-tokens": "30000",
    "x-ratelimit-remaining-tokens": "29950",
    "x-ratelimit-reset-tokens": "1m6.5s",
}
"""As OpenAI's API states its limits on every completion."""


class FakeLLM(ThreadedServer):
    def __init__(self, port: int | None = None) -> None:
        super().__init__(port)
        self.requests: list[dict] = []
        self.mode = "ok"  # ok | http_500 | http_401 | http_429 | malformed | silent | endless | stall | drop
        self.token_delay_s = 0.005
        self.tool_arguments: dict[str, dict] = {}
        self.bad_arguments: str | None = None
        self.say_before_tools = True
        self.after_tool_delay_s = 0.0
        """How long an answer to a tool result waits before its first token (a test's window)."""
        self.serve(Starlette(routes=[Route("/v1/chat/completions", self._completions, methods=["POST"])]))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _completions(self, request: Request):
        body = await request.json()
        self.requests.append(body)
        if self.mode == "http_500":
            return JSONResponse({"error": {"message": "upstream exploded"}}, status_code=500)
        if self.mode == "http_401":
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        if self.mode == "http_429":
            return JSONResponse({"error": {"message": "slow down"}}, status_code=429)
        calls = self._calls(body)
        last = body["messages"][-1]
        if calls:
            return StreamingResponse(self._stream_calls(calls), media_type="text/event-stream")
        if last["role"] == "tool":
            results = [m["content"] for m in body["messages"] if m["role"] == "tool"][-4:]
            words = ("The tool answered: " + " and ".join(results) + ".").split(" ")
        else:
            words = reply_for(last["content"]).split(" ")

        async def stream():
            if self.mode == "silent":
                await asyncio.sleep(5)
            if last["role"] == "tool":
                await asyncio.sleep(self.after_tool_delay_s)
            while self.mode == "endless":
                yield 'data: {"choices": [{"index": 0, "delta": {"content": " more"}}]}\n\n'
                await asyncio.sleep(0.01)
            for i, word in enumerate(words):
                if self.mode == "malformed" and i == 3:
                    yield "data: {not json\n\n"
                    return
                if self.mode == "drop" and i == 3:
                    return  # the body ends cleanly mid-reply, as from a server or proxy that died
                while self.mode == "stall" and i == 3:
                    await asyncio.sleep(0.1)  # hangs mid-reply
                piece = word if i == 0 else " " + word
                chunk = {
                    "id": "x",
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                }
                yield f"data: {json.dumps(chunk)}\n\n"
                await asyncio.sleep(self.token_delay_s)
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": _tokens(body["messages"]), "completion_tokens": len(words)}
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers=RATE_LIMIT_HEADERS)

    def _calls(self, body: dict) -> list[str]:
        last = body["messages"][-1]
        offered = [t["function"]["name"] for t in body.get("tools") or []]
        if last["role"] != "user" or body.get("tool_choice") == "none":
            return []
        return [name for name in offered if name.lower() in last["content"].lower()]

    async def _stream_calls(self, names: list[str]):
        def chunk(delta: dict, finish: str | None = None) -> str:
            return f"data: {json.dumps({'choices': [{'index': 0, 'delta': delta, 'finish_reason': finish}]})}\n\n"

        if self.say_before_tools:
            for piece in ("Let", " me", " check."):
                yield chunk({"content": piece})
                await asyncio.sleep(self.token_delay_s)
        for index, name in enumerate(names):
            args = (
                self.bad_arguments if self.bad_arguments is not None else json.dumps(self.tool_arguments.get(name, {}))
            )
            third = max(1, len(args) // 3)
            pieces = [args[:third], args[third : 2 * third], args[2 * third :]]
            head = {
                "index": index,
                "id": f"call_{index}",
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            yield chunk({"tool_calls": [head]})
            for piece in pieces:
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
                await asyncio.sleep(self.token_delay_s)
        yield chunk({}, "tool_calls")
        yield "data: [DONE]\n\n"


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
