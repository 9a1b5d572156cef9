"""The gateway's HTTP surface: the client WebSocket, REST with OpenAPI, ops endpoints, web client.

Identity in this first version is the `X-Parley-User` header (REST) or `user` in
`session.start` (WebSocket); signed tokens replace both (see docs/protocol.md).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, WebSocket
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from services.common import ids
from services.common.runtime import OPS_ROUTES, lifespan

from .handlers import ClientSession, Gateway

STATIC = Path(__file__).parent / "static"


class AvatarOut(BaseModel):
    id: str
    name: str
    role_title: str | None
    language: str
    has_voice: bool


class ConversationIn(BaseModel):
    avatar_ids: list[str] = Field(default_factory=list, description="defaults to the demo avatar")


class ConversationOut(BaseModel):
    id: str
    avatar_ids: list[str]


class MessageOut(BaseModel):
    id: str
    role: str
    avatar_id: str | None
    reply_to: str | None
    source: str | None
    text: str
    status: str
    error: str | None
    audio_key: str | None
    audio_url: str | None
    audio_duration_s: float | None
    audio_expired: bool = False
    """The reply's audio was deleted after the retention period; its text stays."""
    timings: dict
    created_at: str


def _uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise HTTPException(404, f"no such {what}") from None


def create_app(gateway: Gateway) -> FastAPI:
    app = FastAPI(title="Parley gateway", version="0.1.0", lifespan=lifespan)
    app.state.service = gateway
    for route in OPS_ROUTES:
        app.router.routes.append(route)

    def gw() -> Gateway:
        if not gateway.ready:
            raise HTTPException(503, "gateway is not ready")
        return gateway

    async def current_user(x_parley_user: Annotated[str | None, Header()] = None, g: Gateway = Depends(gw)) -> str:
        if not x_parley_user:
            raise HTTPException(401, "missing X-Parley-User header")
        user_id = ids.user_id_for(x_parley_user)
        await g.repo.ensure_user(user_id, x_parley_user)
        return user_id

    async def owned_conversation(conversation_id: str, user_id: str = Depends(current_user)) -> str:
        conv = _uuid(conversation_id, "conversation")
        owner = await gateway.repo.conversation_owner(conv)
        if owner is None or owner != user_id:
            raise HTTPException(404, "no such conversation")
        return conv

    @app.get("/v1/avatars", response_model=list[AvatarOut])
    async def list_avatars(user_id: str = Depends(current_user)):
        avatars = await gateway.repo.list_avatars(user_id)
        return [
            AvatarOut(id=a.id, name=a.name, role_title=a.role_title, language=a.language, has_voice=bool(a.voice_key))
            for a in avatars
        ]

    @app.post("/v1/conversations", response_model=ConversationOut, status_code=201)
    async def create_conversation(body: ConversationIn, user_id: str = Depends(current_user)):
        avatar_ids = [_uuid(a, "avatar") for a in body.avatar_ids] or [gateway.settings.default_avatar_id]
        for aid in avatar_ids:
            avatar = await gateway.repo.get_avatar(aid)
            if avatar is None or avatar.owner_id not in (None, user_id):
                raise HTTPException(404, f"no such avatar: {aid}")
        conv = ids.new_id()
        await gateway.repo.create_conversation(conv, user_id, avatar_ids)
        return ConversationOut(id=conv, avatar_ids=avatar_ids)

    @app.get("/v1/conversations/{conversation_id}/messages", response_model=list[MessageOut])
    async def messages(conv: str = Depends(owned_conversation)):
        rows = await gateway.repo.messages(conv)
        urls = await gateway.sign([r["audio_key"] for r in rows if r["audio_key"]])
        return [
            MessageOut(
                **{k: v for k, v in r.items() if k != "created_at"},
                audio_url=urls.get(r["audio_key"]) if r["audio_key"] else None,
                created_at=r["created_at"].isoformat(),
            )
            for r in rows
        ]

    @app.websocket("/v1/ws")
    async def websocket(ws: WebSocket):
        if not gateway.ready:
            await ws.close(1013, "gateway is not ready")
            return
        await ClientSession(ws, gateway).run()

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html")

    return app
