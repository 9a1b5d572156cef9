"""One reply's tools: what the LLM is offered, and each round of calls it asks for, run once.

A round's calls run in parallel. Each is stored (`running`) under its derived id before it
runs and finished (`ok` or `error`) before the next generation reads it; a call already
finished by an earlier attempt of the turn is not run again, its stored outcome is reused.
Whatever goes wrong (an unknown name, arguments that are not JSON or break the schema, a tool
that fails, times out or answers too much) becomes an error result the LLM reads, so the avatar
can say it could not, and a `tool.done` event the client sees; nothing is raised past here.
Calls are not cancelled by an interruption: a call in flight completes and is kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from services.common import bus as busmod
from services.common import ids, metrics, schemas, subjects
from services.common.db import Avatar, ToolCall
from services.common.logs import ctx
from services.common.tools import Tool, decode_tools

from .client import ToolCallPart
from .config import LlmSettings
from .mcp_tools import McpServers, McpTool
from .webhook import ToolFailed, Webhooks

log = logging.getLogger(__name__)


@dataclass
class Asked:
    """One call as the LLM streamed it, its parts joined."""

    index: int
    llm_id: str = ""
    name: str = ""
    arguments: str = ""


def assemble(parts: list[ToolCallPart]) -> list[Asked]:
    calls: dict[int, Asked] = {}
    for p in parts:
        call = calls.setdefault(p.index, Asked(p.index))
        call.llm_id = p.id or call.llm_id
        call.name = p.name or call.name
        call.arguments += p.arguments
    return [calls[i] for i in sorted(calls)]


@dataclass
class ToolDeps:
    """What running tools needs of the orchestrator."""

    bus: busmod.Bus
    settings: LlmSettings
    calls: Any
    """`begin` and `finish` of `services.common.db.ToolCalls` (or an in-memory fake)."""
    webhooks: Webhooks
    results: Any = None
    """The client tools' answers (the `parley_tool_results` KV bucket)."""
    mcp: McpServers | None = None


