"""Cancelled replies, as one watch of the `parley_cancelled` bucket: the orchestrator and the
TTS workers read the same record the same way.

Whoever stops a reply (the replica streaming it, an interruption) puts its id in the bucket;
every watcher learns it within a bus hop (nats.py's `kv.watch`, an ordered consumer that
nats.py re-creates after a reconnect), and a watcher started later is handed the cancels
still kept (the bucket's one-hour TTL). `note` remembers an id locally only: a cancel that
named a turn no replica held yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from . import subjects

log = logging.getLogger(__name__)

_KEPT = 10_000
_TTL_S = 3600.0
"""The bucket keeps a cancel for an hour; the local copy is pruned past that once it grows."""


class Cancels:
    def __init__(self, kv: KeyValue):
        self.kv = kv
        self._seen: dict[str, float] = {}
        self._watcher: KeyValue.KeyWatcher | None = None
        self._follow: asyncio.Task | None = None

    @classmethod
    async def watch(cls, js: JetStreamContext) -> Cancels:
        cancels = cls(await js.key_value(subjects.CANCEL_BUCKET))
        cancels._watcher = await cancels.kv.watch(">", ignore_deletes=True)
        cancels._follow = asyncio.create_task(cancels._read())
        return cancels

    async def _read(self) -> None:
        async for entry in self._watcher:
            if entry is not None:
                self.note(entry.key)

    def __contains__(self, reply_or_turn_id: str) -> bool:
        """Read by synthesis threads between chunks: a dict lookup, no await."""
        return reply_or_turn_id in self._seen

    def note(self, reply_or_turn_id: str) -> None:
        now = time.monotonic()
        self._seen[reply_or_turn_id] = now
        if len(self._seen) > _KEPT:
            horizon = now - _TTL_S
            self._seen = {k: t for k, t in self._seen.items() if t > horizon}

    async def put(self, reply_id: str) -> None:
        self.note(reply_id)
        await self.kv.put(reply_id, b"1")

    async def confirmed(self, reply_id: str) -> bool:
        """Seen here, or in the bucket itself (a put the watch has not delivered yet)."""
        if reply_id in self._seen:
            return True
        try:
            await self.kv.get(reply_id)
        except KeyNotFoundError:
            return False
        self.note(reply_id)
        return True

    async def close(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow
