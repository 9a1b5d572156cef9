"""The LLM side of the orchestrator: a streaming OpenAI-compatible client and sentence cutting.

Errors are a small written-out hierarchy (after httpx's) so the handler can tell the client
what went wrong and store the turn as failed instead of hanging.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

import emoji
import httpx
import pysbd
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
        total_timeout_s: float = 120.0,
        retries: int = 2,
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
        self.total_timeout_s = total_timeout_s
        self.retries = retries

    async def aclose(self) -> None:
        await self.http.aclose()

    async def stream(self, messages: list[dict]) -> AsyncIterator[str]:
        attempt = 0
        while True:
            got_token = False
            try:
                async for delta in self._stream_once(messages):
                    got_token = True
                    yield delta
                return
            except LLMError as exc:
                if got_token or not exc.retryable or attempt >= self.retries:
                    raise
                attempt += 1
                await asyncio.sleep(0.2 * 2**attempt)

    async def _stream_once(self, messages: list[dict]) -> AsyncIterator[str]:
        body = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total_timeout_s
        try:
            async with aconnect_sse(self.http, "POST", "chat/completions", json=body) as source:
                resp = source.response
                if resp.status_code != 200:
                    raw = await resp.aread()
                    raise _status_error(resp.status_code, raw.decode(errors="replace"))
                events = source.aiter_sse().__aiter__()
                first = True
                while True:
                    limit = self.first_token_timeout_s if first else deadline - loop.time()
                    try:
                        async with asyncio.timeout(max(limit, 0.001)):
                            sse = await events.__anext__()
                    except StopAsyncIteration:
                        return
                    except TimeoutError as exc:
                        raise LLMTimeout("no token in time" if first else "reply took too long") from exc
                    if sse.data.strip() == "[DONE]":
                        return
                    delta = _delta(sse.data)
                    if delta:
                        first = False
                        yield delta
        except httpx.ConnectError as exc:
            raise LLMConnectError(f"cannot reach the LLM endpoint: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise LLMTimeout(f"LLM endpoint timed out: {exc}") from exc
        except (SSEError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise LLMBadResponse(f"malformed or broken stream: {exc}") from exc


def _delta(data: str) -> str:
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError as exc:
        raise LLMBadResponse(f"stream chunk is not JSON: {data[:80]!r}") from exc
    if "error" in chunk:
        raise LLMServerError(f"LLM stream error: {chunk['error']}")
    try:
        choices = chunk.get("choices") or []
        if not choices:
            return ""
        return (choices[0].get("delta") or {}).get("content") or ""
    except (AttributeError, TypeError) as exc:
        raise LLMBadResponse(f"unexpected chunk shape: {data[:80]!r}") from exc


_MARKUP = re.compile(r"[*_#`>~|]+|\[(.*?)\]\([^)]*\)|^\s*(?:[-+]|\d+[.)])\s+", re.M)
# pysbd (about 0.25 ms a call) runs only once a sentence mark is followed by the next word:
# before that, it could only return the one growing segment.
_TERMINATORS = re.compile(r"[.!?;:…。！？]['\")\]]*\s+\S")
# Addresses are masked before segmenting: pysbd would split "a.html?b=1" at the "?".
_ADDRESS = re.compile(r"\b(?:https?://|www\.)\S*[^\s.,!?;:)\]'\"]|\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# A clause may end the first piece early: punctuation followed by a space (so "3,500" is safe).
_CLAUSE = re.compile(r"[,;:—–]\s")


def speakable(text: str) -> str:
    """What the voice says: markdown marks, list bullets, link targets and emoji are for the eye.

    The stored message keeps the text as the model wrote it; only synthesis gets this form.
    """
    text = emoji.replace_emoji(text, replace="")
    return " ".join(_MARKUP.sub(lambda m: m.group(1) or "", text).split())


class SentenceCutter:
    """Cuts a token stream into speakable pieces as soon as each is complete.

    pysbd knows abbreviations, decimals, URLs and e-mail addresses, so a sentence is only
    released once a later one has begun (the last segment may still be growing). To start
    speaking sooner, the first piece of a reply may be a clause: once it has
    `first_clause_words` words and a clause mark (comma, semicolon, colon, dash) followed by
    a space, it goes; later pieces are whole sentences, which synthesise more naturally.
    """

    def __init__(self, language: str = "en", first_clause_words: int = 4):
        try:
            self._seg = pysbd.Segmenter(language=language, clean=False, char_span=True)
        except ValueError:
            self._seg = pysbd.Segmenter(language="en", clean=False, char_span=True)
        self._buf = ""
        self._seen = 0
        """Sentence marks before this index were already put to pysbd, which kept them inside a
        sentence ("e.g. this"): only a new one calls it again, not every later token."""
        self._first = True
        self._first_clause_words = first_clause_words

    def push(self, delta: str) -> list[str]:
        self._buf += delta
        out: list[str] = []
        marks = [m.start() for m in _TERMINATORS.finditer(self._buf, self._seen)]
        if marks:
            masked = _ADDRESS.sub(lambda m: "x" * len(m.group()), self._buf)
            spans = self._seg.segment(masked)
            self._seen = marks[-1] + 1
            if len(spans) >= 2:
                cuts = [sp.start for sp in spans[1:]]
                pieces = [self._buf[a:b] for a, b in zip([0, *cuts[:-1]], cuts)]
                out, self._buf = [p.strip() for p in pieces if p.strip()], self._buf[cuts[-1] :]
                self._seen = max(0, self._seen - cuts[-1])
        if self._first and not out and self._first_clause_words:
            out = self._first_clause()
        if out:
            self._first = False
        return out

    def _first_clause(self) -> list[str]:
        for m in _CLAUSE.finditer(self._buf):
            head = self._buf[: m.start() + 1]
            if len(head.split()) >= self._first_clause_words:
                self._buf = self._buf[m.end() :]
                self._seen = max(0, self._seen - m.end())
                return [head.strip()]
        return []

    def flush(self) -> list[str]:
        self._seen = 0
        rest, self._buf = self._buf.strip(), ""
        return [rest] if rest else []
