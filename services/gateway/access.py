"""Who may use what, asked by REST and the socket alike so the two cannot drift apart.

A conversation is its owner's alone. An avatar without an owner is public: everyone may use
it, nobody may change it; a private one is its owner's. Each refusal carries how REST answers
it and how the socket closes on it: REST answers another user's conversation like one that
does not exist (404), so its ids reveal nothing, while the socket's close code tells the two
apart for the client that opened it.
"""

from __future__ import annotations

from typing import ClassVar

from services.common import db, ids

from . import protocol


class Denied(Exception):
    """A refusal: `status` and `detail` for REST, `close_code` and `close_reason` for the socket."""

    status: ClassVar[int]
    close_code: ClassVar[int]

    def __init__(self, detail: str, close_reason: str | None = None):
        super().__init__(detail)
        self.detail = detail
        self.close_reason = close_reason or detail


class NoSuchConversation(Denied):
    status = 404
    close_code = protocol.CLOSE_NOT_FOUND

    def __init__(self) -> None:
        super().__init__("no such conversation")


class NotYourConversation(Denied):
    status = 404
    close_code = protocol.CLOSE_FORBIDDEN

    def __init__(self) -> None:
        super().__init__("no such conversation", "not your conversation")


class NoSuchAvatar(Denied):
    status = 404
    close_code = protocol.CLOSE_NOT_FOUND


class ReadOnlyAvatar(Denied):
    status = 403
    close_code = protocol.CLOSE_FORBIDDEN

    def __init__(self) -> None:
        super().__init__("public avatars are read-only")


async def owned_conversation(conversations: db.Conversations, conv_id: str, user_id: str) -> None:
    """Raises `NoSuchConversation` or `NotYourConversation` unless the user owns it."""
    owner = await conversations.owner(conv_id)
    if owner is None:
        raise NoSuchConversation()
    if owner != user_id:
        raise NotYourConversation()


async def usable_avatars(avatars: db.Avatars, avatar_ids: list[str], user_id: str) -> None:
    """Raises `NoSuchAvatar` naming the first avatar the user may not bring into a conversation."""
    for aid in avatar_ids:
        avatar = await avatars.get(aid)
        if avatar is None or avatar.owner_id not in (None, user_id):
            raise NoSuchAvatar(f"no such avatar: {aid}")


async def start_conversation(database: db.Database, user_id: str, avatar_ids: list[str], default_avatar_id: str) -> str:
    """A new conversation of the user's with these avatars (the default one if none), each
    named once; its id. Raises `NoSuchAvatar` and creates nothing if one may not be used."""
    chosen = list(dict.fromkeys(avatar_ids)) or [default_avatar_id]
    await usable_avatars(database.avatars, chosen, user_id)
    conv_id = ids.new_id()
    await database.conversations.create(conv_id, user_id, chosen)
    return conv_id


async def visible_avatar(avatars: db.Avatars, avatar_id: str, user_id: str) -> db.Avatar:
    """An avatar the user may see: public or their own. Raises `NoSuchAvatar`."""
    avatar = await avatars.get_visible(avatar_id, user_id)
    if avatar is None:
        raise NoSuchAvatar("no such avatar")
    return avatar


async def changeable_avatar(avatars: db.Avatars, avatar_id: str, user_id: str) -> db.Avatar:
    """An avatar the user may change: their own. Raises `NoSuchAvatar` or `ReadOnlyAvatar`."""
    avatar = await visible_avatar(avatars, avatar_id, user_id)
    if avatar.owner_id is None:
        raise ReadOnlyAvatar()
    return avatar
