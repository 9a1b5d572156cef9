"""Storage worker: wires its three jobs to the bus. `replies.py` stores each finished reply's
audio (S3 errors are retried by the client, botocore's standard mode, then by redelivery with
backoff); `retention.py` deletes reply audio past its retention; `voices.py` and `urls.py`
answer the gateway, which has no bucket credentials.
"""

from __future__ import annotations

import datetime as dt

from nats.aio.msg import Msg as NatsMsg

from services.common import bus as busmod
from services.common import db, objectstore, subjects
from services.common.runtime import Service

from . import replies, urls, voices
from .config import StorageSettings
from .retention import Sweeper


class StorageService(Service):
    name = "storage"

    def __init__(self, settings: StorageSettings):
        super().__init__(settings)
        self.settings: StorageSettings = settings

    async def start(self) -> None:
        s = self.settings
        self.db = db.Database(await self.open_db())
        self.store = await objectstore.ObjectStore(s).__aenter__()
        self.on_close(self.store.aclose)
        self.bus = await self.open_bus()
        await self._answer_gateway()
        await self._store_replies()
        if s.storage_audio_retention_h > 0:
            retention = dt.timedelta(hours=s.storage_audio_retention_h)
            self.sweeper = Sweeper(self.db.messages, self.store, retention, s.storage_retention_sweep_s)
            self.sweeper.start()
            self.on_close(self.sweeper.stop)

    async def _answer_gateway(self) -> None:
        """Core NATS request/reply on a queue group: any replica answers, nothing is kept."""

        async def sign(msg: NatsMsg) -> None:
            await urls.answer_sign(self.store, msg)

        async def voice_put(msg: NatsMsg) -> None:
            await voices.answer_voice_put(self.store, msg)

        self._sign_sub = await self.bus.nc.subscribe(subjects.STORAGE_SIGN, queue="storage", cb=sign)
        self._voice_sub = await self.bus.nc.subscribe(subjects.STORAGE_VOICE_PUT, queue="storage", cb=voice_put)

    async def _store_replies(self) -> None:
        reply_audio = replies.ReplyAudio(self.bus, self.db.messages, self.store, self.settings.storage_sentence_wait_s)
        self.worker = busmod.Worker(
            self.bus,
            busmod.WorkQueue(
                subjects.REPLIES_STREAM,
                "storage",
                subjects.REPLIES_ALL,
                ack_wait_s=replies.ACK_WAIT_S,
                max_deliver=200,
            ),
            reply_audio.handle,
            concurrency=self.settings.storage_concurrency,
            give_up=reply_audio.give_up,
            service=self.name,
        )
        await self.worker.start()
        self.workers.append(self.worker)

    async def drain(self) -> None:
        await self._sign_sub.unsubscribe()
        await self._voice_sub.unsubscribe()
        await super().drain()
