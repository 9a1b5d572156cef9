"""NATS connection, idempotent stream declaration, and the JetStream work loop every worker uses."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import msgspec
import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg as NatsMsg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from . import metrics, schemas, subjects
from .outages import dependency_down
from .settings import ServiceSettings

C = TypeVar("C", bound=schemas.Control)

log = logging.getLogger(__name__)


class Retry(Exception):
    """The handler could not finish yet (a dependency is missing or down): redeliver later."""

    def __init__(self, reason: str, delay_s: float = 0.5):
        super().__init__(reason)
        self.delay_s = delay_s


class Bus:
    """A connected client: core NATS for live media and control, JetStream for facts."""

    def __init__(self, nc: NATS):
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.declared = False
        """This client declared the streams (`ensure_streams`), so it declares them again
        after a reconnect."""
        self._redeclaring: asyncio.Task | None = None

    def reconnected(self) -> None:
        """A restarted nats-server brings back file-backed streams, their durable consumers and
        the KV buckets, but not memory streams (PARLEY_AUDIO_IN): until someone declares it
        again, mic audio lands nowhere and STT workers' ordered consumers cannot be re-created.
        Every service that declared the streams declares them again (in the background:
        JetStream may still be recovering its streams)."""
        if self.declared and (self._redeclaring is None or self._redeclaring.done()):
            self._redeclaring = asyncio.create_task(self._redeclare())

    async def _redeclare(self) -> None:
        delay = 0.25
        while not self.nc.is_closed:
            try:
                await ensure_streams(self)
                log.info("streams declared again after reconnecting")
                return
            except Exception as exc:
                log.warning("declaring the streams after reconnecting failed (%s); trying again", exc)
                await asyncio.sleep(delay)
                delay = min(2 * delay, 5.0)

    async def publish(self, subject: str, msg: msgspec.Struct, headers: dict | None = None) -> None:
        """Core publish: at most once, no wait. For live events and control."""
        await self.nc.publish(subject, schemas.encode(msg), headers=headers)

    async def control(self, ctl: schemas.Control) -> None:
        """Core publish on the control subject of the struct's kind."""
        await self.publish(subjects.control(ctl.conversation_id, ctl.KIND), ctl)

    async def on_control(self, conv: str, kind: type[C], on: Callable[[C], Awaitable[None]]):
        """Subscribe to one kind of control of `conv` ("*": every conversation). Control that
        does not decode is dropped: it comes from a peer service, and has no one to refuse to."""

        async def cb(msg: NatsMsg) -> None:
            try:
                ctl = schemas.decode(msg.data, kind)
            except msgspec.DecodeError:
                log.warning("undecodable %s control on %s", kind.KIND, msg.subject)
                return
            await on(ctl)

        return await self.nc.subscribe(subjects.control(conv, kind.KIND), cb=cb)

    async def publish_fact(self, subject: str, msg: msgspec.Struct, msg_id: str) -> None:
        """JetStream publish, awaited until the stream has stored it; de-duplicated by msg_id."""
        await self.js.publish(subject, schemas.encode(msg), headers={"Nats-Msg-Id": msg_id})

    async def publish_event(self, ev: schemas.Event, msg_id: str) -> None:
        """A final-form client event: stored in PARLEY_EVENTS (for resume) and relayed live."""
        kind = type(ev).__struct_config__.tag.replace(".", "_")
        await self.publish_fact(subjects.event(ev.conversation_id, kind), ev, msg_id)

    async def publish_live(self, ev: schemas.Event) -> None:
        kind = type(ev).__struct_config__.tag.replace(".", "_")
        await self.publish(subjects.live(ev.conversation_id, kind), ev)

    async def close(self) -> None:
        if self.nc.is_connected:
            await self.nc.drain()


async def connect(settings: ServiceSettings, name: str) -> Bus:
    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    async def on_disconnect() -> None:
        log.warning("nats disconnected")

    bus: Bus | None = None

    async def on_reconnect() -> None:
        log.info("nats reconnected")
        if bus is not None:
            bus.reconnected()

    # Under per-service credentials each user may only read its own inbox (deploy/nats/parley-auth.conf),
    # so no service sees another's replies or JetStream deliveries.
    inbox = f"_INBOX.{settings.nats_user}" if settings.nats_user else "_INBOX"
    nc = await nats.connect(
        servers=[settings.nats_url],
        name=f"{name}@{settings.instance_id}",
        user=settings.nats_user,
        password=settings.nats_password,
        inbox_prefix=inbox,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
    bus = Bus(nc)
    return bus


def _stream_config(spec: subjects.StreamSpec, first_seq: int | None = None) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        description=spec.description,
        subjects=spec.subjects,
        retention=spec.retention,
        storage=spec.storage,
        max_age=spec.max_age_s or None,
        max_msgs_per_subject=spec.max_msgs_per_subject,
        duplicate_window=spec.duplicate_window_s or None,
        discard=spec.discard,
        max_msg_size=spec.max_msg_size,
        first_seq=first_seq,
    )


