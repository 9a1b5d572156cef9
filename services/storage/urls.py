"""URLs for stored objects, issued to the gateway, which has no bucket credentials."""

from __future__ import annotations

import logging

from nats.aio.msg import Msg as NatsMsg

from services.common import objectstore, schemas

log = logging.getLogger(__name__)


async def answer_sign(store: objectstore.ObjectStore, msg: NatsMsg) -> None:
    """Signed (or public) URLs for the requested keys; none at all if any cannot be signed."""
    try:
        req = schemas.decode(msg.data, schemas.SignRequest)
        urls = {k: await store.url(k) for k in req.keys}
    except Exception as exc:
        log.warning("sign request failed: %s", exc)
        urls = {}
    await msg.respond(schemas.encode(schemas.SignReply(urls=urls)))
