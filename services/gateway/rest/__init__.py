"""The REST API: avatars (with their reference voices), conversations, messages, API keys.

Every route acts as the caller (`current_user`) and sees only what the caller may: their own
avatars and the public ones, their own conversations. Another user's private avatar or
conversation is answered like one that does not exist (404), so ids reveal nothing. Each
error is a 4xx whose `detail` says why; docs/rest.md describes every route. Who may use what
is services/gateway/access.py's rule, shared with the socket; each resource's routes are a
module here (avatars, conversations, api_keys), composed by `build_router`.
"""

from __future__ import annotations

from fastapi import APIRouter

from ..handlers import Gateway
from . import api_keys, avatars, conversations, tools
from .base import CurrentUser
from .shapes import ROUTER_RESPONSES


def build_router(gateway: Gateway, current_user: CurrentUser) -> APIRouter:
    """Every resource's routes under /v1, in the order the OpenAPI schema lists them."""
    router = APIRouter(prefix="/v1", responses=ROUTER_RESPONSES)
    for resource in (avatars, tools, conversations, api_keys):
        router.include_router(resource.router(gateway, current_user))
    return router
