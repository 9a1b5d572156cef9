"""A whole stack of its own for fault tests, and what "whole" means after a fault.

Fault tests would disturb every other test, so each fault module runs its own stack (its own
Postgres, S3 stand-in behind a proxy that can fail, fake LLM and the five services) on a NATS
it brings (one server, or a cluster). After a fault, `whole` waits until every turn a client
had accepted has ended in a reply with its audio, or in a failure event the client saw, and
the ledger (ops/ledger.py) balances over those conversations.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ops import devstack, ledger
from ops.cli import seed
from services.common import bus as busmod
from services.common import db, ids
from services.common.settings import ServiceSettings
from tests import client as client_mod
from tests.client import TEST_JWT_SECRET, Client
from tests.fakes.llm_server import FakeLLM
from tests.s3proxy import S3Proxy

WHOLE_DEADLINE_S = 120.0
QUEUES = [
    ("PARLEY_TURNS", "llm"),
    ("PARLEY_TTS", "tts"),
    ("PARLEY_REPLIES", "storage"),
    ("PARLEY_INTERRUPTS", "llm-interrupts"),
]


@contextlib.contextmanager
def own_stack(root: Path, name: str, nats_url: str, model_env: dict, env: dict | None = None) -> Iterator[dict]:
    """The services and every store but NATS, started for one module and removed after it."""
    with contextlib.ExitStack() as undo:
        postgres = None
        given = os.environ.get("DATABASE_URL")
        if given:
            database_url = devstack.fresh_database(given, "parley_test")
        else:
            postgres = devstack.PostgresCluster().start()
            undo.callback(postgres.stop)
            database_url = postgres.url
        db.migrate(database_url)
        stand_in = devstack.S3StandIn().start()
        undo.callback(stand_in.stop)
        s3 = S3Proxy(stand_in.url).start()  # every service reaches the bucket through it
        undo.callback(s3.stop)
        llm = FakeLLM().start()
        undo.callback(llm.stop)
        env = {
            "PARLEY_NATS_URL": nats_url,
            "PARLEY_DATABASE_URL": database_url,
            "PARLEY_S3_ENDPOINT_URL": s3.url,
            "PARLEY_S3_ACCESS_KEY_ID": "test",
            "PARLEY_S3_SECRET_ACCESS_KEY": "test",
            "PARLEY_S3_REGION": "us-east-1",
            "PARLEY_S3_BUCKET": f"parley-{name}",
            "PARLEY_LLM_BASE_URL": llm.base_url,
            "PARLEY_LLM_MODEL": "fake-model",
            "PARLEY_LLM_FIRST_TOKEN_TIMEOUT_S": "10",
            "PARLEY_DRAIN_TIMEOUT_S": "10",
            "PARLEY_LOG_LEVEL": "INFO",
            "PARLEY_AUTH_JWT_SECRET": TEST_JWT_SECRET,
            **model_env,
            **(env or {}),
        }
        settings = ServiceSettings.model_validate(
            {k.removeprefix("PARLEY_").lower(): v for k, v in env.items() if k.startswith("PARLEY_")}
        )
        asyncio.run(seed(settings))
        log_dir = root / "logs"
        procs = devstack.start_services(env, log_dir)
        for p in procs.values():
            undo.callback(p.stop)
        ws_url = f"ws://127.0.0.1:{procs['gateway'].port}/v1/ws"
        print(f"{name} stack: logs in {log_dir}")
        try:
            yield {
                "postgres": postgres,
                "s3": s3,
                "llm": llm,
                "procs": procs,
                "settings": settings,
                "ws_url": ws_url,
                "logs": log_dir,
            }
        finally:
            client_mod.forget_clients_of(ws_url)


def outstanding(client: Client, audio: bool = True) -> list[str]:
    """Turns this client had accepted that have not ended yet, as the client saw them.

    A turn is accepted once the client got `user.message` (typed) or `transcript.final`
    (spoken). It has ended when the client saw its failure event, or its reply's
    `reply.done` and (with `audio`), for a complete spoken reply, `audio.stored` or a failure
    event for the audio (`audio_store_failed`, `audio.sentence_failed`).
    """
    r = client.received
    errors: dict[str, set[str]] = {}
    for e in r.events("error"):
        if e.get("message_id"):
            errors.setdefault(e["message_id"], set()).add(e["code"])
    done = {e["message_id"]: e for e in r.events("reply.done")}
    stored = {e["message_id"] for e in r.events("audio.stored")}
    sentence_failed = {e["message_id"] for e in r.events("audio.sentence_failed")}
    accepted = [e["message_id"] for e in r.events("user.message") + r.events("transcript.final")]
    missing = []
    for user_message in dict.fromkeys(accepted):
        if errors.get(user_message, set()) & ledger.REPLY_FAILURES:
            continue
        reply = ids.reply_id(user_message, ids.DEMO_AVATAR_ID)
        finished = done.get(reply)
        if finished is None:
            missing.append(f"turn {user_message}: no reply.done (nor turn_failed)")
        elif (
            audio
            and finished["status"] == "complete"
            and finished["sentence_count"]
            and reply not in stored
            and reply not in sentence_failed
            and not errors.get(reply, set()) & ledger.AUDIO_FAILURES
        ):
            missing.append(f"reply {reply}: no audio.stored (nor audio_store_failed)")
    return missing


async def ledger_of(infra, clients: list[Client]) -> list[str]:
    conversations = [c.received.events("session.started")[0]["conversation_id"] for c in clients]
    return await ledger.run(infra["settings"], conversations, [c.received.events() for c in clients])


async def whole(
    infra, clients: list[Client], since: float, deadline_s: float = WHOLE_DEADLINE_S, audio: bool = True
) -> float:
    """Wait until every accepted turn has ended (see `outstanding`) and the ledger balances;
    returns the seconds since `since`."""
    deadline = time.monotonic() + deadline_s
    problems: list[str] = []
    while time.monotonic() < deadline:
        problems = [p for c in clients for p in outstanding(c, audio)]
        if not problems:
            try:
                problems = await ledger_of(infra, clients)
            except Exception as exc:  # the infrastructure may still be coming back
                problems = [f"ledger check failed: {type(exc).__name__}: {exc}"]
            if not problems:
                return time.monotonic() - since
        await asyncio.sleep(0.5)
    where = await queues(infra)
    saw = "; ".join([await seen(infra, c) for c in clients if outstanding(c, audio)])
    saw += "; rows: " + await rows_of(infra, [p.split()[1].rstrip(":") for p in problems if p.startswith("turn ")])
    raise AssertionError(
        f"not whole after {deadline_s:.0f} s (logs in {infra['logs']}): {problems}; queues: {where}; seen: {saw}"
    )


async def seen(infra, client: Client) -> str:
    """What a client saw of each reply, and its row, for a failure message."""
    out = []
    pool = await db.create_pool(infra["settings"].database_url)
    try:
        for done in client.received.events("reply.done"):
            mid = done["message_id"]
            kinds = [e["type"] for e in client.received.events() if e.get("message_id") == mid]
            kinds = [k for n, k in enumerate(kinds) if k != "reply.delta" or kinds[n - 1] != k]
            sentences = sorted({a.sentence_index for a in client.received.audio(mid)})
            row = await pool.fetchrow("SELECT status, audio_key FROM messages WHERE id=$1", mid)
            out.append(
                f"{mid}: saw {kinds}, audio of sentences {sentences} of {done['sentence_count']}; row {dict(row or {})}"
            )
    finally:
        await pool.close()
    return "; ".join(out)


async def rows_of(infra, turns: list[str]) -> str:
    """The stored rows of turns that were not answered, and of their replies, for a failure message."""
    pool = await db.create_pool(infra["settings"].database_url)
    try:
        found = []
        for turn in turns:
            rows = await pool.fetch(
                "SELECT id::text, role, status, left(text, 40) AS text, error FROM messages"
                " WHERE id=$1::uuid OR reply_to=$1::uuid",
                turn,
            )
            found.append(f"{turn}: {[dict(r) for r in rows]}")
        return "; ".join(found)
    finally:
        await pool.close()


async def queues(infra) -> str:
    """Where each work queue stands, for a failure message."""
    lines = []
    with contextlib.suppress(Exception):
        bus = await busmod.connect(infra["settings"], "fault-diagnosis")
        try:
            for stream, durable in QUEUES:
                info = await bus.js.consumer_info(stream, durable)
                state = (await bus.js.stream_info(stream)).state
                lines.append(
                    f"{stream}/{durable}: {state.messages} kept, {info.num_pending} pending, "
                    f"{info.num_ack_pending} unacked, {info.num_waiting} pulls waiting, "
                    f"{info.num_redelivered} redelivered"
                )
        finally:
            await bus.close()
    return "; ".join(lines)


async def until(pred, timeout: float) -> None:
    """Poll a condition outside any client (e.g. what the S3 stand-in saw)."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def typed(client: Client, text: str) -> str:
    """Send a typed turn; its user message id once the gateway accepted it."""
    before = len(client.received.events("user.message"))
    await client.send_json({"type": "text", "text": text})
    accepted = await client.wait_for(lambda r: r.events("user.message")[before:], 60)
    return accepted[0]["message_id"]


async def answered(client: Client, user_message: str, timeout: float = WHOLE_DEADLINE_S) -> dict:
    """The reply's `reply.done` and `audio.stored` once both reached the client."""
    reply = ids.reply_id(user_message, ids.DEMO_AVATAR_ID)
    await client.wait_for(
        lambda r: [e for e in r.events("audio.stored") if e["message_id"] == reply]
        and [e for e in r.events("reply.done") if e["message_id"] == reply],
        timeout,
    )
    return next(e for e in client.received.events("reply.done") if e["message_id"] == reply)


async def connect(infra, users: list[str]) -> list[Client]:
    clients = [Client(infra["ws_url"]) for _ in users]
    await asyncio.gather(*(c.connect(user=u) for c, u in zip(clients, users, strict=True)))
    return clients
