"""The TwiML endpoint: Twilio asks what to do with an incoming call; the answer connects the
call's audio to this gateway's stream endpoint, for the avatar the number is set up with.

Twilio's request is checked against its signature (PARLEY_TWILIO_AUTH_TOKEN); the answer
carries the avatar and a call token bound to the CallSid as `<Parameter>`s, which Twilio
returns in the stream's `start` message (signature.py says why the token is needed).
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from fastapi import APIRouter, HTTPException, Request, Response

from services.common import ids

from ..rest.shapes import Unprocessable, problems
from .signature import call_token, public_urls, signed

if TYPE_CHECKING:
    from ..handlers import Gateway

VOICE_PATH = "/v1/phone/twilio/voice"
STREAM_PATH = "/v1/phone/twilio/stream"
RESPONSES: dict[int | str, dict] = {
    200: {"content": {"application/xml": {"schema": {"type": "string"}}}, "description": "TwiML: connect the call"},
    **problems(
        s403="X-Twilio-Signature does not verify, or the call is from another Twilio account",
        s404="phone calls are not set up, or no such avatar for PARLEY_TWILIO_USER",
        s413="the request body is over its limit",
        s503="the gateway is not ready",
    ),
    422: {"model": Unprocessable, "description": "no CallSid, or an avatar_id that is not a UUID"},
}


def router(gateway: Gateway) -> APIRouter:
    r = APIRouter(tags=["phone"])

    @r.api_route(VOICE_PATH, methods=["POST", "GET"], response_class=Response, responses=RESPONSES)
    async def incoming_call(request: Request, avatar_id: str | None = None, language: str | None = None) -> Response:
        """Twilio's "A call comes in" webhook: TwiML that streams the call to the avatar
        (`avatar_id`, default the gateway's default avatar; `language` for recognition)."""
        if not gateway.ready:
            raise HTTPException(503, "gateway is not ready")
        s = gateway.settings
        if not s.twilio_auth_token:  # unset, or set empty (compose passes an empty default)
            raise HTTPException(404, "phone calls are not set up here: PARLEY_TWILIO_AUTH_TOKEN is unset")
        secret = s.twilio_auth_token.get_secret_value()
        form = await request.form() if request.method == "POST" else None
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        host = request.headers.get("host")
        pairs = list(form.multi_items()) if form is not None else []
        urls = public_urls(s.public_url, host, target, websocket=False)
        if not signed(secret, urls, pairs, request.headers.get("x-twilio-signature")):
            raise HTTPException(403, "X-Twilio-Signature does not sign this request")
        params = dict(form) if form is not None else dict(request.query_params)
        call_sid = str(params.get("CallSid") or "")
        if not call_sid:
            raise HTTPException(422, "CallSid is required: this endpoint answers Twilio's incoming call webhook")
        if s.twilio_account_sid and params.get("AccountSid") != s.twilio_account_sid:
            raise HTTPException(403, "the call comes from another Twilio account")
        try:
            avatar = str(uuid.UUID(avatar_id or s.default_avatar_id))
        except ValueError:
            raise HTTPException(422, "avatar_id must be an avatar's id (a UUID)") from None
        if await gateway.db.avatars.get_visible(avatar, ids.user_id_for(s.twilio_user)) is None:
            raise HTTPException(404, f"no avatar {avatar} that PARLEY_TWILIO_USER may use")
        stream = public_urls(s.public_url, host, STREAM_PATH, websocket=True)[0]
        parameters = {"avatar_id": avatar, "call_token": call_token(secret, call_sid, avatar)}
        if language:
            parameters["language"] = language
        return Response(connect_stream(stream, parameters), media_type="application/xml")

    return r


def connect_stream(url: str, parameters: dict[str, str]) -> bytes:
    """`<Response><Connect><Stream url><Parameter/>…</Stream></Connect></Response>`."""
    response = ET.Element("Response")
    stream = ET.SubElement(ET.SubElement(response, "Connect"), "Stream", url=url)
    for name, value in parameters.items():
        ET.SubElement(stream, "Parameter", name=name, value=value)
    return ET.tostring(response, encoding="utf-8", xml_declaration=True)
