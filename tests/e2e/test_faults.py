"""Faults under a live conversation, each ending with the reply complete and stored: what
the ledger check at the end of the suite then balances over.

Recovery times are printed (run with `-s` to see them), never asserted: the machine may be
shared. What is asserted is behaviour: one stored reply per turn, none left `streaming`, no
sentence synthesised twice. For SIGTERM ("drains, no redelivery") the work in flight is
finished, and every work-queue message the process held is acknowledged before it exits 0,
so each message is delivered once (where a queue has no deliberate retries, its consumer's
deliveries equal the messages stored).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from dataclasses import dataclass

import asyncpg
import nats
import pytest

from ops import devstack
from services.common import ids, schemas, subjects
from tests.client import Client
from tests.fakes.llm_server import reply_for
from tests.s3proxy import S3Proxy

pytestmark = [pytest.mark.e2e, pytest.mark.engine]


def _restarting(stack, name: str):
    """The stack's own process of `name`, started again after the test if the test stopped it."""
    proc = stack["procs"][name]
    yield proc
    if proc.proc.poll() is not None:
        proc.start()
        proc.wait_ready()


@pytest.fixture
def tts_process(stack):
    yield from _restarting(stack, "tts")


@pytest.fixture
def llm_process(stack):
    yield from _restarting(stack, "llm")


@pytest.fixture
def storage_process(stack):
    yield from _restarting(stack, "storage")


@pytest.fixture
def slow_llm(fake_llm):
    """A reply that streams for several seconds (about 26 tokens), so a fault lands inside it."""

    def set_delay(seconds: float):
        fake_llm.token_delay_s = seconds
        return fake_llm

    yield set_delay
    fake_llm.token_delay_s = 0.005


async def _rows(stack, sql: str, *args):
    conn = await asyncpg.connect(stack["env"]["PARLEY_DATABASE_URL"])
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def _replies(stack, user_message_id: str):
    return await _rows(
        stack,
        "SELECT id::text, status, text, audio_key FROM messages WHERE role='avatar' AND reply_to=$1::uuid",
        user_message_id,
    )


async def _until(predicate, timeout: float = 60.0, every: float = 0.05):
    """Until the async `predicate()` is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(every)


@dataclass
class QueueState:
    published: int  # the stream's last sequence: every message ever stored on it
    delivered: int  # the consumer's deliveries, redeliveries included
    pending: int  # not yet delivered
    ack_pending: int  # delivered, not yet acknowledged


async def _queue(stack, stream: str, durable: str) -> QueueState:
    nc = await nats.connect(stack["env"]["PARLEY_NATS_URL"])
    try:
        js = nc.jetstream()
        info = await js.consumer_info(stream, durable)
        last = (await js.stream_info(stream)).state.last_seq
    finally:
        await nc.close()
    return QueueState(last, info.delivered.consumer_seq, info.num_pending, info.num_ack_pending)


async def _settled(stack, stream: str, durable: str, timeout: float = 120.0) -> QueueState:
    """Once every message on the queue has been taken and acknowledged."""

    async def done():
        q = await _queue(stack, stream, durable)
        return q if q.pending == 0 and q.ack_pending == 0 else None

    return await _until(done, timeout, 0.2)


def _no_redelivery(before: QueueState, after: QueueState) -> None:
    """Each message stored on the queue in between was delivered exactly once."""
    assert after.delivered - before.delivered == after.published - before.published, (before, after)


def _llm_calls(fake_llm, text: str) -> int:
    return sum(1 for body in fake_llm.requests if body["messages"][-1]["content"] == text)


async def _sigterm(proc: devstack.ServiceProcess) -> tuple[int | None, float]:
    """SIGTERM, waiting for the exit in a thread so the test's clients keep reading."""
    t0 = time.monotonic()
    code = await asyncio.to_thread(proc.stop, signal.SIGTERM)
    return code, time.monotonic() - t0


# --- kill -9 -------------------------------------------------------------------------------


