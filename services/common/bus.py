"""NATS connection, idempotent stream declaration, and the JetStream work loop every worker uses."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg as NatsMsg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from . import metrics, schemas, subjects
from .settings import ServiceSettings

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

    async def publish(self, subject: str, msg: msgspec.Struct, headers: dict | None = None) -> None:
        """Core publish: at most once, no wait. For live events and control."""
        await self.nc.publish(subject, schemas.encode(msg), headers=headers)

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

    async def on_reconnect() -> None:
        log.info("nats reconnected")

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
    return Bus(nc)


def _stream_config(spec: subjects.StreamSpec) -> StreamConfig:
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
    )


async def ensure_streams(bus: Bus) -> None:
    """Create or update every stream; safe to run from every replica at every start."""
    for spec in subjects.STREAMS:
        cfg = _stream_config(spec)
        try:
            await bus.js.stream_info(spec.name)
        except NotFoundError:
            try:
                await bus.js.add_stream(cfg)
                continue
            except BadRequestError:
                pass  # another replica created it first
        await bus.js.update_stream(cfg)
    await bus.js.create_key_value(bucket=subjects.CANCEL_BUCKET, ttl=3600)
    await bus.js.create_key_value(bucket=subjects.TURNS_BUCKET, ttl=3600, history=1)


@dataclass
class WorkQueue:
    """A durable pull consumer shared by every replica of one service."""

    stream: str
    durable: str
    filter_subject: str
    ack_wait_s: float = 30.0
    max_deliver: int = 5
    max_ack_pending: int = 1000


Handler = Callable[[NatsMsg], Awaitable[None]]
GiveUp = Callable[[NatsMsg, BaseException], Awaitable[None]]


class Worker:
    """Pulls from a work queue with bounded concurrency; acks only after the handler's effect.

    A handler that raises `Retry` is redelivered after its delay; any other error is
    redelivered with backoff until `max_deliver`, then `give_up` publishes the failure event
    and the message is terminated. Draining stops fetching and waits for handlers in flight.
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

    async def start(self) -> None:
        q = self.queue
        cfg = ConsumerConfig(
            durable_name=q.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=q.ack_wait_s,
            max_deliver=q.max_deliver,
            max_ack_pending=q.max_ack_pending,
            filter_subject=q.filter_subject,
        )
        self._sub = await self.bus.js.pull_subscribe(q.filter_subject, durable=q.durable, stream=q.stream, config=cfg)
        self._loop_task = asyncio.create_task(self._loop(), name=f"worker-{q.durable}")

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            await self._slots.acquire()
            held = 1
            while held < self.concurrency and not self._slots.locked():
                await self._slots.acquire()
                held += 1
            try:
                msgs = await self._sub.fetch(held, timeout=1.0)
            except (TimeoutError, NatsTimeout):
                msgs = []
            except Exception as exc:  # connection trouble: the client reconnects on its own
                msgs = []
                if not self._stopping.is_set():
                    log.warning("fetch from %s failed: %s", self.queue.durable, exc)
                    await asyncio.sleep(0.5)
            for _ in range(held - len(msgs)):
                self._slots.release()
            for msg in msgs:
                t = asyncio.create_task(self._run(msg))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)

    async def _run(self, msg: NatsMsg) -> None:
        gauge = metrics.IN_FLIGHT.labels(self.service)
        gauge.inc()
        try:
            await self.handler(msg)
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
        """Stop taking work, then let what is in flight finish (its acks land, nothing redelivers)."""
        self._stopping.set()
        if self._loop_task:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except asyncio.CancelledError:
                pass
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        try:
            await self._sub.unsubscribe()
        except Exception:
            pass


async def keep_alive(msg: NatsMsg, every_s: float = 10.0) -> None:
    """Tell JetStream a long handler is still working so the message is not redelivered."""
    while True:
        await asyncio.sleep(every_s)
        await msg.in_progress()