def _first_seq(spec: subjects.StreamSpec) -> int | None:
    """A memory stream starts numbering at the clock in microseconds, past any number an
    earlier life of it (before a nats-server restart) handed out. An ordered consumer that
    lost its server-side state resumes after the last sequence it saw (nats.py re-creates it
    from there), so on a stream renumbered from 1 it would skip everything until the numbers
    caught up; now it reads on at once. It holds while the stream averages fewer than a
    million messages a second, and the numbers stay below 2^53."""
    return int(time.time() * 1_000_000) if spec.storage == StorageType.MEMORY else None


async def ensure_streams(bus: Bus) -> None:
    """Create or update every stream; safe to run from every replica at every start, and run
    again by each of them after reconnecting (see `Bus.reconnected`)."""
    for spec in subjects.STREAMS:
        try:
            await bus.js.stream_info(spec.name)
        except NotFoundError:
            try:
                await bus.js.add_stream(_stream_config(spec, _first_seq(spec)))
                continue
            except BadRequestError:
                pass  # another replica created it first
        await bus.js.update_stream(_stream_config(spec))
    await bus.js.create_key_value(bucket=subjects.CANCEL_BUCKET, ttl=3600)
    await bus.js.create_key_value(bucket=subjects.TURNS_BUCKET, ttl=3600, history=1)
    await bus.js.create_key_value(bucket=subjects.TOOL_RESULTS_BUCKET, ttl=3600, history=1)
    bus.declared = True


@dataclass
class WorkQueue:
    """A durable pull consumer shared by every replica of one service."""

    stream: str
    durable: str
    filter_subject: str
    ack_wait_s: float = 30.0
    max_deliver: int = 5
    max_ack_pending: int = 1000
    outage_patience_s: float = 120.0
    """How long a handler whose dependency is down is retried in place before a delivery is
    spent (see `Worker`)."""


Handler = Callable[[NatsMsg], Awaitable[None]]
GiveUp = Callable[[NatsMsg, BaseException], Awaitable[None]]


