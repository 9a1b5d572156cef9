"""NATS connection, idempotent stream declaration, and the JetStream work loop every worker uses."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
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
from nats.js.api import AckPolicy, ConsumerConfig, RawStreamMsg, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from . import metrics, schemas, subjects
from .outages import dependency_down
from .settings import ServiceSettings

C = TypeVar("C", bound=schemas.Control)
T = TypeVar("T")


log = logging.getLogger(__name__)


class Retry(Exception):
    """The handler could not finish yet (a dependency is missing or down): redeliver later."""

    def __init__(self, reason: str, delay_s: float = 0.5):
        super().__init__(reason)
        self.delay_s = delay_s


class Bus:
    """A connected client: core NATS for live media and control, JetStream for facts."""

    def __init__(self, nc: NATS, replicas: int = 1, publish_patience_s: float = 15.0, heartbeat_s: float = 1.0):
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.replicas = replicas
        """Copies of each stream and bucket this client declares (`PARLEY_NATS_REPLICAS`)."""
        self.publish_patience_s = publish_patience_s
        self.heartbeat_s = heartbeat_s
        """Idle heartbeat of the ordered consumers that follow a stream live (a session's events,
        its mic audio): two missed and nats.py makes the consumer again, on the stream's new
        leader if the old one was lost."""
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
        await self.store(subject, schemas.encode(msg), {"Nats-Msg-Id": msg_id})

    async def store(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        """JetStream publish that rides out a stream with no leader for a while: a cluster that
        lost a node elects new leaders for its streams within seconds, and a fact refused
        meanwhile would cost a turn (or, at the gateway, a retryable error for the client to
        resend). Sent again under the same `Nats-Msg-Id`, so a first try that was stored but
        whose acknowledgement was lost is dropped as a duplicate. Past `publish_patience_s`
        the error is raised, as an outage."""
        await self.patiently(subject, functools.partial(self.js.publish, subject, payload, headers=headers))

    async def patiently(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, made again while it fails as an outage (a stream or the cluster without a
        leader, the connection moving) for up to `publish_patience_s`; then its error."""
        give_up_at = time.monotonic() + self.publish_patience_s
        delay = 0.1
        while True:
            try:
                return await call()
            except Exception as exc:
                if not dependency_down(exc) or time.monotonic() + delay > give_up_at:
                    log.warning("%s failed (%s: %s)", what, type(exc).__name__, exc)
                    raise
                log.info("%s not done yet (%s); trying again in %.1f s", what, type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, 1.0)

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
        servers=[url.strip() for url in settings.nats_url.split(",") if url.strip()],
        name=f"{name}@{settings.instance_id}",
        user=settings.nats_user,
        password=settings.nats_password,
        inbox_prefix=inbox,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        ping_interval=settings.nats_ping_interval_s,
        max_outstanding_pings=2,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
    bus = Bus(nc, settings.nats_replicas, settings.nats_publish_patience_s, settings.nats_heartbeat_s)
    return bus


def _stream_config(spec: subjects.StreamSpec, replicas: int, first_seq: int | None = None) -> StreamConfig:
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
        num_replicas=replicas,
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


async def ensure_streams(bus: Bus, patience_s: float = 120.0) -> None:
    """Create or update every stream and bucket; safe to run from every replica at every start,
    and run again by each of them after reconnecting (see `Bus.reconnected`). An update also
    moves a stream made at another replica count to this one (JetStream copies it over).

    A cluster still electing its leaders, or busy creating the streams for the other services
    starting beside this one, may not answer in time: every step can be taken again, so the
    whole is tried again for up to `patience_s`."""
    give_up_at = time.monotonic() + patience_s
    while True:
        try:
            await _declare(bus)
            bus.declared = True
            return
        except Exception as exc:
            if not dependency_down(exc) or time.monotonic() > give_up_at:
                raise
            log.warning("declaring the streams failed (%s); trying again", type(exc).__name__)
            await asyncio.sleep(1.0)


