"""The conversation as the client changes it: typed user items waiting for a response, and
responses created, cancelled and truncated.

A typed item is only held until `response.create` sends the items since the last response as
one user turn; a spoken one, where the client asks for responses, is stored unanswered until
then (held.py). A cancel or truncate stops the reply and stores what the client heard of it.
`Output` (output.py) writes the events; this decides what happens to the session.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from services.common import ids

from . import protocol as rt
from .config import Refused, modalities, turn_choice
from .connection import Connection
from .held import HeldTurns
from .idle import IdleWatch
from .interruptions import Interruptions
from .items import Items
from .output import Response
from .tools import choice as tool_choice
from .tools import function_tools


@dataclass
class TypedItem:
    """A typed user item not yet answered."""

    item_id: str
    message_id: str
    seq: int
    """Its place among the session's typed turns."""
    text: str


class Conversation:
    def __init__(self, conn: Connection):
        self.conn = conn
        self.interruptions = Interruptions(conn)
        self.pending: list[TypedItem] = []
        self.held = HeldTurns(conn)
        self.items = Items(conn, self.pending, self.held)
        self.begun = False
        """Once a turn is under way the avatar (voice) is fixed, as in OpenAI's API."""
        self.idle = IdleWatch(conn, self)
        self._asked_with: dict[str, tuple] = {}
        """Per reply, the session's instructions and tools when it was asked for (a handoff changes them)."""

    def open_response(
        self, user_message_id: str, modalities: list[str], metadata: dict[str, str] | None = None
    ) -> Response:
        self.begun = True
        reply_id = ids.reply_id(user_message_id, self.conn.avatar.id)
        self._asked_with[reply_id] = (self.conn.cfg.instructions, self.conn.cfg.tools)
        return self.conn.out.open(user_message_id, reply_id, modalities, metadata)

    async def create_item(self, ev: rt.ItemCreate) -> None:
        """A typed user message: added to the conversation now, answered at `response.create`;
        or the answer to a function call, passed to the reply waiting for it."""
        item = ev.item
        if item.id is not None and item.id in self.conn.out.item_ids:
            raise Refused("invalid_value", f"an item with id '{item.id}' already exists", "item.id")
        if item.type == "function_call_output":
            await self._call_output(item)
            return
        text = _text_of(item, self.conn.settings.max_text_chars)
        seq, message_id = self.conn.session.text_turn_id()
        item_id = item.id or message_id
        self.items.typed[item_id] = message_id
        self.pending.append(TypedItem(item_id, message_id, seq, text))
        self.conn.out.text_item(item_id, text)

    async def _call_output(self, item: rt.ItemIn) -> None:
        if not item.call_id:
            raise Refused("missing_required_parameter", "a function_call_output needs its call_id", "item.call_id")
        refused = await self.conn.session.tool_result(item.call_id, item.output or "", None, self._session_change())
        if refused is not None:
            raise Refused(refused[0], refused[1], "item.call_id")
        self.conn.out.call_output(item.id or rt.new_id("item"), item.call_id, item.output or "")

    async def create_response(self, ev: rt.ResponseCreate) -> None:
        """Answer the user items added since the last response: the typed ones as one user turn,
        else the newest spoken turn stored for it; or, after function calls were answered, go on
        with the reply that made them."""
        out = self.conn.out
        active = out.active()
        if active is not None and not active.claimed and not self.pending:
            active.claimed = True  # the reply went on before this response.create asked it to
            return
        if active is None and not self.pending and out.continuing:
            self.conn.continuation(next(reversed(out.continuing)), claimed=True)
            return
        if active is not None:
            raise Refused(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {active.id}. "
                "Wait until the response is finished before creating a new one.",
            )
        params = ev.response or rt.ResponseParams()
        _check_response(params)
        cfg = self.conn.cfg
        given = params.output_modalities or params.modalities
        chosen = modalities(given, "response.output_modalities") if given else cfg.modalities
        tools, choice = cfg.tools, cfg.tool_choice
        if params.tools is not None:
            taken = {t["name"] for t in self.conn.avatar.tools}
            tools = function_tools(params.tools, "response.tools", taken)
        if params.tool_choice is not None:
            choice = tool_choice(params.tool_choice, tools, "response.tool_choice")
        asked = {"instructions": params.instructions or cfg.instructions, "tools": tools or None}
        asked["tool_choice"] = turn_choice(choice)
        spoken = self.held.take()  # a response answers every turn since the last one
        if self.pending:
            first = self.pending[0]
            text = "\n".join(p.text for p in self.pending)
            self.pending.clear()
            self.open_response(first.message_id, chosen, params.metadata)
            await self.conn.session.submit_text(first.message_id, first.seq, text, **asked)
        elif spoken is not None:
            self.held.ask(self.open_response(spoken[0], chosen, params.metadata), spoken[1], asked)
        else:
            raise Refused(
                "no_user_message",
                "there is no user message to answer: add one with conversation.item.create, or speak "
                "(with turn detection creating responses, spoken turns are answered on their own)",
            )

    async def cancel_response(self, ev: rt.ResponseCancel) -> None:
        out = self.conn.out
        if ev.response_id:
            rec = out.by_id(ev.response_id)
        else:
            rec = next((r for r in reversed(out.responses.values()) if not r.done), None)
        if rec is None or rec.done:
            raise Refused("response_cancel_not_active", "Cancellation failed: no active response found", "response_id")
        await self.cancel(rec, "client_cancelled")

    async def cancel(self, rec: Response, reason: str) -> None:
        """Stop the response now; the reply is stored as heard so far (the gateway's estimate)."""
        self.conn.out.finish(rec, "cancelled", reason)
        rec.cancelled = True
        if self.held.withdraw(rec.reply_id):
            return  # not yet asked of the orchestrator
        reply = self.conn.session.reply(rec.reply_id)
        if reply is None:
            # The client never got any of it, so nothing of it was heard.
            await self.interruptions.interrupt(rec.reply_id, (0, 0.0))
            await self.conn.session.cancel(rec.user_message_id, reason)
            return
        await self.interruptions.stop(rec.reply_id, reply.heard(time.monotonic()), reason)

    async def barged_in(self) -> None:
        """The session stopped what was playing; responses still being generated stop too."""
        for rec in list(self.conn.out.responses.values()):
            if not rec.done:
                await self.cancel(rec, "turn_detected")

    async def truncate(self, ev: rt.ItemTruncate) -> None:
        """The client played the assistant item up to `audio_end_ms`: that is what was heard."""
        session = self.conn.session
        rec = self.conn.out.by_item(ev.item_id)
        if rec is None:
            raise Refused("invalid_value", f"no assistant item '{ev.item_id}' in this session", "item_id")
        if ev.content_index != 0:
            raise Refused(
                "invalid_value", "assistant items have one content part: content_index must be 0", "content_index"
            )
        reply = session.reply(rec.reply_id)
        sent_ms = reply.sent_s * 1000 - rec.audio_offset_ms if reply is not None else 0.0
        if not 0 <= ev.audio_end_ms <= sent_ms + 1:
            message = f"audio_end_ms must lie between 0 and the {sent_ms:.0f} ms of audio sent for the item"
            raise Refused("invalid_value", message, "audio_end_ms")
        position = (0, 0.0)
        if reply is not None:
            now = time.monotonic()
            reply.played, reply.playback_ended = (ev.audio_end_ms + rec.audio_offset_ms, now), True
            position = reply.heard(now)
        if not rec.done:
            self.conn.out.finish(rec, "cancelled", "client_cancelled")
            rec.cancelled = True
            await session.cancel(rec.reply_id, "truncated")
        fact_id = f"truncate.{rec.reply_id}.{ev.audio_end_ms + rec.audio_offset_ms:.0f}"
        truncated = rt.ItemTruncated(item_id=ev.item_id, content_index=0, audio_end_ms=ev.audio_end_ms)
        await self.interruptions.precise(rec.reply_id, position, fact_id, lambda: self.conn.emit(truncated))

    def _session_change(self) -> dict | None:
        """The session's instructions and tools, if they changed since the waiting reply was asked
        for (a handoff): the rest of the reply follows them. Unchanged: None, and the reply keeps
        what it was asked with (a response's own instructions and tools included)."""
        cfg, waiting = self.conn.cfg, list(self.conn.out.continuing)
        now = (cfg.instructions, cfg.tools)
        if all(self._asked_with.get(r, now) == now for r in waiting):
            return None
        for r in waiting:
            self._asked_with[r] = now
        return {"instructions": cfg.instructions, "tools": cfg.tools}


