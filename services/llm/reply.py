"""One avatar's reply to one turn, as it streams: tokens from the LLM, cut into sentences,
each sent to TTS the moment it is complete, the text relayed live as it grows. When the LLM
asks for tools, what it said so far is spoken, the round of calls runs (tools.py), and the
LLM goes on from their results; after `llm_tool_max_rounds` rounds it must answer in words.

Nothing here touches the database: the turn (handlers.py) writes the reply's row beside the
stream and finishes it with what `ReplyStream.run` returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from services.common import bus as busmod
from services.common import ids, metrics, schemas, subjects
from services.common.db import Avatar
from services.common.logs import ctx

from .client import ChatClient, LLMError, RateLimits, TokenUsage, ToolCallPart
from .config import LlmSettings
from .sentences import SentenceCutter, speakable
from .tools import ToolBox, assemble

FILLERS = {
    "en": "One moment.",
    "de": "Einen Moment.",
    "fr": "Un instant.",
    "es": "Un momento.",
    "it": "Un momento.",
    "pt": "Um momento.",
    "nl": "Een moment.",
}
"""Said while a round of tool calls is still running after `llm_tool_filler_after_s`."""

log = logging.getLogger(__name__)


@dataclass
class Streamed:
    text: str = ""
    status: str = "complete"
    error: str | None = None
    sentences: int = 0
    tokens: int = 0
    calls: list[dict] = field(default_factory=list)
    """The reply's finished tool calls (`ToolCall.prompt_item`), for the next turn's prompt."""
    usage: dict[str, int] = field(default_factory=lambda: {"input_tokens": 0, "output_tokens": 0})
    """The LLM's tokens over all the reply's rounds, as its stream reported them."""
    rate_limits: list[dict] | None = None
    """The LLM endpoint's rate limits as its last response stated them."""
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
        self.settings = settings
        self.turn = turn
        self.avatar = avatar
        self.conv = turn.conversation_id
        self.reply_id = reply_id
        self.cutter = SentenceCutter(avatar.language, settings.llm_first_clause_words)
        marks = {k: v for k, v in turn.marks.items() if k in ("speech_end", "final", "received", "llm_received")}
        self.out = Streamed(timings={**marks, "started": time.time()})
        self._t0 = time.perf_counter()
        self._first_token_s = 0.0

    async def run(
        self,
        prompt: list[dict],
        cancel: asyncio.Event,
        first_out: asyncio.Event,
        tools: ToolBox | None = None,
        first_choice: str | dict | None = None,
        system: Callable[[str | None], dict] | None = None,
    ) -> Streamed:
        """Stream until the LLM ends, fails or `cancel` is set; `first_out` is set once a sentence is out.
        `system`: the prompt's system message for other instructions, should a client change them
        while its tool ran (a handoff)."""
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
        messages = list(prompt)
        offered = tools.functions() if tools is not None else []
        try:
            for round_ in range(self.settings.llm_tool_max_rounds + 1):
                last = round_ == self.settings.llm_tool_max_rounds
                text_before = len(out.text)
                choice = "none" if last else (first_choice or "auto") if round_ == 0 else "auto"
                parts = await self._generate(messages, cancel, first_out, offered, choice)
                if out.status != "complete" or not parts or last or tools is None:
                    break
                for sentence in self.cutter.flush():  # what it said before the call is spoken first
                    await self._dispatch(sentence, first_out)
                asked = assemble(parts)
                calls = await tools.run_round(round_, asked, lambda: self._filler(first_out), out.sentences)
                out.calls += [c.prompt_item() for c in calls]
                messages += _round_messages(out.text[text_before:], asked, calls)
                if (retargeted := _follow_change(tools, messages, system)) is not None:
                    offered = retargeted
                if cancel.is_set():
                    out.status = "interrupted"
                    break
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

    async def _generate(
        self,
        messages: list[dict],
        cancel: asyncio.Event,
        first_out: asyncio.Event,
        tools: list[dict],
        choice: str | dict,
    ) -> list[ToolCallPart]:
        """One completion: its text spoken as it comes; the tool calls it asks for, returned."""
        parts: list[ToolCallPart] = []
        if self.out.text and not self.out.text[-1].isspace():
            await self._token(" ")
        async for delta in self.llm.stream(messages, tools or None, choice if tools else None):
            if isinstance(delta, ToolCallPart):
                parts.append(delta)
                continue
            if isinstance(delta, TokenUsage):
                self.out.usage["input_tokens"] += delta.input_tokens
                self.out.usage["output_tokens"] += delta.output_tokens
                continue
            if isinstance(delta, RateLimits):
                self.out.rate_limits = list(delta.limits)
                continue
            await self._token(delta)
            if cancel.is_set():
                self.out.status = "interrupted"
                break
            for sentence in self.cutter.push(delta):
                await self._dispatch(sentence, first_out)
        return parts

    async def _filler(self, first_out: asyncio.Event) -> None:
        text = FILLERS.get(self.avatar.language.split("-")[0].lower())
        if text:
            space = " " if self.out.text and not self.out.text[-1].isspace() else ""
            await self._token(f"{space}{text} ")
            await self._dispatch(text, first_out)

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


def _follow_change(
    tools: ToolBox, messages: list[dict], system: Callable[[str | None], dict] | None
) -> list[dict] | None:
    """The client changed its session while its tool ran: the next round takes its instructions
    (the prompt's system message) and tools; the functions offered now (None: unchanged)."""
    changed = tools.take_change()
    if changed is None:
        return None
    if system is not None:
        messages[0] = system(changed.get("instructions"))
    return tools.retarget(changed.get("tools"))


def _round_messages(text: str, asked, calls) -> list[dict]:
    """The round as the LLM's next prompt holds it: its words and calls, then each result."""
    request = [
        {"id": c.id, "type": "function", "function": {"name": a.name, "arguments": a.arguments}}
        for a, c in zip(asked, calls)
    ]
    results = [{"role": "tool", "tool_call_id": c.id, "content": c.output} for c in calls]
    return [{"role": "assistant", "content": text.strip() or None, "tool_calls": request}, *results]
