"""Avatars' reference voices kept for the gateway, which has no bucket credentials."""

from __future__ import annotations

import hashlib
import logging
import uuid

from nats.aio.msg import Msg as NatsMsg

from services.common import metrics, objectstore, schemas

log = logging.getLogger(__name__)


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


async def answer_voice_put(store: objectstore.ObjectStore, msg: NatsMsg) -> None:
    """Keep the voice under a key named by its content and answer with the key, which the
    gateway records on the avatar, or with the reason it was refused."""
    try:
        key = await store_voice(store, schemas.VoicePut.from_headers(msg.headers), msg.data or b"")
        reply = schemas.VoiceStored(key=key)
        metrics.EVENTS.labels("storage", "voice_stored").inc()
    except Exception as exc:
        log.warning("voice put failed: %s", exc)
        reply = schemas.VoiceStored(error=str(exc) or type(exc).__name__)
    await msg.respond(schemas.encode(reply))