async def test_a_tts_worker_killed_mid_sentence_costs_a_redelivery_not_a_sentence(stack, tts_process):
    """kill -9 after the worker took a sentence and streamed part of it, before its ack: the
    job is redelivered to the restarted worker (after JetStream's ack wait), the sentence is
    synthesised again, and the reply is stored whole."""
    client = Client(stack["ws_url"])
    await client.connect(user="fault-tts")
    await client.send_json({"type": "text", "text": "Talk to me while your voice fails"})
    first = await client.wait_for(lambda r: r.audio(), 60)
    reply_id = first[0].message_id
    tts_process.proc.kill()
    tts_process.proc.wait()
    killed_at = time.monotonic()
    tts_process.start()
    tts_process.wait_ready()

    stored = await client.wait_for(lambda r: r.events("audio.stored"), 120)
    recovered_s = time.monotonic() - killed_at
    done = client.received.events("reply.done")[0]
    assert stored[0]["message_id"] == reply_id and done["status"] == "complete"
    assert not client.received.events("audio.sentence_failed")
    assert stored[0]["duration_s"] > 0
    print(f"recovered {recovered_s:.1f} s after the kill")  # the ack wait dominates it
    await client.close()


async def test_an_orchestrator_killed_mid_reply_answers_the_turn_once(stack, llm_process, slow_llm):
    """kill -9 of the orchestrator while a reply streams (its row `streaming`, sentences on
    their way to TTS): the turn is redelivered to the restarted orchestrator, which answers
    it again under the same reply id; the stored reply is whole, complete, and the only one,
    the sentences synthesised before the kill are not synthesised again."""
    fake_llm = slow_llm(0.3)
    text = "Keep talking while your mind goes"
    client = Client(stack["ws_url"])
    await client.connect(user="fault-llm-kill")
    await client.send_json({"type": "text", "text": text})
    user_id = (await client.wait_for(lambda r: r.events("user.message"), 30))[0]["message_id"]
    reply_id = ids.reply_id(user_id, ids.DEMO_AVATAR_ID)
    await client.wait_for(lambda r: r.events("reply.sentence"), 60)
    # The reply's row is written once its first sentence is on its way: kill it in that state.
    await _until(lambda: _rows(stack, "SELECT 1 FROM messages WHERE id=$1::uuid AND status='streaming'", reply_id))
    llm_process.proc.kill()
    llm_process.proc.wait()
    killed_at = time.monotonic()
    fake_llm.token_delay_s = 0.005
    llm_process.start()
    llm_process.wait_ready()

    done = await client.wait_for(lambda r: r.events("reply.done"), 120)
    recovered_s = time.monotonic() - killed_at
    stored = await client.wait_for(lambda r: r.events("audio.stored"), 120)
    assert [d["message_id"] for d in done] == [reply_id]
    assert done[0]["status"] == "complete" and done[0]["text"] == reply_for(text)
    assert [s["message_id"] for s in stored] == [reply_id] and stored[0]["duration_s"] > 0
    assert not client.received.events("error") and not client.received.events("audio.sentence_failed")
    rows = await _replies(stack, user_id)
    assert [(r["id"], r["status"], r["text"]) for r in rows] == [(reply_id, "complete", reply_for(text))]
    assert rows[0]["audio_key"] == stored[0]["key"]
    assert _llm_calls(fake_llm, text) == 2  # the killed attempt and the redelivered one
    # Every sentence was synthesised once: the retry's jobs carry the same ids, de-duplicated.
    firsts = Counter(c.sentence_index for c in client.received.audio(reply_id) if c.chunk_seq == 0)
    assert firsts and set(firsts.values()) == {1}, firsts
    await _settled(stack, "PARLEY_TURNS", "llm")
    print(f"recovered {recovered_s:.1f} s after the kill (reply.done of the redelivered turn)")
    await client.close()


