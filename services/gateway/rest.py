"""The REST API: avatars (with their reference voices), conversations, messages, API keys.

Every route acts as the caller (`current_user`) and sees only what the caller may: their own
avatars and the public ones, their own conversations. Another user's private avatar or
conversation is answered like one that does not exist (404), so ids reveal nothing. Each
error is a 4xx whose `detail` says why; docs/rest.md describes every route.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import nats.errors
from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Response, UploadFile
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common import db, ids, schemas, subjects
from services.common.personas import DEFAULT_PERSONA

from . import access
from .auth import hash_api_key, new_api_key
from .handlers import Gateway
from .voice import VoiceRejected, normalise_voice

JSON_BODY_LIMIT = 1024 * 1024
FORM_FIELDS_LIMIT = 128 * 1024
"""What a voice upload's body may hold besides the file: the text fields and multipart framing."""
UPLOAD_ROUTES = (("POST", re.compile(r"^/v1/avatars/?$")), ("PUT", re.compile(r"^/v1/avatars/[^/]+/voice/?$")))

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
RoleTitle = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]
Persona = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=8000)]
Language = Annotated[
    str,
    StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z]{2}(-[A-Za-z0-9]{2,8})?$"),
    AfterValidator(str.lower),
]
"""ISO 639-1, optionally with a region: `en`, `pt-br`, `zh-cn`."""


# --- shapes ---------------------------------------------------------------------------------


class Problem(BaseModel):
    """Every error the API answers itself: `detail` says why."""

    detail: str


class Unprocessable(BaseModel):
    """422: a request that does not fit the schema (`detail` lists each field's error, as
    FastAPI reports them) or whose content cannot be used (`detail` says why)."""

    detail: str | list[dict[str, Any]]


