"""Fixtures that start real infrastructure on free ports and remove it afterwards.

nats-server (pip, pinned) with JetStream in a temp dir; a throwaway Postgres cluster, or the
server in DATABASE_URL when given (a fresh database is created on it); moto's S3 server over
HTTP; a local OpenAI-compatible fake LLM (exact, checkable replies) and the real local LLM
(llama.cpp's server on SmolLM2); real Whisper tiny.en from its package and a tiny
random-weight XTTS built into the git-ignored model cache; speech made with espeak-ng.
A run that used the shared stack ends with the ledger check over its clients' conversations.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from ops import devstack, ledger
from ops.cli import seed
from ops.localmodels import LlamaServer, gguf_path, local_model_env
from services.common import db
from services.common.settings import ServiceSettings
from tests.client import CLIENTS, TEST_JWT_SECRET, Client
from tests.fakes.llm_server import FakeLLM

ROOT = Path(__file__).resolve().parent.parent
MODEL_CACHE = Path(os.environ.get("PARLEY_MODEL_CACHE", ROOT / ".cache" / "models"))


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory):
    server = devstack.NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def database_url():
    given = os.environ.get("DATABASE_URL")
    if given:
        url = devstack.fresh_database(given, "parley_test")
        db.migrate(url)
        yield url
        return
    cluster = devstack.PostgresCluster().start()
    db.migrate(cluster.url)
    yield cluster.url
    cluster.stop()


@pytest.fixture(scope="session")
def s3():
    server = devstack.S3StandIn().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_llm():
    server = FakeLLM().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def model_env():
    """Real Whisper tiny.en from its package (base is the local stack's default: tiny.en is
    twice as fast on this CPU and as accurate on espeak-ng, docs/benchmarks.md); XTTS tiny
    and random. Partials are off by default on a CPU; the tests check them."""
    return {**local_model_env(MODEL_CACHE, "tiny.en").env, "PARLEY_STT_PARTIAL_INTERVAL_MS": "500"}


@pytest.fixture(scope="module")
def local_llm(tmp_path_factory):
    """llama.cpp's server on the embedded SmolLM2, on a free port (built by scripts/setup)."""
    server = LlamaServer(gguf_path(), tmp_path_factory.mktemp("llm") / "llama-server.log").start()
    yield server
    server.stop()


PHONE_PUBLIC_URL = "https://parley-phone.test"
"""The gateway's public address as Twilio would know it; test calls sign it and come to loopback."""
TWILIO_AUTH_TOKEN = "twilio-auth-token-for-tests"


@pytest.fixture(scope="session")
def base_env(nats_server, database_url, s3, fake_llm):
    return {
        "PARLEY_NATS_URL": nats_server.url,
        "PARLEY_DATABASE_URL": database_url,
        "PARLEY_S3_ENDPOINT_URL": s3.url,
        "PARLEY_S3_ACCESS_KEY_ID": "test",
        "PARLEY_S3_SECRET_ACCESS_KEY": "test",
        "PARLEY_S3_REGION": "us-east-1",
        "PARLEY_S3_BUCKET": "parley-test",
        "PARLEY_LLM_BASE_URL": fake_llm.base_url,
        "PARLEY_LLM_MODEL": "fake-model",
        "PARLEY_LLM_FIRST_TOKEN_TIMEOUT_S": "10",
        "PARLEY_LLM_STALL_TIMEOUT_S": "5",
        "PARLEY_DRAIN_TIMEOUT_S": "10",
        "PARLEY_LOG_LEVEL": "INFO",
        "PARLEY_AUTH_JWT_SECRET": TEST_JWT_SECRET,
        # An edited avatar reaches conversations under way within a second (one test waits on it).
        "PARLEY_LLM_AVATAR_CACHE_S": "1",
        # The tools tests' webhooks listen on loopback (tests/fakes/webhook_server.py).
        "PARLEY_TOOLS_ALLOW_PRIVATE_URLS": "true",
        # Phone calls (tests/e2e/test_phone.py): Twilio signs the public address it calls.
        "PARLEY_PUBLIC_URL": PHONE_PUBLIC_URL,
        "PARLEY_TWILIO_AUTH_TOKEN": TWILIO_AUTH_TOKEN,
    }


