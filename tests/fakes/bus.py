"""An in-memory stand-in for `services.common.bus.Bus`, for unit tests of logic that talks to
the bus: what was published where, and messages delivered to subscribers by NATS's subject
matching (`*` one token, `>` the rest). No server, no network; each call runs in microseconds.
Tests that need NATS's own behaviour (JetStream, redelivery, outages) use the real nats-server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import msgspec

from services.common import schemas, subjects


def subject_matches(pattern: str, subject: str) -> bool:
    want, got = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(got) > i
        if i >= len(got) or (token != "*" and token != got[i]):
            return False
    return len(want) == len(got)


@dataclass
class Published:
    subject: str
    data: bytes
    headers: dict | None = None
    msg_id: str | None = None

    def decode(self, type_):
        return msgspec.json.decode(self.data, type=type_)


@dataclass
class _Sub:
    bus: MemoryBus
    subject: str
    cb: Callable[[object], Awaitable[None]]
    stream: str | None = None

    async def unsubscribe(self) -> None:
        if self in self.bus.subs:
            self.bus.subs.remove(self)


class _Core:
    def __init__(self, bus: MemoryBus):
        self.bus = bus

    async def publish(self, subject: str, data: bytes, headers: dict | None = None) -> None:
        self.bus.published.append(Published(subject, data, headers))

    async def subscribe(self, subject: str, cb) -> _Sub:
        sub = _Sub(self.bus, subject, cb)
        self.bus.subs.append(sub)
        return sub

    async def request(self, subject: str, data: bytes, timeout: float = 1.0):
        self.bus.published.append(Published(subject, data))
        answer = self.bus.responders[subject]
        return SimpleNamespace(data=answer(data))


class _JetStream:
    def __init__(self, bus: MemoryBus):
        self.bus = bus

    async def subscribe(self, subject: str, stream: str | None = None, cb=None, **_) -> _Sub:
        sub = _Sub(self.bus, subject, cb, stream)
        self.bus.subs.append(sub)
        return sub

    async def publish(self, subject: str, data: bytes, headers: dict | None = None):
        self.bus.published.append(Published(subject, data, headers, (headers or {}).get("Nats-Msg-Id")))


@dataclass
class MemoryBus:
    published: list[Published] = field(default_factory=list)
    subs: list[_Sub] = field(default_factory=list)
    responders: dict[str, Callable[[bytes], bytes]] = field(default_factory=dict)
    """Request/reply: the answer each subject gives to a request's body."""
    _stream_seq: int = 0

    def __post_init__(self):
        self.nc = _Core(self)
        self.js = _JetStream(self)

    async def publish(self, subject: str, msg: msgspec.Struct, headers: dict | None = None) -> None:
        await self.nc.publish(subject, schemas.encode(msg), headers)

    async def publish_fact(self, subject: str, msg: msgspec.Struct, msg_id: str) -> None:
        self.published.append(Published(subject, schemas.encode(msg), {"Nats-Msg-Id": msg_id}, msg_id))

    async def publish_event(self, ev: schemas.Event, msg_id: str) -> None:
        await self.publish_fact(subjects.event(ev.conversation_id, _kind(ev)), ev, msg_id)

    async def publish_live(self, ev: schemas.Event) -> None:
        await self.publish(subjects.live(ev.conversation_id, _kind(ev)), ev)

    def on(self, prefix: str) -> list[Published]:
        """What was published on subjects starting with `prefix`."""
        return [p for p in self.published if p.subject.startswith(prefix)]

    def subscribed(self, subject: str) -> bool:
        return any(s.subject == subject for s in self.subs)

    async def deliver(self, subject: str, data: bytes, headers: dict | None = None) -> int:
        """Hand a message to every subscriber whose subject matches; JetStream subscribers get
        it with a stream sequence, as an ordered consumer would. Returns how many took it."""
        taken = 0
        for sub in list(self.subs):
            if not subject_matches(sub.subject, subject):
                continue
            msg = SimpleNamespace(subject=subject, data=data, headers=headers)
            if sub.stream is not None:
                self._stream_seq += 1
                msg.metadata = SimpleNamespace(sequence=SimpleNamespace(stream=self._stream_seq), num_delivered=1)
            await sub.cb(msg)
            taken += 1
        return taken


def _kind(ev: schemas.Event) -> str:
    """The subject token of a client event, as the real bus names it (`reply.delta` -> `reply_delta`)."""
    return type(ev).__struct_config__.tag.replace(".", "_")