async def test_a_turn_whose_every_delivery_dies_with_its_orchestrator_fails_visibly(stack, llm_process, fake_llm):
    """kill -9 of the orchestrator on each of a turn's four deliveries (a turn that crashes
    every orchestrator taking it): no delivery ends in `give_up`, so nothing in the process
    could say the turn failed. JetStream's max-deliveries advisory, kept in PARLEY_EXHAUSTED,
    is read by the restarted orchestrator: the client gets `turn_failed` for its message, and
    the turn is gone from the queue."""
    text = "A question that no orchestrator survives"
    client = Client(stack["ws_url"])
    await client.connect(user="fault-last-delivery")
    fake_llm.mode = "silent"  # each delivery stays with the LLM until its orchestrator dies
    try:
        await client.send_json({"type": "text", "text": text})
        user_id = (await client.wait_for(lambda r: r.events("user.message"), 30))[0]["message_id"]
        for delivery in range(1, 5):
            await _until(_async(lambda n=delivery: _llm_calls(fake_llm, text) >= n), 60)
            llm_process.proc.kill()
            llm_process.proc.wait()
            if delivery == 4:
                fake_llm.mode = "ok"
            llm_process.start()
            llm_process.wait_ready()
        killed_at = time.monotonic()
        failed = await client.wait_for(lambda r: [e for e in r.events("error") if e.get("message_id") == user_id], 120)
    finally:
        fake_llm.mode = "ok"
    took_s = time.monotonic() - killed_at
    assert [e["code"] for e in failed] == ["turn_failed"]
    assert "each of its 4 tries" in failed[0]["message"]
    assert _llm_calls(fake_llm, text) == 4
    await _settled(stack, "PARLEY_TURNS", "llm")
    await _settled(stack, subjects.EXHAUSTED_STREAM, "llm-exhausted")
    assert not [r for r in await _replies(stack, user_id) if r["status"] == "streaming"]
    after = "And a question after it"
    await client.send_json({"type": "text", "text": after})
    done = await client.wait_for(lambda r: [d for d in r.events("reply.done") if d["text"] == reply_for(after)], 60)
    assert done[0]["status"] == "complete"
    print(f"turn_failed reached the client {took_s:.1f} s after the fourth orchestrator was restarted")
    await client.close()


def _async(pred):
    async def check():
        return pred()

    return check


def _delta_span(client: Client, reply_id: str) -> tuple[int, int]:
    """Where a reply's streamed text began and ended among everything the client received."""
    at = [
        n
        for n, i in enumerate(client.received.items)
        if isinstance(i, dict) and i["type"] == "reply.delta" and i["message_id"] == reply_id
    ]
    return at[0], at[-1]


async def test_a_turn_redelivered_while_a_newer_one_waits_is_cut_not_overlapped(stack, llm_process, slow_llm):
    """kill -9 mid-reply, then the person asks again while no orchestrator runs. The restarted
    orchestrator takes the newer turn first (the older one is still out for its ack wait),
    and it waits for the older one; the older one, redelivered, is cut as soon as it enters,
    and the newer one is answered after it: one reply each, never two streaming at once."""
    fake_llm = slow_llm(0.5)
    texts = ["Tell me everything slowly", "Actually, something else"]
    client = Client(stack["ws_url"])
    await client.connect(user="fault-llm-kill-newer", barge_in=False)
    await client.send_json({"type": "text", "text": texts[0], "client_seq": 0})
    first_user = (await client.wait_for(lambda r: r.events("user.message"), 30))[0]["message_id"]
    first = ids.reply_id(first_user, ids.DEMO_AVATAR_ID)
    await client.wait_for(lambda r: r.events("reply.sentence"), 60)
    await _until(lambda: _rows(stack, "SELECT 1 FROM messages WHERE id=$1::uuid AND status='streaming'", first))
    llm_process.proc.kill()
    llm_process.proc.wait()
    killed_at = time.monotonic()
    await client.send_json({"type": "text", "text": texts[1], "client_seq": 1})
    users = await client.wait_for(lambda r: len(r.events("user.message")) == 2 and r.events("user.message"), 30)
    second = ids.reply_id(users[1]["message_id"], ids.DEMO_AVATAR_ID)
    llm_process.start()
    llm_process.wait_ready()

    done = await client.wait_for(lambda r: len(r.events("reply.done")) == 2 and r.events("reply.done"), 120)
    recovered_s = time.monotonic() - killed_at
    fake_llm.token_delay_s = 0.005
    by_reply = {d["message_id"]: d for d in done}
    assert by_reply[first]["status"] == "interrupted"
    assert by_reply[second]["status"] == "complete" and by_reply[second]["text"] == reply_for(texts[1])
    assert _delta_span(client, first)[1] < _delta_span(client, second)[0]  # one at a time
    for user_id, reply_id in ((first_user, first), (users[1]["message_id"], second)):
        rows = await _replies(stack, user_id)
        assert [(r["id"], r["status"]) for r in rows] == [(reply_id, by_reply[reply_id]["status"])]
    await client.wait_for(lambda r: [e for e in r.events("audio.stored") if e["message_id"] == second], 120)
    print(f"both turns settled {recovered_s:.1f} s after the kill")
    await client.close()


