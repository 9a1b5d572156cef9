"""API key routes: keys for server-to-server use, acting as the caller who made them."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Response

from services.common import ids

from ..auth import hash_api_key, new_api_key
from ..handlers import Gateway
from .base import CurrentUser, path_id
from .shapes import ApiKeyCreated, ApiKeyIn, ApiKeyOut, problems


def router(gateway: Gateway, current_user: CurrentUser) -> APIRouter:
    router = APIRouter()

    @router.post("/api-keys", response_model=ApiKeyCreated, status_code=201, tags=["api keys"])
    async def create_api_key(body: ApiKeyIn, user_id: str = Depends(current_user)):
        """A key for server-to-server use, acting as the caller. Shown once; only its digest is kept."""
        key, key_id = new_api_key(), ids.new_id()
        await gateway.db.keys.create(key_id, user_id, body.name, hash_api_key(key))
        return ApiKeyCreated(id=key_id, name=body.name, key=key)

    @router.get("/api-keys", response_model=list[ApiKeyOut], tags=["api keys"])
    async def list_api_keys(user_id: str = Depends(current_user)):
        return [ApiKeyOut(**k.public()) for k in await gateway.db.keys.live(user_id)]

    @router.delete("/api-keys/{key_id}", status_code=204, tags=["api keys"], responses=problems(s404="no such API key"))
    async def revoke_api_key(key_id: str, user_id: str = Depends(current_user)):
        if not await gateway.db.keys.revoke(path_id(key_id, "API key"), user_id):
            raise HTTPException(404, "no such API key")
        return Response(status_code=204)

    return router
