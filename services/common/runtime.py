"""The process shell every service shares: HTTP health/metrics, start-up, and drain on SIGTERM.

Each service is a `Service` subclass. `serve()` runs it under uvicorn: `/healthz` answers as
soon as the process is up (liveness), `/readyz` only once `start()` has finished (models
loaded, streams declared, consumers running), `/metrics` serves Prometheus. On SIGTERM
uvicorn stops accepting requests and the lifespan's shutdown calls `drain()`, which stops
taking new work and lets work in flight finish before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Awaitable, Callable

import asyncpg
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import bus as busmod
from . import db, logs
from .settings import ServiceSettings

log = logging.getLogger(__name__)


class Service:
    """A service process: `start()` connects and registers what `drain()` and `close()` undo."""

    name = "service"

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.ready = False
        self.failed: str | None = None
        self.workers: list = []
        self._closers: list[Callable[[], Awaitable[object]]] = []

    async def start(self) -> None:
        raise NotImplementedError

    def on_close(self, fn: Callable[[], Awaitable[object]]) -> None:
        """Register a release step; they run in reverse order of registration."""
        self._closers.append(fn)

    async def open_bus(self) -> busmod.Bus:
        """Connect as this service, declare the streams, and close the connection last."""
        bus = await busmod.connect(self.settings, self.name)
        self.on_close(bus.close)
        await busmod.ensure_streams(bus)
        return bus

    async def open_db(self) -> asyncpg.Pool:
        """A Postgres pool sized by the settings, closed with the service."""
        pool = await db.create_pool(self.settings.database_url, self.settings.db_pool_min, self.settings.db_pool_max)
        self.on_close(pool.close)
        return pool

    async def drain(self) -> None:
        """Stop taking work and finish what is in flight: every work-queue consumer by default."""
        for worker in self.workers:
            await worker.drain(self.settings.drain_timeout_s)

    async def close(self) -> None:
        for fn in reversed(self._closers):
            try:
                await fn()
            except Exception:
                log.exception("%s: error while closing", self.name)

    async def release_clients(self) -> None:
        """Let go of clients' open connections the service's own way, before the HTTP server
        closes them (the gateway: close 1001, sessions left resumable). Default: none held."""

    def status(self) -> dict:
        return {"in_flight": sum(w.in_flight for w in self.workers)} if self.workers else {}


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    svc: Service = request.app.state.service
    body = {"ready": svc.ready, "service": svc.name, **svc.status()}
    if svc.failed:
        body["error"] = svc.failed
    return JSONResponse(body, status_code=200 if svc.ready else 503)


async def metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


OPS_ROUTES = [
    Route("/healthz", healthz),
    Route("/readyz", readyz),
    Route("/metrics", metrics),
]


@contextlib.asynccontextmanager
async def lifespan(app: Starlette):
    """Start in the background so liveness answers while models load."""
    svc: Service = app.state.service

    async def _start() -> None:
        try:
            await svc.start()
            # What start() built (models, pools, caches) lives as long as the process; moving
            # it out of the collector's reach keeps full collections short on the hot path.
            gc.collect()
            gc.freeze()
            _, older, oldest = gc.get_threshold()
            gc.set_threshold(svc.settings.gc_young_threshold, older, oldest)
            svc.ready = True
            log.info("%s ready", svc.name)
        except Exception as exc:
            svc.failed = f"{type(exc).__name__}: {exc}"
            log.exception("%s failed to start", svc.name)
            raise

    task = asyncio.create_task(_start())
    try:
        yield
    finally:
        svc.ready = False
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        elif task.exception() is None:
            log.info("%s draining", svc.name)
            try:
                await asyncio.wait_for(svc.drain(), svc.settings.drain_timeout_s)
            except TimeoutError:
                log.warning("%s drain timed out", svc.name)
        await svc.close()
        log.info("%s stopped", svc.name)


def ops_app(service: Service) -> Starlette:
    app = Starlette(routes=list(OPS_ROUTES), lifespan=lifespan)
    app.state.service = service
    return app


class _Server(uvicorn.Server):
    """A SIGTERM that was drained is a clean exit (status 0), not a re-raised signal."""

    def __init__(self, config: uvicorn.Config, service: Service):
        super().__init__(config)
        self.service = service

    async def shutdown(self, sockets=None) -> None:
        """Stop accepting, then let the service release its clients, then uvicorn's own
        shutdown. Uvicorn closes every open WebSocket with 1012 before the lifespan's drain
        runs, so without this a gateway's clients never got the 1001 that tells them to
        resume through another replica."""
        for server in self.servers:
            server.close()
        svc = self.service
        if svc.ready:
            svc.ready = False  # /readyz answers 503 from here on
            try:
                await asyncio.wait_for(svc.release_clients(), svc.settings.drain_timeout_s)
            except Exception:
                log.exception("%s: releasing clients failed", svc.name)
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self):
        with super().capture_signals():
            yield
            self._captured_signals.clear()


class _Beside(uvicorn.Server):
    """A second listener of the process (the gateway's ops port): the main server owns the
    signals and the service's lifespan, and this one stops when it does."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def serve(
    service: Service,
    app: Starlette | None = None,
    ops: Starlette | None = None,
    ops_port: int | None = None,
    **uvicorn_options,
) -> None:
    """Run a service until SIGTERM/SIGINT. The app defaults to the ops endpoints alone; `ops`
    is served beside it on `ops_port`."""
    s = service.settings
    logs.setup(service.name, s.log_level, s.log_json)
    if app is None:
        app = ops_app(service)
    config = uvicorn.Config(
        app,
        host=s.http_host,
        port=s.http_port,
        log_level=s.log_level.lower(),
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(s.drain_timeout_s),
        ws_max_size=1 << 20,
        **uvicorn_options,
    )
    server = _Server(config, service)
    if ops is None:
        server.run()
        return
    beside = _Beside(
        uvicorn.Config(
            ops, host=s.http_host, port=ops_port, log_level=s.log_level.lower(), access_log=False, lifespan="off"
        )
    )

    async def both() -> None:
        task = asyncio.create_task(beside.serve())
        try:
            await server.serve()
        finally:
            beside.should_exit = True
            await task

    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(both())