# --- SIGTERM with work in flight: drains, no redelivery --------------------------------------


async def test_a_tts_worker_drains_the_sentence_it_is_speaking_on_sigterm(stack, tts_process):
    """SIGTERM while a sentence streams: the worker finishes the sentences it holds, stores
    and acks them, and exits 0; the reply's other sentences wait in the queue for the next
    worker. No job is delivered twice and no sentence is lost or failed."""
    before = await _settled(stack, "PARLEY_TTS", "tts")
    client = Client(stack["ws_url"])
    started = (await client.connect(user="fault-tts-term"))[0]
    conv = started["conversation_id"]
    nc = await nats.connect(stack["env"]["PARLEY_NATS_URL"])
    live: list[schemas.AudioMeta] = []

    async def on_audio(msg):
        live.append(schemas.AudioMeta.from_headers(msg.headers))

    await nc.subscribe(subjects.live(conv, "audio"), cb=on_audio)
    await client.send_json({"type": "text", "text": "Speak while you are being let go"})
    reply_id = (await client.wait_for(lambda r: r.audio(), 60))[0].message_id
    # Every job of the reply is on the queue before the signal: a job published while a worker
    # drains may be fetched into the pull that `Worker.drain` abandons (services/common/bus.py)
    # and wait out its ack wait, a separate fault this test does not probe.
    await client.wait_for(lambda r: r.events("reply.done"), 60)
    code, took_s = await _sigterm(tts_process)
    log = tts_process.log_path.read_text()
    assert code == 0, log[-2000:]
    assert "tts draining" in log.rsplit("tts ready", 1)[-1]
    after_exit = await _queue(stack, "PARLEY_TTS", "tts")
    restarted_at = time.monotonic()
    tts_process.start()
    tts_process.wait_ready()

    stored = await client.wait_for(lambda r: r.events("audio.stored"), 120)
    recovered_s = time.monotonic() - restarted_at
    done = client.received.events("reply.done")[0]
    assert stored[0]["message_id"] == reply_id and done["status"] == "complete"
    assert not client.received.events("audio.sentence_failed")
    after = await _settled(stack, "PARLEY_TTS", "tts")
    # Each sentence streamed once, from its first chunk to its end marker.
    starts = Counter(m.sentence_index for m in live if m.message_id == reply_id and m.chunk_seq == 0)
    ends = Counter(m.sentence_index for m in live if m.message_id == reply_id and m.last)
    assert starts == ends == Counter(range(done["sentence_count"])), (starts, ends, before, after_exit, after)
    await nc.close()
    await client.close()
    print(f"drained and exited in {took_s:.1f} s; the restarted worker finished the reply {recovered_s:.1f} s later")
    # Nothing the draining worker had taken is left to come back after its ack wait (its
    # fetch is let finish and a lingering pull's stragglers are handled).
    assert after_exit.ack_pending == 0, after_exit
    _no_redelivery(before, after)


