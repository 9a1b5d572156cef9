"""Server tools: the arguments POSTed to the tool's URL, signed, retried under one idempotency key.

The request body is JSON `{"call_id", "name", "arguments", "conversation_id", "avatar_id"}`,
with `X-Parley-Signature: sha256=<hex HMAC-SHA256 of the body with the tool's secret>` and
`Idempotency-Key: <call_id>`: a retry (after a 5xx, a timeout, a dropped connection, or a
redelivered turn whose first attempt died mid-call) carries the same key, so the tool can
do its work once. The answer must be JSON, at most the result limit; redirects are not
followed (a redirect could lead anywhere the URL check refused).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import Any

import httpx

from services.common.tools import Tool, ToolRejected, check_url

from .config import LlmSettings


class ToolFailed(Exception):
    """A call that gave no usable answer; the message is what the LLM and the client read."""


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Webhooks:
    def __init__(self, settings: LlmSettings):
        self.settings = settings
        self.http = httpx.AsyncClient(
            follow_redirects=False,
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=32),
            headers={"User-Agent": "parley-tools/1"},
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def call(self, tool: Tool, call_id: str, arguments: Any, conv: str, avatar_id: str) -> str:
        """The tool's JSON answer, as text; `ToolFailed` when there is none in time."""
        assert tool.url is not None
        try:
            await check_url(tool.url, self.settings.tools_allow_private_urls)
        except ToolRejected as exc:
            raise ToolFailed(str(exc)) from None
        body = json.dumps(
            {
                "call_id": call_id,
                "name": tool.name,
                "arguments": arguments,
                "conversation_id": conv,
                "avatar_id": avatar_id,
            }
        ).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": call_id}
        if tool.secret:
            headers["X-Parley-Signature"] = signature(tool.secret, body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + tool.timeout_s
        attempt = 0
        while True:
            try:
                return await self._attempt(tool, body, headers, max(0.05, deadline - loop.time()))
            except _Retryable as exc:
                attempt += 1
                pause = 0.2 * 2**attempt
                if attempt > self.settings.llm_tool_retries or loop.time() + pause >= deadline:
                    raise ToolFailed(str(exc)) from None
                await asyncio.sleep(pause)

    async def _attempt(self, tool: Tool, body: bytes, headers: dict[str, str], timeout_s: float) -> str:
        limit = self.settings.llm_tool_max_result_bytes
        try:
            async with asyncio.timeout(timeout_s):
                async with self.http.stream("POST", tool.url, content=body, headers=headers) as resp:
                    if resp.status_code >= 500:
                        raise _Retryable(f"the tool answered {resp.status_code}")
                    if resp.status_code >= 300:
                        raise ToolFailed(f"the tool answered {resp.status_code}")
                    data = bytearray()
                    async for chunk in resp.aiter_bytes():
                        data += chunk
                        if len(data) > limit:
                            raise ToolFailed(f"the tool's answer is over {limit} bytes")
        except TimeoutError:
            raise _Retryable(f"the tool did not answer within {tool.timeout_s:g} s") from None
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise _Retryable(f"the tool could not be reached: {type(exc).__name__}") from None
        except httpx.HTTPError as exc:
            raise ToolFailed(f"the tool call failed: {type(exc).__name__}") from None
        try:
            return json.dumps(json.loads(data), ensure_ascii=False)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ToolFailed("the tool's answer is not JSON") from None


class _Retryable(Exception):
    pass
