"""Orchestrator: answers each user turn with a streamed reply per answering character.

Critical path: turn arrives -> the conversation's turn gate (one KV read and write) ->
prompt from cached persona/history -> LLM stream -> each complete sentence published as a
TTS job the moment it is cut. Postgres writes (the user message, the reply row) run beside
the stream and are awaited only before the turn is acked, so a crash before the ack
redelivers the turn and the derived ids make the retry idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from cachetools import LRUCache, TTLCache
from nats.aio.msg import Msg as NatsMsg

from services.common import bus as busmod
from services.common import db, ids, metrics, schemas, subjects
from services.common.db import Avatar, HistoryItem
from services.common.logs import ctx
from services.common.runtime import Service

from .client import ChatClient
from .config import LlmSettings
from .interruptions import Interruptions
from .ordering import TurnGate
from .prompt import answering, build_prompt
from .reply import ReplyStream

log = logging.getLogger(__name__)

_TURN_ACK_WAIT_S = 6.0
"""A turn's ack wait, kept alive every third of it while the turn is answered: the turn of an
orchestrator killed mid-reply is redelivered within seconds, not after half a minute."""
_EARLY_CANCEL_TTL_S = 600.0
_SUPERSEDED = "superseded by a newer turn"
_CANCELLED_BEFORE = "cancelled before it began"


@dataclass
class _ActiveTurn:
    """A turn this replica holds or waits to hold; a cancel may reach it in either state."""

    conversation_id: str
    turn_message_id: str
    reply_id: str = ""
    cancel: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _History:
    version: int
    items: list[HistoryItem]


class Orchestrator(Service):
    name = "llm"

    def __init__(self, settings: LlmSettings):
        super().__init__(settings)
        self.settings: LlmSettings = settings
        # Bounded: a replica that has served a million conversations holds only the recent ones.
        # Avatars are re-read after a short while, so an edited persona or voice reaches
        # conversations already cached; history is versioned, so the LRU bound is all it needs.
        self._avatars: TTLCache[str, list[Avatar]] = TTLCache(settings.llm_cache_size, settings.llm_avatar_cache_s)
        self._history: LRUCache[str, _History] = LRUCache(settings.llm_cache_size)
        self._turns: dict[str, _ActiveTurn] = {}
        # Cancels that named no turn this replica held: a client may cancel a response whose
        # turn has not reached any replica yet (a core NATS control overtakes the turn's fact).
        self._cancelled_early: TTLCache[str, bool] = TTLCache(10_000, _EARLY_CANCEL_TTL_S)
        # Turns this process has begun to answer: a second attempt (retried in place while a
        # dependency was down) may find some of its replies finished by the first.
        self._attempted: LRUCache[str, bool] = LRUCache(10_000)

    async def start(self) -> None:
        s = self.settings
        self.pool = await db.create_pool(s.database_url, s.db_pool_min, s.db_pool_max)
        self.on_close(self.pool.close)
        self.db = db.Database(self.pool)
        self.llm = ChatClient(
            s.llm_base_url,
            s.llm_api_key,
            s.llm_model,
            temperature=s.llm_temperature,
            max_tokens=s.llm_max_tokens,
            connect_timeout_s=s.llm_connect_timeout_s,
            first_token_timeout_s=s.llm_first_token_timeout_s,
            total_timeout_s=s.llm_total_timeout_s,
        )
        self.on_close(self.llm.aclose)
        self.bus = await busmod.connect(s, self.name)
        self.on_close(self.bus.close)
        await busmod.ensure_streams(self.bus)
        self.cancelled = await self.bus.js.key_value(subjects.CANCEL_BUCKET)
        self.gate = TurnGate(await self.bus.js.key_value(subjects.TURNS_BUCKET), self.bus, s.llm_turn_wait_s)
        self._ctl_sub = await self.bus.nc.subscribe(subjects.control("*"), cb=self._on_control)
        # Replies another replica (or an interruption) marked cancelled, as the KV writes them.
        self._cancel_sub = await self.bus.nc.subscribe(f"$KV.{subjects.CANCEL_BUCKET}.>", cb=self._on_cancelled)
        self.worker = busmod.Worker(
            self.bus,
            busmod.WorkQueue(
                subjects.TURNS_STREAM, "llm", subjects.TURNS_ALL, ack_wait_s=_TURN_ACK_WAIT_S, max_deliver=4
            ),
            self.handle_turn,
            concurrency=s.llm_concurrency,
            give_up=self._give_up,
            service=self.name,
        )
        await self.worker.start()
        self.workers.append(self.worker)
        interruptions = busmod.Worker(
            self.bus,
            # Up to 20 deliveries with growing delays (about half a minute): an interruption may
            # come before its reply's turn has been taken (see `Interruptions.handle`).
            busmod.WorkQueue(subjects.INTERRUPTS_STREAM, "llm-interrupts", subjects.INTERRUPTS_ALL, max_deliver=20),
            Interruptions(self.bus, self.db.messages, self.cancelled, self.gate, self._forget_history).handle,
            concurrency=8,
            service=self.name,
        )
        await interruptions.start()
        self.workers.append(interruptions)

    async def _avatars_for(self, conv: str) -> list[Avatar]:
        avatars = self._avatars.get(conv)
        if avatars is None:
            avatars = self._avatars[conv] = await self.db.avatars.of_conversation(conv)
        return avatars

    async def _history_for(self, conv: str, version: int) -> list[HistoryItem]:
        """Cached per conversation; reloaded when another replica changed it since."""
        cached = self._history.get(conv)
        if cached is None or cached.version != version:
            items = await self.db.messages.history(conv, self.settings.llm_history_messages)
            cached = self._history[conv] = _History(version, items)
        return cached.items

    def _remember(self, history: list[HistoryItem], item: HistoryItem) -> None:
        history.append(item)
        del history[: -self.settings.llm_history_messages]

    async def handle_turn(self, msg: NatsMsg) -> None:
        turn = schemas.decode(msg.data, schemas.UserTurn)
        conv = turn.conversation_id
        turn.marks["llm_received"] = time.time()
        sent = turn.marks.get("final") or turn.marks.get("received")
        if sent:
            metrics.BUS_HOP_SECONDS.labels("turn").observe(max(0.0, turn.marks["llm_received"] - sent))
        keep_alive = asyncio.create_task(busmod.keep_alive(msg, every_s=_TURN_ACK_WAIT_S / 3))
        # Registered before entering the gate, so a newer turn's cancel cannot miss it.
        active = self._turns[turn.message_id] = _ActiveTurn(conv, turn.message_id)
        if turn.message_id in self._cancelled_early:
            active.cancel.set()
        # Replies of this turn already finished, read beside the gate when the turn may have
        # been answered before: a redelivery, or an attempt of this process retried in place.
        finished: asyncio.Task | None = None
        if msg.metadata.num_delivered > 1 or turn.message_id in self._attempted:
            finished = asyncio.create_task(self.db.messages.finished_replies(turn.message_id))
        self._attempted[turn.message_id] = True
        try:
            seq = msg.metadata.sequence.stream
            admission = await self.gate.enter(conv, seq, turn.message_id)
            log.debug(
                "turn %s", admission.outcome, extra=ctx(conversation_id=conv, message_id=turn.message_id, seq=seq)
            )
            if admission.outcome == "superseded":
                await self._supersede(turn)
                return
            if finished is None and admission.repeat:
                # A finished turn published again past de-duplication: the gate remembers it.
                finished = asyncio.create_task(self.db.messages.finished_replies(turn.message_id))
            done = False
            try:
                await self._answer(turn, admission.version, active, await finished if finished else set())
                done = True
            finally:
                # A failed attempt leaves the turn unfinished, so its redelivery is answered.
                version = await self.gate.leave(conv, seq, done, turn.message_id)
                if conv in self._history:
                    self._history[conv].version = version
        finally:
            del self._turns[turn.message_id]
            if finished is not None:
                finished.cancel()
            keep_alive.cancel()

    async def _persist_user(self, turn: schemas.UserTurn, after: asyncio.Event | None = None) -> None:
        """Written once the first sentence is on its way (`after`): the database does not
        compete for the CPU with the first token, and the turn is not acked before it."""
        if after is not None:
            await after.wait()
        await self.db.messages.add_user(
            turn.message_id, turn.conversation_id, turn.source, turn.session_id, turn.turn_seq, turn.text, turn.marks
        )

    async def _answer(self, turn: schemas.UserTurn, version: int, active: _ActiveTurn, finished: set[str]) -> None:
        """Answer with each named character, skipping those whose reply is already finished."""
        conv = turn.conversation_id
        avatars, history = await asyncio.gather(self._avatars_for(conv), self._history_for(conv, version))
        first_out = asyncio.Event()
        persist_user = asyncio.create_task(self._persist_user(turn, first_out))
        if not avatars:
            await self.bus.publish_event(
                schemas.ErrorEvent(
                    conversation_id=conv,
                    code="no_avatar",
                    message="this conversation has no avatar to answer",
                    message_id=turn.message_id,
                ),
                msg_id=f"no-avatar.{turn.message_id}",
            )
        self._remember(history, HistoryItem("user", None, turn.text))
        try:
            for avatar in answering(avatars, turn.text):
                if avatar.id in finished:
                    await self._announce_again(turn, avatar)
                    continue
                if active.cancel.is_set() or ids.reply_id(turn.message_id, avatar.id) in self._cancelled_early:
                    first_out.set()
                    await self._close_unanswered(turn, avatar, persist_user, _CANCELLED_BEFORE)
                    continue
                # Each character of the turn sees the ones who answered before it.
                item = await self._reply(turn, avatar, avatars, list(history), persist_user, first_out, active)
                if item is not None:
                    self._remember(history, item)
        finally:
            first_out.set()
        await persist_user

    async def _supersede(self, turn: schemas.UserTurn) -> None:
        """A newer turn of the conversation came first: keep this one, answer none of it."""
        avatars = await self._avatars_for(turn.conversation_id)
        persist_user = asyncio.create_task(self._persist_user(turn))
        for avatar in answering(avatars, turn.text):
            await self._close_unanswered(turn, avatar, persist_user, _SUPERSEDED)
        await persist_user

    async def _close_unanswered(
        self, turn: schemas.UserTurn, avatar: Avatar, persist_user: asyncio.Task, why: str
    ) -> None:
        """A reply that was interrupted before it began: stored empty, announced, no audio."""
        reply_id = ids.reply_id(turn.message_id, avatar.id)
        await persist_user
        await self.db.messages.start_reply(reply_id, turn.conversation_id, turn.message_id, avatar.id)
        finished, _, _ = await self.db.messages.finish_reply(reply_id, "", "interrupted", why, {})
        if finished:
            await self._announce(turn, avatar, reply_id, "interrupted", "", 0, why)
        else:
            await self._announce_again(turn, avatar)

    async def _announce_again(self, turn: schemas.UserTurn, avatar: Avatar) -> None:
        """A reply an earlier attempt of this turn finished: that attempt may have failed before
        announcing it, so it is announced again (both publishes are de-duplicated by id)."""
        reply_id = ids.reply_id(turn.message_id, avatar.id)
        row = await self.db.messages.reply_outcome(reply_id)
        if row is None or row.sentence_count is None:
            return  # stored before sentence counts were kept
        await self._announce(
            turn, avatar, reply_id, row.status, row.text or "", row.sentence_count, row.error, again=True
        )

    async def _announce(
        self,
        turn: schemas.UserTurn,
        avatar: Avatar,
        reply_id: str,
        status: str,
        text: str,
        sentences: int,
        error: str | None,
        again: bool = False,
    ) -> None:
        conv = turn.conversation_id
        done = schemas.ReplyDone(
            conversation_id=conv,
            message_id=reply_id,
            user_message_id=turn.message_id,
            avatar_id=avatar.id,
            status=status,
            text=text,
            sentence_count=sentences,
            error=error or "",
        )
        await self.bus.publish_fact(subjects.reply_done(conv), done, msg_id=reply_id)
        await self.bus.publish_event(
            schemas.ReplyCompleted(
                conversation_id=conv, message_id=reply_id, status=status, text=text, sentence_count=sentences
            ),
            msg_id=f"done.{reply_id}",
        )
        if not again:
            metrics.EVENTS.labels("llm", f"reply_{status}").inc()

    async def _reply(
        self,
        turn: schemas.UserTurn,
        avatar: Avatar,
        avatars: list[Avatar],
        history: list[HistoryItem],
        persist_user: asyncio.Task,
        first_out: asyncio.Event,
        active: _ActiveTurn,
    ) -> HistoryItem | None:
        """Stream one avatar's reply; its row is written beside the stream and finished after it."""
        reply_id = ids.reply_id(turn.message_id, avatar.id)
        active.reply_id = reply_id

        async def persist_start() -> None:
            await persist_user
            await self.db.messages.start_reply(reply_id, turn.conversation_id, turn.message_id, avatar.id)

        persist_reply = asyncio.create_task(persist_start())
        stream = ReplyStream(self.bus, self.llm, self.settings, turn, avatar, reply_id)
        out = await stream.run(build_prompt(avatar, avatars, history, turn.instructions), active.cancel, first_out)
        first_out.set()
        await persist_reply
        # An interruption with the playback position may have stored the heard text already.
        _, status, text = await self.db.messages.finish_reply(
            reply_id, out.text, out.status, out.error, out.timings, out.sentences
        )
        await self._announce(turn, avatar, reply_id, status, text, out.sentences, out.error)
        return HistoryItem("avatar", avatar.id, text) if text and status != "failed" else None

    def _forget_history(self, conv: str) -> None:
        self._history.pop(conv, None)

    async def _on_cancelled(self, msg: NatsMsg) -> None:
        self._cancelled_early[msg.subject.rsplit(".", 1)[-1]] = True

    async def _on_control(self, msg: NatsMsg) -> None:
        try:
            ctl = schemas.decode(msg.data, schemas.SessionControl)
        except Exception:
            return
        if ctl.action != "cancel":
            return
        if ctl.message_id:
            self._cancelled_early[ctl.message_id] = True
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
                    await self.cancelled.put(active.reply_id, b"1")

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
        # A reply its last attempt had begun must not stay `streaming`: the failure event covers it.
        await self.db.messages.fail_streaming_replies(turn.message_id, f"turn_failed: {exc}")
