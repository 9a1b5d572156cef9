"""The per-conversation turn gate, as two replicas see it, against a real nats-server."""

from __future__ import annotations

import asyncio

import pytest

from services.common import bus as busmod
from services.common import schemas, subjects
from services.common.settings import ServiceSettings
from services.llm.ordering import TurnGate


@pytest.fixture
async def gates(nats_server):
    b = await busmod.connect(ServiceSettings(nats_url=nats_server.url), "test-ordering")
    await busmod.ensure_streams(b)
    kv = await b.js.key_value(subjects.TURNS_BUCKET)
    yield TurnGate(kv, b, wait_s=5), TurnGate(kv, b, wait_s=5), b
    await b.close()


async def test_a_newer_turn_interrupts_the_active_one_and_enters_after_it(gates):
    a, b, bus = gates
    cancels: list[schemas.ReplyCancel] = []

    async def on_control(msg):
        cancels.append(schemas.decode(msg.data, schemas.ReplyCancel))

    sub = await bus.nc.subscribe(subjects.control("c1", "cancel"), cb=on_control)
    first = await a.enter("c1", 10, "m10")
    assert first.outcome == "held"
    second = asyncio.create_task(b.enter("c1", 11, "m11"))
    await asyncio.sleep(0.2)
    assert not second.done(), "the newer turn must wait for the active one"
    assert [c.message_id for c in cancels] == ["m10"]
    version = await a.leave("c1", 10)
    entered = await asyncio.wait_for(second, 2)
    assert entered.outcome == "held" and entered.version == version == first.version + 1
    await b.leave("c1", 11)
    await sub.unsubscribe()


async def test_an_older_turn_after_a_newer_one_is_superseded(gates):
    a, b, _ = gates
    assert (await a.enter("c2", 20, "m20")).outcome == "held"
    assert (await b.enter("c2", 19, "m19")).outcome == "superseded"
    await a.leave("c2", 20)
    assert (await b.enter("c2", 18, "m18")).outcome == "superseded"
    assert (await b.enter("c2", 20, "m20")).outcome == "superseded"  # redelivered after it finished
    assert (await b.enter("c2", 21, "m21")).outcome == "held"
    await b.leave("c2", 21)


async def test_a_redelivered_turn_takes_over_from_a_dead_holder(gates):
    a, b, _ = gates
    assert (await a.enter("c3", 30, "m30")).outcome == "held"  # and then replica a dies
    assert (await b.enter("c3", 30, "m30")).outcome == "held"
    await b.leave("c3", 30)


async def test_a_newer_turn_takes_over_when_the_holder_never_leaves(nats_server):
    bus = await busmod.connect(ServiceSettings(nats_url=nats_server.url), "test-ordering-dead")
    await busmod.ensure_streams(bus)
    gate = TurnGate(await bus.js.key_value(subjects.TURNS_BUCKET), bus, wait_s=0.3)
    assert (await gate.enter("c4", 40, "m40")).outcome == "held"
    entered = await asyncio.wait_for(gate.enter("c4", 41, "m41"), 3)
    assert entered.outcome == "held"
    await gate.leave("c4", 40)  # the old holder coming back late does not free the new one
    state, _ = await gate._read("c4")
    assert state.active_seq == 41 and state.last_seq == 40
    await bus.close()


async def test_a_failed_attempt_does_not_finish_its_turn(gates):
    a, b, _ = gates
    assert (await a.enter("c5", 50, "m50")).outcome == "held"
    await a.leave("c5", 50, done=False)  # the handler failed; the turn will be redelivered
    assert (await b.enter("c5", 50, "m50")).outcome == "held"
    await b.leave("c5", 50)
    assert (await a.enter("c5", 50, "m50")).outcome == "superseded"  # now it is finished


async def test_a_finished_turn_published_again_is_known_to_every_replica(gates):
    """A turn republished past de-duplication gets a newer sequence; the gate still knows it
    finished, on the replica that answered it and on one that never saw it."""
    a, b, _ = gates
    first = await a.enter("c9", 50, "m50")
    assert first.outcome == "held" and not first.repeat
    await a.leave("c9", 50, message_id="m50")
    again = await a.enter("c9", 51, "m50")  # this replica's own fast path
    assert again.outcome == "held" and again.repeat
    await a.leave("c9", 51, done=False, message_id="m50")
    elsewhere = await b.enter("c9", 52, "m50")
    assert elsewhere.outcome == "held" and elsewhere.repeat
    await b.leave("c9", 52, message_id="m50")
    other = await a.enter("c9", 53, "m53")
    assert other.outcome == "held" and not other.repeat
    await a.leave("c9", 53, message_id="m53")
    for n in range(54, 54 + 16):  # only the last sixteen finished turns are kept
        assert not (await b.enter("c9", n, f"m{n}")).repeat
        await b.leave("c9", n, message_id=f"m{n}")
    state, _ = await b._read("c9")
    assert state.recent == [f"m{n}" for n in range(54, 70)]
    assert not (await a.enter("c9", 70, "m50")).repeat
    await a.leave("c9", 70)


async def test_a_turn_its_client_answers_itself_waits_its_place_without_interrupting(gates):
    a, b, bus = gates
    cancels: list[schemas.ReplyCancel] = []

    async def on_control(msg):
        cancels.append(schemas.decode(msg.data, schemas.ReplyCancel))

    sub = await bus.nc.subscribe(subjects.control("c7", "cancel"), cb=on_control)
    assert (await a.enter("c7", 70, "m70")).outcome == "held"
    held = asyncio.create_task(b.enter("c7", 71, "m71", interrupt=False))
    await asyncio.sleep(0.3)
    assert not held.done() and cancels == []  # the reply streaming goes on
    await a.leave("c7", 70)
    assert (await asyncio.wait_for(held, 2)).outcome == "held"
    await b.leave("c7", 71, message_id="m71")
    # The client's response to it is a newer turn of the same message: the gate knows it as finished.
    answer = await a.enter("c7", 72, "m71")
    assert (answer.outcome, answer.repeat) == ("held", True)
    await a.leave("c7", 72, message_id="m71")
    await sub.unsubscribe()
