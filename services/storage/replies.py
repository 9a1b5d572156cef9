"""A finished reply stored: its sentences' audio read back from PARLEY_SPEECH by subject,
assembled into one WAV, uploaded under a deterministic key, the key recorded on the message,
and the client told its URL. Every step is idempotent, so a redelivered reply costs a HEAD
request. A reply that cannot be stored, or is still `complete` with no sentence that has
audio, gets an `audio_store_failed` event.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from nats.aio.msg import Msg as NatsMsg

from services.common import bus as busmod
from services.common import db, metrics, objectstore, schemas, speech
from services.common.logs import ctx

from .engine import assemble

log = logging.getLogger(__name__)

ACK_WAIT_S = 10.0
"""A reply's ack wait, kept alive while its audio is assembled and uploaded: the reply of a
storage process killed mid-upload is taken up again within seconds, not a minute."""


class ReplyAudio:
    """Stores each finished reply's audio; the work queue's handler and its give-up."""

    def __init__(
        self, bus: busmod.Bus, messages: db.Messages, store: objectstore.ObjectStore, sentence_wait_s: float
    ) -> None:
        self.bus, self.messages, self.store = bus, messages, store
        self.sentence_wait_s = sentence_wait_s

    async def handle(self, msg: NatsMsg) -> None:
        keep_alive = asyncio.create_task(busmod.keep_alive(msg, every_s=ACK_WAIT_S / 3))
        try:
            await self._store(msg)
        finally:
            keep_alive.cancel()

    async def give_up(self, msg: NatsMsg, exc: BaseException) -> None:
        await self._store_failed(schemas.decode(msg.data, schemas.ReplyDone), str(exc))

    async def _store(self, msg: NatsMsg) -> None:
        done = schemas.decode(msg.data, schemas.ReplyDone)
        if done.sentence_count == 0:
            return
        sentences = await self._sentences(msg, done)
        wav, duration, _ = assemble(sentences)
        if not wav:
            if await self.messages.status(done.message_id) == "complete":
                # Every sentence failed or was cancelled (a newer turn cancels the audio of one
                # whose text had already finished): without this the reply would stay complete
                # with neither audio nor a reason the client saw, and the ledger not balance.
                await self._store_failed(done, f"none of its {done.sentence_count} sentence(s) has audio")
            return
        await self._upload(done, sentences, wav, duration)

    async def _sentences(self, msg: NatsMsg, done: schemas.ReplyDone) -> list[speech.StoredSentence]:
        """The reply's sentences; missing ones are waited for (by redelivery) for a while."""
        conv, mid = done.conversation_id, done.message_id
        found = await asyncio.gather(*(speech.read(self.bus, conv, mid, i) for i in range(done.sentence_count)))
        sentences = [s for s in found if s is not None]
        missing = done.sentence_count - len(sentences)
        if missing:
            if _age_s(msg) < self.sentence_wait_s:
                raise busmod.Retry(
                    f"{missing} sentence(s) not synthesised yet",
                    delay_s=min(0.05 * 2 ** (msg.metadata.num_delivered - 1), 0.5),
                )
            log.warning("storing reply without %d sentence(s)", missing, extra=ctx(message_id=mid))
        return sentences

    async def _upload(
        self, done: schemas.ReplyDone, sentences: list[speech.StoredSentence], wav: bytes, duration: float
    ) -> None:
        conv, mid = done.conversation_id, done.message_id
        key = objectstore.reply_audio_key(conv, mid)
        if not await self.store.exists(key):
            await self.store.put(key, wav, "audio/wav")
        first_audio = min((s.first_audio_at for s in sentences if s.first_audio_at), default=None)
        await self.messages.set_audio(mid, key, duration, {"first_audio": first_audio} if first_audio else {})
        url = await self.store.url(key)
        await self.bus.publish_event(
            schemas.AudioStored(conversation_id=conv, message_id=mid, key=key, url=url, duration_s=duration),
            msg_id=f"stored.{mid}",
        )
        metrics.EVENTS.labels("storage", "reply_audio_stored").inc()

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


def _age_s(msg: NatsMsg) -> float:
    """Seconds since JetStream first stored the message (its metadata timestamp)."""
    stamp = msg.metadata.timestamp
    if isinstance(stamp, dt.datetime):
        return (dt.datetime.now(dt.UTC) - stamp).total_seconds()
    return 0.0
