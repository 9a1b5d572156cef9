"""One avatar's reply to one turn, as it streams: tokens from the LLM, cut into sentences,
each sent to TTS the moment it is complete, the text relayed live as it grows.

Nothing here touches the database: the turn (handlers.py) writes the reply's row beside the
stream and finishes it with what `ReplyStream.run` returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from services.common import bus as busmod
from services.common import ids, metrics, schemas, subjects
from services.common.db import Avatar
from services.common.logs import ctx

from .client import ChatClient, LLMError
from .config import LlmSettings
from .sentences import SentenceCutter, speakable

log = logging.getLogger(__name__)


@dataclass
class Streamed:
    text: str = ""
    status: str = "complete"
    error: str | None = None
    sentences: int = 0
    tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    """Wall-clock marks of the turn's stages (seconds since the epoch), stored on the reply."""


class ReplyStream:
    def __init__(
        self,
        bus: busmod.Bus,
        llm: ChatClient,
        settings: LlmSettings,
        turn: schemas.UserTurn,
        avatar: Avatar,
        reply_id: str,
    ):
        self.bus = bus
        self.llm = llm
        self.turn = turn
        self.avatar = avatar
        self.conv = turn.conversation_id
        self.reply_id = reply_id
        self.cutter = SentenceCutter(avatar.language, settings.llm_first_clause_words)
        marks = {k: v for k, v in turn.marks.items() if k in ("speech_end", "final", "received", "llm_received")}
        self.out = Streamed(timings={**marks, "started": time.time()})
        self._t0 = time.perf_counter()
        self._first_token_s = 0.0

    async def run(self, prompt: list[dict], cancel: asyncio.Event, first_out: asyncio.Event) -> Streamed:
        """Stream until the LLM ends, fails or `cancel` is set; `first_out` is set once a sentence is out."""
        out = self.out
        await self.bus.publish_live(
            schemas.ReplyStarted(
                conversation_id=self.conv,
                message_id=self.reply_id,
                user_message_id=self.turn.message_id,
                avatar_id=self.avatar.id,
                avatar_name=self.avatar.name,
            )
        )
        try:
            async for delta in self.llm.stream(prompt):
                await self._token(delta)
                if cancel.is_set():
                    out.status = "interrupted"
                    break
                for sentence in self.cutter.push(delta):
                    await self._dispatch(sentence, first_out)
            if out.status == "complete":
                for sentence in self.cutter.flush():
                    await self._dispatch(sentence, first_out)
        except LLMError as exc:
            await self._failed(exc)
        out.timings["done"] = time.time()
        if out.tokens > 1:
            streaming_s = time.perf_counter() - self._t0 - self._first_token_s
            if streaming_s > 0:
                metrics.LLM_TOKENS_PER_SECOND.observe((out.tokens - 1) / streaming_s)
        return out

    async def _token(self, delta: str) -> None:
        out = self.out
        if out.tokens == 0:
            self._first_token_s = time.perf_counter() - self._t0
            out.timings["first_token"] = time.time()
            metrics.stage("llm_first_token", self._first_token_s)
        out.text += delta
        await self.bus.publish_live(
            schemas.ReplyDelta(conversation_id=self.conv, message_id=self.reply_id, delta_seq=out.tokens, text=delta)
        )
        out.tokens += 1

    async def _dispatch(self, sentence: str, first_out: asyncio.Event) -> None:
        """A complete sentence to TTS (its spoken form), then announced live."""
        out = self.out
        spoken = speakable(sentence)
        if not spoken:
            return
        if out.sentences == 0:
            out.timings["first_sentence"] = time.time()
            metrics.stage("llm_first_sentence", time.perf_counter() - self._t0)
        index = out.sentences
        job = schemas.TtsJob(
            conversation_id=self.conv,
            message_id=self.reply_id,
            job_id=ids.tts_job_id(self.reply_id, index),
            sentence_index=index,
            text=spoken,
            language=self.avatar.language,
            avatar_id=self.avatar.id,
            voice_key=self.avatar.voice_key,
            created_at=time.time(),
        )
        await self.bus.publish_fact(subjects.tts_job(self.conv), job, job.job_id)
        first_out.set()
        await self.bus.publish_live(
            schemas.ReplySentence(
                conversation_id=self.conv, message_id=self.reply_id, sentence_index=index, text=spoken
            )
        )
        out.sentences += 1

    async def _failed(self, exc: LLMError) -> None:
        self.out.status, self.out.error = "failed", f"{exc.code}: {exc}"
        log.warning("LLM failed: %s", exc, extra=ctx(conversation_id=self.conv, message_id=self.reply_id))
        await self.bus.publish_event(
            schemas.ErrorEvent(
                conversation_id=self.conv,
                code=exc.code,
                message=str(exc),
                message_id=self.reply_id,
                retryable=exc.retryable,
            ),
            msg_id=f"llm-fail.{self.reply_id}",
        )
