"""The client's WebSocket: one sender task, the receive loop, and the session's deadlines.

Every wire (the native protocol, the Realtime API) writes through one `ClientSocket`, so
frames never interleave and a close always comes after what was queued before it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from fastapi import WebSocket


class ClientSocket:
    def __init__(self, ws: WebSocket, idle_timeout_s: float, max_session_s: float):
        self.ws = ws
        self.idle_timeout_s = idle_timeout_s
        self.max_session_s = max_session_s
        self._out: asyncio.Queue = asyncio.Queue()
        now = time.monotonic()
        self.opened_at = now
        self.last_heard = now
        self._waiting = False
        self._expired = False

    @property
    def headers(self):
        return self.ws.headers

    @property
    def address(self) -> str:
        """The client's address (a trusted proxy's forwarded one, see uvicorn's `FORWARDED_ALLOW_IPS`)."""
        return self.ws.client.host if self.ws.client else ""

    @property
    def path(self) -> str:
        return self.ws.url.path

    @property
    def offered(self) -> list[str]:
        """The subprotocols the client offered in its handshake."""
        return self.ws.scope.get("subprotocols") or []

    async def accept(self, subprotocol: str | None) -> None:
        await self.ws.accept(subprotocol=subprotocol)

    async def first_text(self, timeout_s: float) -> str:
        """The first message, before the session runs (raises TimeoutError, WebSocketDisconnect...)."""
        return await asyncio.wait_for(self.ws.receive_text(), timeout_s)

    def send_text(self, text: str) -> None:
        self._out.put_nowait(("text", text))

    def send_bytes(self, data: bytes) -> None:
        self._out.put_nowait(("bytes", data))

    def close(self, code: int, reason: str) -> None:
        """Close after everything already queued has been sent."""
        self._out.put_nowait(("close", (code, reason)))

    def finish(self) -> None:
        """Stop the sender once the queue is written, without closing (the client left)."""
        self._out.put_nowait(("close", None))

    async def close_now(self, code: int, reason: str) -> None:
        try:
            await self.ws.close(code, reason)
        except Exception:
            pass

    async def send_now(self, text: str) -> None:
        """Write before the sender runs (a refusal explained ahead of its close)."""
        try:
            await self.ws.send_text(text)
        except Exception:
            pass

    async def sender(self) -> None:
        while True:
            kind, payload = await self._out.get()
            if kind == "close":
                if payload is not None:
                    await self.close_now(*payload)
                return
            if kind == "text":
                await self.ws.send_text(payload)
            else:
                await self.ws.send_bytes(payload)

    async def receive(
        self,
        on_message: Callable[[dict], Awaitable[None]],
        on_expired: Callable[[bool], None],
    ) -> None:
        """Frames in until the client leaves or a deadline passes (`on_expired(too_long)`).
        One watchdog per session keeps the idle and session-length deadlines, not a timer
        armed and cancelled for every frame (tens of thousands a second at hundreds of sessions)."""
        watchdog = asyncio.create_task(self._watchdog(asyncio.current_task(), on_expired))
        try:
            while not self._expired:
                self._waiting = True
                try:
                    message = await self.ws.receive()
                except asyncio.CancelledError:
                    if self._expired and asyncio.current_task().uncancel() == 0:
                        return
                    raise
                finally:
                    self._waiting = False
                self.last_heard = time.monotonic()
                if message["type"] == "websocket.disconnect":
                    return
                await on_message(message)
        finally:
            watchdog.cancel()

    async def _watchdog(self, receiver: asyncio.Task, on_expired: Callable[[bool], None]) -> None:
        """Sleep to the nearer deadline; at it, say which and stop the receiver (a receiver
        busy with a frame finishes it first)."""
        while True:
            now = time.monotonic()
            idle_left = self.last_heard + self.idle_timeout_s - now
            life_left = self.opened_at + self.max_session_s - now
            if min(idle_left, life_left) > 0:
                await asyncio.sleep(min(idle_left, life_left))
                continue
            on_expired(life_left <= idle_left)
            self._expired = True
            if self._waiting:
                receiver.cancel()
            return
