"""Avatar routes: the public avatars and the caller's own, each with its reference voice."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Annotated

import nats.errors
from fastapi import APIRouter, Depends, File, Form, HTTPException, Response, UploadFile

from services.common import db, ids, schemas, subjects
from services.common.personas import DEFAULT_PERSONA

from .. import access
from ..handlers import Gateway
from ..voice import VoiceRejected, normalise_voice
from .base import CurrentUser, path_id, refused
from .shapes import VOICE_UPLOAD, AvatarOut, AvatarPatch, Language, Name, RoleTitle, problems

UPLOAD_FORM_LIMITS = {"max_fields": 8, "max_files": 1, "max_part_size": 64 * 1024}
VOICE_FILE = "a recording of the voice, at least 6 s (WAV/FLAC/OGG/MP3)"
CHANGES = problems(s403="public avatars are read-only", s404="no such avatar")


def router(gateway: Gateway, current_user: CurrentUser) -> APIRouter:
    router = APIRouter()
    for add in (_add_create, _add_reads, _add_patch, _add_replace_voice, _add_delete):
        add(router, gateway, current_user)
    return router


async def load_avatar(gateway: Gateway, avatar_id: str, user_id: str, change: bool = False) -> db.Avatar:
    """The avatar the caller may see (or, with `change`, change); refusals as HTTP errors."""
    rule = access.changeable_avatar if change else access.visible_avatar
    try:
        return await rule(gateway.db.avatars, path_id(avatar_id, "avatar"), user_id)
    except access.Denied as exc:
        raise refused(exc) from None


async def _store_voice(gateway: Gateway, avatar_id: str, upload: UploadFile) -> str:
    """Check and normalise the upload, have the storage service keep it; its key."""
    s = gateway.settings
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


def _add_create(router: APIRouter, gateway: Gateway, current_user: CurrentUser) -> None:
    @router.post(
        "/avatars",
        response_model=AvatarOut,
        status_code=201,
        tags=["avatars"],
        form_limits=UPLOAD_FORM_LIMITS,
        responses=VOICE_UPLOAD,
    )
    async def create_avatar(
        response: Response,
        name: Annotated[Name, Form()],
        voice: Annotated[UploadFile, File(description=VOICE_FILE)],
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
        key = await _store_voice(gateway, avatar_id, voice)
        avatar = await gateway.db.avatars.create(
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
        return AvatarOut(**avatar.public())


def _add_reads(router: APIRouter, gateway: Gateway, current_user: CurrentUser) -> None:
    @router.get("/avatars", response_model=list[AvatarOut], tags=["avatars"])
    async def list_avatars(user_id: str = Depends(current_user)):
        """The public avatars, then the caller's own, each by name."""
        return [AvatarOut(**a.public()) for a in await gateway.db.avatars.visible(user_id)]

    @router.get(
        "/avatars/{avatar_id}", response_model=AvatarOut, tags=["avatars"], responses=problems(s404="no such avatar")
    )
    async def get_avatar(avatar_id: str, user_id: str = Depends(current_user)):
        return AvatarOut(**(await load_avatar(gateway, avatar_id, user_id)).public())


def _add_patch(router: APIRouter, gateway: Gateway, current_user: CurrentUser) -> None:
    @router.patch("/avatars/{avatar_id}", response_model=AvatarOut, tags=["avatars"], responses=CHANGES)
    async def patch_avatar(avatar_id: str, body: AvatarPatch, user_id: str = Depends(current_user)):
        avatar = await load_avatar(gateway, avatar_id, user_id, change=True)
        changes = body.model_dump(exclude_unset=True)
        if "role_title" in changes:
            changes["role_title"] = changes["role_title"] or None
        if changes:
            avatar = await gateway.db.avatars.update(avatar.id, user_id, changes)
            if avatar is None:
                raise HTTPException(404, "no such avatar")
        return AvatarOut(**avatar.public())


def _add_replace_voice(router: APIRouter, gateway: Gateway, current_user: CurrentUser) -> None:
    @router.put(
        "/avatars/{avatar_id}/voice",
        response_model=AvatarOut,
        tags=["avatars"],
        form_limits=UPLOAD_FORM_LIMITS,
        responses={**VOICE_UPLOAD, **CHANGES},
    )
    async def replace_voice(
        avatar_id: str,
        voice: Annotated[UploadFile, File(description=VOICE_FILE)],
        user_id: str = Depends(current_user),
    ):
        """A new reference voice; it is kept under a new key, so every TTS worker clones it afresh."""
        avatar = await load_avatar(gateway, avatar_id, user_id, change=True)
        key = await _store_voice(gateway, avatar.id, voice)
        avatar = await gateway.db.avatars.set_voice(avatar.id, user_id, key)
        if avatar is None:
            raise HTTPException(404, "no such avatar")
        return AvatarOut(**avatar.public())


def _add_delete(router: APIRouter, gateway: Gateway, current_user: CurrentUser) -> None:
    @router.delete("/avatars/{avatar_id}", status_code=204, tags=["avatars"], responses=CHANGES)
    async def delete_avatar(avatar_id: str, user_id: str = Depends(current_user)):
        """Gone from lists and new conversations; conversations that had it stay readable."""
        avatar = await load_avatar(gateway, avatar_id, user_id, change=True)
        if not await gateway.db.avatars.delete(avatar.id, user_id):
            raise HTTPException(404, "no such avatar")
        return Response(status_code=204)
