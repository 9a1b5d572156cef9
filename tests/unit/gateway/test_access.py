"""The one access rule REST and the socket share, and how each refusal maps to both."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from services.common import db, ids
from services.gateway import access, protocol

OWNER, OTHER = ids.user_id_for("access-owner"), ids.user_id_for("access-other")
PUBLIC = db.Avatar(ids.new_id(), "Pub", None, "p", "en", "voices/p.wav", None)
PRIVATE = db.Avatar(ids.new_id(), "Own", None, "p", "en", "voices/o.wav", OWNER)


class FakeAvatars:
    async def get(self, avatar_id):
        return {a.id: a for a in (PUBLIC, PRIVATE)}.get(avatar_id)

    async def get_visible(self, avatar_id, user_id):
        avatar = await self.get(avatar_id)
        return avatar if avatar is not None and avatar.owner_id in (None, user_id) else None


class FakeConversations:
    def __init__(self):
        self.owners: dict[str, str] = {}
        self.created: dict[str, list[str]] = {}

    async def owner(self, conv_id):
        return self.owners.get(conv_id)

    async def create(self, conv_id, user_id, avatar_ids):
        self.owners[conv_id] = user_id
        self.created[conv_id] = avatar_ids


@pytest.fixture
def database():
    return SimpleNamespace(avatars=FakeAvatars(), conversations=FakeConversations())


async def test_a_conversation_is_its_owners_alone(database):
    conv = await access.start_conversation(database, OWNER, [], PUBLIC.id)
    assert database.conversations.created[conv] == [PUBLIC.id]  # the default avatar
    await access.owned_conversation(database.conversations, conv, OWNER)
    with pytest.raises(access.NotYourConversation) as theirs:
        await access.owned_conversation(database.conversations, conv, OTHER)
    with pytest.raises(access.NoSuchConversation) as missing:
        await access.owned_conversation(database.conversations, ids.new_id(), OWNER)
    # REST reveals nothing (404 either way); the socket tells its client which it was.
    assert (theirs.value.status, theirs.value.detail) == (missing.value.status, missing.value.detail)
    assert (theirs.value.close_code, theirs.value.close_reason) == (protocol.CLOSE_FORBIDDEN, "not your conversation")
    assert (missing.value.close_code, missing.value.close_reason) == (protocol.CLOSE_NOT_FOUND, "no such conversation")


async def test_a_private_avatar_is_usable_by_its_owner_only(database):
    conv = await access.start_conversation(database, OWNER, [PRIVATE.id, PUBLIC.id, PRIVATE.id], PUBLIC.id)
    assert database.conversations.created[conv] == [PRIVATE.id, PUBLIC.id]
    with pytest.raises(access.NoSuchAvatar) as refused:
        await access.start_conversation(database, OTHER, [PUBLIC.id, PRIVATE.id], PUBLIC.id)
    assert refused.value.status == 404 and refused.value.detail == f"no such avatar: {PRIVATE.id}"
    assert refused.value.close_code == protocol.CLOSE_NOT_FOUND
    assert len(database.conversations.created) == 1  # nothing created for the refused one


async def test_a_public_avatar_is_visible_to_all_and_changeable_by_none(database):
    assert await access.visible_avatar(database.avatars, PUBLIC.id, OTHER) == PUBLIC
    with pytest.raises(access.ReadOnlyAvatar) as read_only:
        await access.changeable_avatar(database.avatars, PUBLIC.id, OWNER)
    assert (read_only.value.status, read_only.value.detail) == (403, "public avatars are read-only")
    assert await access.changeable_avatar(database.avatars, PRIVATE.id, OWNER) == PRIVATE
    with pytest.raises(access.NoSuchAvatar) as hidden:
        await access.visible_avatar(database.avatars, PRIVATE.id, OTHER)
    assert (hidden.value.status, hidden.value.detail) == (404, "no such avatar")