class Worker:
    """Pulls from a work queue with bounded concurrency; acks only after the handler's effect.

    A handler that raises `Retry` is redelivered after its delay; any other error is
    redelivered with backoff until `max_deliver`, then `give_up` publishes the failure event
    and the message is terminated. Draining stops fetching and waits for handlers in flight.

    A handler that failed because a dependency is down (`dependency_down`: Postgres
    restarting, S3 answering 5xx, the bus reconnecting) is retried in place instead, the
    message kept in progress, for up to `outage_patience_s`: `max_deliver` bounds what a bad
    message may cost, and a few seconds of outage would otherwise spend it (a turn's four
    deliveries are gone within two seconds) and fail turns that nothing was wrong with.
    """

    def __init__(
        self,
        bus: Bus,
        queue: WorkQueue,
        handler: Handler,
        *,
        concurrency: int = 4,
        give_up: GiveUp | None = None,
        service: str = "",
    ):
        self.bus, self.queue, self.handler = bus, queue, handler
        self.concurrency = concurrency
        self.give_up = give_up
        self.service = service
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task] = set()
        self._stopping = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._fetching = False
        self._fetched_at = 0.0

    async def start(self) -> None:
        q = self.queue
        cfg = ConsumerConfig(
            name=q.durable,
            durable_name=q.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=q.ack_wait_s,
            max_deliver=q.max_deliver,
            max_ack_pending=q.max_ack_pending,
            filter_subject=q.filter_subject,
        )
        # Create, or update in place: a durable consumer made by an older release keeps its old
        # ack wait and max deliveries otherwise (pull_subscribe only binds to one that exists).
        await self.bus.js.add_consumer(q.stream, config=cfg)
        self._sub = await self.bus.js.pull_subscribe(q.filter_subject, durable=q.durable, stream=q.stream, config=cfg)
        self._loop_task = asyncio.create_task(self._loop(), name=f"worker-{q.durable}")

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def _loop(self) -> None:
        # One message per pull, for one free slot. Pulls for a batch (every free slot) held
        # messages back when they arrived a few at a time: in the system bench at 10
        # conversations one turn in ten waited 50-550 ms between the stream and its handler,
        # with the orchestrator idle, and 200 messages published at random moments to an idle
        # worker waited 20.7 ms p99 (6.2 ms with single pulls). A pull is one round trip to
        # nats-server (about 1 ms), which bounds a worker near a thousand messages a second.
        while not self._stopping.is_set():
            await self._slots.acquire()
            self._fetching = True
            self._fetched_at = time.monotonic()
            try:
                msgs = await self._sub.fetch(1, timeout=1.0)
            except (TimeoutError, NatsTimeout):
                msgs = []
            except Exception as exc:  # connection trouble: the client reconnects on its own
                msgs = []
                if not self._stopping.is_set():
                    log.warning("fetch from %s failed: %s", self.queue.durable, exc)
                    await asyncio.sleep(0.5)
            finally:
                self._fetching = False
            if not msgs:
                self._slots.release()
            for msg in msgs:
                t = asyncio.create_task(self._run(msg))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)

    async def _run(self, msg: NatsMsg) -> None:
        gauge = metrics.IN_FLIGHT.labels(self.service)
        gauge.inc()
        try:
            await self._handle(msg)
            await msg.ack()
        except Retry as r:
            log.debug("retry %s: %s", msg.subject, r)
            await self._redeliver_or_give_up(msg, r, r.delay_s)
        except Exception as exc:
            log.exception("handler failed on %s", msg.subject)
            metrics.HANDLER_ERRORS.labels(self.service, self.queue.durable).inc()
            delay = min(0.25 * 2 ** (msg.metadata.num_delivered - 1), 5.0)
            await self._redeliver_or_give_up(msg, exc, delay)
        finally:
            gauge.dec()
            self._slots.release()

    async def _handle(self, msg: NatsMsg) -> None:
        """The handler, run again in place while what it needs is down (see the class)."""
        give_up_at = time.monotonic() + self.queue.outage_patience_s
        delay = 0.25
        # Between attempts the message is kept in progress well within its ack wait.
        longest = max(0.25, min(5.0, self.queue.ack_wait_s / 3))
        while True:
            try:
                return await self.handler(msg)
            except Retry:
                raise
            except Exception as exc:
                if not dependency_down(exc) or self._stopping.is_set() or time.monotonic() + delay > give_up_at:
                    raise
                log.warning(
                    "%s: a dependency is down (%s: %s); trying again in %.2f s",
                    self.queue.durable,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                metrics.HANDLER_ERRORS.labels(self.service, self.queue.durable).inc()
            await asyncio.sleep(delay)
            delay = min(2 * delay, longest)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _redeliver_or_give_up(self, msg: NatsMsg, exc: BaseException, delay: float) -> None:
        if msg.metadata.num_delivered >= self.queue.max_deliver:
            if self.give_up is not None:
                try:
                    await self.give_up(msg, exc)
                except Exception:
                    log.exception("give-up handler failed on %s", msg.subject)
                    await msg.nak(delay=delay)
                    return
            await msg.term()
        else:
            await msg.nak(delay=delay)

    async def drain(self, timeout: float) -> None:
        """Stop taking work, then let what is in flight finish (its acks land, nothing redelivers).

        A fetch under way is let finish (at most its 1 s) and what it brings is handled: cut
        off, the messages it had taken would come back only after their ack wait."""
        self._stopping.set()
        if self._loop_task:
            if self._fetching:
                await asyncio.wait({self._loop_task}, timeout=2.0)
            self._loop_task.cancel()
            try:
                await self._loop_task
            except asyncio.CancelledError:
                pass
        await self._take_stragglers()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        try:
            await self._sub.unsubscribe()
        except Exception:
            pass

    async def _take_stragglers(self) -> None:
        """A fetch's lingering pull (open up to its 1 s) may deliver after the fetch returned;
        such messages wait in the subscription and are handled here rather than left to come
        back after their ack wait."""
        await asyncio.sleep(max(0.0, self._fetched_at + 1.05 - time.monotonic()))
        pending = getattr(self._sub, "pending_msgs", 0)
        if not pending:
            return
        try:
            msgs = await self._sub.fetch(pending, timeout=0.2)
        except Exception:
            return
        for msg in msgs:
            t = asyncio.create_task(self._run(msg))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)


async def keep_alive(msg: NatsMsg, every_s: float = 10.0) -> None:
    """Tell JetStream a long handler is still working so the message is not redelivered."""
    while True:
        await asyncio.sleep(every_s)
        await msg.in_progress()
