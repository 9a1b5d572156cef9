"""Admission: may this user open (or resume) this conversation, and is there room for it.

One decision per connection, taken before anything is subscribed: the conversation (new, named
or resumed), the avatars it may use, and the session record that counts against the user's
limit and makes the session resumable. Who may use what is access.py's rule, shared with REST.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from services.common import db

from . import access, protocol
from .config import GatewaySettings
from .wire import Opening


class Refused(Exception):
    """The connection is refused with this close code and reason."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class Admitted:
    conversation_id: str
    resume_id: str
    """The client-facing session, the key of its stored record (the dropped one's on resume)."""
    resumed: db.ClientSession | None
    """The stored record of the session resumed, if this is a resume."""


async def admit(
    database: db.Database,
    settings: GatewaySettings,
    user_id: str,
    opening: Opening,
    audio_session_id: str,
    connection: str,
) -> Admitted:
    """Raises `Refused`. On a resume the stored options fill what the client left out."""
    s = settings
    try:
        # Canonical form: ids become subject tokens, so one conversation has one spelling.
        conversation_id = str(uuid.UUID(opening.conversation_id)) if opening.conversation_id else None
        avatar_ids = [str(uuid.UUID(a)) for a in opening.avatar_ids]
        resume_id = str(uuid.UUID(opening.resume.session_id)) if opening.resume else None
    except ValueError:
        raise Refused(
            protocol.CLOSE_BAD_START, "conversation_id, avatar_ids and resume.session_id must be UUIDs"
        ) from None
    resumed = None
    if resume_id:
        resumed = await database.sessions.resumable(resume_id, dt.timedelta(seconds=s.resume_grace_s))
        if resumed is None or resumed.user_id != user_id:
            raise Refused(protocol.CLOSE_RESUME_EXPIRED, "session cannot be resumed (unknown, ended or past its grace)")
        if conversation_id not in (None, resumed.conversation_id):
            raise Refused(protocol.CLOSE_BAD_START, "resume.session_id belongs to another conversation")
        conversation_id = resumed.conversation_id
        options = resumed.options
        opening.stt.language = opening.stt.language or options.get("language")
        opening.stt.end_of_turn_ms = opening.stt.end_of_turn_ms or options.get("end_of_turn_ms")
    try:
        if conversation_id:
            await access.owned_conversation(database.conversations, conversation_id, user_id)
        else:
            conversation_id = await access.start_conversation(database, user_id, avatar_ids, s.default_avatar_id)
    except access.Denied as exc:
        raise Refused(exc.close_code, exc.close_reason[:120]) from None
    resume_id = resume_id or audio_session_id
    opened = await database.sessions.open(
        resume_id,
        user_id,
        conversation_id,
        connection,
        {"language": opening.stt.language, "end_of_turn_ms": opening.stt.end_of_turn_ms},
        s.max_sessions_per_user,
        dt.timedelta(seconds=2 * s.session_lease_s),
    )
    if not opened:
        raise Refused(protocol.CLOSE_TOO_MANY_SESSIONS, f"at most {s.max_sessions_per_user} live sessions per user")
    return Admitted(conversation_id, resume_id, resumed)
