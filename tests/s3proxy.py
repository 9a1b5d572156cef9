"""An HTTP proxy in front of the S3 stand-in that a test can make slow or failing, and that
counts the requests it passes on: faults of the object store live here, not in devstack."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ops import devstack

_DROP = {"content-length", "transfer-encoding", "content-encoding", "connection"}
_ERROR = b"<Error><Code>ServiceUnavailable</Code><Message>injected outage</Message></Error>"


class S3Proxy:
    """`fail_status` set: every request is answered with it, as an endpoint in trouble answers.
    `fail_writes`: that many PUT/POST requests are answered 503 first. `hold_uploads_s`: each
    upload of reply audio (a `tts/` key) is held that long before it is passed on
    (`uploading` is set when one starts). `refused` counts the failures answered."""

    def __init__(self, upstream: str, *, fail_writes: int = 0, hold_uploads_s: float = 0.0):
        self.upstream = upstream
        self.fail_writes = fail_writes
        self.hold_uploads_s = hold_uploads_s
        self.fail_status: int | None = None
        self.refused = 0
        self.requests: Counter[tuple[str, str]] = Counter()
        self.uploading = threading.Event()
        self.port = devstack.free_port()
        methods = ["GET", "PUT", "POST", "HEAD", "DELETE"]
        app = Starlette(routes=[Route("/{path:path}", self.proxy, methods=methods)])
        self.server = uvicorn.Server(uvicorn.Config(app, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _refuse(self, request: Request, status: int) -> Response:
        self.refused += 1
        body = b"" if request.method == "HEAD" else _ERROR
        return Response(body, status_code=status, media_type="application/xml")

    async def proxy(self, request: Request) -> Response:
        path = request.url.path
        if self.fail_status is not None:
            return self._refuse(request, self.fail_status)
        if request.method in ("PUT", "POST") and self.refused < self.fail_writes:
            return self._refuse(request, 503)
        self.requests[(request.method, path)] += 1
        body = await request.body()
        if self.hold_uploads_s and request.method == "PUT" and "/tts/" in path:
            self.uploading.set()
            await asyncio.sleep(self.hold_uploads_s)
        async with httpx.AsyncClient(base_url=self.upstream, trust_env=False) as client:
            headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
            headers["host"] = httpx.URL(self.upstream).netloc.decode()
            upstream = await client.request(
                request.method, path, params=request.query_params, headers=headers, content=body
            )
        return Response(
            upstream.content,
            status_code=upstream.status_code,
            headers={k: v for k, v in upstream.headers.items() if k.lower() not in _DROP},
        )

    def start(self) -> S3Proxy:
        self.thread.start()
        devstack.wait_for_port(self.port)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)

    def __enter__(self) -> S3Proxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
