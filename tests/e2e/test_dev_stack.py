"""README's first command, `parley dev`, as a newcomer runs it: real models offline, a real
conversation, and on bad input a clear reason, a non-zero exit and nothing left running."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ops import devstack
from ops.localmodels import whisper_path
from services.stt.whisper import WhisperEngine
from tests.client import Client, forget_clients_of
from tests.conftest import MODEL_CACHE, SPOKEN, assert_heard, make_speech

pytestmark = [pytest.mark.e2e, pytest.mark.engine]

ROOT = Path(__file__).resolve().parents[2]


def _dev(state: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_") and k != "DATABASE_URL"}
    return subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "dev", "--state-dir", str(state), *args],
        cwd=ROOT,
        env={**clean, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture
def state():
    """A state folder as `parley dev` makes it (.cache/dev): one the postgres user can enter,
    which pytest's own temporary folders (mode 0700 under /tmp/pytest-of-root) are not."""
    path = Path(tempfile.mkdtemp(prefix="parley-dev-"))
    path.chmod(0o755)
    yield path / "state"
    shutil.rmtree(path, ignore_errors=True)


def _running_under(path: Path) -> list[str]:
    """Command lines of live processes that name `path` (nats-server, Postgres, llama-server)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmd and "pytest" not in cmd:
            found.append(cmd)
    return found


def test_a_taken_port_is_named_and_nothing_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        dev = _dev(tmp_path, "--port", str(port))
        out, _ = dev.communicate(timeout=60)
    assert dev.returncode == 2
    assert f"port {port} is taken" in out
    assert not (tmp_path / "nats").exists()


def test_a_folder_that_is_no_whisper_model_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    dev = _dev(
        tmp_path / "state", "--port", str(devstack.free_port()), env={"PARLEY_STT_MODEL": str(tmp_path / "empty")}
    )
    out, _ = dev.communicate(timeout=60)
    assert dev.returncode == 2
    assert "is not a faster-whisper model folder: no model.bin" in out


def test_an_llm_server_that_fails_stops_what_had_started(tmp_path, state):
    broken = tmp_path / "llama-server"
    broken.write_text("#!/bin/sh\necho 'error: this CPU cannot run me' >&2\nexit 3\n")
    broken.chmod(0o755)
    dev = _dev(state, "--port", str(devstack.free_port()), env={"PARLEY_LLAMA_SERVER": str(broken)})
    out, _ = dev.communicate(timeout=120)
    assert dev.returncode == 1
    assert "the local LLM server exited with 3" in out and "this CPU cannot run me" in out
    assert (state / "nats" / "nats.conf").exists(), "the failure came after the bus had started"
    assert _running_under(state) == []


async def test_the_first_command_holds_a_real_conversation(tmp_path, state):
    """Default models: real Whisper base, the real local LLM; a typed and a spoken turn."""
    port = devstack.free_port()
    dev = _dev(state, "--port", str(port))
    lines = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = dev.stdout.readline()
            assert line, f"parley dev ended early: {''.join(lines)}"
            lines.append(line)
            if line.startswith("Parley is up"):
                break
        printed = "".join(lines)
        assert re.search(r"STT +Whisper base, real weights", printed), printed
        assert re.search(r"LLM +SmolLM2-135M-Instruct\.Q4_1, real weights", printed), printed
        assert "TTS  XTTS-v2 code, tiny random weights" in printed
        # Smart turn taking has both its signals: the turn model and a words scorer of its own.
        assert "EOT  Smart Turn v3.2, real weights" in printed and "EOT  words scored by" in printed
        token = re.search(r"#token=(\S+)", printed).group(1)

        client = Client(f"ws://127.0.0.1:{port}/v1/ws")
        await client.connect(token=token)
        await client.send_json({"type": "text", "text": "Hello Ada, what can you do?"})
        done = await client.wait_for(lambda r: r.events("reply.done"), 120)
        assert done[0]["status"] == "complete" and len(done[0]["text"].split()) >= 2, done
        await client.wait_for(lambda r: r.events("audio.stored"), 120)

        spoken = make_speech(SPOKEN, tmp_path / "spoken.wav")
        await client.stream_wav(spoken)
        (final,) = await client.wait_for(lambda r: r.events("transcript.final"), 120)
        base = WhisperEngine(str(whisper_path("base", MODEL_CACHE)), language="en")
        assert_heard(SPOKEN, final["text"], spoken, base)
        await client.wait_for(lambda r: len(r.events("reply.done")) == 2, 120)
        assert client.received.events("reply.done")[1]["status"] == "complete"
        await client.close()
    finally:
        forget_clients_of(f"ws://127.0.0.1:{port}/v1/ws")
        dev.send_signal(signal.SIGINT)
        rest, _ = dev.communicate(timeout=120)
    assert dev.returncode == 0, "".join(lines) + rest
    assert _running_under(state) == []
    stt_log = (state / "logs" / "stt.log").read_text()
    assert "lacks its signals" not in stt_log and "the sound signal is off" not in stt_log, stt_log[-2000:]
