"""An ASGI app served by uvicorn in a thread of the test process, on a loopback port: the
stand-ins for servers Parley calls (the LLM, a tool's webhook, an MCP server)."""

from __future__ import annotations

import threading

import uvicorn

from ops.devstack import free_port, wait_for_port


class ThreadedServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def serve(self, app) -> None:
        """Called once by the subclass with its app, before `start`."""
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self):
        self._thread.start()
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(5)
