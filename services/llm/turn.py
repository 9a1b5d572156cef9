"""One admitted user turn, answered: each named character in order, its reply streamed
(reply.py), stored (record.py) and announced; a reply already finished by an earlier attempt
is announced again, a cancelled one closed unanswered.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from services.common import bus as busmod
from services.common import ids, metrics, schemas, subjects
from services.common.cancels import Cancels
from services.common.db import Avatar, HistoryItem

from .client import ChatClient
from .config import LlmSettings
from .memory import Memory
from .prompt import answering, build_prompt, system_message
from .record import Outcome, Records
from .reply import ReplyStream
from .tools import ToolBox, ToolDeps

SUPERSEDED = "superseded by a newer turn"
CANCELLED_BEFORE = "cancelled before it began"


@dataclass
class ActiveTurn:
    """A turn this replica holds or waits to hold; a cancel may reach it in either state."""

    conversation_id: str
    turn_message_id: str
    reply_id: str = ""
    cancel: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Answering:
    """What a turn's flow needs of the orchestrator: the bus, the LLM, the records, the memory."""

    bus: busmod.Bus
    llm: ChatClient
    settings: LlmSettings
    records: Records
    memory: Memory
    cancels: Cancels
    tools: ToolDeps | None = None


class Turn:
    def __init__(self, deps: Answering, turn: schemas.UserTurn, active: ActiveTurn):
        self.deps = deps
        self.turn = turn
        self.conv = turn.conversation_id
        self.active = active

    async def answer(self, version: int, finished: set[str]) -> None:
        """Answer with each named character, skipping those whose reply is already finished."""
        d, turn = self.deps, self.turn
        avatars, history = await asyncio.gather(d.memory.avatars(self.conv), d.memory.history(self.conv, version))
        first_out = asyncio.Event()
        record = d.records.turn(turn, first_out)
        if not avatars:
            await self._no_avatar()
        if not turn.answer_held:
            d.memory.remember(history, HistoryItem("user", None, turn.text))
        try:
            for avatar in answering(avatars, turn.text):
                reply_id = ids.reply_id(turn.message_id, avatar.id)
                if avatar.id in finished:
                    await self._announce_again(record, avatar, reply_id)
                elif self.active.cancel.is_set() or reply_id in d.cancels:
                    first_out.set()
                    await self._close_unanswered(record, avatar, reply_id, CANCELLED_BEFORE)
                else:
                    # Each character of the turn sees the ones who answered before it.
                    item = await self._reply(record, avatar, avatars, list(history), first_out)
                    if item is not None:
                        d.memory.remember(history, item)
        finally:
            first_out.set()
        await record.done()

    async def hold(self, version: int | None) -> None:
        """The client asks for the response itself: the user message is stored and joins the
        history (`version`: the turn holds the gate; None: superseded, the history is reread)."""
        memory = self.deps.memory
        history = await memory.history(self.conv, version) if version is not None else None
        await self.deps.records.turn(self.turn).done()  # after the read: the history holds it once
        if history is not None:
            memory.remember(history, HistoryItem("user", None, self.turn.text))

    async def announce_held(self) -> None:
        held = schemas.TurnHeld(conversation_id=self.conv, message_id=self.turn.message_id, text=self.turn.text)
        await self.deps.bus.publish_event(held, msg_id=f"held.{self.turn.message_id}")

    async def supersede(self) -> None:
        """A newer turn of the conversation came first: keep this one, answer none of it."""
        record = self.deps.records.turn(self.turn)
        for avatar in answering(await self.deps.memory.avatars(self.conv), self.turn.text):
            await self._close_unanswered(record, avatar, ids.reply_id(self.turn.message_id, avatar.id), SUPERSEDED)
        await record.done()

    async def _reply(
        self, record, avatar: Avatar, avatars: list[Avatar], history: list[HistoryItem], first_out: asyncio.Event
    ) -> HistoryItem | None:
        """Stream one avatar's reply; its row is written beside the stream and finished after it."""
        d = self.deps
        reply_id = self.active.reply_id = ids.reply_id(self.turn.message_id, avatar.id)
        begun = record.begin_reply(reply_id, avatar.id)
        tools = None
        if d.tools is not None and (avatar.tools or self.turn.tools) and self.turn.tool_choice != "none":

            async def ready() -> None:
                first_out.set()  # the user message goes in first: the reply's row refers to it
                await asyncio.shield(begun)

            tools = ToolBox(d.tools, self.conv, reply_id, avatar, ready, self.turn.tools)
            await tools.prepare()
        stream = ReplyStream(d.bus, d.llm, d.settings, self.turn, avatar, reply_id)
        prompt = build_prompt(avatar, avatars, history, self.turn.instructions, tools=tools is not None)
        out = await stream.run(
            prompt,
            self.active.cancel,
            first_out,
            tools,
            self.turn.tool_choice,
            lambda instructions: system_message(avatar, avatars, instructions, tools=True),
        )
        first_out.set()
        # An interruption with the playback position may have stored the heard text already.
        stored = await record.finish_reply(reply_id, begun, out)
        await self._announce(avatar, reply_id, stored)
        text = stored.text if stored.status != "failed" else ""
        return HistoryItem("avatar", avatar.id, text, tuple(out.calls)) if text or out.calls else None

    async def _close_unanswered(self, record, avatar: Avatar, reply_id: str, why: str) -> None:
        """A reply that was interrupted before it began: stored empty, announced, no audio."""
        if await record.close_unanswered(reply_id, avatar.id, why):
            await self._announce(avatar, reply_id, Outcome("interrupted", "", 0, why))
        else:
            await self._announce_again(record, avatar, reply_id)

    async def _announce_again(self, record, avatar: Avatar, reply_id: str) -> None:
        """A reply an earlier attempt of this turn finished: that attempt may have failed before
        announcing it, so it is announced again (both publishes are de-duplicated by id)."""
        stored = await record.stored(reply_id)
        if stored is not None:
            await self._announce(avatar, reply_id, stored, again=True)

    async def _announce(self, avatar: Avatar, reply_id: str, o: Outcome, again: bool = False) -> None:
        conv = self.conv
        done = schemas.ReplyDone(
            conversation_id=conv,
            message_id=reply_id,
            user_message_id=self.turn.message_id,
            avatar_id=avatar.id,
            status=o.status,
            text=o.text,
            sentence_count=o.sentences,
            error=o.error,
        )
        await self.deps.bus.publish_fact(subjects.reply_done(conv), done, msg_id=reply_id)
        await self.deps.bus.publish_event(
            schemas.ReplyCompleted(
                conversation_id=conv,
                message_id=reply_id,
                status=o.status,
                text=o.text,
                sentence_count=o.sentences,
                usage=o.usage,
                rate_limits=o.rate_limits,
            ),
            msg_id=f"done.{reply_id}",
        )
        if not again:
            metrics.EVENTS.labels("llm", f"reply_{o.status}").inc()

    async def _no_avatar(self) -> None:
        await self.deps.bus.publish_event(
            schemas.ErrorEvent(
                conversation_id=self.conv,
                code="no_avatar",
                message="this conversation has no avatar to answer",
                message_id=self.turn.message_id,
            ),
            msg_id=f"no-avatar.{self.turn.message_id}",
        )
