"""What every resource's routes share: the caller's dependency, path ids, refusals as HTTP errors."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from fastapi import HTTPException

from .. import access

CurrentUser = Callable[..., Awaitable[str]]
"""The dependency that authenticates a request and gives the caller's user id."""


def path_id(value: str, what: str) -> str:
    """A path id that is not a UUID names nothing: 404, as for any unknown id."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise HTTPException(404, f"no such {what}") from None


def refused(denied: access.Denied) -> HTTPException:
    """An access refusal as REST answers it."""
    return HTTPException(denied.status, denied.detail)
