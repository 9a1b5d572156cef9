"""A reply's interruptions, stored so the client's precise one is the one that stays.

A barge-in or a cancel interrupts a reply at the gateway's estimate of what was heard; a
`conversation.item.truncate` then says exactly where the client stopped playing. Interruptions
of one reply may be stored in any order, so the truncate waits for the earlier one.
"""

from __future__ import annotations

import asyncio

from .connection import Connection

INTERRUPT_ORDER_WAIT_S = 5.0
"""A truncate waits this long for an earlier interruption of the reply to be stored, so the
precise position it carries is the one that stays."""


class Interruptions:
    def __init__(self, conn: Connection):
        self.conn = conn
        self._applied: dict[str, asyncio.Event] = {}
        """Per reply, set when its first interruption has been stored (`reply.interrupted`)."""
        self._tasks: set[asyncio.Task] = set()

    def expect(self, message_id: str) -> None:
        """The reply is being interrupted now (a barge-in): a later truncate waits for it."""
        self._applied.setdefault(message_id, asyncio.Event())

    def stored(self, message_id: str) -> None:
        """The reply's first interruption has been stored."""
        self._applied.setdefault(message_id, asyncio.Event()).set()

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

    async def precise(self, reply_id: str, position: tuple[int, float], fact_id: str) -> None:
        """The client's own position: stored now, or muted now and stored once an earlier
        interruption of the reply has been."""
        earlier = self._applied.get(reply_id)
        if earlier is not None and not earlier.is_set():
            self.conn.session.mute(reply_id)
            self._spawn(self._after(earlier, reply_id, position, fact_id))
        else:
            await self.interrupt(reply_id, position, fact_id)

    def closed(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def _after(self, earlier: asyncio.Event, reply_id: str, position, fact_id: str) -> None:
        try:
            await asyncio.wait_for(earlier.wait(), INTERRUPT_ORDER_WAIT_S)
        except TimeoutError:
            pass
        await self.interrupt(reply_id, position, fact_id)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