def _problems(**described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for error statuses, e.g. `_problems(s404="no such avatar")`."""
    return {int(code[1:]): {"model": Problem, "description": text} for code, text in described.items()}


ROUTER_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_problems(
        s401="no credential, or an expired or invalid one (`WWW-Authenticate: Bearer`)",
        s403="a browser origin that is not allowed",
        s413="the request body is over its limit",
        s503="the gateway is not ready, or a service it needs did not answer",
    ),
    422: {"model": Unprocessable, "description": "the request does not fit the schema, or its content cannot be used"},
}
"""What any route may answer besides its own results: the credential check, the origin
allowlist, the body limit and the readiness check run before every route, so the schema
(and clients generated from it) know every status a call can get."""
VOICE_UPLOAD = _problems(s413="the voice file is too large", s415="the voice file is not decodable audio")


class AvatarOut(BaseModel):
    id: str
    name: str
    role_title: str | None
    persona_prompt: str = Field(description="may hold {name}, {role} and {language}, filled in when it is used")
    language: str
    has_voice: bool
    public: bool = Field(description="a public avatar has no owner: everyone may use it, nobody may change it")
    created_at: dt.datetime
    updated_at: dt.datetime


class AvatarPatch(BaseModel):
    """The fields to change; those left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    role_title: RoleTitle | None = Field(default=None, description="null or empty clears it")
    persona_prompt: Persona | None = None
    language: Language | None = None

    @model_validator(mode="after")
    def _only_role_title_clears(self) -> AvatarPatch:
        for field in ("name", "persona_prompt", "language"):
            if field in self.model_fields_set and getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null")
        return self


class ConversationIn(BaseModel):
    avatar_ids: list[str] = Field(default_factory=list, max_length=10, description="defaults to the demo avatar")


class LastMessage(BaseModel):
    role: str
    avatar_id: str | None
    text: str = Field(description="its first 200 characters")
    created_at: dt.datetime


class ConversationOut(BaseModel):
    id: str
    avatar_ids: list[str]
    title: str | None
    created_at: dt.datetime
    updated_at: dt.datetime = Field(description="its latest message's time, or its creation")
    last_message: LastMessage | None


class ConversationPage(BaseModel):
    items: list[ConversationOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


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


class MessagePage(BaseModel):
    items: list[MessageOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class ApiKeyIn(BaseModel):
    name: str = Field(default="", max_length=100)


class ApiKeyOut(BaseModel):
    id: str
    name: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None


class ApiKeyCreated(BaseModel):
    id: str
    name: str
    key: str = Field(description="the key itself; it is not shown again")


def _avatar_out(avatar: db.Avatar) -> AvatarOut:
    return AvatarOut(**avatar.public())


def _conversation_out(conversation: db.Conversation) -> ConversationOut:
    return ConversationOut(**conversation.public())


# --- cursors: opaque to callers, a keyset position to us ------------------------------------

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)


class BadCursor(ValueError):
    pass


def encode_cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, kind: str, scope: str) -> list:
    """The position after `kind`/`scope`; anything else a caller sends is a `BadCursor`."""
    try:
        parts = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        ok = isinstance(parts, list) and len(parts) >= 2 and parts[0] == kind and parts[1] == scope
    except (ValueError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise BadCursor("invalid cursor: pass the next_cursor of the previous page of this list as it is")
    return parts[2:]


def _time_of(us: Any) -> dt.datetime:
    if not isinstance(us, int) or isinstance(us, bool):
        raise BadCursor("invalid cursor")
    try:
        return _EPOCH + us * _US
    except OverflowError:
        raise BadCursor("invalid cursor") from None


def _us(t: dt.datetime) -> int:
    return (t - _EPOCH) // _US


def conversation_cursor(user_id: str, last: db.Conversation) -> str:
    return encode_cursor("c", user_id, _us(last.created_at), last.id)


def conversation_position(cursor: str, user_id: str) -> tuple[dt.datetime, str]:
    rest = decode_cursor(cursor, "c", user_id)
    if len(rest) != 2 or not isinstance(rest[1], str):
        raise BadCursor("invalid cursor")
    return _time_of(rest[0]), _canonical(rest[1])


def message_cursor(conv: str, last: db.Message) -> str:
    return encode_cursor("m", conv, _us(last.created_at), last.role == "avatar", last.id)


def message_position(cursor: str, conv: str) -> tuple[dt.datetime, bool, str]:
    rest = decode_cursor(cursor, "m", conv)
    if len(rest) != 3 or not isinstance(rest[1], bool) or not isinstance(rest[2], str):
        raise BadCursor("invalid cursor")
    return _time_of(rest[0]), rest[1], _canonical(rest[2])


def _canonical(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise BadCursor("invalid cursor") from None


def _uuid(value: str, what: str) -> str:
    """A path id that is not a UUID names nothing: 404, as for any unknown id."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise HTTPException(404, f"no such {what}") from None


# --- request body limits --------------------------------------------------------------------


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


# --- routes ---------------------------------------------------------------------------------


def build_router(gateway: Gateway, current_user: Callable[..., Awaitable[str]]) -> APIRouter:
    s = gateway.settings
    router = APIRouter(prefix="/v1", responses=ROUTER_RESPONSES)

    async def owned_conversation(conversation_id: str, user_id: str = Depends(current_user)) -> str:
        conv = _uuid(conversation_id, "conversation")
        try:
            await access.owned_conversation(gateway.db.conversations, conv, user_id)
        except access.Denied as exc:
            raise HTTPException(exc.status, exc.detail) from None
        return conv

    async def avatar_for(avatar_id: str, user_id: str, change: bool = False) -> db.Avatar:
        rule = access.changeable_avatar if change else access.visible_avatar
        try:
            return await rule(gateway.db.avatars, _uuid(avatar_id, "avatar"), user_id)
        except access.Denied as exc:
            raise HTTPException(exc.status, exc.detail) from None

    async def store_voice(avatar_id: str, upload: UploadFile) -> str:
        """Check and normalise the upload, have the storage service keep it; its key."""
        data = await upload.read(s.max_voice_upload_bytes + 1)
        try:
            wav, _ = await asyncio.to_thread(
                normalise_voice, data, max_bytes=s.max_voice_upload_bytes, min_s=s.voice_min_s, max_s=s.voice_max_s
            )
        except VoiceRejected as exc:
            raise HTTPException(exc.status, exc.detail) from None
        meta = schemas.VoicePut(avatar_id=avatar_id, sha256=hashlib.sha256(wav).hexdigest())
        try:
            reply = await gateway.bus.nc.request(
                subjects.STORAGE_VOICE_PUT, wav, timeout=s.voice_store_timeout_s, headers=meta.headers()
            )
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            raise HTTPException(503, "the voice could not be stored: the storage service did not answer") from None
        except nats.errors.Error as exc:
            raise HTTPException(503, f"the voice could not be stored: {exc}") from None
        stored = schemas.decode(reply.data, schemas.VoiceStored)
        if not stored.key:
            raise HTTPException(503, f"the voice could not be stored: {stored.error}")
        return stored.key

    upload_form_limits = {"max_fields": 8, "max_files": 1, "max_part_size": 64 * 1024}

    # -- avatars --

    @router.post(
        "/avatars",
        response_model=AvatarOut,
        status_code=201,
        tags=["avatars"],
        form_limits=upload_form_limits,
        responses=VOICE_UPLOAD,
    )
    async def create_avatar(
        response: Response,
        name: Annotated[Name, Form()],
        voice: Annotated[UploadFile, File(description="a recording of the voice, at least 6 s (WAV/FLAC/OGG/MP3)")],
        role_title: Annotated[RoleTitle | None, Form()] = None,
        persona_prompt: Annotated[
            str | None,
            Form(max_length=8000, description="default: a friendly, concise persona; may use {name} and {role}"),
        ] = None,
        language: Annotated[Language, Form(description="ISO 639-1, e.g. en, de, pt-br")] = "en",
        user_id: str = Depends(current_user),
    ):
        """A private avatar of the caller's, speaking in the uploaded voice."""
        avatar_id = ids.new_id()
        key = await store_voice(avatar_id, voice)
        row = await gateway.db.avatars.create(
            db.Avatar(
                id=avatar_id,
                name=name,
                role_title=role_title or None,
                persona_prompt=(persona_prompt or "").strip() or DEFAULT_PERSONA,
                language=language,
                voice_key=key,
                owner_id=user_id,
            )
        )
        response.headers["Location"] = f"/v1/avatars/{avatar_id}"
        return _avatar_out(row)

    @router.get("/avatars", response_model=list[AvatarOut], tags=["avatars"])
    async def list_avatars(user_id: str = Depends(current_user)):
        """The public avatars, then the caller's own, each by name."""
        return [_avatar_out(r) for r in await gateway.db.avatars.visible(user_id)]

    @router.get(
        "/avatars/{avatar_id}", response_model=AvatarOut, tags=["avatars"], responses=_problems(s404="no such avatar")
    )
    async def get_avatar(avatar_id: str, user_id: str = Depends(current_user)):
        return _avatar_out(await avatar_for(avatar_id, user_id))

    @router.patch(
        "/avatars/{avatar_id}",
        response_model=AvatarOut,
        tags=["avatars"],
        responses=_problems(s403="public avatars are read-only", s404="no such avatar"),
    )
    async def patch_avatar(avatar_id: str, body: AvatarPatch, user_id: str = Depends(current_user)):
        row = await avatar_for(avatar_id, user_id, change=True)
        changes = body.model_dump(exclude_unset=True)
        if "role_title" in changes:
            changes["role_title"] = changes["role_title"] or None
        if changes:
            row = await gateway.db.avatars.update(row.id, user_id, changes)
            if row is None:
                raise HTTPException(404, "no such avatar")
        return _avatar_out(row)

    @router.put(
        "/avatars/{avatar_id}/voice",
        response_model=AvatarOut,
        tags=["avatars"],
        form_limits=upload_form_limits,
        responses={**VOICE_UPLOAD, **_problems(s403="public avatars are read-only", s404="no such avatar")},
    )
    async def replace_voice(
        avatar_id: str,
        voice: Annotated[UploadFile, File(description="a recording of the voice, at least 6 s (WAV/FLAC/OGG/MP3)")],
        user_id: str = Depends(current_user),
    ):
        """A new reference voice; it is kept under a new key, so every TTS worker clones it afresh."""
        row = await avatar_for(avatar_id, user_id, change=True)
        key = await store_voice(row.id, voice)
        row = await gateway.db.avatars.set_voice(row.id, user_id, key)
        if row is None:
            raise HTTPException(404, "no such avatar")
        return _avatar_out(row)

    @router.delete(
        "/avatars/{avatar_id}",
        status_code=204,
        tags=["avatars"],
        responses=_problems(s403="public avatars are read-only", s404="no such avatar"),
    )
    async def delete_avatar(avatar_id: str, user_id: str = Depends(current_user)):
        """Gone from lists and new conversations; conversations that had it stay readable."""
        row = await avatar_for(avatar_id, user_id, change=True)
        if not await gateway.db.avatars.delete(row.id, user_id):
            raise HTTPException(404, "no such avatar")
        return Response(status_code=204)

    # -- conversations --

    @router.post(
        "/conversations",
        response_model=ConversationOut,
        status_code=201,
        tags=["conversations"],
        responses=_problems(s404="no such avatar"),
    )
    async def create_conversation(body: ConversationIn, user_id: str = Depends(current_user)):
        avatar_ids = [_uuid(a, "avatar") for a in body.avatar_ids]
        try:
            conv = await access.start_conversation(gateway.db, user_id, avatar_ids, s.default_avatar_id)
        except access.Denied as exc:
            raise HTTPException(exc.status, exc.detail) from None
        return _conversation_out(await gateway.db.conversations.get(conv, user_id))

    @router.get(
        "/conversations",
        response_model=ConversationPage,
        tags=["conversations"],
        responses=_problems(s400="the cursor is not one this list gave"),
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
        rows = await gateway.db.conversations.page(user_id, limit + 1, before)
        more = len(rows) > limit
        rows = rows[:limit]
        return ConversationPage(
            items=[_conversation_out(r) for r in rows],
            next_cursor=conversation_cursor(user_id, rows[-1]) if more else None,
        )

    @router.get(
        "/conversations/{conversation_id}",
        response_model=ConversationOut,
        tags=["conversations"],
        responses=_problems(s404="no such conversation"),
    )
    async def get_conversation(conv: str = Depends(owned_conversation), user_id: str = Depends(current_user)):
        row = await gateway.db.conversations.get(conv, user_id)
        if row is None:
            raise HTTPException(404, "no such conversation")
        return _conversation_out(row)

    @router.get(
        "/conversations/{conversation_id}/messages",
        response_model=MessagePage,
        tags=["conversations"],
        responses=_problems(s400="the cursor is not one this list gave", s404="no such conversation"),
    )
    async def messages(
        conv: str = Depends(owned_conversation),
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(max_length=500)] = None,
    ):
        """The conversation's messages, oldest first; each reply's audio as a short-lived URL."""
        try:
            after = message_position(cursor, conv) if cursor else None
        except BadCursor as exc:
            raise HTTPException(400, str(exc)) from None
        rows = await gateway.db.messages.page(conv, limit + 1, after)
        more = len(rows) > limit
        rows = rows[:limit]
        urls = await gateway.sign([r.audio_key for r in rows if r.audio_key])
        return MessagePage(
            items=[MessageOut(**r.public(urls.get(r.audio_key) if r.audio_key else None)) for r in rows],
            next_cursor=message_cursor(conv, rows[-1]) if more else None,
        )

    @router.get(
        "/conversations/{conversation_id}/messages/{message_id}/audio",
        status_code=307,
        tags=["conversations"],
        responses={
            307: {"description": "redirect to a short-lived signed URL of the reply's WAV"},
            **_problems(s404="no such conversation, or no audio for this message"),
        },
    )
    async def message_audio(message_id: str, conv: str = Depends(owned_conversation)):
        mid = _uuid(message_id, "message")
        key = await gateway.db.messages.audio_key(conv, mid)
        if key is None:
            raise HTTPException(404, "no audio for this message")
        url = (await gateway.sign([key])).get(key)
        if url is None:
            raise HTTPException(503, "audio URLs are unavailable right now (storage service)")
        return RedirectResponse(url, status_code=307)

    # -- API keys --

    @router.post("/api-keys", response_model=ApiKeyCreated, status_code=201, tags=["api keys"])
    async def create_api_key(body: ApiKeyIn, user_id: str = Depends(current_user)):
        """A key for server-to-server use, acting as the caller. Shown once; only its digest is kept."""
        key, key_id = new_api_key(), ids.new_id()
        await gateway.db.keys.create(key_id, user_id, body.name, hash_api_key(key))
        return ApiKeyCreated(id=key_id, name=body.name, key=key)

    @router.get("/api-keys", response_model=list[ApiKeyOut], tags=["api keys"])
    async def list_api_keys(user_id: str = Depends(current_user)):
        return [ApiKeyOut(**k.public()) for k in await gateway.db.keys.live(user_id)]

    @router.delete(
        "/api-keys/{key_id}", status_code=204, tags=["api keys"], responses=_problems(s404="no such API key")
    )
    async def revoke_api_key(key_id: str, user_id: str = Depends(current_user)):
        if not await gateway.db.keys.revoke(_uuid(key_id, "API key"), user_id):
            raise HTTPException(404, "no such API key")
        return Response(status_code=204)

    return router
