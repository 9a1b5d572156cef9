"""Per-service NATS credentials, proven against the real nats-server.

The server runs deploy/nats/nats.conf itself (the file docker compose mounts, which includes
deploy/nats/parley-auth.conf, the file the Helm values include), only moved onto free ports
and a temp store. Every service runs as its own NATS user through a whole conversation:
speech, typed text, an interruption, a new avatar's voice and signed audio URLs, and the
server logs no permission violation. Then each service's user is shown to be refused, by
the server, what its allow lists leave out: the refused message reaches no one, and a
refused subscription receives nothing.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from pathlib import Path

import httpx
import nats
import pytest

from ops import devstack, ledger
from ops.cli import seed
from services.common.settings import ServiceSettings
from tests.client import Client, auth_headers

pytestmark = [pytest.mark.e2e, pytest.mark.engine]

ROOT = Path(__file__).resolve().parents[2]
NATS_CONF = ROOT / "deploy" / "nats" / "nats.conf"
USERS = ("gateway", "stt", "llm", "tts", "storage", "ops")


@pytest.fixture(scope="module")
def passwords() -> dict[str, str]:
    # Hex, as deploy/k8s/README.md and .env.example make them: nats-server reads a variable
    # starting with "-" as a number and refuses the config (token_urlsafe did 1 run in 11).
    return {user: secrets.token_hex(24) for user in USERS}


@pytest.fixture(scope="module")
def locked_nats(tmp_path_factory, passwords):
    env = {f"NATS_{user.upper()}_PASSWORD": pw for user, pw in passwords.items()}
    server = devstack.NatsServer(tmp_path_factory.mktemp("nats-auth"), config=NATS_CONF, env=env).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def locked_stack(locked_nats, passwords, base_env, model_env, tmp_path_factory):
    """Every service as its own process and its own NATS user; the database and bucket are the
    main stack's, so the ledger check at the end of the suite covers these conversations too."""
    env = {**base_env, **model_env, "PARLEY_NATS_URL": locked_nats.url}
    settings = ServiceSettings.model_validate(
        {k.removeprefix("PARLEY_").lower(): v for k, v in env.items() if k.startswith("PARLEY_")}
    )
    asyncio.run(seed(settings))
    log_dir = tmp_path_factory.mktemp("locked-logs")
    procs: dict[str, devstack.ServiceProcess] = {}
    try:
        for name in devstack.SERVICES:
            own = {**env, "PARLEY_NATS_USER": name, "PARLEY_NATS_PASSWORD": passwords[name]}
            procs[name] = devstack.ServiceProcess(name, own, log_dir / f"{name}.log").start()
        for proc in procs.values():
            proc.wait_ready()
        yield {
            "procs": procs,
            "settings": settings,
            "ws_url": f"ws://127.0.0.1:{procs['gateway'].port}/v1/ws",
            "http_url": procs["gateway"].base_url,
        }
    finally:
        for proc in procs.values():
            proc.stop()


def _violations(server: devstack.NatsServer) -> list[str]:
    return [line for line in (server.store_dir / "nats.log").read_text().splitlines() if "Violation" in line]


async def _connect(server: devstack.NatsServer, user: str, password: str) -> tuple[nats.NATS, asyncio.Queue]:
    """A client as `user`, and the errors the server sends it (nats-py hands a permissions
    violation to the error callback and keeps the connection)."""
    errors: asyncio.Queue = asyncio.Queue()

    async def on_error(exc: Exception) -> None:
        await errors.put(str(exc))

    nc = await nats.connect(
        server.url,
        user=user,
        password=password,
        error_cb=on_error,
        allow_reconnect=False,
        inbox_prefix=f"_INBOX.{user}",
    )
    return nc, errors


