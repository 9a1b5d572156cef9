"""A tool's webhook as a real HTTP server on a free loopback port, for the tool tests.

Records every request (body, headers, whether its signature verified) and answers as `mode`
says: `ok` (JSON echoing the arguments), `fail_first` (500 `failures` times, then ok), `500`,
`slow` (answers after `delay_s`), `huge` (10 MB), `not_json`, `redirect`, `hang_once` (the first
request never answers; the next are ok). `hold` (an asyncio-free threading.Event) keeps answers
back until set, for tests that need a call in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.fakes.threaded import ThreadedServer


class FakeWebhook(ThreadedServer):
    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret
        self.requests: list[dict] = []
        self.mode = "ok"
        self.failures = 1
        self.delay_s = 0.0
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        """Set when a request has arrived (before it is held)."""
        self.serve(Starlette(routes=[Route("/tool", self._tool, methods=["POST"])]))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/tool"

    def keys(self) -> list[str]:
        return [r["headers"].get("idempotency-key", "") for r in self.requests]

    async def _tool(self, request: Request) -> Response:
        body = await request.body()
        expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        signed = hmac.compare_digest(request.headers.get("x-parley-signature", ""), expected)
        self.requests.append({"body": json.loads(body), "headers": dict(request.headers), "signed": signed})
        n = len(self.requests)
        self.entered.set()
        while not self.hold.is_set():
            await asyncio.sleep(0.02)
        if self.mode == "hang_once" and n == 1:
            await asyncio.sleep(3600)
        if self.mode == "500" or (self.mode == "fail_first" and n <= self.failures):
            return JSONResponse({"error": "down"}, status_code=500)
        if self.mode == "slow":
            await asyncio.sleep(self.delay_s)
        if self.mode == "huge":
            return PlainTextResponse("x" * (10 * 1024 * 1024))
        if self.mode == "not_json":
            return PlainTextResponse("<html>hello</html>")
        if self.mode == "redirect":
            return RedirectResponse("http://169.254.169.254/latest/meta-data/", status_code=307)
        args = json.loads(body)["arguments"]
        return JSONResponse({"forecast": f"sunny in {args.get('city', 'town')}", "signed": signed})
