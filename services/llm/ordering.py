"""One turn at a time per conversation, in order, across every orchestrator replica.

Turns of all conversations share one work queue, so two turns of one conversation can land
on two replicas. Each conversation has a small record in the JetStream KV bucket
`parley_turns`, updated with compare-and-set on its revision:

    active_seq      the stream sequence of the turn being answered (0: none)
    active_message  its user message id
    last_seq        the newest turn finished
    version         bumped whenever the conversation's history changes
    recent          the user message ids of the last turns finished

A turn enters when nothing is active. A newer turn arriving while an older one is active
publishes a cancel for it (a new user turn interrupts the reply still streaming) and waits
until it leaves, repeating the cancel every `cancel_every_s`: when the holder died, the turn
comes back as a redelivery that must hear the cancel too. If nobody answers it, the newer
turn takes over after `wait_s`. A turn older than the active or last finished one is
superseded: it is stored, but not answered. A turn its client will ask the response for
(`UserTurn.hold`) waits its place without interrupting anything. Replicas use `version` to
know whether their cached history is still current. A turn whose message id is in `recent` is a finished turn
published again past de-duplication: the handler then looks up which replies it already has.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Literal

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.common import bus as busmod
from services.common import schemas


class TurnState(msgspec.Struct):
    active_seq: int = 0
    active_message: str = ""
    last_seq: int = 0
    version: int = 0
    recent: list[str] = []


_RECENT = 16


@dataclass(frozen=True)
class Admission:
    outcome: Literal["held", "superseded"]
    version: int
    repeat: bool = False
    """The turn's message id is among the conversation's last finished turns."""


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(TurnState)


class TurnGate:
    def __init__(
        self, kv: KeyValue, bus: busmod.Bus, wait_s: float = 10.0, poll_s: float = 0.01, cancel_every_s: float = 1.0
    ):
        self.kv = kv
        self.bus = bus
        self.wait_s = wait_s
        self.poll_s = poll_s
        self.cancel_every_s = cancel_every_s
        # What this replica last wrote or read per conversation: when it answered the previous
        # turn too, entering costs one compare-and-set instead of a read and a write.
        self._known: dict[str, tuple[TurnState, int]] = {}

    async def _read(self, conv: str) -> tuple[TurnState, int | None]:
        try:
            entry = await self.kv.get(conv)
        except KeyNotFoundError:
            return TurnState(), None
        state = _dec.decode(entry.value)
        self._known[conv] = (state, entry.revision)
        return state, entry.revision

    async def _write(self, conv: str, state: TurnState, revision: int | None) -> bool:
        try:
            # Revision 0 means "only if absent": one round trip, where kv.create makes two when
            # the key exists (it looks for a delete marker, which this bucket never holds).
            new_rev = await self.kv.update(conv, _enc.encode(state), last=revision or 0)
        except KeyWrongLastSequenceError:
            self._known.pop(conv, None)
            return False
        self._known[conv] = (state, new_rev)
        return True

    async def enter(self, conv: str, seq: int, message_id: str, interrupt: bool = True) -> Admission:
        known = self._known.get(conv)
        if known is None:
            # Most conversations this replica has not seen are new: try to create the record.
            if await self._write(conv, TurnState(seq, message_id), None):
                return Admission("held", 0)
        elif known[0].active_seq == 0 and known[0].last_seq < seq:
            state = known[0]
            held = TurnState(seq, message_id, state.last_seq, state.version, state.recent)
            if await self._write(conv, held, known[1]):
                return Admission("held", state.version, message_id in state.recent)
        deadline: float | None = None
        interrupted = ""
        cancel_at = 0.0
        while True:
            state, rev = await self._read(conv)
            if state.active_seq > seq or (seq <= state.last_seq and state.active_seq != seq):
                return Admission("superseded", state.version)
            force = deadline is not None and time.monotonic() > deadline
            if state.active_seq in (0, seq) or force:
                held = TurnState(seq, message_id, state.last_seq, state.version, state.recent)
                if await self._write(conv, held, rev):
                    return Admission("held", state.version, message_id in state.recent)
                continue
            now = time.monotonic()
            if state.active_message != interrupted or now >= cancel_at:
                # Each older turn that becomes active while we wait is interrupted in turn, and
                # again while it stays: the first cancel is lost on a holder that was killed,
                # and the turn's redelivery (same message) registers only when it comes back.
                if state.active_message != interrupted:
                    interrupted = state.active_message
                    deadline = now + self.wait_s
                cancel_at = now + self.cancel_every_s
                if interrupt:
                    await self._cancel(conv, state.active_message)
            await asyncio.sleep(self.poll_s)

    async def _cancel(self, conv: str, message_id: str) -> None:
        cancel = schemas.ReplyCancel(conversation_id=conv, message_id=message_id, reason="a newer user turn")
        await self.bus.control(cancel)

    async def leave(self, conv: str, seq: int, done: bool = True, message_id: str = "") -> int:
        """The turn is no longer active; returns the conversation's new history version.

        Only a turn that is `done` counts as finished: an attempt that failed leaves
        `last_seq` alone, so the turn's redelivery enters instead of being superseded.
        """
        while True:
            state, rev = await self._read(conv)
            active = (0, "") if state.active_seq == seq else (state.active_seq, state.active_message)
            last = max(state.last_seq, seq) if done else state.last_seq
            recent = state.recent
            if done and message_id and message_id not in recent:
                recent = [*recent, message_id][-_RECENT:]
            new = TurnState(*active, last, state.version + 1, recent)
            if await self._write(conv, new, rev):
                return new.version

    async def touch(self, conv: str) -> int:
        """History changed outside a turn (an interruption): other replicas must reload it."""
        while True:
            state, rev = await self._read(conv)
            state.version += 1
            if await self._write(conv, state, rev):
                return state.version
