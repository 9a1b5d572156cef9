"""Orchestrator: answers each user turn with a streamed reply per answering character.

Critical path: turn arrives -> the conversation's turn gate (one KV read and write) ->
prompt from cached persona/history -> LLM stream -> each complete sentence published as a
TTS job the moment it is cut. Postgres writes (the user message, the reply row) run beside
the stream and are awaited only before the turn is acked, so a crash before the ack
redelivers the turn and the derived ids make the retry idempotent. The turn's flow is
turn.py, its rows record.py, what is kept between turns memory.py.
"""

from __future__ import annotations

import asyncio
import logging
import time

from cachetools import LRUCache
from nats.aio.msg import Msg as NatsMsg

from services.common import bus as busmod
from services.common import db, metrics, schemas, subjects
from services.common.cancels import Cancels
from services.common.logs import ctx
from services.common.runtime import Service

from .client import ChatClient
from .config import LlmSettings
from .interruptions import Interruptions
from .mcp_tools import McpServers
from .memory import Memory
from .ordering import TurnGate
from .record import Records
from .tools import ToolDeps
from .turn import ActiveTurn, Answering, Turn
from .webhook import Webhooks

log = logging.getLogger(__name__)

_TURN_ACK_WAIT_S = 6.0
"""A turn's ack wait, kept alive every third of it while the turn is answered: the turn of an
orchestrator killed mid-reply is redelivered within seconds, not after half a minute."""


