"""One Realtime connection as the wire's parts share it: the session it serves, the client's
configuration, the input buffer, the conversation as the client is told it (`Output`), and the
one way server events go out to the socket.
"""

from __future__ import annotations

import time
import uuid

from services.common import db

from ..client_socket import ClientSocket
from ..config import GatewaySettings
from ..wire import SessionApi
from . import protocol as rt
from .buffer import InputBuffer
from .config import Config, describe
from .output import Output, Response

_SERVER_CODES = frozenset(
    {
        "stt_unavailable",
        "no_capacity",
        "idle_timeout",
        "session_too_long",
        "turn_failed",
        "no_avatar",
        "audio_store_failed",
    }
)


class Connection:
    def __init__(self, socket: ClientSocket, settings: GatewaySettings, model: str | None):
        self.socket = socket
        self.settings = settings
        self.session: SessionApi | None = None
        self.cfg = Config(model=model or "parley")
        """Replaced whole by an accepted `session.update`, never changed in place."""
        self.buffer = InputBuffer()
        self.audio_in_ms = 0.0
        """Input audio appended since the session began (the timeline of `audio_*_ms`)."""
        self.out = Output(self.emit)

    @property
    def avatar(self) -> db.Avatar:
        """Who answers: the session's avatar (a `session.update` voice may replace it before the first turn)."""
        return self.session.avatars[0]

    def continuation(self, reply_id: str, claimed: bool) -> Response:
        """The response that goes on with a reply after its function calls, its audio counted
        from what the reply had sent before it."""
        reply = self.session.reply(reply_id)
        return self.out.continuation(reply_id, reply.sent_s * 1000 if reply else 0.0, claimed)

    def emit(self, event: rt.ServerEvent) -> None:
        self.socket.send_text(rt.encoder.encode(event).decode())

    def error(self, code: str, message: str, param: str | None = None, event_id: str | None = None) -> None:
        """An error event: `server_error` for Parley's own failures, else the client's request was at fault."""
        kind = "server_error" if code in _SERVER_CODES or code.startswith("llm_") else "invalid_request_error"
        self.emit(rt.ErrorEvent(error=rt.Error(type=kind, code=code, message=message, param=param, event_id=event_id)))

    def described(self, warnings: list[rt.Warning] | None = None) -> rt.Session:
        """The session as `session.created` and `session.updated` report it."""
        life_left = self.settings.max_session_s - (time.monotonic() - self.session.opened_at)
        session_id = f"sess_{uuid.UUID(self.session.resume_id).hex}"
        expires = int(time.time() + life_left)
        return describe(self.cfg, self.avatar, session_id, self.session.conv, expires, warnings)
