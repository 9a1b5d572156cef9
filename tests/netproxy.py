"""A TCP proxy on loopback that a test can cut: a network partition, not a crash.

Cut, it stops forwarding in both directions and holds every connection open, so neither side
sees a close or a reset: its peers go silent, as behind a failed switch, and only their own
timeouts (NATS pings, RAFT elections) tell. Mended, what waited flows on. It lives under
tests/: partitions are a fault a test injects, not something the stack runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from ops import devstack


class TcpProxy:
    """127.0.0.1:`port` forwarded to 127.0.0.1:`upstream_port`, in a thread of its own."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.port = devstack.free_port()
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> TcpProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(5)
        return self

    def cut(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def mend(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.set)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _listen(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_writer = None
        try:
            await self._flowing.wait()  # a connection made while cut is held, not refused
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            except OSError:
                return  # nothing upstream: refused, as the server itself would be
            pumps = [self._pump(reader, up_writer), self._pump(up_reader, writer)]
            tasks = [asyncio.create_task(p) for p in pumps]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
        except asyncio.CancelledError:
            pass  # the proxy is stopping
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while True:
                await self._flowing.wait()
                data = await reader.read(65536)
                await self._flowing.wait()  # what came just as the cut did waits with the rest
                if not data:
                    return
                writer.write(data)
                await writer.drain()
