"""Interruptions: what the person heard of a reply they cut off, stored as the reply's text.

The gateway publishes the playback position (PARLEY_INTERRUPTS); the heard text is rebuilt from
the stored sentences (services.common.speech), the reply row cut on one snapshot, and the next
turn's prompt says exactly what was heard.
"""

from __future__ import annotations

from collections.abc import Callable

from nats.aio.msg import Msg as NatsMsg

from services.common import bus as busmod
from services.common import schemas, speech
from services.common.cancels import Cancels

from .ordering import TurnGate
from .record import Records


class Interruptions:
    def __init__(
        self, bus: busmod.Bus, records: Records, cancels: Cancels, gate: TurnGate, forget: Callable[[str], None]
    ):
        self.bus = bus
        self.records = records
        self.cancels = cancels
        """A reply put here stops streaming and synthesising."""
        self.gate = gate
        self._forget = forget
        """Drops the conversation's cached history, which no longer says what was heard."""

    async def handle(self, msg: NatsMsg) -> None:
        """Store what the person heard of an interrupted reply; the next prompt says exactly that."""
        intr = schemas.decode(msg.data, schemas.Interruption)
        conv = intr.conversation_id
        await self.cancels.put(intr.message_id)
        heard = await self._heard(intr)
        done = await self.records.interrupt(intr.message_id, heard)
        if done.outcome in ("absent", "streaming"):
            # The reply's row is written once its first sentence is out, or when its turn,
            # seeing the cancel above, closes it unanswered; without a position the cut also
            # waits for the streamed text to be final. The cancel makes either come soon.
            delay = min(0.25 * msg.metadata.num_delivered, 2.0)
            raise busmod.Retry(f"interrupted reply {done.outcome}", delay_s=delay)
        if done.outcome == "failed":
            return
        text = done.text
        self._forget(conv)
        await self.gate.touch(conv)
        # One event per interruption stored: a client's precise position after an estimate
        # (a Realtime truncate after a barge-in) is told too, with the text it left.
        fact = (msg.headers or {}).get("Nats-Msg-Id") or f"interrupt.{intr.message_id}"
        await self.bus.publish_event(
            schemas.ReplyInterrupted(conversation_id=conv, message_id=intr.message_id, text=text),
            msg_id=f"interrupted.{fact}",
        )

    async def _heard(self, intr: schemas.Interruption) -> str | None:
        """Whole sentences before the playback position, then the share of words of the
        sentence playing, in proportion to how much of its audio was played."""
        if intr.sentence_index is None:
            return None
        parts = []
        for index in range(intr.sentence_index + 1):
            sentence = await speech.read(self.bus, intr.conversation_id, intr.message_id, index)
            if sentence is None:
                break  # not synthesised yet, so not heard
            if not sentence.ok:
                continue
            words = sentence.text.split()
            if index < intr.sentence_index:
                parts += words
            else:
                duration = sentence.duration_s
                share = min(1.0, (intr.offset_s or 0.0) / duration) if duration else 0.0
                parts += words[: int(len(words) * share)]
        return " ".join(parts)
