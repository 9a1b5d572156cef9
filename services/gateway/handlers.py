"""Gateway: the service that holds the clients' sockets, one `Session` (session.py) each.

The service connects to Postgres and the bus, keeps its sessions' records fresh (so those of a
replica that dies become resumable), hands sockets over to another replica when it drains,
and asks storage to sign audio URLs.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import WebSocket
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from services.common import db, schemas, subjects
from services.common.runtime import Service

from . import protocol
from .auth import Authenticator
from .client_socket import ClientSocket
from .config import GatewaySettings
from .doorway import Doorway
from .native import NativeWire
from .phone.wire import TwilioWire
from .realtime import RealtimeWire
from .session import Session
from .tool_answers import ToolAnswers

log = logging.getLogger(__name__)


class Gateway(Service):
    name = "gateway"

    def __init__(self, settings: GatewaySettings):
        super().__init__(settings)
        self.settings: GatewaySettings = settings
        self.sessions: set[Session] = set()
        self.doorway = Doorway(settings.max_unstarted_per_address)

    async def start(self) -> None:
        s = self.settings
        self.db = db.Database(await self.open_db())
        self.auth = Authenticator(s, self.db)
        self.bus = await self.open_bus()
        self.tool_answers = ToolAnswers(self.bus, self.db, self.settings.max_tool_result_bytes)
        renewer = asyncio.create_task(self._renew_forever())
        self.on_close(lambda: _cancel(renewer))

    async def _renew_forever(self) -> None:
        """Keep this replica's session records fresh: a replica that dies stops renewing, and
        its sessions stop counting against their users' limits and become resumable."""
        while True:
            await asyncio.sleep(self.settings.session_lease_s)
            try:
                await self.db.sessions.renew([s.resume_id for s in self.sessions])
            except Exception:
                log.exception("could not renew session records")

    async def serve(self, ws: WebSocket, kind: str = "native") -> None:
        """One client connection: the native protocol, the OpenAI Realtime API or a phone call."""
        s = self.settings
        socket = ClientSocket(ws, s.phone_idle_timeout_s if kind == "twilio" else s.idle_timeout_s, s.max_session_s)
        if kind == "realtime":
            wire = RealtimeWire(socket, s, self.db.avatars, ws.query_params.get("model"))
        elif kind == "twilio":
            wire = TwilioWire(socket, s, self.auth)
        else:
            wire = NativeWire(socket, s.start_timeout_s, s.max_text_chars)
        await Session(self, socket, wire).run()

    def status(self) -> dict:
        return {"sessions": len(self.sessions)}

    async def drain(self) -> None:
        await self.release_clients()

    async def release_clients(self) -> None:
        """Close every socket with 1001; the sessions stay resumable through another replica."""
        for session in list(self.sessions):
            session.close(protocol.CLOSE_GOING_AWAY, "server shutting down; resume on another gateway")
        deadline = time.monotonic() + 5
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def sign(self, keys: list[str]) -> dict[str, str]:
        """Audio URLs are issued by the storage service, which holds the bucket credentials."""
        if not keys:
            return {}
        try:
            reply = await self.bus.nc.request(
                subjects.STORAGE_SIGN, schemas.encode(schemas.SignRequest(keys=keys)), timeout=2.0
            )
            return schemas.decode(reply.data, schemas.SignReply).urls
        except (NatsTimeout, NoRespondersError):
            return {}


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
