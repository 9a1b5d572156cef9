"""The conversation as it reaches one session: live media and events (core NATS) and the final
events (PARLEY_EVENTS, in order, each with its cursor), decoded to the client's own event
types (events.py) and handed to the reply relay and the wire."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.msg import Msg as NatsMsg
from nats.js.api import ConsumerConfig, DeliverPolicy

from services.common import bus as busmod
from services.common import db, subjects

from . import events
from .relay import ReplyRelay
from .stt_link import SttLink
from .wire import Opening, Wire

log = logging.getLogger(__name__)


def replay_from(opening: Opening, resumed: db.ClientSession | None) -> ConsumerConfig:
    """Final events from here on (after the client's cursor when resuming)."""
    if resumed is None:
        return ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
    resume = opening.resume
    if resume is not None and resume.last_cursor is not None:
        return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=resume.last_cursor + 1)
    return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=resumed.started_at.isoformat())


class Feed:
    def __init__(
        self,
        bus: busmod.Bus,
        conv: str,
        relay: ReplyRelay,
        stt: SttLink,
        wire: Wire,
        own_speech: Callable[[events.ClientEvent], Awaitable[None]],
    ):
        self.bus, self.conv, self.relay, self.stt, self.wire = bus, conv, relay, stt, wire
        self._own_speech = own_speech
        """What this session's person said (the coordinator decides on barge-in): their speech
        starting is passed on before the wire sees it, everything after once it has."""
        self.cursor = 0
        """The newest final event's sequence in PARLEY_EVENTS: a client resumes after it."""
        self.live = False
        """Live events flow only once `session.started` is queued: it is always seq 1."""
        self.closed = False
        self._subs: list = []

    async def listen(self) -> None:
        """Live media and events; they are passed on once `follow` has been called."""
        self._subs.append(await self.bus.nc.subscribe(subjects.live_all(self.conv), cb=self._on_live))
        self._subs.append(await self.bus.nc.subscribe(subjects.speech_all(self.conv), cb=self._on_live))

    async def follow(self, config: ConsumerConfig) -> None:
        """Follow the conversation's final events; the consumer is made patiently, since a
        cluster electing its meta leader cannot make one for a few seconds."""
        self.live = True
        subscribe = functools.partial(
            self.bus.js.subscribe,
            subjects.event_all(self.conv),
            stream=subjects.EVENTS_STREAM,
            ordered_consumer=True,
            idle_heartbeat=self.bus.heartbeat_s,
            config=config,
            cb=self._on_event,
        )
        self._subs.append(await self.bus.patiently(f"the event feed of {self.conv}", subscribe))

    async def close(self) -> None:
        self.closed = True
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:
                pass

    async def _on_live(self, msg: NatsMsg) -> None:
        """Live media and events (core NATS): audio of replies this connection saw start."""
        if self.closed or not self.live:
            return
        if subjects.is_speech(msg.subject) or msg.subject.endswith(".audio"):
            self.relay.live_audio(msg, whole=subjects.is_speech(msg.subject))
            return
        ev = _decoded(msg)
        if ev is None:
            return
        if isinstance(ev, events.ReplyStarted):
            self.relay.started(ev)
        own = isinstance(ev, _OWN) and ev.session_id == self.stt.session_id
        if own and isinstance(ev, events.SpeechStarted):
            await self._own_speech(ev)
            own = False
        self.wire.send(ev)
        if own:
            await self._own_speech(ev)

    async def _on_event(self, msg: NatsMsg) -> None:
        if self.closed:
            return
        cursor = msg.metadata.sequence.stream
        self.cursor = max(self.cursor, cursor)
        ev = _decoded(msg)
        if ev is None:
            return
        if isinstance(ev, events.TranscriptFinal):
            self.stt.note_final(ev)
        self.relay.final(ev, cursor)
        if isinstance(ev, (events.TranscriptFinal, events.Backchannel)) and ev.session_id == self.stt.session_id:
            await self._own_speech(ev)
        elif isinstance(ev, events.Error) and ev.code == "no_speech_recognized":
            await self._own_speech(ev)


_OWN = (events.SpeechStarted, events.SpeechStopped, events.BargeIn)


def _decoded(msg: NatsMsg):
    try:
        return events.from_bus(msg.data)
    except msgspec.DecodeError:
        log.warning("undecodable event on %s", msg.subject)
        return None
