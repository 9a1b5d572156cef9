"""The JetStream work loop and stream declaration against a real nats-server."""

from __future__ import annotations

import asyncio

import pytest

from services.common import bus as busmod
from services.common import schemas, subjects
from services.common.settings import ServiceSettings


@pytest.fixture
async def bus(nats_server):
    b = await busmod.connect(ServiceSettings(nats_url=nats_server.url), "test")
    await busmod.ensure_streams(b)
    yield b
    await b.close()


async def test_streams_are_declared_idempotently(bus):
    await busmod.ensure_streams(bus)
    for spec in subjects.STREAMS:
        info = await bus.js.stream_info(spec.name)
        assert info.config.subjects == spec.subjects


async def test_facts_are_deduplicated_by_derived_id(bus):
    turn = schemas.UserTurn(
        conversation_id="dedupe", message_id="m1", session_id="s", turn_seq=0, source="text", text="x"
    )
    first = await bus.js.publish(subjects.turn("dedupe"), schemas.encode(turn), headers={"Nats-Msg-Id": "m1"})
    again = await bus.js.publish(subjects.turn("dedupe"), schemas.encode(turn), headers={"Nats-Msg-Id": "m1"})
    assert again.duplicate and again.seq == first.seq
    await bus.js.purge_stream("PARLEY_TURNS", subject=subjects.turn("dedupe"))


async def test_worker_acks_retries_and_gives_up(bus):
    from nats.js.api import RetentionPolicy, StreamConfig

    seen: dict[bytes, int] = {}
    given_up: list[bytes] = []

    async def handler(msg):
        seen[msg.data] = seen.get(msg.data, 0) + 1
        if msg.data == b"later" and seen[msg.data] < 2:
            raise busmod.Retry("not yet", delay_s=0.05)
        if msg.data == b"poison":
            raise RuntimeError("cannot handle this")

    async def give_up(msg, exc):
        given_up.append(msg.data)

    await bus.js.add_stream(
        StreamConfig(name="TEST_WORK", subjects=["test.work.*"], retention=RetentionPolicy.WORK_QUEUE)
    )
    queue = busmod.WorkQueue("TEST_WORK", "test-worker", "test.work.*", ack_wait_s=5, max_deliver=3)
    worker = busmod.Worker(bus, queue, handler, concurrency=2, give_up=give_up, service="test")
    await worker.start()
    for body in (b"ok", b"later", b"poison"):
        await bus.js.publish("test.work.x", body)
    for _ in range(200):
        info = await bus.js.consumer_info("TEST_WORK", "test-worker")
        if given_up and info.num_ack_pending == 0 and info.num_pending == 0:
            break
        await asyncio.sleep(0.05)
    await worker.drain(5)
    assert seen == {b"ok": 1, b"later": 2, b"poison": 3}
    assert given_up == [b"poison"]
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_a_message_whose_every_handler_died_is_given_up_on(tmp_path):
    """A handler that never finishes, as one whose process is killed on each delivery: no
    delivery reaches `give_up` in the worker, JetStream's max-deliveries advisory (kept in
    PARLEY_EXHAUSTED) does, and the message is taken out of its queue."""
    from ops import devstack

    server = devstack.NatsServer(tmp_path).start()  # its own: a work queue takes one consumer per subject
    bus = await busmod.connect(ServiceSettings(nats_url=server.url), "test")
    released = asyncio.Event()
    given_up: list[tuple[bytes, str]] = []

    async def dies(msg):
        await released.wait()

    async def give_up(msg, exc):
        given_up.append((msg.data, str(exc)))

    queue = busmod.WorkQueue(
        subjects.INTERRUPTS_STREAM, "test-dying", subjects.INTERRUPTS_ALL, ack_wait_s=1, max_deliver=2
    )
    worker = busmod.Worker(bus, queue, dies, concurrency=4, give_up=give_up, service="test")
    try:
        await busmod.ensure_streams(bus)
        await worker.start()
        await bus.js.publish(subjects.interrupt("doomed"), b"doomed")
        for _ in range(300):
            if given_up:
                break
            await asyncio.sleep(0.1)
        assert given_up == [(b"doomed", "its handler stopped during each of its 2 tries")]
        for _ in range(50):  # the advisory is acked once given up on, the message deleted
            left = [(await bus.js.stream_info(s)).state.messages for s in (queue.stream, subjects.EXHAUSTED_STREAM)]
            if left == [0, 0]:
                break
            await asyncio.sleep(0.1)
        assert left == [0, 0]
    finally:
        released.set()
        await worker.drain(2)
        await bus.close()
        server.stop()
