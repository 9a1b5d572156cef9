"""Storage worker: for each finished reply, read its sentences' audio back from PARLEY_SPEECH
by subject, upload one WAV under a deterministic key, record the key on the message, and tell
the client its URL. Every step is idempotent, so a redelivered reply costs a HEAD request.
S3 errors are retried by the client (botocore's standard mode: 5xx, throttling, timeouts),
then by redelivery with backoff; a reply that still cannot be stored gets an
`audio_store_failed` event, and so does a reply still `complete` none of whose sentences has
audio. Reply audio past its retention is deleted by a periodic sweep.
It also answers the gateway's requests for signed URLs and to keep avatars' reference voices.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import uuid

from nats.aio.msg import Msg as NatsMsg

from services.common import bus as busmod
from services.common import db, metrics, objectstore, schemas, speech, subjects
from services.common.logs import ctx
from services.common.runtime import Service

from .config import StorageSettings
from .engine import assemble

log = logging.getLogger(__name__)

_ACK_WAIT_S = 10.0
"""A reply's ack wait, kept alive while its audio is assembled and uploaded: the reply of a
storage process killed mid-upload is taken up again within seconds, not a minute."""

_SWEEP_BATCH = 500


class StorageService(Service):
    name = "storage"

    def __init__(self, settings: StorageSettings):
        super().__init__(settings)
        self.settings: StorageSettings = settings

    async def start(self) -> None:
        s = self.settings
        self.pool = await db.create_pool(s.database_url, s.db_pool_min, s.db_pool_max)
        self.on_close(self.pool.close)
        self.db = db.Database(self.pool)
        self.store = await objectstore.ObjectStore(s).__aenter__()
        self.on_close(self.store.aclose)
        self.bus = await busmod.connect(s, self.name)
        self.on_close(self.bus.close)
        await busmod.ensure_streams(self.bus)
        self._sign_sub = await self.bus.nc.subscribe(subjects.STORAGE_SIGN, queue="storage", cb=self._on_sign)
        self._voice_sub = await self.bus.nc.subscribe(
            subjects.STORAGE_VOICE_PUT, queue="storage", cb=self._on_voice_put
        )
        self.worker = busmod.Worker(
            self.bus,
            busmod.WorkQueue(
                subjects.REPLIES_STREAM, "storage", subjects.REPLIES_ALL, ack_wait_s=_ACK_WAIT_S, max_deliver=200
            ),
            self.handle_reply,
            concurrency=s.storage_concurrency,
            give_up=self._give_up,
            service=self.name,
        )
        await self.worker.start()
        self.workers.append(self.worker)
        if s.storage_audio_retention_h > 0:
            self._sweeper = asyncio.create_task(self._sweep_forever())
            self.on_close(self._stop_sweeping)

    async def _sweep_forever(self) -> None:
        while True:
            try:
                if expired := await self.sweep():
                    log.info("deleted the audio of %d replies past retention", expired)
            except Exception:
                log.exception("retention sweep failed; trying again later")
            await asyncio.sleep(self.settings.storage_retention_sweep_s)

    async def _stop_sweeping(self) -> None:
        self._sweeper.cancel()

    async def sweep(self) -> int:
        return await expire_audio(
            self.db.messages, self.store, dt.timedelta(hours=self.settings.storage_audio_retention_h)
        )

    async def handle_reply(self, msg: NatsMsg) -> None:
        keep_alive = asyncio.create_task(busmod.keep_alive(msg, every_s=_ACK_WAIT_S / 3))
        try:
            await self._store_reply(msg)
        finally:
            keep_alive.cancel()

    async def _store_reply(self, msg: NatsMsg) -> None:
        done = schemas.decode(msg.data, schemas.ReplyDone)
        if done.sentence_count == 0:
            return
        conv, mid = done.conversation_id, done.message_id
        found = await asyncio.gather(*(speech.read(self.bus, conv, mid, i) for i in range(done.sentence_count)))
        sentences = [s for s in found if s is not None]
        missing = done.sentence_count - len(sentences)
        if missing:
            if _age_s(msg) < self.settings.storage_sentence_wait_s:
                raise busmod.Retry(
                    f"{missing} sentence(s) not synthesised yet",
                    delay_s=min(0.05 * 2 ** (msg.metadata.num_delivered - 1), 0.5),
                )
            log.warning("storing reply without %d sentence(s)", missing, extra=ctx(message_id=mid))
        wav, duration, _ = assemble(sentences)
        if not wav:
            if await self.db.messages.status(mid) == "complete":
                # Every sentence failed or was cancelled (a newer turn cancels the audio of one
                # whose text had already finished): without this the reply would stay complete
                # with neither audio nor a reason the client saw, and the ledger not balance.
                await self._store_failed(done, f"none of its {done.sentence_count} sentence(s) has audio")
            return
        key = objectstore.reply_audio_key(conv, mid)
        if not await self.store.exists(key):
            await self.store.put(key, wav, "audio/wav")
        first_audio = min((s.first_audio_at for s in sentences if s.first_audio_at), default=None)
        await self.db.messages.set_audio(mid, key, duration, {"first_audio": first_audio} if first_audio else {})
        url = await self.store.url(key)
        await self.bus.publish_event(
            schemas.AudioStored(conversation_id=conv, message_id=mid, key=key, url=url, duration_s=duration),
            msg_id=f"stored.{mid}",
        )
        metrics.EVENTS.labels("storage", "reply_audio_stored").inc()

    async def _give_up(self, msg: NatsMsg, exc: BaseException) -> None:
        await self._store_failed(schemas.decode(msg.data, schemas.ReplyDone), str(exc))

    async def _store_failed(self, done: schemas.ReplyDone, reason: str) -> None:
        await self.bus.publish_event(
            schemas.ErrorEvent(
                conversation_id=done.conversation_id,
                code="audio_store_failed",
                message=f"the reply's audio could not be stored: {reason}",
                message_id=done.message_id,
            ),
            msg_id=f"store-fail.{done.message_id}",
        )
        metrics.EVENTS.labels("storage", "reply_audio_failed").inc()

    async def _on_sign(self, msg: NatsMsg) -> None:
        try:
            req = schemas.decode(msg.data, schemas.SignRequest)
            urls = {k: await self.store.url(k) for k in req.keys}
        except Exception as exc:
            log.warning("sign request failed: %s", exc)
            urls = {}
        await msg.respond(schemas.encode(schemas.SignReply(urls=urls)))

    async def _on_voice_put(self, msg: NatsMsg) -> None:
        """Keep an avatar's reference voice (the gateway has no bucket credentials) under a key
        named by its content; the gateway records the key on the avatar."""
        try:
            key = await store_voice(self.store, schemas.VoicePut.from_headers(msg.headers), msg.data or b"")
            reply = schemas.VoiceStored(key=key)
            metrics.EVENTS.labels("storage", "voice_stored").inc()
        except Exception as exc:
            log.warning("voice put failed: %s", exc)
            reply = schemas.VoiceStored(error=str(exc) or type(exc).__name__)
        await msg.respond(schemas.encode(reply))

    async def drain(self) -> None:
        await self._sign_sub.unsubscribe()
        await self._voice_sub.unsubscribe()
        await super().drain()


async def store_voice(store: objectstore.ObjectStore, meta: schemas.VoicePut, wav: bytes) -> str:
    """Put a reference voice WAV at its content-named key (once) and return the key."""
    avatar_id = str(uuid.UUID(meta.avatar_id))
    if hashlib.sha256(wav).hexdigest() != meta.sha256.lower():
        raise ValueError("the voice's sha256 does not match its bytes")
    if wav[:4] != b"RIFF" or wav[8:12] != b"WAVE":
        raise ValueError("a reference voice must be a WAV file")
    key = objectstore.voice_key(avatar_id, meta.sha256.lower())
    if not await store.exists(key):
        await store.put(key, wav, "audio/wav")
    return key


def _age_s(msg: NatsMsg) -> float:
    """Seconds since JetStream first stored the message (its metadata timestamp)."""
    stamp = msg.metadata.timestamp
    if isinstance(stamp, dt.datetime):
        return (dt.datetime.now(dt.UTC) - stamp).total_seconds()
    return 0.0


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