async def _declare(bus: Bus) -> None:
    n = bus.replicas
    for spec in subjects.STREAMS:
        wanted = _stream_config(spec, n)
        try:
            current = (await bus.js.stream_info(spec.name)).config
        except NotFoundError:
            try:
                await bus.js.add_stream(_stream_config(spec, n, _first_seq(spec)))
                continue
            except BadRequestError:
                current = None  # another replica created it first
        if current is None or _differs(current, wanted):
            # Only a change is proposed: every update is a write through the meta leader, and
            # every replica of every service declares at each start.
            await bus.js.update_stream(wanted)
    await _ensure_bucket(bus, subjects.CANCEL_BUCKET, history=1)
    await _ensure_bucket(bus, subjects.TURNS_BUCKET, history=1)
    await _ensure_bucket(bus, subjects.TOOL_RESULTS_BUCKET, history=1)


def _differs(current: StreamConfig, wanted: StreamConfig) -> bool:
    """Whether a setting Parley makes (not one the server filled in) is not as wanted."""
    return any(
        getattr(current, f.name) != value
        for f in dataclasses.fields(wanted)
        if (value := getattr(wanted, f.name)) is not None
    )


async def _ensure_bucket(bus: Bus, bucket: str, history: int, ttl_s: float = 3600) -> None:
    """Create a KV bucket, or bring one made by an older release (another replica count, age or
    history) to these settings: creating it again with a changed config is refused."""
    stream = f"KV_{bucket}"
    try:
        config = (await bus.js.stream_info(stream)).config
    except NotFoundError:
        try:
            await bus.js.create_key_value(bucket=bucket, ttl=ttl_s, history=history, replicas=bus.replicas)
            return
        except BadRequestError:  # another replica created it first
            config = (await bus.js.stream_info(stream)).config
    wanted = {"num_replicas": bus.replicas, "max_age": ttl_s, "max_msgs_per_subject": history}
    if any(getattr(config, k) != v for k, v in wanted.items()):
        await bus.js.update_stream(dataclasses.replace(config, **wanted))


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
GiveUp = Callable[[NatsMsg | RawStreamMsg, BaseException], Awaitable[None]]
"""Publishes a message's failure (only its `data` is read): on its last delivery, or when
its last handler died (read back from the stream then)."""


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

    A message whose last delivery died with its process (a turn that crashes every
    orchestrator taking it) is never handed to `give_up` here. JetStream publishes a
    max-deliveries advisory for it, and PARLEY_EXHAUSTED keeps those advisories. A second
    worker reads this queue's ones, gives up on the message and takes it out of the stream,
    so even this failure reaches the client.
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
        self._exhausted: Worker | None = None
        if queue.stream in subjects.WORK_QUEUES:
            advisories = subjects.max_deliveries(queue.stream, queue.durable)
            exhausted = WorkQueue(subjects.EXHAUSTED_STREAM, f"{queue.durable}-exhausted", advisories)
            self._exhausted = Worker(bus, exhausted, self._give_up_exhausted, concurrency=1, service=service)

    async def _give_up_exhausted(self, advisory: NatsMsg) -> None:
        seq = json.loads(advisory.data)["stream_seq"]
        try:
            msg = await self.bus.js.get_msg(self.queue.stream, seq)
        except NotFoundError:
            return  # given up on already (a term whose acknowledgement was lost), or removed
        log.warning("%s message %d ran out of deliveries with its handler gone; giving up", self.queue.durable, seq)
        if self.give_up is not None:
            tries = self.queue.max_deliver
            await self.give_up(msg, RuntimeError(f"its handler stopped during each of its {tries} tries"))
        await self.bus.js.delete_msg(self.queue.stream, seq)

    async def start(self) -> None:
        if self._exhausted is not None:
            await self._exhausted.start()
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
        if self._exhausted is not None:
            await self._exhausted.drain(timeout)

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
