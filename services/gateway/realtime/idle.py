"""`idle_timeout_ms`: a caller who says nothing after the avatar has spoken is prompted.

As in OpenAI's API the wait starts once the last response's audio has played (by the gateway's
estimate of the client's playback); speech, a typed item or a response started meanwhile begin
it again, and a spoken turn left for the client to answer holds it. When it passes,
`input_audio_buffer.timeout_triggered` names the silent stretch of the input audio, the
silence is committed as a user item, and a response answers it. Parley's LLM
reads text, so that user item is stored with the words `SILENCE` says (the transcript the
client sees is empty), and the response is the avatar's nudge.
"""

from __future__ import annotations

import asyncio
import time

from nats.errors import Error as NatsError

from . import protocol as rt
from .config import turn_choice
from .connection import Connection

POLL_S = 0.25
SILENCE = "(The user has said nothing for {seconds:g} seconds.)"


class IdleWatch:
    def __init__(self, conn: Connection, conversation):
        self.conn = conn
        self.conversation = conversation
        self._idle_since: float | None = None
        self._task: asyncio.Task | None = None

    def configured(self) -> None:
        """The session's turn detection changed: watch while it has an idle timeout."""
        if self.conn.cfg.idle_timeout_ms and self._task is None:
            self._task = asyncio.create_task(self._watch())

    def closed(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _idle(self) -> bool:
        """The avatar has spoken and played out, and nothing is under way."""
        conn, out = self.conn, self.conn.out
        return bool(
            out.responses
            and out.active() is None
            and not out.continuing
            and conn.buffer.speaking is None
            and not self.conversation.pending
            and not self.conversation.held.turns
            and not conn.session.unfinished()
        )

    async def _watch(self) -> None:
        while self.conn.cfg.idle_timeout_ms:
            await asyncio.sleep(POLL_S)
            now = time.monotonic()
            if not self._idle():
                self._idle_since = None
            elif self._idle_since is None:
                self._idle_since = now
            elif now - self._idle_since >= self.conn.cfg.idle_timeout_ms / 1000:
                self._idle_since = None
                try:
                    await self._prompt()
                except (TimeoutError, NatsError) as exc:
                    # The bus is down: the prompt is not made (the caller may speak); the watch goes on.
                    self.conn.error("bus_unavailable", f"the idle prompt could not be passed on ({type(exc).__name__})")
        self._task = None

    async def _prompt(self) -> None:
        conn, cfg, session = self.conn, self.conn.cfg, self.conn.session
        seq, message_id = session.text_turn_id()
        end_ms = round(conn.audio_in_ms)
        conn.emit(
            rt.TimeoutTriggered(
                audio_start_ms=max(0, end_ms - cfg.idle_timeout_ms), audio_end_ms=end_ms, item_id=message_id
            )
        )
        conn.out.silence_item(message_id)
        self.conversation.open_response(message_id, cfg.modalities)
        text = SILENCE.format(seconds=cfg.idle_timeout_ms / 1000)
        choice = turn_choice(cfg.tool_choice)
        await session.submit_text(message_id, seq, text, cfg.instructions, cfg.tools or None, choice)