@dataclass
class ToolBox:
    deps: ToolDeps
    conv: str
    reply_id: str
    avatar: Avatar
    ready: Callable[[], Awaitable[None]]
    """Awaited before a call is stored: the reply's row it refers to is written."""
    session_tools: list[dict] | None = None
    """The turn's own client tools (a Realtime session's); the avatar's win a name they share."""
    tools: dict[str, Tool] = field(init=False)
    mcp: dict[str, McpTool] = field(init=False, default_factory=dict)
    changed: dict | None = field(init=False, default=None)
    """The client session's instructions and tools as they stood when it answered a call, if
    its answer says (a Realtime session updated by a handoff before answering it)."""

    def __post_init__(self) -> None:
        self.retarget(self.session_tools)

    def retarget(self, session_tools: list[dict] | None) -> list[dict]:
        """The session's own tools from now on; the functions offered with them."""
        self.session_tools = session_tools
        own = {t.name: t for t in decode_tools(session_tools) if t.kind == "client"}
        self.tools = own | {t.name: t for t in decode_tools(self.avatar.tools) if t.kind != "mcp"}
        return self.functions()

    def take_change(self) -> dict | None:
        changed, self.changed = self.changed, None
        return changed

    async def prepare(self) -> None:
        """List the avatar's MCP servers' tools (once per conversation: the listing is kept)."""
        servers = [t for t in decode_tools(self.avatar.tools) if t.kind == "mcp"]
        if not servers or self.deps.mcp is None:
            return
        listed = await asyncio.gather(*(self.deps.mcp.tools(self.conv, s) for s in servers))
        for server, (tools, why) in zip(servers, listed):
            self.mcp.update((t.offered.name, t) for t in tools)
            if why is not None:
                await self.deps.bus.publish_event(
                    schemas.ErrorEvent(
                        conversation_id=self.conv,
                        code="mcp_unavailable",
                        message=f"the avatar's MCP server {server.name!r} offers no tools now: {why}",
                        retryable=True,
                    ),
                    msg_id=f"mcp-unavailable.{self.reply_id}.{server.name}",
                )

    def functions(self) -> list[dict]:
        return [t.function() for t in self.tools.values()] + [t.offered.function() for t in self.mcp.values()]

    async def run_round(
        self, round_: int, asked: list[Asked], say_filler: Callable[[], Awaitable[None]], spoken: int = 0
    ) -> list[ToolCall]:
        """Every call of the round, finished and stored, in the order asked; `spoken`: the
        reply's sentences sent to speech before it."""
        tasks = [asyncio.create_task(self._one(round_, a, len(asked), spoken)) for a in asked]
        after = self.deps.settings.llm_tool_filler_after_s
        # A client runs its own tools and shows its own wait: the filler is for Parley's calls.
        served = any(self._tool(a.name) is not None and self._tool(a.name).kind != "client" for a in asked)
        if after > 0 and served:
            _, pending = await asyncio.wait(tasks, timeout=after)
            if pending:
                await say_filler()
        # Shielded: an interruption ends the reply, not the calls it made.
        return list(await asyncio.shield(asyncio.gather(*tasks)))

    def _tool(self, name: str) -> Tool | None:
        return self.tools.get(name) or (self.mcp[name].offered if name in self.mcp else None)

    async def _one(self, round_: int, a: Asked, round_calls: int, spoken: int) -> ToolCall:
        tool = self._tool(a.name)
        call = ToolCall(
            id=ids.tool_call_id(self.reply_id, round_, a.index),
            reply_id=self.reply_id,
            round=round_,
            call_index=a.index,
            name=a.name[:200],
            kind=tool.kind if tool else "unknown",
            arguments=a.arguments,
            status="running",
        )
        await self.ready()
        stored = await self.deps.calls.begin(self.conv, call, self.avatar.version)
        called = {"arguments": stored.arguments, "kind": stored.kind, "round": round_, "index": a.index}
        called["sentences_before"] = spoken
        await self._event(schemas.ToolCalled, "tool-call", stored, **called, round_calls=round_calls)
        if stored.finished:
            metrics.TOOL_CALLS.labels(stored.kind, "reused").inc()
            if stored.kind == "client" and self.deps.results is not None:
                self._note((await _get(self.deps.results, subjects.tool_result_key(self.conv, stored.id))) or b"{}")
            done = stored
        else:
            t0 = time.perf_counter()
            result, error = await self._run(tool, stored)
            metrics.TOOL_SECONDS.labels(stored.kind).observe(time.perf_counter() - t0)
            done = await self.deps.calls.finish(stored.id, result, error)
            metrics.TOOL_CALLS.labels(done.kind, done.status).inc()
        await self._event(schemas.ToolDone, "tool-done", done, status=done.status, error=done.error)
        return done

    async def _run(self, tool: Tool | None, call: ToolCall) -> tuple[str | None, str | None]:
        if tool is None:
            return None, f"there is no tool named {call.name!r}"
        try:
            arguments = json.loads(call.arguments or "{}")
        except json.JSONDecodeError as exc:
            return None, f"the arguments are not JSON: {exc.msg} at {exc.pos}"
        try:
            jsonschema.validate(arguments, tool.parameters)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "the arguments"
            return None, f"the arguments do not fit the tool's schema at {where}: {exc.message}"[:500]
        try:
            if tool.kind == "webhook":
                return await self.deps.webhooks.call(tool, call.id, arguments, self.conv, self.avatar.id), None
            if tool.kind == "mcp" and self.deps.mcp is not None:
                return await self.deps.mcp.call(self.conv, self.mcp[tool.name], arguments), None
            return await self._client(tool, call), None
        except ToolFailed as exc:
            log.info("tool %s failed: %s", call.name, exc, extra=ctx(conversation_id=self.conv, message_id=call.id))
            return None, str(exc)

    async def _client(self, tool: Tool, call: ToolCall) -> str:
        """The client runs it: its `tool.result` lands in the results bucket, read here."""
        if self.deps.results is None:
            raise ToolFailed("client tools are not available")
        key = subjects.tool_result_key(self.conv, call.id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + tool.timeout_s
        while loop.time() < deadline:
            entry = await _get(self.deps.results, key)
            if entry is not None:
                self._note(entry)
                return _client_answer(entry, self.deps.settings.llm_tool_max_result_bytes)
            await asyncio.sleep(0.05)
        raise ToolFailed(f"the client did not answer within {tool.timeout_s:g} s")

    def _note(self, raw: bytes) -> None:
        session = json.loads(raw).get("session")
        if isinstance(session, dict):
            self.changed = session

    async def _event(self, event_type, prefix: str, call: ToolCall, **fields) -> None:
        ev = event_type(conversation_id=self.conv, message_id=self.reply_id, call_id=call.id, name=call.name, **fields)
        await self.deps.bus.publish_event(ev, msg_id=f"{prefix}.{call.id}")


async def _get(kv, key: str) -> bytes | None:
    from nats.js.errors import KeyNotFoundError

    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    return entry.value


def _client_answer(raw: bytes, limit: int) -> str:
    """What the gateway stored of a client's `tool.result`: `{"output": ...}` or `{"error": ...}`,
    with the client session's `session` (`instructions`, `tools`) when it sends them."""
    answer = json.loads(raw)
    if answer.get("error") is not None:
        raise ToolFailed(f"the client says: {str(answer['error'])[:500]}")
    output = answer.get("output")
    text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
    if len(text.encode()) > limit:
        raise ToolFailed(f"the client's answer is over {limit} bytes")
    return text
