"""An OpenAI Realtime API compatible session (`/v1/realtime`) on Parley's own pipeline.

`RealtimeWire` is a wire (wire.py) of the session: OpenAI's client events come in, OpenAI's
server events and base64 audio go out. Everything between (auth, limits, the STT session and
its takeover, replies in sentence order, barge-in, what was heard, persistence) is the
session's. docs/openai-realtime.md is the reference.

Mapping in short: the connection is a new conversation with one avatar (`voice` picks it);
audio comes at 24 kHz and is resampled to the 16 kHz the STT worker reads; a spoken turn's
user item id is its Parley user message id and a reply's assistant item id is the reply's
message id, so REST history and the client's items name the same things.

The wire only joins the parts: `ClientEvents` (client_events.py) reads the client,
`ServerEvents` (server_events.py) writes the session's events, `Conversation`
(conversation.py) keeps the items and responses the client changes, all over one `Connection`
(connection.py).
"""

from __future__ import annotations

import re

from services.common import db

from .. import events
from ..client_socket import ClientSocket
from ..config import GatewaySettings
from ..playout import Frame
from ..wire import Opening, SessionApi
from . import protocol as rt
from .client_events import ClientEvents
from .config import apply_stt
from .connection import Connection
from .conversation import Conversation
from .server_events import ServerEvents

SUBPROTOCOL = "realtime"
KEY_SUBPROTOCOL = "openai-insecure-api-key."
"""How OpenAI's browser clients carry a key: a WebSocket subprotocol `openai-insecure-api-key.<key>`."""
_CODE = re.compile(r"^[a-z_]+$")


class RealtimeWire:
    def __init__(self, socket: ClientSocket, settings: GatewaySettings, avatars: db.Avatars, model: str | None):
        self.conn = Connection(socket, settings, model)
        self.conversation = Conversation(self.conn)
        self.client = ClientEvents(self.conn, self.conversation, avatars)
        self.server = ServerEvents(self.conn, self.conversation)
        self._key: str | None = None

    def attach(self, session: SessionApi) -> None:
        self.conn.session = session

    async def accept(self) -> None:
        offered = self.conn.socket.offered
        for offer in offered:
            if offer.startswith(KEY_SUBPROTOCOL):
                self._key = offer.removeprefix(KEY_SUBPROTOCOL) or None
        await self.conn.socket.accept(SUBPROTOCOL if SUBPROTOCOL in offered else None)

    async def open(self) -> Opening | None:
        """No start message: the session begins at the handshake, configured by `session.update`."""
        opening = Opening(token=self._key, avatar_ids=[self.conn.settings.default_avatar_id])
        apply_stt(self.conn.cfg, opening)
        return opening

    async def refuse(self, code: int, reason: str) -> None:
        """A refusal is explained in an error event too: Realtime clients report error events,
        not close reasons."""
        prefix, _, rest = reason.partition(": ")
        err_code, message = (prefix, rest) if rest and _CODE.match(prefix) else ("session_refused", reason)
        event = rt.ErrorEvent(error=rt.Error(type="invalid_request_error", code=err_code, message=message))
        await self.conn.socket.send_now(rt.encoder.encode(event).decode())
        await self.conn.socket.close_now(code, reason)

    async def on_message(self, message: dict) -> None:
        await self.client.on_message(message)

    def send(self, ev: events.ClientEvent, cursor: int | None = None) -> None:
        """The session's event as Realtime server events (they carry no cursor)."""
        self.server.send(ev)

    def send_audio(self, message_id: str, frame: Frame) -> None:
        self.server.audio(message_id, frame)

    def error(self, code: str, message: str, retryable: bool = False) -> None:
        """Realtime errors carry no `retryable`: the code tells a client what went wrong."""
        self.conn.error(code, message)

    async def barged_in(self) -> None:
        await self.conversation.barged_in()

    async def closed(self) -> None:
        self.conversation.interruptions.closed()
        self.conversation.idle.closed()
        self.conversation.held.closed()
