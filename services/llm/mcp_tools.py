"""MCP tools: an avatar's MCP servers (streamable HTTP, the `mcp` package's client), their tools
listed once per conversation and offered to the LLM as `<label>__<tool>`.

A server that is down or answers nonsense when listed offers nothing for now (a warning, an
`mcp_unavailable` event for the client; tried again RETRY_S later); a listed tool whose name or
schema cannot be used is left out. Each conversation keeps one session with each server, held
by a task of its own (the client's task groups must be entered and left in one task) and closed
after IDLE_S without calls; a call is bounded by the server's `timeout_s`, and an error the
server reports, or none in time, is an error result the LLM reads. The URL is checked like a
webhook's before every listing and call.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from cachetools import TTLCache

from services.common.tools import MCP_SEPARATOR, NAME, Tool, ToolRejected, check_url

from .config import LlmSettings
from .webhook import ToolFailed

log = logging.getLogger(__name__)

LIST_TTL_S = 3600.0
"""How long a conversation keeps a server's listing (its tools are listed once per conversation)."""
RETRY_S = 30.0
"""How long a server that could not be listed is left alone before the next turn tries again."""
IDLE_S = 60.0
"""A conversation's session with a server closes after this long without a call."""


@dataclass(frozen=True)
class McpTool:
    server: Tool
    name: str
    """The server's own name for it."""
    offered: Tool
    """As the LLM sees it: `<label>__<name>`, the server's description and input schema."""


class McpServers:
    def __init__(self, settings: LlmSettings):
        self.settings = settings
        self._listed: TTLCache[tuple[str, str, str], list[McpTool]] = TTLCache(settings.llm_cache_size, LIST_TTL_S)
        self._failed: TTLCache[tuple[str, str, str], str] = TTLCache(settings.llm_cache_size, RETRY_S)
        self._connections: TTLCache[tuple[str, str, str], _Connection] = TTLCache(settings.llm_cache_size, IDLE_S)

    async def tools(self, conv: str, server: Tool) -> tuple[list[McpTool], str | None]:
        """The server's usable tools for this conversation, and, when it could not be listed just
        now, why (a server that failed is tried again after RETRY_S, quietly until then)."""
        key = (conv, server.name, server.url or "")
        if key in self._listed:
            return self._listed[key], None
        if key in self._failed:
            return [], None
        try:
            listed = await self._list(conv, server)
        except ToolFailed as exc:
            log.warning("MCP server %s offers nothing: %s", server.name, exc)
            self._failed[key] = str(exc)
            return [], str(exc)
        self._listed[key] = listed
        return listed, None

    async def _list(self, conv: str, server: Tool) -> list[McpTool]:
        listing = await self._ask(conv, server, lambda client: client.list_tools(), "list its tools")
        out = []
        for t in listing.tools:
            offered = _offered(server, t)
            if offered is not None:
                out.append(McpTool(server, t.name, offered))
        return out

    async def call(self, conv: str, tool: McpTool, arguments: Any) -> str:
        result = await self._ask(conv, tool.server, lambda client: client.call_tool(tool.name, arguments), "answer")
        return self._answer(result)

    async def _ask(self, conv: str, server: Tool, request, what: str) -> Any:
        await self._check(server)
        key = (conv, server.name, server.url or "")
        connection = self._connections.get(key)
        if connection is None or connection.gone:
            connection = self._connections[key] = _Connection(server)
        try:
            async with asyncio.timeout(server.timeout_s):
                return await connection.ask(request)
        except TimeoutError:
            raise ToolFailed(f"the MCP server did not {what} within {server.timeout_s:g} s") from None
        except ToolFailed:
            raise
        except Exception as exc:  # what the client's transport and protocol raise
            raise ToolFailed(f"the MCP server did not {what}: {type(exc).__name__}: {str(exc)[:200]}") from None

    def _answer(self, result) -> str:
        texts = [getattr(block, "text", None) for block in result.content or []]
        text = "\n".join(t for t in texts if t)
        if result.is_error:
            raise ToolFailed(f"the MCP tool says: {text[:500] or 'error'}")
        if result.structured_content is not None:
            text = json.dumps(result.structured_content, ensure_ascii=False)
        limit = self.settings.llm_tool_max_result_bytes
        if len(text.encode()) > limit:
            raise ToolFailed(f"the MCP tool's answer is over {limit} bytes")
        return text

    async def _check(self, server: Tool) -> None:
        try:
            await check_url(server.url or "", self.settings.tools_allow_private_urls)
        except ToolRejected as exc:
            raise ToolFailed(str(exc)) from None


class _Connection:
    """One conversation's session with one server, held open by its own task."""

    def __init__(self, server: Tool):
        self.server = server
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task: asyncio.Task | None = None

    @property
    def gone(self) -> bool:
        return self.task is not None and self.task.done()

    async def ask(self, request) -> Any:
        if self.task is None:
            self.task = asyncio.create_task(self._hold())
        answer = asyncio.get_running_loop().create_future()
        await self.queue.put((request, answer))
        return await answer

    async def _hold(self) -> None:
        from mcp import Client

        try:
            async with Client(self.server.url, read_timeout_seconds=self.server.timeout_s) as client:
                while True:
                    try:
                        request, answer = await asyncio.wait_for(self.queue.get(), IDLE_S)
                    except TimeoutError:
                        return
                    if answer.done():
                        continue  # its caller gave up
                    try:
                        result = await request(client)
                    except Exception as exc:
                        if not answer.done():
                            answer.set_exception(exc)
                        continue
                    if not answer.done():
                        answer.set_result(result)
        except Exception as exc:
            log.info("MCP session with %s ended: %s", self.server.name, exc)
            while not self.queue.empty():
                _, answer = self.queue.get_nowait()
                if not answer.done():
                    answer.set_exception(exc)


def _offered(server: Tool, t) -> Tool | None:
    """A listed tool as the LLM is offered it; None for one that cannot be (said in the log)."""
    if server.allowed_tools is not None and t.name not in server.allowed_tools:
        return None
    import jsonschema

    name = f"{server.name}{MCP_SEPARATOR}{t.name}"
    schema = t.input_schema if isinstance(t.input_schema, dict) else None
    try:
        if not NAME.match(name) or schema is None or schema.get("type") != "object":
            raise jsonschema.SchemaError("not an object schema")
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError:
        log.warning("MCP server %s lists a tool that cannot be offered: %r", server.name, str(t.name)[:100])
        return None
    return Tool(kind="mcp", name=name, description=(t.description or "")[:2000], parameters=schema, url=server.url)
