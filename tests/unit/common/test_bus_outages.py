"""The bus riding out outages against a real nats-server: a handler whose dependency is down
is retried in place without spending its bounded deliveries, and after a nats-server restart
the memory stream that did not survive it is declared again, numbered past its old life."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
from botocore.exceptions import ClientError
from nats.js.api import RetentionPolicy, StreamConfig

from ops import devstack
from services.common import bus as busmod
from services.common import outages, schemas, subjects
from services.common.settings import ServiceSettings


def _client_error(status: int) -> ClientError:
    return ClientError({"Error": {"Code": str(status)}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize(
    ("exc", "down"),
    [
        (ConnectionRefusedError(111, "refused"), True),
        (OSError(111, "Connect call failed ('127.0.0.1', 5432)"), True),
        (FileNotFoundError(2, "no such file"), False),
        (asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"), True),
        (asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"), True),
        (asyncpg.InterfaceError("connection is closed"), True),
        (busmod.NatsTimeout(), True),
        (_client_error(503), True),
        (_client_error(404), False),
        (asyncpg.exceptions.UniqueViolationError("duplicate key"), False),
        (ValueError("bad message"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_an_outage_is_told_from_a_bad_message(exc, down):
    assert outages.dependency_down(exc) is down


@pytest.fixture
async def bus(nats_server):
    """A work-queue stream of the tests' own: Parley's queues may have their consumers already
    (a work queue allows one consumer per subject)."""
    b = await busmod.connect(ServiceSettings(nats_url=nats_server.url), "test-outages")
    await b.js.add_stream(
        StreamConfig(name="OUTAGE_TEST", subjects=["outage.test.*"], retention=RetentionPolicy.WORK_QUEUE)
    )
    yield b
    await b.close()


async def test_a_handler_whose_dependency_is_down_keeps_its_deliveries(bus):
    """Down for three attempts with max_deliver=2: answered on the first delivery, not failed."""
    conv = f"outage-{time.monotonic_ns()}"
    attempts: list[int] = []
    gave_up: list[BaseException] = []

    async def handler(msg):
        attempts.append(msg.metadata.num_delivered)
        if len(attempts) <= 3:
            raise ConnectionRefusedError(111, "Postgres is restarting")

    async def give_up(msg, exc):
        gave_up.append(exc)

    queue = busmod.WorkQueue("OUTAGE_TEST", f"outage-{conv}", f"outage.test.{conv}", max_deliver=2)
    worker = busmod.Worker(bus, queue, handler, give_up=give_up)
    await worker.start()
    try:
        await bus.publish_fact(
            f"outage.test.{conv}", schemas.Interruption(conversation_id=conv, message_id="m"), f"i.{conv}"
        )
        deadline = time.monotonic() + 30
        while len(attempts) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
    finally:
        await worker.drain(5)
    assert attempts == [1, 1, 1, 1] and not gave_up


async def test_a_bad_message_still_spends_its_deliveries(bus):
    conv = f"poison-{time.monotonic_ns()}"
    attempts: list[int] = []
    gave_up: list[BaseException] = []

    async def handler(msg):
        attempts.append(msg.metadata.num_delivered)
        raise ValueError("cannot be handled")

    async def give_up(msg, exc):
        gave_up.append(exc)

    queue = busmod.WorkQueue("OUTAGE_TEST", f"poison-{conv}", f"outage.test.{conv}", max_deliver=2)
    worker = busmod.Worker(bus, queue, handler, give_up=give_up)
    await worker.start()
    try:
        await bus.publish_fact(
            f"outage.test.{conv}", schemas.Interruption(conversation_id=conv, message_id="m"), f"p.{conv}"
        )
        deadline = time.monotonic() + 30
        while not gave_up and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await worker.drain(5)
    assert attempts == [1, 2] and isinstance(gave_up[0], ValueError)


async def test_streams_are_declared_again_after_a_nats_restart(tmp_path):
    """PARLEY_AUDIO_IN lives in memory, so a restart loses it; every service that declared the
    streams declares them again, and the new stream numbers on past the old one (an ordered
    consumer resumes after the last sequence it saw)."""
    server = devstack.NatsServer(tmp_path / "nats").start()
    b = await busmod.connect(ServiceSettings(nats_url=server.url), "test-restart")
    try:
        await busmod.ensure_streams(b)
        before = await b.js.publish(subjects.audio_in("c"), b"frame")
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)
        deadline = time.monotonic() + 30
        info = None
        while info is None and time.monotonic() < deadline:
            try:
                info = await b.js.stream_info("PARLEY_AUDIO_IN")
            except Exception:
                await asyncio.sleep(0.2)
        assert info is not None, "PARLEY_AUDIO_IN was not declared again"
        after = await b.js.publish(subjects.audio_in("c"), b"frame")
        assert after.seq > before.seq
        assert (await b.js.stream_info("PARLEY_EVENTS")).config.subjects == ["parley.event.*.*"]
    finally:
        await b.close()
        server.stop()
