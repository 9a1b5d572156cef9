"""A client tool's answer (`tool.result`), kept where the orchestrator running the call reads it.

Only a call the session's conversation made, of a client tool, still running, may be answered,
and only once: the answer is created in the `parley_tool_results` bucket under the call's key,
so a second answer (or one after a reconnect) is refused, never overwrites the first. A
Realtime client's answer also carries its session's instructions and tools when they changed
since the reply was asked for: a handoff changes them before answering its call, and the rest
of the reply follows them.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from nats.js.errors import KeyWrongLastSequenceError

from services.common import bus as busmod
from services.common import db, subjects


class AnswerRefused(Exception):
    """Why an answer was not taken; the client gets it as an error event."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class ToolAnswers:
    def __init__(self, bus: busmod.Bus, database: db.Database, max_bytes: int):
        self.bus, self.db, self.max_bytes = bus, database, max_bytes
        self._kv = None

    async def put(self, conv: str, call_id: str, output: Any, error: str | None, session: dict | None = None) -> None:
        try:
            call_id = str(uuid.UUID(call_id))
        except ValueError:
            raise AnswerRefused("unknown_tool_call", "tool.result.call_id must be the id of a tool.call") from None
        call = await self.db.tool_calls.get(call_id)
        if call is None or call.conversation_id != conv or call.kind != "client":
            raise AnswerRefused(
                "unknown_tool_call", "tool.result.call_id is not a client tool call of this conversation"
            )
        if call.finished:
            raise AnswerRefused("tool_call_finished", "that tool call is already answered or timed out")
        body: dict[str, Any] = {"error": error} if error is not None else {"output": output}
        if session is not None:
            body["session"] = session
        answer = json.dumps(body, ensure_ascii=False).encode()
        if len(answer) > self.max_bytes:
            raise AnswerRefused("tool_result_too_large", f"tool.result is limited to {self.max_bytes} bytes")
        if self._kv is None:
            self._kv = await self.bus.js.key_value(subjects.TOOL_RESULTS_BUCKET)
        try:
            await self._kv.create(subjects.tool_result_key(conv, call_id), answer)
        except KeyWrongLastSequenceError:
            raise AnswerRefused("tool_call_finished", "that tool call is already answered") from None
