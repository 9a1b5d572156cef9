"""Keys pressed on the phone (DTMF) become a typed turn: digits gathered until `#` or a pause,
then "DTMF: 123", as Pipecat's DTMF aggregator writes them for the LLM."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

DIGITS = set("0123456789*#ABCD")
PAUSE_S = 2.0


class Keypad:
    def __init__(self, submit: Callable[[str], Awaitable[None]], pause_s: float = PAUSE_S):
        self._submit = submit
        self._pause_s = pause_s
        self._digits = ""
        self._timer: asyncio.Task | None = None

    async def press(self, digit: str) -> bool:
        """False for what no keypad sends."""
        if digit not in DIGITS:
            return False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if digit == "#":
            await self._send()
        else:
            self._digits += digit
            self._timer = asyncio.create_task(self._after_pause())
        return True

    async def _after_pause(self) -> None:
        await asyncio.sleep(self._pause_s)
        self._timer = None
        try:
            await self._send()
        except Exception:
            log.warning("could not pass on the keys pressed", exc_info=True)

    async def _send(self) -> None:
        digits, self._digits = self._digits, ""
        if digits:
            await self._submit(f"DTMF: {digits}")

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
