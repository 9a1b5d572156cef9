"""Every tool call an avatar made, stored before the next generation reads its result.

A call's id is derived from its place in the reply (`ids.tool_call_id`), so an attempt that
finds a finished call reuses its result instead of calling again; one that finds it `running`
(its first attempt died mid-call) calls again under the same id, which a webhook sees as the
idempotency key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import asyncpg

COLUMNS = (
    "id",
    "reply_id",
    "round",
    "call_index",
    "name",
    "kind",
    "arguments",
    "status",
    "result",
    "error",
    "conversation_id",
)
SELECT = ", ".join(COLUMNS)


@dataclass(frozen=True)
class ToolCall:
    id: str
    reply_id: str
    round: int
    call_index: int
    name: str
    kind: str
    arguments: str
    status: str
    """`running`, `ok` (with `result`) or `error` (with `error`)."""
    result: str | None = None
    error: str | None = None
    conversation_id: str = ""

    @property
    def finished(self) -> bool:
        return self.status != "running"

    def prompt_item(self) -> dict:
        """The call and its outcome as the history keeps them for the LLM."""
        return {"id": self.id, "name": self.name, "arguments": self.arguments, "output": self.output}

    @property
    def output(self) -> str:
        """What the LLM reads as the tool's answer: the result, or the error as an object."""
        if self.status == "ok":
            return self.result or ""
        return json.dumps({"error": self.error or "the tool did not answer"})


class ToolCalls:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def begin(self, conv: str, call: ToolCall, avatar_version: int) -> ToolCall:
        """The call as stored: this one, now `running`, or the one an earlier attempt stored."""
        row = await self.pool.fetchrow(
            f"""WITH new AS (
                    INSERT INTO tool_calls (id, conversation_id, reply_id, round, call_index, name, kind,
                                            arguments, status, avatar_version)
                    VALUES ($1,$2,$3,$4,$5,$6,$7,$8,'running',$9) ON CONFLICT (id) DO NOTHING RETURNING {SELECT})
                SELECT {SELECT} FROM new UNION ALL SELECT {SELECT} FROM tool_calls WHERE id=$1 LIMIT 1""",
            call.id,
            conv,
            call.reply_id,
            call.round,
            call.call_index,
            call.name,
            call.kind,
            call.arguments,
            avatar_version,
        )
        return ToolCall(**row)

    async def finish(self, call_id: str, result: str | None, error: str | None) -> ToolCall:
        """Store the outcome once; a call finished already keeps its first outcome."""
        row = await self.pool.fetchrow(
            f"""UPDATE tool_calls SET status=$2, result=$3, error=$4, finished_at=now()
                WHERE id=$1 AND status='running' RETURNING {SELECT}""",
            call_id,
            "error" if error is not None else "ok",
            result,
            error,
        )
        if row is None:
            row = await self.pool.fetchrow(f"SELECT {SELECT} FROM tool_calls WHERE id=$1", call_id)
        return ToolCall(**row)

    async def fail_running(self, user_message_id: str, error: str) -> list[ToolCall]:
        """A turn given up: its replies' calls still running end as errors (returned)."""
        rows = await self.pool.fetch(
            f"""UPDATE tool_calls SET status='error', error=$2, finished_at=now()
                WHERE status='running' AND reply_id IN (SELECT id FROM messages WHERE reply_to=$1)
                RETURNING {SELECT}""",
            user_message_id,
            error,
        )
        return [ToolCall(**r) for r in rows]

    async def get(self, call_id: str) -> ToolCall | None:
        row = await self.pool.fetchrow(f"SELECT {SELECT} FROM tool_calls WHERE id=$1", call_id)
        return ToolCall(**row) if row else None

    async def of_reply(self, reply_id: str) -> list[ToolCall]:
        rows = await self.pool.fetch(
            f"SELECT {SELECT} FROM tool_calls WHERE reply_id=$1 ORDER BY round, call_index", reply_id
        )
        return [ToolCall(**r) for r in rows]