async def test_an_orchestrator_drains_the_reply_it_is_streaming_on_sigterm(stack, llm_process, slow_llm):
    """SIGTERM mid-reply: the orchestrator streams the reply to its end, stores it, acks the
    turn and exits 0. The LLM is asked once; the turn is delivered once."""
    fake_llm = slow_llm(0.12)  # the reply ends well inside the drain timeout
    before = await _settled(stack, "PARLEY_TURNS", "llm")
    text = "Finish your thought before you go"
    client = Client(stack["ws_url"])
    await client.connect(user="fault-llm-term")
    await client.send_json({"type": "text", "text": text})
    await client.wait_for(lambda r: r.events("reply.delta"), 60)
    code, took_s = await _sigterm(llm_process)
    log = llm_process.log_path.read_text()
    assert code == 0, log[-2000:]
    assert "llm draining" in log.rsplit("llm ready", 1)[-1]
    done = await client.wait_for(lambda r: r.events("reply.done"), 30)  # sent before it exited
    assert done[0]["status"] == "complete" and done[0]["text"] == reply_for(text)
    assert (await _queue(stack, "PARLEY_TURNS", "llm")).ack_pending == 0
    fake_llm.token_delay_s = 0.005
    llm_process.start()
    llm_process.wait_ready()

    stored = await client.wait_for(lambda r: r.events("audio.stored"), 120)
    user_id = client.received.events("user.message")[0]["message_id"]
    rows = await _replies(stack, user_id)
    assert [(r["status"], r["text"], r["audio_key"]) for r in rows] == [("complete", reply_for(text), stored[0]["key"])]
    assert _llm_calls(fake_llm, text) == 1
    _no_redelivery(before, await _settled(stack, "PARLEY_TURNS", "llm"))
    print(f"drained the reply and exited in {took_s:.1f} s")
    await client.close()


async def test_storage_drains_the_upload_in_flight_on_sigterm(stack, storage_process, tmp_path):
    """SIGTERM while a reply's WAV is being uploaded: the upload completes, the key is on the
    message, `audio.stored` is sent and the reply is acked before the process exits 0; the
    object is written once."""
    code, _ = await _sigterm(storage_process)  # idle: only the replica below takes the reply
    assert code == 0
    with S3Proxy(stack["env"]["PARLEY_S3_ENDPOINT_URL"], hold_uploads_s=2.0) as s3:
        env = {**stack["env"], "PARLEY_S3_ENDPOINT_URL": s3.url}
        replica = devstack.ServiceProcess("storage", env, tmp_path / "storage-2.log").start()
        try:
            replica.wait_ready()
            client = Client(stack["ws_url"])
            await client.connect(user="fault-storage-term")
            await client.send_json({"type": "text", "text": "Keep my words safe"})
            await asyncio.to_thread(s3.uploading.wait, 120)
            code, took_s = await _sigterm(replica)
        finally:
            replica.stop()
        log = replica.log_path.read_text()
        assert code == 0, log[-2000:]
        assert "storage draining" in log and "handler failed" not in log
        stored = await client.wait_for(lambda r: r.events("audio.stored"), 30)  # sent before it exited
        assert (await _queue(stack, "PARLEY_REPLIES", "storage")).ack_pending == 0
    key = stored[0]["key"]
    puts = [k for k, n in s3.requests.items() if k[0] == "PUT" and "/tts/" in k[1] for _ in range(n)]
    assert len(puts) == 1 and puts[0][1].endswith(key), s3.requests
    user_id = client.received.events("user.message")[0]["message_id"]
    rows = await _replies(stack, user_id)
    assert [(r["status"], r["audio_key"]) for r in rows] == [("complete", key)]
    print(f"finished the upload and exited in {took_s:.1f} s")
    await client.close()


