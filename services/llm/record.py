"""One turn's rows in Postgres, behind one object: the turn's flow (turn.py) says what happened
(a reply began, streamed, was closed unanswered) and this decides what is written and when.

The user message is written once the first sentence is on its way (`first_out`): the
database does not compete with the first token, and every reply row waits for it (a reply
refers to its user message). All writes are idempotent under the derived ids, so a turn
redelivered after a crash writes nothing twice.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from services.common import db, schemas

from .reply import Streamed


@dataclass(frozen=True)
class Outcome:
    """A finished reply as stored: an interruption may have finished it first."""

    status: str
    text: str
    sentences: int = 0
    error: str = ""
    usage: dict[str, int] | None = None
    """The LLM's tokens, when this attempt streamed it (not kept in the row)."""
    rate_limits: list[dict] | None = None
    """The LLM endpoint's rate limits after this attempt, as it stated them."""


class TurnRecord:
    def __init__(self, messages: db.Messages, turn: schemas.UserTurn, first_out: asyncio.Event | None = None):
        self.messages = messages
        self.turn = turn
        self._user = asyncio.create_task(self._write_user(first_out))

    async def _write_user(self, after: asyncio.Event | None) -> None:
        if after is not None:
            await after.wait()
        t = self.turn
        await self.messages.add_user(
            t.message_id, t.conversation_id, t.source, t.session_id, t.turn_seq, t.text, t.marks
        )

    def begin_reply(self, reply_id: str, avatar_id: str) -> asyncio.Task:
        """The reply's row (`streaming`), written beside its stream once the user message is."""

        async def write() -> None:
            await self._user
            await self.messages.start_reply(reply_id, self.turn.conversation_id, self.turn.message_id, avatar_id)

        return asyncio.create_task(write())

    async def finish_reply(self, reply_id: str, begun: asyncio.Task, out: Streamed) -> Outcome:
        """Store what streamed; the stored status and text win."""
        await begun
        _, status, text = await self.messages.finish_reply(
            reply_id, out.text, out.status, out.error, out.timings, out.sentences
        )
        return Outcome(status, text or "", out.sentences, out.error or "", out.usage, out.rate_limits)

    async def close_unanswered(self, reply_id: str, avatar_id: str, why: str) -> bool:
        """A reply stopped before it began, stored empty; False when an earlier attempt finished it."""
        await self.begin_reply(reply_id, avatar_id)
        finished, _, _ = await self.messages.finish_reply(reply_id, "", "interrupted", why, {})
        return finished

    async def stored(self, reply_id: str) -> Outcome | None:
        """A reply an earlier attempt finished, as it was announced (None: never counted)."""
        row = await self.messages.reply_outcome(reply_id)
        if row is None or row.sentence_count is None:
            return None  # stored before sentence counts were kept
        return Outcome(row.status, row.text or "", row.sentence_count, row.error or "")

    async def done(self) -> None:
        """Every write of the turn is in (awaited before the turn is acked)."""
        await self._user


class Records:
    """Every row the orchestrator reads or writes, so no flow of it holds a query."""

    def __init__(self, database: db.Database):
        self.messages = database.messages
        self._avatars = database.avatars
        self.tool_calls = database.tool_calls

    def turn(self, turn: schemas.UserTurn, first_out: asyncio.Event | None = None) -> TurnRecord:
        return TurnRecord(self.messages, turn, first_out)

    async def avatars(self, conv: str) -> list[db.Avatar]:
        return await self._avatars.of_conversation(conv)

    async def history(self, conv: str, limit: int) -> list[db.HistoryItem]:
        return await self.messages.history(conv, limit)

    async def finished_replies(self, turn_message_id: str) -> set[str]:
        """Avatars whose reply to the turn is already finished (a redelivered or repeated turn)."""
        return await self.messages.finished_replies(turn_message_id)

    async def fail_streaming(self, turn_message_id: str, error: str) -> list[db.ToolCall]:
        """A turn given up: a reply its last attempt had begun must not stay `streaming`, nor a
        call it made stay `running` (those calls are returned, to be told as failed)."""
        await self.messages.fail_streaming_replies(turn_message_id, error)
        return await self.tool_calls.fail_running(turn_message_id, error)

    async def interrupt(self, reply_id: str, heard: str | None) -> db.Interruption:
        """Cut a reply to what was heard, decided on one snapshot (see `Messages.interrupt_reply`)."""
        return await self.messages.interrupt_reply(reply_id, heard)
