"""The rows the orchestrator writes, in memory: the repository methods `services.llm.record`
calls (of `db.Messages` and `db.Avatars`), with their SQL's rules (inserts that do nothing
on a conflict, a reply finished only while it is `streaming`). For unit tests of the turn
flow; the real queries run against a real Postgres in tests/unit/common/test_db.py and every
end-to-end test."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from services.common.db import Avatar, HistoryItem, Interruption, ToolCall


@dataclass
class Row:
    role: str
    conversation_id: str
    text: str | None = None
    status: str = "streaming"
    avatar_id: str | None = None
    reply_to: str | None = None
    error: str | None = None
    sentence_count: int | None = None


@dataclass
class MemoryAvatars:
    casts: dict[str, list[Avatar]] = field(default_factory=dict)

    async def of_conversation(self, conv: str) -> list[Avatar]:
        return list(self.casts.get(conv, []))


@dataclass
class MemoryMessages:
    rows: dict[str, Row] = field(default_factory=dict)
    writes: list[tuple[str, str]] = field(default_factory=list)
    """(what, message id) in the order they were written."""

    async def history(self, conv: str, limit: int) -> list[HistoryItem]:
        items = [
            HistoryItem(r.role, r.avatar_id, r.text or "")
            for r in self.rows.values()
            if r.conversation_id == conv and r.status != "streaming" and r.status != "failed" and r.text
        ]
        return items[-limit:]

    async def add_user(self, message_id, conv, source, session_id, turn_seq, text, timings) -> None:
        self.writes.append(("user", message_id))
        self.rows.setdefault(message_id, Row("user", conv, text, "complete"))

    async def start_reply(self, reply_id: str, conv: str, user_message_id: str, avatar_id: str) -> None:
        assert user_message_id in self.rows, "a reply row refers to its user message"
        self.writes.append(("reply", reply_id))
        self.rows.setdefault(reply_id, Row("avatar", conv, avatar_id=avatar_id, reply_to=user_message_id))

    async def finish_reply(self, reply_id, text, status, error, timings, sentences=0) -> tuple[bool, str, str]:
        row = self.rows[reply_id]
        if row.status == "streaming":
            row.text, row.status, row.error, row.sentence_count = text, status, error, sentences
            return True, row.status, row.text
        if row.sentence_count is None:
            row.sentence_count = sentences
        if row.text is None:
            row.text = text
        return False, row.status, row.text

    async def reply_outcome(self, reply_id: str):
        row = self.rows.get(reply_id)
        if row is None or row.status == "streaming":
            return None
        return row

    async def finished_replies(self, user_message_id: str) -> set[str]:
        return {r.avatar_id for r in self.rows.values() if r.reply_to == user_message_id and r.status != "streaming"}

    async def fail_streaming_replies(self, user_message_id: str, error: str) -> None:
        for r in self.rows.values():
            if r.reply_to == user_message_id and r.status == "streaming":
                r.status, r.error = "failed", error

    async def interrupt_reply(self, reply_id: str, heard: str | None) -> Interruption:
        row = self.rows.get(reply_id)
        if row is None:
            return Interruption("absent")
        if row.status == "failed":
            return Interruption("failed")
        if heard is None and row.status == "streaming":
            return Interruption("streaming")
        row.status, row.text = "interrupted", heard if heard is not None else row.text
        return Interruption("cut", row.text or "")


@dataclass
class MemoryToolCalls:
    """`db.ToolCalls.begin` and `finish` with their SQL's rules: the first stored call and its
    first outcome win."""

    calls: dict[str, ToolCall] = field(default_factory=dict)

    async def begin(self, conv: str, call: ToolCall, avatar_version: int) -> ToolCall:
        return self.calls.setdefault(call.id, dataclasses.replace(call, status="running", conversation_id=conv))

    async def finish(self, call_id: str, result: str | None, error: str | None) -> ToolCall:
        call = self.calls[call_id]
        if not call.finished:
            status = "error" if error is not None else "ok"
            call = self.calls[call_id] = dataclasses.replace(call, status=status, result=result, error=error)
        return call


    async def fail_running(self, user_message_id: str, error: str) -> list[ToolCall]:
        """Every running call fails (the fake does not relate calls to user messages)."""
        failed = []
        for cid, call in list(self.calls.items()):
            if not call.finished:
                failed.append(await self.finish(cid, None, error))
        return failed


class MemoryDatabase:
    def __init__(self, casts: dict[str, list[Avatar]]):
        self.avatars = MemoryAvatars(casts)
        self.messages = MemoryMessages()
        self.tool_calls = MemoryToolCalls()