async def test_storage_killed_mid_upload_stores_the_reply_after_redelivery(stack, storage_process, tmp_path):
    """kill -9 of the storage replica while it uploads a reply's WAV: the reply is redelivered
    to the restarted storage service after its ack wait, stored under the same key, recorded
    on the message and announced once."""
    code, _ = await _sigterm(storage_process)  # idle: only the replica below takes the reply
    assert code == 0
    with S3Proxy(stack["env"]["PARLEY_S3_ENDPOINT_URL"], hold_uploads_s=2.0) as s3:
        env = {**stack["env"], "PARLEY_S3_ENDPOINT_URL": s3.url}
        replica = devstack.ServiceProcess("storage", env, tmp_path / "storage-killed.log").start()
        try:
            replica.wait_ready()
            client = Client(stack["ws_url"])
            await client.connect(user="fault-storage-kill")
            await client.send_json({"type": "text", "text": "Remember this even if you fall"})
            await asyncio.to_thread(s3.uploading.wait, 120)
            replica.proc.kill()
            replica.proc.wait()
            killed_at = time.monotonic()
        finally:
            replica.stop()
    storage_process.start()
    storage_process.wait_ready()

    stored = await client.wait_for(lambda r: r.events("audio.stored"), 180)
    recovered_s = time.monotonic() - killed_at
    user_id = client.received.events("user.message")[0]["message_id"]
    reply_id = ids.reply_id(user_id, ids.DEMO_AVATAR_ID)
    assert [s["message_id"] for s in stored] == [reply_id]
    assert not client.received.events("error")
    rows = await _replies(stack, user_id)
    assert [(r["status"], r["audio_key"]) for r in rows] == [("complete", stored[0]["key"])]
    await _settled(stack, "PARLEY_REPLIES", "storage")
    print(f"recovered {recovered_s:.1f} s after the kill")  # the replies' ack wait (60 s) dominates it
    await client.close()


async def test_a_gateway_on_sigterm_closes_1001_and_the_session_resumes_elsewhere(stack, slow_llm, tmp_path):
    """SIGTERM to a gateway holding a live session with a reply streaming: the client gets
    close 1001, resumes through another gateway after its last cursor, and receives the
    reply's final events and its audio URL; the turn is answered and stored once."""
    slow_llm(0.1)
    before = await _settled(stack, "PARLEY_TURNS", "llm")
    leaving = devstack.ServiceProcess("gateway", stack["env"], tmp_path / "leaving.log").start()
    leaving.wait_ready()
    text = "Stay with me through the handover"
    client = Client(f"ws://127.0.0.1:{leaving.port}/v1/ws")
    started = (await client.connect(user="fault-gateway-term", barge_in=False))[0]
    await client.send_json({"type": "text", "text": text, "client_seq": 0})
    await client.wait_for(lambda r: r.events("reply.delta"), 60)
    code, took_s = await _sigterm(leaving)
    assert code == 0, leaving.log_path.read_text()[-2000:]
    await client.wait_for(lambda r: client.close_code is not None, 10)
    assert client.close_code == 1001, (client.close_code, client.close_reason)
    terminated_at = time.monotonic()
    cursors = [e["cursor"] for e in client.received.events() if "cursor" in e]

    again = Client(stack["ws_url"])
    resume = {"session_id": started["session_id"], **({"last_cursor": max(cursors)} if cursors else {})}
    assert (await again.connect(user="fault-gateway-term", resume=resume))[0]["resumed"] is True
    reply_id = client.received.events("reply.started")[0]["message_id"]
    stored = await again.wait_for(lambda r: [e for e in r.events("audio.stored") if e["message_id"] == reply_id], 120)
    recovered_s = time.monotonic() - terminated_at
    seen = client.received.events("reply.done") + again.received.events("reply.done")
    assert [(d["message_id"], d["status"]) for d in seen] == [(reply_id, "complete")]
    user_id = client.received.events("user.message")[0]["message_id"]
    rows = await _replies(stack, user_id)
    assert [(r["id"], r["status"], r["audio_key"]) for r in rows] == [(reply_id, "complete", stored[0]["key"])]
    _no_redelivery(before, await _settled(stack, "PARLEY_TURNS", "llm"))
    print(f"closed its sessions and exited in {took_s:.1f} s; resumed, audio URL {recovered_s:.1f} s after")
    await again.close()
