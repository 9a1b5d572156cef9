"""Orchestrator: answers each user turn with a streamed reply per answering character.

Critical path: turn arrives -> prompt from cached persona/history -> LLM stream -> each
complete sentence published as a TTS job the moment it is cut. Postgres writes (the user
message, the reply row) run beside the stream and are awaited only before the turn is acked,
so a crash before the ack redelivers the turn and the derived ids make the retry idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.msg import Msg as NatsMsg

from services.common import bus as busmod
from services.common import db, ids, metrics, schemas, subjects
from services.common.db import Avatar, HistoryItem
from services.common.logs import ctx
from services.common.runtime import Service

from .config import LlmSettings
from .engine import ChatClient, LLMError, SentenceCutter, speakable

log = logging.getLogger(__name__)

DEFAULT_PERSONA = "You are {name}, {role}. Speak naturally and briefly: your words are spoken aloud."


def build_prompt(avatar: Avatar, history: list[HistoryItem], user_text: str) -> list[dict]:
    persona = (avatar.persona_prompt or DEFAULT_PERSONA).replace("{name}", avatar.name)
    persona = persona.replace("{role}", avatar.role_title or "a conversational character")
    messages = [{"role": "system", "content": persona}]
    for item in history:
        role = "assistant" if item.role == "avatar" and item.avatar_id == avatar.id else "user"
        messages.append({"role": role, "content": item.text})
    messages.append({"role": "user", "content": user_text})
    return messages


def answering(avatars: list[Avatar], text: str) -> list[Avatar]:
    """Characters named in the turn answer it, in conversation order; else the first one."""
    lowered = text.lower()
    named = [a for a in avatars if a.name and a.name.lower() in lowered]
    return named or avatars[:1]


class Orchestrator(Service):
    name = "llm"

    def __init__(self, settings: LlmSettings):
        super().__init__(settings)
        self.settings: LlmSettings = settings
        self._avatars: dict[str, list[Avatar]] = {}
        self._history: dict[str, list[HistoryItem]] = {}
        self._active: dict[str, tuple[str, asyncio.Event]] = {}

    async def start(self) -> None:
        s = self.settings
        self.pool = await db.create_pool(s.database_url, s.db_pool_min, s.db_pool_max)
        self.on_close(self.pool.close)
        self.repo = db.Repo(self.pool)
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
        self._ctl_sub = await self.bus.nc.subscribe(subjects.control("*"), cb=self._on_control)
        self.worker = busmod.Worker(
            self.bus,
            busmod.WorkQueue("PARLEY_TURNS", "llm", "parley.turn.*", ack_wait_s=30, max_deliver=4),
            self.handle_turn,
            concurrency=s.llm_concurrency,
            give_up=self._give_up,
            service=self.name,
        )
        await self.worker.start()
        self.workers.append(self.worker)

    async def _avatars_for(self, conv: str) -> list[Avatar]:
        if conv not in self._avatars:
            self._avatars[conv] = await self.repo.conversation_avatars(conv)
        return self._avatars[conv]

    async def _history_for(self, conv: str) -> list[HistoryItem]:
        if conv not in self._history:
            self._history[conv] = await self.repo.history(conv, self.settings.llm_history_messages)
        return self._history[conv]

    def _remember(self, conv: str, item: HistoryItem) -> None:
        hist = self._history.setdefault(conv, [])
        hist.append(item)
        del hist[: -self.settings.llm_history_messages]

    async def handle_turn(self, msg: NatsMsg) -> None:
        turn = schemas.decode(msg.data, schemas.UserTurn)
        turn.marks["llm_received"] = time.time()
        sent = turn.marks.get("final") or turn.marks.get("received")
        if sent:
            metrics.BUS_HOP_SECONDS.labels("turn").observe(max(0.0, turn.marks["llm_received"] - sent))
        keep_alive = asyncio.create_task(busmod.keep_alive(msg))
        try:
            await self._answer(turn, redelivered=msg.metadata.num_delivered > 1)
        finally:
            keep_alive.cancel()

    async def _answer(self, turn: schemas.UserTurn, redelivered: bool) -> None:
        conv = turn.conversation_id
        avatars, history = await asyncio.gather(self._avatars_for(conv), self._history_for(conv))
        history = list(history)
        persist_user = asyncio.create_task(
            self.repo.insert_user_message(
                turn.message_id, conv, turn.source, turn.session_id, turn.turn_seq, turn.text, turn.marks
            )
        )
        self._remember(conv, HistoryItem("user", None, turn.text))
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
        for avatar in answering(avatars, turn.text):
            await self._reply(turn, avatar, history, persist_user, redelivered)
        await persist_user

    async def _reply(
        self,
        turn: schemas.UserTurn,
        avatar: Avatar,
        history: list[HistoryItem],
        persist_user: asyncio.Task,
        redelivered: bool,
    ) -> None:
        conv = turn.conversation_id
        reply_id = ids.reply_id(turn.message_id, avatar.id)
        if redelivered:
            await persist_user
            if await self.repo.reply_status(reply_id) in ("complete", "interrupted", "failed"):
                return  # an earlier attempt finished; its facts were published before its ack
        t0 = time.perf_counter()
        cancel = asyncio.Event()
        self._active[conv] = (reply_id, cancel)

        async def persist_start() -> None:
            await persist_user
            await self.repo.start_reply(reply_id, conv, turn.message_id, avatar.id)

        persist_reply = asyncio.create_task(persist_start())
        await self.bus.publish_live(
            schemas.ReplyStarted(
                conversation_id=conv,
                message_id=reply_id,
                user_message_id=turn.message_id,
                avatar_id=avatar.id,
                avatar_name=avatar.name,
            )
        )
        cutter = SentenceCutter(avatar.language, self.settings.llm_first_clause_words)
        text, sentences, seq = "", 0, 0
        status, error = "complete", None
        timings: dict[str, float] = {}

        async def dispatch(sentence: str) -> None:
            nonlocal sentences
            spoken = speakable(sentence)
            if not spoken:
                return
            if sentences == 0:
                timings["first_sentence_s"] = time.perf_counter() - t0
                metrics.stage("llm_first_sentence", timings["first_sentence_s"])
            job = schemas.TtsJob(
                conversation_id=conv,
                message_id=reply_id,
                job_id=ids.tts_job_id(reply_id, sentences),
                sentence_index=sentences,
                text=spoken,
                language=avatar.language,
                avatar_id=avatar.id,
                voice_key=avatar.voice_key,
                created_at=time.time(),
            )
            await self.bus.publish_fact(subjects.tts_job(conv), job, job.job_id)
            await self.bus.publish_live(
                schemas.ReplySentence(conversation_id=conv, message_id=reply_id, sentence_index=sentences, text=spoken)
            )
            sentences += 1

        try:
            messages = build_prompt(avatar, history, turn.text)
            async for delta in self.llm.stream(messages):
                if seq == 0:
                    timings["first_token_s"] = time.perf_counter() - t0
                    metrics.stage("llm_first_token", timings["first_token_s"])
                text += delta
                await self.bus.publish_live(
                    schemas.ReplyDelta(conversation_id=conv, message_id=reply_id, delta_seq=seq, text=delta)
                )
                seq += 1
                for sentence in cutter.push(delta):
                    await dispatch(sentence)
                if cancel.is_set():
                    status = "interrupted"
                    break
            if status == "complete":
                for sentence in cutter.flush():
                    await dispatch(sentence)
        except LLMError as exc:
            status, error = "failed", f"{exc.code}: {exc}"
            log.warning("LLM failed: %s", exc, extra=ctx(conversation_id=conv, message_id=reply_id))
            await self.bus.publish_event(
                schemas.ErrorEvent(
                    conversation_id=conv,
                    code=exc.code,
                    message=str(exc),
                    message_id=reply_id,
                    retryable=exc.retryable,
                ),
                msg_id=f"llm-fail.{reply_id}",
            )
        finally:
            if self._active.get(conv, (None,))[0] == reply_id:
                del self._active[conv]
        timings["total_s"] = time.perf_counter() - t0
        await persist_reply
        await self.repo.finish_reply(reply_id, text, status, error, timings)
        if text and status != "failed":
            self._remember(conv, HistoryItem("avatar", avatar.id, text))
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
                conversation_id=conv,
                message_id=reply_id,
                status=status,
                text=text,
                sentence_count=sentences,
            ),
            msg_id=f"done.{reply_id}",
        )
        metrics.EVENTS.labels("llm", f"reply_{status}").inc()

    async def _on_control(self, msg: NatsMsg) -> None:
        try:
            ctl = schemas.decode(msg.data, schemas.SessionControl)
        except Exception:
            return
        if ctl.action != "cancel":
            return
        active = self._active.get(ctl.conversation_id)
        if active and (not ctl.message_id or ctl.message_id == active[0]):
            await self.cancelled.put(active[0], b"1")
            active[1].set()

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
