"""The gateway's HTTP surface: the client WebSocket, REST with OpenAPI, ops endpoints, web client.

Every REST call and every socket carries a user token or API key (see auth.py); every
conversation, message and audio object is reached only through its owner's conversation.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request, WebSocket
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from services.common.runtime import OPS_ROUTES, lifespan

from . import phone, rest
from .auth import AuthError, Principal
from .handlers import Gateway
from .rest.limits import BodyLimit


class AsciiJSONResponse(JSONResponse):
    """JSON escaped to ASCII: an echoed input holding a lone surrogate stays encodable."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


STATIC = Path(__file__).parent / "static"
BEARER = HTTPBearer(auto_error=False, description="a user token (JWT) or an API key (pk_…)")


def create_app(gateway: Gateway) -> FastAPI:
    """The client port's app. With `PARLEY_OPS_PORT` set, its metrics and docs are `ops_app`'s."""
    apart = gateway.settings.ops_port is not None
    docs = {"docs_url": None, "redoc_url": None, "openapi_url": None} if apart else {}
    app = FastAPI(title="Parley gateway", version="0.1.0", lifespan=lifespan, **docs)
    app.state.service = gateway
    for route in OPS_ROUTES:
        if not (apart and route.path == "/metrics"):
            app.router.routes.append(route)

    def gw() -> Gateway:
        if not gateway.ready:
            raise HTTPException(503, "gateway is not ready")
        return gateway

    @app.middleware("http")
    async def origin_allowlist(request: Request, call_next):
        """A browser page from an origin not allowed gets nothing, not even a 404."""
        if not gateway.ready or gateway.auth.origin_allowed(request.headers.get("origin"), request.headers.get("host")):
            return await call_next(request)
        return JSONResponse({"detail": "origin not allowed"}, status_code=403)

    async def principal(
        creds: HTTPAuthorizationCredentials | None = Depends(BEARER), g: Gateway = Depends(gw)
    ) -> Principal:
        try:
            return await g.auth.authenticate(creds.credentials if creds else None)
        except AuthError as exc:
            raise HTTPException(401, f"{exc.code}: {exc.message}", headers={"WWW-Authenticate": "Bearer"}) from None

    async def current_user(p: Principal = Depends(principal)) -> str:
        return p.user_id

    app.include_router(rest.build_router(gateway, current_user))
    app.include_router(phone.router(gateway))
    app.add_middleware(BodyLimit, max_voice_bytes=gateway.settings.max_voice_upload_bytes)

    _error_handlers(app)
    _sockets(app, gateway)

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    return app


def ops_app(gateway: Gateway, app: FastAPI) -> Starlette:
    """The ops port: health, metrics and `app`'s API docs, for operators and Prometheus only."""

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(app.openapi())

    async def swagger(request: Request):
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - Swagger UI")

    async def redoc(request: Request):
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")

    docs = [Route("/openapi.json", openapi), Route("/docs", swagger), Route("/redoc", redoc)]
    ops = Starlette(routes=[*OPS_ROUTES, *docs])
    ops.state.service = gateway
    return ops


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        """A body that cannot be parsed is a malformed request like any other: 422, saying why
        (Starlette and FastAPI answer a bad form or body with 400)."""
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            cause = f": {exc.__cause__}" if exc.__cause__ else ""
            exc = HTTPException(422, f"the request body could not be parsed{cause}")
        elif exc.status_code == 400 and request.headers.get("content-type", "").startswith("multipart/"):
            exc = HTTPException(422, f"the multipart form could not be parsed: {exc.detail}")
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        """FastAPI's own 422, escaped: its default handler fails (500) on a body whose
        strings are not valid Unicode, such as a lone surrogate."""
        return AsciiJSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)


def _sockets(app: FastAPI, gateway: Gateway) -> None:
    @app.websocket("/v1/ws")
    async def websocket(ws: WebSocket):
        if not gateway.ready:
            await ws.close(1013, "gateway is not ready")
            return
        await gateway.serve(ws)

    @app.websocket("/v1/realtime")
    async def realtime(ws: WebSocket):
        """OpenAI Realtime API compatible sessions (docs/openai-realtime.md)."""
        if not gateway.ready:
            await ws.close(1013, "gateway is not ready")
            return
        await gateway.serve(ws, "realtime")

    @app.websocket(phone.STREAM_PATH)
    async def twilio_stream(ws: WebSocket):
        """A phone call's audio from Twilio's `<Connect><Stream>` (docs/phone.md)."""
        if not gateway.ready:
            await ws.close(1013, "gateway is not ready")
            return
        await gateway.serve(ws, "twilio")
