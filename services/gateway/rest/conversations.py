"""Conversation routes: the caller's conversations, their messages and each reply's audio."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import RedirectResponse

from .. import access
from ..handlers import Gateway
from .base import CurrentUser, path_id, refused
from .cursors import BadCursor, conversation_cursor, conversation_position, message_cursor, message_position
from .shapes import ConversationIn, ConversationOut, ConversationPage, MessageOut, MessagePage, problems

BAD_CURSOR = "the cursor is not one this list gave"


def router(gateway: Gateway, current_user: CurrentUser) -> APIRouter:
    router = APIRouter()
    owned = _owned_conversation(gateway, current_user)
    _add_conversations(router, gateway, current_user, owned)
    _add_messages(router, gateway, owned)
    return router


def _owned_conversation(gateway: Gateway, current_user: CurrentUser) -> Callable[..., Awaitable[str]]:
    """The dependency that gives the path's conversation id, the caller's own or a 404."""

    async def owned_conversation(conversation_id: str, user_id: str = Depends(current_user)) -> str:
        conv = path_id(conversation_id, "conversation")
        try:
            await access.owned_conversation(gateway.db.conversations, conv, user_id)
        except access.Denied as exc:
            raise refused(exc) from None
        return conv

    return owned_conversation


def _add_conversations(router: APIRouter, gateway: Gateway, current_user: CurrentUser, owned: Callable) -> None:
    @router.post(
        "/conversations",
        response_model=ConversationOut,
        status_code=201,
        tags=["conversations"],
        responses=problems(s404="no such avatar"),
    )
    async def create_conversation(body: ConversationIn, user_id: str = Depends(current_user)):
        avatar_ids = [path_id(a, "avatar") for a in body.avatar_ids]
        try:
            conv = await access.start_conversation(gateway.db, user_id, avatar_ids, gateway.settings.default_avatar_id)
        except access.Denied as exc:
            raise refused(exc) from None
        return ConversationOut(**(await gateway.db.conversations.get(conv, user_id)).public())

    @router.get(
        "/conversations", response_model=ConversationPage, tags=["conversations"], responses=problems(s400=BAD_CURSOR)
    )
    async def list_conversations(
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, Query(max_length=500)] = None,
        user_id: str = Depends(current_user),
    ):
        """The caller's conversations, newest first."""
        try:
            before = conversation_position(cursor, user_id) if cursor else None
        except BadCursor as exc:
            raise HTTPException(400, str(exc)) from None
        page = await gateway.db.conversations.page(user_id, limit + 1, before)
        more = len(page) > limit
        page = page[:limit]
        return ConversationPage(
            items=[ConversationOut(**c.public()) for c in page],
            next_cursor=conversation_cursor(user_id, page[-1]) if more else None,
        )

    @router.get(
        "/conversations/{conversation_id}",
        response_model=ConversationOut,
        tags=["conversations"],
        responses=problems(s404="no such conversation"),
    )
    async def get_conversation(conv: str = Depends(owned), user_id: str = Depends(current_user)):
        conversation = await gateway.db.conversations.get(conv, user_id)
        if conversation is None:
            raise HTTPException(404, "no such conversation")
        return ConversationOut(**conversation.public())


def _add_messages(router: APIRouter, gateway: Gateway, owned: Callable) -> None:
    @router.get(
        "/conversations/{conversation_id}/messages",
        response_model=MessagePage,
        tags=["conversations"],
        responses=problems(s400=BAD_CURSOR, s404="no such conversation"),
    )
    async def messages(
        conv: str = Depends(owned),
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(max_length=500)] = None,
    ):
        """The conversation's messages, oldest first; each reply's audio as a short-lived URL."""
        try:
            after = message_position(cursor, conv) if cursor else None
        except BadCursor as exc:
            raise HTTPException(400, str(exc)) from None
        page = await gateway.db.messages.page(conv, limit + 1, after)
        more = len(page) > limit
        page = page[:limit]
        urls = await gateway.sign([m.audio_key for m in page if m.audio_key])
        return MessagePage(
            items=[MessageOut(**m.public(urls.get(m.audio_key) if m.audio_key else None)) for m in page],
            next_cursor=message_cursor(conv, page[-1]) if more else None,
        )

    @router.get(
        "/conversations/{conversation_id}/messages/{message_id}/audio",
        status_code=307,
        tags=["conversations"],
        responses={
            307: {"description": "redirect to a short-lived signed URL of the reply's WAV"},
            **problems(s404="no such conversation, or no audio for this message"),
        },
    )
    async def message_audio(message_id: str, conv: str = Depends(owned)):
        key = await gateway.db.messages.audio_key(conv, path_id(message_id, "message"))
        if key is None:
            raise HTTPException(404, "no audio for this message")
        url = (await gateway.sign([key])).get(key)
        if url is None:
            raise HTTPException(503, "audio URLs are unavailable right now (storage service)")
        return RedirectResponse(url, status_code=307)
