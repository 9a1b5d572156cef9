"""`conversation.item.retrieve` and `conversation.item.delete`: the conversation's items as
Parley stored them.

An assistant item is retrieved as stored, so one cut off holds only what was heard (the
OpenAI Agents SDK retrieves after every truncate and keeps that as its history); a reply
that went on after function calls is two items, each its part of the stored text. A deleted
message leaves the LLM's history from the next turn on; its row stays, marked, for the REST
history and the ledger.
"""

from __future__ import annotations

import uuid

from services.common import db

from . import protocol as rt
from .config import Refused
from .connection import Connection
from .held import HeldTurns
from .output import Response


class Items:
    def __init__(self, conn: Connection, pending: list, held: HeldTurns):
        self.conn = conn
        self.pending = pending
        """The conversation's typed items not yet answered (`TypedItem`s, not stored yet)."""
        self.held = held
        self.typed: dict[str, str] = {}
        """A typed user item's message id, by its item id (a client may name its items)."""

    async def retrieve(self, ev: rt.ItemRetrieve) -> None:
        out = self.conn.out
        if ev.item_id in out.call_items:
            self.conn.emit(rt.ItemRetrieved(item=out.call_items[ev.item_id]))
            return
        waiting = next((p for p in self.pending if p.item_id == ev.item_id), None)
        if waiting is not None:
            content = [rt.Content(type="input_text", text=waiting.text)]
            self.conn.emit(
                rt.ItemRetrieved(item=rt.Item(id=ev.item_id, role="user", status="completed", content=content))
            )
            return
        rec = out.by_item(ev.item_id)
        stored = await self._stored(rec.reply_id if rec is not None else self.typed.get(ev.item_id, ev.item_id))
        if stored is None or stored.removed:
            raise _no_such(ev.item_id)
        self.conn.emit(rt.ItemRetrieved(item=_item(ev.item_id, stored, rec)))

    async def delete(self, ev: rt.ItemDelete) -> None:
        out = self.conn.out
        if ev.item_id in out.call_items:
            message = "function call items stay with the reply that made them: delete its assistant item"
            raise Refused("unsupported", message, "item_id")
        waiting = next((p for p in self.pending if p.item_id == ev.item_id), None)
        if waiting is not None:
            self.pending.remove(waiting)  # never answered, never stored
            self.conn.emit(rt.ItemDeleted(item_id=ev.item_id))
            return
        rec = out.by_item(ev.item_id)
        message_id = rec.reply_id if rec is not None else self.typed.get(ev.item_id, ev.item_id)
        if not _is_id(message_id) or not await self.conn.session.history.remove(message_id):
            raise _no_such(ev.item_id)
        self.held.removed(message_id)
        self.conn.emit(rt.ItemDeleted(item_id=ev.item_id))

    async def _stored(self, message_id: str) -> db.Message | None:
        return await self.conn.session.history.get(message_id) if _is_id(message_id) else None


def _item(item_id: str, m: db.Message, rec: Response | None) -> rt.Item:
    if m.role == "user":
        part = rt.Content(type="input_audio", transcript=m.text) if m.source == "voice" else None
        content = [part or rt.Content(type="input_text", text=m.text)]
        return rt.Item(id=item_id, role="user", status="completed", content=content)
    text = m.text
    if rec is not None:
        end = rec.text_offset + len(rec.transcript) if rec.called else len(text)
        text = text[rec.text_offset : end].strip()
    audio = rec is None or rec.audio
    part = rt.Content(type="output_audio", transcript=text) if audio else rt.Content(type="output_text", text=text)
    status = "completed" if m.status == "complete" else "incomplete"
    return rt.Item(id=item_id, role="assistant", status=status, content=[part])


def _no_such(item_id: str) -> Refused:
    return Refused("invalid_value", f"no item '{item_id}' in this conversation", "item_id")


def _is_id(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
