"""A scripted LLM and an in-memory cancel bucket, for unit tests of the orchestrator's logic."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from nats.js.errors import KeyNotFoundError

from services.common.cancels import Cancels


class ScriptedLLM:
    """Streams the given deltas; after `fail_after` of them raises the given error."""

    def __init__(self, deltas: list[str], fail_after: int | None = None, error: Exception | None = None):
        self.deltas, self.fail_after, self.error = deltas, fail_after, error
        self.prompts: list[list[dict]] = []

    async def stream(self, messages, tools=None, tool_choice=None):
        self.prompts.append(messages)
        for n, delta in enumerate(self.deltas):
            if self.fail_after is not None and n == self.fail_after:
                raise self.error
            await asyncio.sleep(0)
            yield delta


class RoundsLLM:
    """Streams `rounds[i]` on its i-th request (the last one again after that); records each
    request's messages, tools and tool_choice."""

    def __init__(self, rounds: list[list]):
        self.rounds = rounds
        self.requests: list[dict] = []

    async def stream(self, messages, tools=None, tool_choice=None):
        self.requests.append({"messages": [dict(m) for m in messages], "tools": tools, "tool_choice": tool_choice})
        for delta in self.rounds[min(len(self.requests), len(self.rounds)) - 1]:
            await asyncio.sleep(0)
            yield delta


class MemoryKv:
    """The two calls `Cancels` makes of its bucket besides the watch."""

    def __init__(self):
        self.values: dict[str, bytes] = {}

    async def put(self, key: str, value: bytes) -> int:
        self.values[key] = value
        return len(self.values)

    async def get(self, key: str):
        if key not in self.values:
            raise KeyNotFoundError
        return SimpleNamespace(key=key, value=self.values[key])


def memory_cancels() -> Cancels:
    return Cancels(MemoryKv())