class Orchestrator(Service):
    name = "llm"

    def __init__(self, settings: LlmSettings):
        super().__init__(settings)
        self.settings: LlmSettings = settings
        self._turns: dict[str, ActiveTurn] = {}
        # Turns this process has begun to answer: a second attempt (retried in place while a
        # dependency was down) may find some of its replies finished by the first.
        self._attempted: LRUCache[str, bool] = LRUCache(10_000)

    async def start(self) -> None:
        s = self.settings
        self.records = Records(db.Database(await self.open_db()))
        self.memory = Memory(self.records, s)
        self.llm = ChatClient(
            s.llm_base_url,
            s.llm_api_key,
            s.llm_model,
            temperature=s.llm_temperature,
            max_tokens=s.llm_max_tokens,
            connect_timeout_s=s.llm_connect_timeout_s,
            first_token_timeout_s=s.llm_first_token_timeout_s,
            stall_timeout_s=s.llm_stall_timeout_s,
            total_timeout_s=s.llm_total_timeout_s,
            usage=s.llm_stream_usage,
        )
        self.on_close(self.llm.aclose)
        self.bus = await self.open_bus()
        self.cancels = await Cancels.watch(self.bus.js)
        self.on_close(self.cancels.close)
        self.gate = TurnGate(await self.bus.js.key_value(subjects.TURNS_BUCKET), self.bus, s.llm_turn_wait_s)
        webhooks = Webhooks(s)
        self.on_close(webhooks.aclose)
        results = await self.bus.js.key_value(subjects.TOOL_RESULTS_BUCKET)
        tools = ToolDeps(self.bus, s, self.records.tool_calls, webhooks, results, McpServers(s))
        self.answering = Answering(self.bus, self.llm, s, self.records, self.memory, self.cancels, tools)
        self._ctl_sub = await self.bus.on_control("*", schemas.ReplyCancel, self._on_cancel)
        self._history_sub = await self.bus.on_control("*", schemas.HistoryChanged, self._on_history)
        await self._work(
            # A turn killed mid-reply is redelivered within seconds (see _TURN_ACK_WAIT_S).
            busmod.WorkQueue(
                subjects.TURNS_STREAM, "llm", subjects.TURNS_ALL, ack_wait_s=_TURN_ACK_WAIT_S, max_deliver=4
            ),
            self.handle_turn,
            s.llm_concurrency,
            give_up=self._give_up,
        )
        await self._work(
            # Up to 20 deliveries with growing delays (about half a minute): an interruption may
            # come before its reply's turn has been taken (see `Interruptions.handle`).
            busmod.WorkQueue(subjects.INTERRUPTS_STREAM, "llm-interrupts", subjects.INTERRUPTS_ALL, max_deliver=20),
            Interruptions(self.bus, self.records, self.cancels, self.gate, self.memory.forget).handle,
            8,
        )

    async def _work(self, queue: busmod.WorkQueue, handle, concurrency: int, give_up=None) -> None:
        worker = busmod.Worker(self.bus, queue, handle, concurrency=concurrency, give_up=give_up, service=self.name)
        await worker.start()
        self.workers.append(worker)

    async def handle_turn(self, msg: NatsMsg) -> None:
        turn = schemas.decode(msg.data, schemas.UserTurn)
        conv = turn.conversation_id
        turn.marks["llm_received"] = time.time()
        sent = turn.marks.get("final") or turn.marks.get("received")
        if sent:
            metrics.BUS_HOP_SECONDS.labels("turn").observe(max(0.0, turn.marks["llm_received"] - sent))
        keep_alive = asyncio.create_task(busmod.keep_alive(msg, every_s=_TURN_ACK_WAIT_S / 3))
        # Registered before entering the gate, so a newer turn's cancel cannot miss it.
        active = self._turns[turn.message_id] = ActiveTurn(conv, turn.message_id)
        if turn.message_id in self.cancels:
            active.cancel.set()
        # Replies of this turn already finished, read beside the gate when the turn may have
        # been answered before: a redelivery, or an attempt of this process retried in place.
        finished: asyncio.Task | None = None
        if msg.metadata.num_delivered > 1 or turn.message_id in self._attempted:
            finished = asyncio.create_task(self.records.finished_replies(turn.message_id))
        self._attempted[turn.message_id] = True
        try:
            await self._admitted(turn, msg.metadata.sequence.stream, active, finished)
        finally:
            del self._turns[turn.message_id]
            if finished is not None:
                finished.cancel()
            keep_alive.cancel()

    async def _admitted(self, turn: schemas.UserTurn, seq: int, active: ActiveTurn, finished) -> None:
        """Through the turn gate: answered in order, or kept unanswered when a newer turn came."""
        conv = turn.conversation_id
        admission = await self.gate.enter(conv, seq, turn.message_id, interrupt=not turn.hold)
        log.debug("turn %s", admission.outcome, extra=ctx(conversation_id=conv, message_id=turn.message_id, seq=seq))
        flow = Turn(self.answering, turn, active)
        if turn.hold:
            await self._hold(flow, seq, admission)
            return
        if admission.outcome == "superseded":
            await flow.supersede()
            return
        if finished is None and admission.repeat:
            # A finished turn published again past de-duplication: the gate remembers it.
            finished = asyncio.create_task(self.records.finished_replies(turn.message_id))
        done = False
        try:
            await flow.answer(admission.version, await finished if finished else set())
            done = True
        finally:
            # A failed attempt leaves the turn unfinished, so its redelivery is answered.
            self.memory.advanced(conv, await self.gate.leave(conv, seq, done, turn.message_id))

    async def _hold(self, flow: Turn, seq: int, admission) -> None:
        """A turn its client will ask the response for: stored in its place, then announced."""
        conv, message_id = flow.conv, flow.turn.message_id
        if admission.outcome == "superseded":
            await flow.hold(None)
            await self.gate.touch(conv)  # every replica rereads the history before the answer
        else:
            done = False
            try:
                await flow.hold(admission.version)
                done = True
            finally:
                self.memory.advanced(conv, await self.gate.leave(conv, seq, done, message_id))
        await flow.announce_held()

    async def _on_cancel(self, ctl: schemas.ReplyCancel) -> None:
        if ctl.message_id:
            self.cancels.note(ctl.message_id)  # also for a turn no replica holds yet
        for active in list(self._turns.values()):
            if active.conversation_id != ctl.conversation_id:
                continue
            named = ctl.message_id in (active.turn_message_id, active.reply_id)
            if named or (not ctl.message_id and active.reply_id):
                log.info(
                    "turn cancelled: %s",
                    ctl.reason,
                    extra=ctx(conversation_id=active.conversation_id, message_id=active.turn_message_id),
                )
                active.cancel.set()
                if active.reply_id:
                    await self.cancels.put(active.reply_id)

    async def _on_history(self, ctl: schemas.HistoryChanged) -> None:
        self.memory.forget(ctl.conversation_id)

    async def _give_up(self, msg: NatsMsg, exc: BaseException) -> None:
        turn = schemas.decode(msg.data, schemas.UserTurn)
        await self.bus.publish_event(
            schemas.ErrorEvent(
                conversation_id=turn.conversation_id,
                code="turn_failed",
                message=f"the turn could not be answered: {exc}",
                message_id=turn.message_id,
            ),
            msg_id=f"turn-fail.{turn.message_id}",
        )
        for call in await self.records.fail_streaming(turn.message_id, f"turn_failed: {exc}"):
            done = schemas.ToolDone(
                conversation_id=turn.conversation_id,
                message_id=call.reply_id,
                call_id=call.id,
                name=call.name,
                status="error",
                error=call.error,
            )
            await self.bus.publish_event(done, msg_id=f"tool-done.{call.id}")