@pytest.fixture(scope="session")
def stack_services(base_env, model_env, tmp_path_factory):
    """Every service as its own process against the real infrastructure (tests use `stack`)."""
    env = {**base_env, **model_env}
    settings = ServiceSettings.model_validate(
        {k.removeprefix("PARLEY_").lower(): v for k, v in env.items() if k.startswith("PARLEY_")}
    )
    asyncio.run(seed(settings))
    log_dir = tmp_path_factory.mktemp("logs")
    procs = devstack.start_services(env, log_dir)
    yield {
        "procs": procs,
        "env": env,
        "settings": settings,
        "logs": log_dir,
        "ws_url": f"ws://127.0.0.1:{procs['gateway'].port}/v1/ws",
        "http_url": procs["gateway"].base_url,
    }
    for p in procs.values():
        p.stop()


async def ledger_problems(settings: ServiceSettings, clients: list[Client]) -> list[str]:
    """The ledger over the conversations `clients` started, with the events each one saw."""
    started = [c for c in clients if c.received.events("session.started")]
    conversations = [c.received.events("session.started")[0]["conversation_id"] for c in started]
    return await ledger.run(settings, conversations, [c.received.events() for c in clients])


async def settled_ledger(settings: ServiceSettings, clients: list[Client], deadline_s: float = 30) -> list[str]:
    """Within a deadline the ledger balances (work still in flight may finish); otherwise the
    last problems found."""
    for _ in range(int(deadline_s / 0.5)):
        problems = await ledger_problems(settings, clients)
        if not problems:
            return []
        await asyncio.sleep(0.5)
    return problems


async def settled_conversations(
    settings: ServiceSettings, conversations: list[str], deadline_s: float = 30
) -> list[str]:
    """The ledger over these conversations once it balances within a deadline; otherwise the
    last problems found (for clients other than tests/client.py's: the Realtime API, phone calls)."""
    problems: list[str] = []
    for _ in range(int(deadline_s / 0.5)):
        problems = await ledger.run(settings, conversations)
        if not problems:
            return []
        await asyncio.sleep(0.5)
    return problems


@pytest.fixture(scope="session")
async def closing_ledger(stack_services):
    """After the last test on the shared stack, while its services still run: every conversation
    a test client opened there balances. Session teardown, so it holds whatever ran and in any
    order; a problem is an error of the run (tests/client.py's `forget_clients_of` keeps a
    test's own stacks out)."""
    yield
    clients = [c for c in CLIENTS if c.received.events("session.started")]
    problems = await settled_ledger(stack_services["settings"], clients)
    if problems:
        pytest.fail("the closing ledger check does not balance:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def stack(stack_services, closing_ledger):
    """The shared stack; whoever uses it is held to the closing ledger check."""
    return stack_services


def make_speech(text: str, path: Path, trailing_silence_s: float = 1.5) -> Path:
    """espeak-ng speech as 16 kHz mono PCM16 WAV, with silence after it for end-of-turn."""
    raw = path.with_suffix(".raw.wav")
    espeak = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", text], check=True, capture_output=True)
    subprocess.run(
        ["sox", "-t", "wav", "-", "-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer", str(raw)],
        input=espeak.stdout,
        check=True,
    )
    subprocess.run(["sox", str(raw), str(path), "pad", "0.3", str(trailing_silence_s)], check=True)
    return path


SPOKEN = "Please tell me something nice about the weather today."
"""What `speech_wav` says."""


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory):
    return make_speech(SPOKEN, tmp_path_factory.mktemp("speech") / "hello.wav")


@pytest.fixture(scope="session")
def batch_stt():
    """The stack's Whisper read in this process, one whole file at a time: what the streaming
    path is held against (its segmentation may cost a word, never a sentence)."""
    from services.stt.whisper import WhisperEngine

    return WhisperEngine(local_model_env(MODEL_CACHE, "tiny.en").env["PARLEY_STT_MODEL"], language="en")


def assert_heard(said: str, heard: str, wav: Path, batch_stt) -> None:
    """`heard` (through the stack) is what was said, within the same model's batch WER on the
    same audio plus one word."""
    import soundfile as sf

    from tools.wer import wer

    audio, _ = sf.read(wav, dtype="float32")
    batch = batch_stt.transcribe(audio).text
    bound = wer(said, batch) + 1 / len(said.split())
    assert wer(said, heard) <= bound, f"heard {heard!r} for {said!r} (batch: {batch!r})"
