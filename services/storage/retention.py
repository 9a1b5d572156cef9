"""Reply audio past its retention deleted by a periodic sweep; the message keeps its text."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from services.common import db, metrics, objectstore

log = logging.getLogger(__name__)

_SWEEP_BATCH = 500


async def expire_audio(messages: db.Messages, store: objectstore.ObjectStore, older_than: dt.timedelta) -> int:
    """Delete reply audio stored more than `older_than` ago; returns how many replies.

    Batches are claimed with row locks (`FOR UPDATE SKIP LOCKED`), so replicas sweeping at
    once share the work; an object is deleted before its row says so, and deleting an
    object already gone succeeds, so a sweep cut short is finished by the next one.
    """
    total = 0
    while True:
        async with messages.expiring_audio(older_than, _SWEEP_BATCH) as batch:
            if not batch:
                return total
            await store.delete_many([key for _, key in batch])
            await batch.expire()
        total += len(batch)
        metrics.EVENTS.labels("storage", "reply_audio_expired").inc(len(batch))


class Sweeper:
    """Runs `expire_audio` every `every_s` until stopped; a failed sweep is tried again next time."""

    def __init__(
        self, messages: db.Messages, store: objectstore.ObjectStore, retention: dt.timedelta, every_s: float
    ) -> None:
        self.messages, self.store = messages, store
        self.retention, self.every_s = retention, every_s
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()

    async def sweep(self) -> int:
        return await expire_audio(self.messages, self.store, self.retention)

    async def _sweep_forever(self) -> None:
        while True:
            try:
                if expired := await self.sweep():
                    log.info("deleted the audio of %d replies past retention", expired)
            except Exception:
                log.exception("retention sweep failed; trying again later")
            await asyncio.sleep(self.every_s)