def _text_of(item: rt.ItemIn, max_chars: int) -> str:
    """A user message's text; anything else is refused (Parley answers user messages only)."""
    if item.type != "message":
        raise Refused("unsupported", f"'{item.type}' items are not supported: only user messages", "item.type")
    if item.role != "user":
        message = f"'{item.role}' messages cannot be added: only user messages are (see instructions)"
        raise Refused("unsupported", message, "item.role")
    parts = []
    for n, part in enumerate(item.content):
        if part.type not in ("input_text", "text"):
            message = f"'{part.type}' content is not supported: send text, or audio with input_audio_buffer.append"
            raise Refused("unsupported", message, f"item.content[{n}].type")
        parts.append((part.text or "").strip())
    text = " ".join(p for p in parts if p)
    if not text:
        raise Refused("invalid_value", "the message has no text", "item.content")
    if len(text) > max_chars:
        raise Refused("string_above_max_length", f"messages are limited to {max_chars} characters", "item.content")
    return text


def _check_response(params: rt.ResponseParams) -> None:
    """What a response may ask for: in-band, answering the conversation."""
    if params.conversation not in (None, "auto"):
        raise Refused("unsupported", "out-of-band responses are not supported", "response.conversation")
    if params.input:
        raise Refused(
            "unsupported", "responses answer the conversation; response.input is not supported", "response.input"
        )