async def test_a_whole_conversation_runs_under_per_service_credentials(
    locked_stack, locked_nats, passwords, speech_wav, tmp_path
):
    client = Client(locked_stack["ws_url"])
    started = (await client.connect(user="nats-perm"))[0]
    assert started["speech_input"] is True  # an STT worker took the session over the bus

    await client.send_json({"type": "text", "text": "Tell me a story"})
    await client.wait_for(lambda r: r.events("audio.stored"), 120)
    reply_id = client.received.events("reply.started")[0]["message_id"]
    await client.send_json({"type": "interrupt", "message_id": reply_id, "sentence_index": 0, "offset_ms": 200})
    await client.wait_for(lambda r: r.events("reply.interrupted"), 30)

    await client.stream_wav(speech_wav)
    await client.wait_for(lambda r: r.events("transcript.final"), 60)
    await client.wait_for(lambda r: len(r.events("audio.stored")) == 2, 180)
    assert not client.received.events("error"), client.received.events("error")

    voice = tmp_path / "voice.wav"
    subprocess.run(["sox", "-n", "-r", "22050", "-c", "1", str(voice), "synth", "8", "sine", "220"], check=True)
    async with httpx.AsyncClient(base_url=locked_stack["http_url"], trust_env=False, timeout=60) as http:
        made = await http.post(
            "/v1/avatars",
            data={"name": "Locke", "language": "en"},
            files={"voice": ("voice.wav", voice.read_bytes(), "audio/wav")},
            headers=auth_headers("nats-perm"),
        )
        assert made.status_code == 201, made.text  # storage kept the voice, asked over the bus
        history = await http.get(
            f"/v1/conversations/{started['conversation_id']}/messages", headers=auth_headers("nats-perm")
        )
    replies = [m for m in history.json()["items"] if m["role"] == "avatar"]
    assert len(replies) == 2 and all(m["audio_url"] for m in replies)  # signed by storage over the bus
    await client.close()

    settings = locked_stack["settings"].model_copy(update={"nats_user": "ops", "nats_password": passwords["ops"]})
    assert await ledger.run(settings, [started["conversation_id"]], [client.received.events()]) == []
    assert _violations(locked_nats) == []


async def _drain(sub, quiet_s: float = 0.5, at_most: int = 20) -> list[bytes]:
    """What the subscription received until it was quiet for `quiet_s` (or `at_most` messages)."""
    got = []
    while len(got) < at_most:
        try:
            got.append((await sub.next_msg(timeout=quiet_s)).data)
        except nats.errors.TimeoutError:
            break
    return got


# (user, publish subject or None, subscribe subject or None): each outside the user's lists.
REFUSED = [
    ("tts", "parley.turn.c1", None),  # a synthesiser forging a user turn
    ("tts", None, "parley.audio.>"),  # ...or listening to every microphone
    ("stt", "parley.tts.c1", None),
    ("stt", "$JS.API.STREAM.DELETE.PARLEY_EVENTS", None),
    ("llm", "parley.audio.c1", None),
    ("llm", None, "parley.audio.*"),
    ("llm", "parley.ctl.c1.end", None),  # an orchestrator ending a person's session
    ("tts", "parley.ctl.c1.cancel", None),
    ("stt", None, "parley.ctl.c1.cancel"),  # control reaches only those who act on its kind
    ("storage", "parley.turn.c1", None),
    ("storage", None, "parley.live.c1.>"),
    ("storage", "$JS.API.STREAM.PURGE.PARLEY_REPLIES", None),
    ("gateway", "parley.event.c1.reply_done", None),  # a gateway forging a final event
    ("gateway", "parley.tts.c1", None),
    ("gateway", None, "_INBOX.storage.>"),  # ...or reading another service's replies
    ("gateway", "$JS.API.CONSUMER.MSG.NEXT.PARLEY_TTS.tts", None),  # ...or pulling another's work
]


@pytest.mark.parametrize(
    "user,publish,subscribe", REFUSED, ids=[f"{u}-{'pub' if p else 'sub'}-{p or s}" for u, p, s in REFUSED]
)
async def test_a_service_cannot_step_outside_its_allow_list(locked_nats, passwords, user, publish, subscribe):
    nc, errors = await _connect(locked_nats, user, passwords[user])
    ops, _ = await _connect(locked_nats, "ops", passwords["ops"])
    try:
        if publish:
            seen = await ops.subscribe(publish)
            await ops.flush()
            await nc.publish(publish, b"forged")
            await nc.flush()
            error = await asyncio.wait_for(errors.get(), 5)
            assert f'permissions violation for publish to "{publish}"'.lower() in error.lower()
            # Nobody received it (the services themselves may be using the subject meanwhile).
            assert b"forged" not in await _drain(seen)
        else:
            sub = await nc.subscribe(subscribe)
            await nc.flush()
            error = await asyncio.wait_for(errors.get(), 5)
            assert f'permissions violation for subscription to "{subscribe}"'.lower() in error.lower()
            probe = subscribe.replace(">", "x").replace("*", "x")
            await ops.publish(probe, b"secret")
            await ops.flush()
            assert await _drain(sub) == []  # it hears nothing
        assert nc.is_connected  # refused, not disconnected: the service goes on with its own work
    finally:
        await nc.close()
        await ops.close()


@pytest.mark.parametrize("password", [None, "wrong"], ids=["no-credentials", "wrong-password"])
async def test_a_client_without_valid_credentials_is_refused(locked_nats, password):
    with pytest.raises(nats.errors.Error) as refused:
        await nats.connect(
            locked_nats.url,
            user="gateway" if password else None,
            password=password,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=2,
        )
    assert "authorization violation" in str(refused.value).lower()
