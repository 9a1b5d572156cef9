"""An avatar's tools (docs/rest.md, "Tools"): read and replaced as one list, versioned with it.

The list is checked whole before it is stored: names, kinds, JSON Schemas, and each URL
(HTTPS to a public address unless the operator allows private ones, resolved now and again
before every call). A webhook's secret is never read back; a tool given again without its
secret keeps the one it had.
"""

from __future__ import annotations

import msgspec
from fastapi import APIRouter, Depends, HTTPException

from services.common.tools import Tool, ToolRejected, check_tools, check_url, decode_tools

from ..handlers import Gateway
from .avatars import CHANGES, load_avatar
from .base import CurrentUser
from .shapes import AvatarOut, ToolOut, ToolsIn, problems


def router(gateway: Gateway, current_user: CurrentUser) -> APIRouter:
    router = APIRouter()

    @router.get(
        "/avatars/{avatar_id}/tools",
        response_model=list[ToolOut],
        tags=["avatars"],
        responses=problems(s404="no such avatar"),
    )
    async def get_tools(avatar_id: str, user_id: str = Depends(current_user)):
        avatar = await load_avatar(gateway, avatar_id, user_id)
        return [ToolOut(**t.public()) for t in decode_tools(avatar.tools)]

    @router.put("/avatars/{avatar_id}/tools", response_model=AvatarOut, tags=["avatars"], responses=CHANGES)
    async def put_tools(avatar_id: str, body: ToolsIn, user_id: str = Depends(current_user)):
        """Replace the avatar's tools; the conversations it is in offer them from their next turn."""
        avatar = await load_avatar(gateway, avatar_id, user_id, change=True)
        kept = {t.name: t.secret for t in decode_tools(avatar.tools) if t.secret}
        try:
            tools = [msgspec.convert(t.model_dump(exclude_none=True), Tool) for t in body.tools]
            tools = [msgspec.structs.replace(t, secret=t.secret or kept.get(t.name)) for t in tools]
            check_tools(tools)
            for t in tools:
                if t.url:
                    await check_url(t.url, gateway.settings.tools_allow_private_urls)
        except (ToolRejected, msgspec.ValidationError) as exc:
            raise HTTPException(422, str(exc)) from None
        for t in tools:
            if t.kind == "webhook" and not t.secret:
                raise HTTPException(422, f"tool {t.name!r}: a webhook needs a secret to sign its calls with")
        stored = await gateway.db.avatars.set_tools(avatar.id, user_id, [msgspec.to_builtins(t) for t in tools])
        if stored is None:
            raise HTTPException(404, "no such avatar")
        return AvatarOut(**stored.public())

    return router
