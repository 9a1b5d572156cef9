"""The LLM client: a streaming OpenAI-compatible chat completion, its deltas as they come:
text as `str`, and the pieces of the tool calls it asks for as `ToolCallPart`.

Errors are a small written-out hierarchy (after httpx's) so the handler can tell the client
what went wrong and store the turn as failed instead of hanging.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse


class LLMError(Exception):
    code = "llm_error"
    retryable = False


class LLMConnectError(LLMError):
    code = "llm_unreachable"
    retryable = True


class LLMTimeout(LLMError):
    code = "llm_timeout"
    retryable = True


class LLMAuthError(LLMError):
    code = "llm_auth"


class LLMRateLimited(LLMError):
    code = "llm_rate_limited"
    retryable = True


class LLMServerError(LLMError):
    code = "llm_server_error"
    retryable = True


class LLMBadResponse(LLMError):
    code = "llm_bad_response"


@dataclass(frozen=True)
class ToolCallPart:
    """One streamed piece of a tool call: the first of a call carries its id and name, every
    piece a run of its JSON arguments (OpenAI's `delta.tool_calls[]`)."""

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(frozen=True)
class TokenUsage:
    """The completion's token counts, from the stream's last chunk (`stream_options.include_usage`)."""

    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class RateLimits:
    """The endpoint's rate limits as its response headers state them (`x-ratelimit-*`, as
    OpenAI, Azure, Groq and OpenRouter send them): `requests` and `tokens`, each with its
    `limit`, `remaining` and `reset_seconds` where given."""

    limits: tuple[dict, ...]


Delta = str | ToolCallPart | TokenUsage | RateLimits
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def rate_limits(headers) -> RateLimits | None:
    """What `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` say, if anything."""
    limits = []
    for name in ("requests", "tokens"):
        entry: dict = {"name": name}
        for field_name, header in (("limit", "limit"), ("remaining", "remaining")):
            value = headers.get(f"x-ratelimit-{header}-{name}")
            if value is not None and value.strip().isdigit():
                entry[field_name] = int(value)
        reset = _seconds(headers.get(f"x-ratelimit-reset-{name}"))
        if reset is not None:
            entry["reset_seconds"] = reset
        if len(entry) > 1:
            limits.append(entry)
    return RateLimits(tuple(limits)) if limits else None


def _seconds(value: str | None) -> float | None:
    """`1s`, `6m0s`, `20ms`, `1h2m3.5s`, or plain seconds."""
    if not value:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return round(sum(float(n) * _UNIT_S[u] for n, u in parts), 3)


def _status_error(status: int, body: str) -> LLMError:
    text = f"LLM endpoint answered {status}: {body[:200]}"
    if status in (401, 403):
        return LLMAuthError(text)
    if status == 429:
        return LLMRateLimited(text)
    if status >= 500:
        return LLMServerError(text)
    return LLMError(text)


class ChatClient:
    """Streams chat completions; retries only before the first token, never after."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        model: str,
        *,
        temperature: float = 0.7,
        max_tokens: int = 400,
        connect_timeout_s: float = 5.0,
        first_token_timeout_s: float = 15.0,
        stall_timeout_s: float = 15.0,
        total_timeout_s: float = 120.0,
        retries: int = 2,
        usage: bool = True,
    ):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(total_timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.first_token_timeout_s = first_token_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.total_timeout_s = total_timeout_s
        self.retries = retries
        self.usage = usage

    async def aclose(self) -> None:
        await self.http.aclose()

    async def stream(
        self, messages: list[dict], tools: list[dict] | None = None, tool_choice: Any = None
    ) -> AsyncIterator[Delta]:
        attempt = 0
        while True:
            got_token = False
            try:
                async for delta in self._stream_once(messages, tools, tool_choice):
                    got_token = got_token or not isinstance(delta, RateLimits)
                    yield delta
                return
            except LLMError as exc:
                if got_token or not exc.retryable or attempt >= self.retries:
                    raise
                attempt += 1
                await asyncio.sleep(0.2 * 2**attempt)

    async def _stream_once(
        self, messages: list[dict], tools: list[dict] | None, tool_choice: Any
    ) -> AsyncIterator[Delta]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.usage:
            body["stream_options"] = {"include_usage": True}
        if tools:
            body["tools"] = tools
            body["tool_choice"] = tool_choice or "auto"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total_timeout_s
        try:
            async with aconnect_sse(self.http, "POST", "chat/completions", json=body) as source:
                resp = source.response
                if resp.status_code != 200:
                    raw = await resp.aread()
                    raise _status_error(resp.status_code, raw.decode(errors="replace"))
                if (limits := rate_limits(resp.headers)) is not None:
                    yield limits
                events = source.aiter_sse().__aiter__()
                first, finished = True, False
                while True:
                    left = deadline - loop.time()
                    limit = self.first_token_timeout_s if first else min(self.stall_timeout_s, left)
                    try:
                        async with asyncio.timeout(max(limit, 0.001)):
                            sse = await events.__anext__()
                    except StopAsyncIteration:
                        if finished:
                            return
                        # A server or proxy that died mid-reply can end the body cleanly: without
                        # this the part streamed so far would be stored as the whole reply.
                        raise LLMBadResponse("the stream ended before the reply did (no [DONE])") from None
                    except TimeoutError as exc:
                        if first:
                            raise LLMTimeout("no token in time") from exc
                        if limit < left:
                            raise LLMTimeout(f"the stream stalled: no token for {limit:g} s") from exc
                        raise LLMTimeout("reply took too long") from exc
                    if sse.data.strip() == "[DONE]":
                        return
                    deltas, ends = _deltas(sse.data)
                    finished = finished or ends
                    for delta in deltas:
                        first = False
                        yield delta
        except httpx.ConnectError as exc:
            raise LLMConnectError(f"cannot reach the LLM endpoint: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise LLMTimeout(f"LLM endpoint timed out: {exc}") from exc
        except (SSEError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise LLMBadResponse(f"malformed or broken stream: {exc}") from exc


def _deltas(data: str) -> tuple[list[Delta], bool]:
    """A chunk's deltas, and whether it ends the reply (a `finish_reason`)."""
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError as exc:
        raise LLMBadResponse(f"stream chunk is not JSON: {data[:80]!r}") from exc
    if "error" in chunk:
        raise LLMServerError(f"LLM stream error: {chunk['error']}")
    try:
        choices = chunk.get("choices") or []
        usage = chunk.get("usage")
        out: list[Delta] = []
        if isinstance(usage, dict):
            out.append(TokenUsage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)))
        if not choices:
            return out, False
        ends = bool(choices[0].get("finish_reason"))
        delta = choices[0].get("delta") or {}
        if delta.get("content"):
            out.append(delta["content"])
        for call in delta.get("tool_calls") or []:
            fn = call.get("function") or {}
            out.append(
                ToolCallPart(int(call.get("index", 0)), call.get("id"), fn.get("name"), fn.get("arguments") or "")
            )
        return out, ends
    except (AttributeError, TypeError, ValueError) as exc:
        raise LLMBadResponse(f"unexpected chunk shape: {data[:80]!r}") from exc
