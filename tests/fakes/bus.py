"""`services.common.bus.Bus` over an in-memory connection, for unit tests of logic that talks
to the bus: the Bus's own methods run (publish, control, events), and the fake records what was
published where and delivers messages to subscribers by NATS's subject matching (`*` one
token, `>` the rest). No server, no network; each call runs in microseconds. Tests that need
NATS's own behaviour (JetStream, redelivery, outages) use the real nats-server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import SimpleNamespace

import msgspec

from services.common.bus import Bus


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

    is_closed = False
    is_connected = True

    def jetstream(self):
        return self.bus.js

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


class MemoryBus(Bus):
    def __init__(self):
        self.published: list[Published] = []
        self.subs: list[_Sub] = []
        self.responders: dict[str, Callable[[bytes], bytes]] = {}
        """Request/reply: the answer each subject gives to a request's body."""
        self._stream_seq = 0
        self.js = _JetStream(self)
        super().__init__(_Core(self))

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

