"""Request body limits: a body over its limit is refused with 413 before it is parsed or spooled."""

from __future__ import annotations

import re

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

JSON_BODY_LIMIT = 1024 * 1024
FORM_FIELDS_LIMIT = 128 * 1024
"""What a voice upload's body may hold besides the file: the text fields and multipart framing."""
UPLOAD_ROUTES = (("POST", re.compile(r"^/v1/avatars/?$")), ("PUT", re.compile(r"^/v1/avatars/[^/]+/voice/?$")))


class BodyLimit:
    """Refuses a request body over its limit with 413 and a reason, before it is parsed or
    spooled: a voice upload may carry the voice file and its form fields, anything else 1 MiB.
    A declared Content-Length over the limit is answered at once; a chunked body is counted."""

    def __init__(self, app: ASGIApp, max_voice_bytes: int):
        self.app = app
        self.max_voice_bytes = max_voice_bytes

    def limit(self, scope: Scope) -> tuple[int, str]:
        if any(scope["method"] == m and p.match(scope["path"]) for m, p in UPLOAD_ROUTES):
            limit = self.max_voice_bytes + FORM_FIELDS_LIMIT
            return (
                limit,
                f"the request body is over {limit} bytes; a voice file may have at most {self.max_voice_bytes} bytes",
            )
        return JSON_BODY_LIMIT, f"the request body is over {JSON_BODY_LIMIT} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, reason = self.limit(scope)
        too_large = JSONResponse({"detail": reason}, status_code=413)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await too_large(scope, receive, send)
            return
        received = 0
        exceeded = started = False

        async def counted() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _BodyTooLarge(reason)
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # the app's answer to a body it could not read; ours goes instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await too_large(scope, receive, send)


class _BodyTooLarge(Exception):
    pass
