"""Spoken turns the client answers itself (`create_response: false`, and push-to-talk): the
orchestrator stores each unanswered and says so (`turn.held`); the client's `response.create`
asks for the response to the newest, the earlier ones staying in the history unanswered.

A client commits and asks at once, before its turn is transcribed. The response opens then,
and is asked of the orchestrator once the turn is stored: the answer comes after the held turn
on the turn stream and finds it in the history.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from nats.errors import Error as NatsError

from .config import Refused
from .connection import Connection
from .output import Response

STORED_WAIT_S = 60.0
"""The longest a response waits for its turn to be transcribed and stored."""
FAILURES = ("no_speech_recognized", "transcription_failed", "turn_failed")
"""What leaves a committed turn with no user message to answer."""


@dataclass
class HeldTurn:
    stored: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    """Its transcript once stored unanswered; a `Refused` when it became no user message."""
    seconds: float = 0.0
    """Its speech, for the response's usage."""


class HeldTurns:
    def __init__(self, conn: Connection):
        self.conn = conn
        self.turns: dict[str, HeldTurn] = {}
        """Committed spoken turns no response has answered, by message id, oldest first."""
        self._asking: dict[str, asyncio.Task] = {}
        """Responses waiting for their turn to be stored, by reply id."""
        self._taken: dict[str, HeldTurn] = {}
        """The turns those responses answer, by message id."""

    def committed(self, message_id: str) -> None:
        self.turns.setdefault(message_id, HeldTurn())

    def transcribed(self, message_id: str, seconds: float) -> None:
        if (turn := self.turns.get(message_id)) is not None:
            turn.seconds = seconds

    def stored(self, message_id: str, text: str) -> None:
        turn = self.turns.get(message_id) or self._taken.get(message_id)
        if turn is not None and not turn.stored.done():
            turn.stored.set_result(text)

    def failed(self, message_id: str, code: str, message: str) -> None:
        turn = self.turns.get(message_id) or self._taken.get(message_id)
        if code in FAILURES and turn is not None and not turn.stored.done():
            turn.stored.set_exception(Refused(code, message))

    def removed(self, message_id: str) -> None:
        """The client deleted the item: no response answers it."""
        self.turns.pop(message_id, None)

    def take(self) -> tuple[str, HeldTurn] | None:
        """The newest turn, for the response asked now; every turn committed so far is answered by it."""
        if not self.turns:
            return None
        message_id = next(reversed(self.turns))
        turn = self._taken[message_id] = self.turns[message_id]
        turn.seconds = sum(t.seconds for t in self.turns.values())
        self.turns.clear()
        return message_id, turn

    def ask(self, rec: Response, turn: HeldTurn, asked: dict) -> None:
        """Ask for the response once its turn is stored (`asked`: its instructions and tools)."""
        rec.input_audio_s = turn.seconds
        task = self._asking[rec.reply_id] = asyncio.create_task(self._ask(rec, turn, asked))

        def asked_for(_: asyncio.Task) -> None:
            self._asking.pop(rec.reply_id, None)
            self._taken.pop(rec.user_message_id, None)

        task.add_done_callback(asked_for)

    def withdraw(self, reply_id: str) -> bool:
        """A response cancelled before it was asked of the orchestrator: nothing more to stop."""
        task = self._asking.pop(reply_id, None)
        if task is not None:
            task.cancel()
        return task is not None

    async def _ask(self, rec: Response, turn: HeldTurn, asked: dict) -> None:
        try:
            text = await asyncio.wait_for(asyncio.shield(turn.stored), STORED_WAIT_S)
        except Refused as exc:
            rec.error = (exc.code, f"the turn has no user message to answer: {exc.message}")
        except TimeoutError:
            rec.error = ("turn_not_stored", f"the turn was not transcribed and stored within {STORED_WAIT_S:g} s")
        else:
            try:
                await self.conn.session.answer_held(rec.user_message_id, text, **asked)
                return
            except (TimeoutError, NatsError) as exc:
                rec.error = ("bus_unavailable", f"the response could not be asked for ({type(exc).__name__})")
        self.conn.out.finish(rec, "failed")

    def closed(self) -> None:
        for task in list(self._asking.values()):
            task.cancel()
