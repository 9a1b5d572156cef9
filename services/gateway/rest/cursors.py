"""Page cursors: opaque to callers, a keyset position to us, scoped to the list that gave them."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from typing import Any

from services.common import db

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)


class BadCursor(ValueError):
    """A cursor this list did not give: answered with 400."""


def encode_cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, kind: str, scope: str) -> list:
    """The position after `kind`/`scope`; anything else a caller sends is a `BadCursor`."""
    try:
        parts = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        ok = isinstance(parts, list) and len(parts) >= 2 and parts[0] == kind and parts[1] == scope
    except (ValueError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise BadCursor("invalid cursor: pass the next_cursor of the previous page of this list as it is")
    return parts[2:]


def _time_of(us: Any) -> dt.datetime:
    if not isinstance(us, int) or isinstance(us, bool):
        raise BadCursor("invalid cursor")
    try:
        return _EPOCH + us * _US
    except OverflowError:
        raise BadCursor("invalid cursor") from None


def _us(t: dt.datetime) -> int:
    return (t - _EPOCH) // _US


def conversation_cursor(user_id: str, last: db.Conversation) -> str:
    return encode_cursor("c", user_id, _us(last.created_at), last.id)


def conversation_position(cursor: str, user_id: str) -> tuple[dt.datetime, str]:
    rest = decode_cursor(cursor, "c", user_id)
    if len(rest) != 2 or not isinstance(rest[1], str):
        raise BadCursor("invalid cursor")
    return _time_of(rest[0]), _canonical(rest[1])


def message_cursor(conv: str, last: db.Message) -> str:
    return encode_cursor("m", conv, _us(last.created_at), last.role == "avatar", last.id)


def message_position(cursor: str, conv: str) -> tuple[dt.datetime, bool, str]:
    rest = decode_cursor(cursor, "m", conv)
    if len(rest) != 3 or not isinstance(rest[1], bool) or not isinstance(rest[2], str):
        raise BadCursor("invalid cursor")
    return _time_of(rest[0]), rest[1], _canonical(rest[2])


def _canonical(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise BadCursor("invalid cursor") from None
