"""A reply's interruptions, stored so the client's precise one is the one that stays.

A barge-in or a cancel interrupts a reply at the gateway's estimate of what was heard; a
`conversation.item.truncate` then says exactly where the client stopped playing. Interruptions
of one reply may be stored in any order, so the truncate waits for the earlier one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .connection import Connection

INTERRUPT_ORDER_WAIT_S = 5.0
"""A truncate waits this long for an earlier interruption of the reply to be stored, so the
precise position it carries is the one that stays."""
STORED_WAIT_S = 3.0
"""`conversation.item.truncated` waits this long for the truncate to be stored."""


class Interruptions:
    def __init__(self, conn: Connection):
        self.conn = conn
        self._applied: dict[str, asyncio.Event] = {}
        """Per reply, set when its first interruption has been stored (`reply.interrupted`)."""
        self._stored: dict[str, int] = {}
        """Per reply, how many of its interruptions have been stored."""
        self._news = asyncio.Event()
        """Set (and replaced) whenever one is."""
        self._tasks: set[asyncio.Task] = set()

    def expect(self, message_id: str) -> None:
        """The reply is being interrupted now (a barge-in): a later truncate waits for it."""
        self._applied.setdefault(message_id, asyncio.Event())

    def stored(self, message_id: str) -> None:
        """An interruption of the reply has been stored (`reply.interrupted`)."""
        self._applied.setdefault(message_id, asyncio.Event()).set()
        self._stored[message_id] = self._stored.get(message_id, 0) + 1
        self._news.set()
        self._news = asyncio.Event()

    async def interrupt(self, message_id: str, position: tuple[int, float] | None, fact_id: str | None = None) -> None:
        if fact_id is None:
            self.expect(message_id)
        await self.conn.session.interrupt(message_id, position, fact_id)

    async def stop(self, reply_id: str, position: tuple[int, float], reason: str = "cancelled") -> None:
        """Interrupt the reply where it was heard and cancel what is still being made of it."""
        await self.interrupt(reply_id, position)
        await self.conn.session.cancel(reply_id, reason)

    def stop_soon(self, reply_id: str, position: tuple[int, float]) -> None:
        """`stop`, from code that cannot wait for it (an event being translated)."""
        self._spawn(self.stop(reply_id, position))

    async def precise(self, reply_id: str, position: tuple[int, float], fact_id: str, then: Callable[[], None]) -> None:
        """The client's own position: stored now, or muted now and stored once an earlier
        interruption of the reply has been. `then` runs once it is stored (or after a wait):
        what the client retrieves of the item after that is what it heard."""
        earlier = self._applied.get(reply_id)
        if earlier is not None and not earlier.is_set():
            self.conn.session.mute(reply_id)
            self._spawn(self._after(earlier, reply_id, position, fact_id, then))
        else:
            before = self._stored.get(reply_id, 0)
            await self.interrupt(reply_id, position, fact_id)
            self._spawn(self._then(reply_id, before, then))

    def closed(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def _after(self, earlier: asyncio.Event, reply_id: str, position, fact_id: str, then) -> None:
        try:
            await asyncio.wait_for(earlier.wait(), INTERRUPT_ORDER_WAIT_S)
        except TimeoutError:
            pass
        before = self._stored.get(reply_id, 0)
        await self.interrupt(reply_id, position, fact_id)
        await self._then(reply_id, before, then)

    async def _then(self, reply_id: str, before: int, then: Callable[[], None]) -> None:
        deadline = asyncio.get_running_loop().time() + STORED_WAIT_S
        while self._stored.get(reply_id, 0) <= before:
            news, left = self._news, deadline - asyncio.get_running_loop().time()
            try:
                await asyncio.wait_for(news.wait(), max(0.0, left))
            except TimeoutError:
                break
        then()

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
