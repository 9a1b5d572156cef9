"""Property-based fuzzing of the client protocol against the running gateway.

Hypothesis sends random and mutated JSON, garbage text, binary frames of every size and
shape, and control messages out of order and repeated (a second session.start, interrupt,
playback and latency for unknown or real ids, text before session.start). Every answer must
be an error code or close code that docs/protocol.md documents (its tables are parsed here,
so the docs and the code cannot drift apart), no bad frame may close a session, and
afterwards the gateway is alive, ready and answers a typed turn with stored audio.

While fuzzing, the stand-in LLM answers 401: an accepted typed turn then costs a failed reply
(`llm_auth`), not seconds of CPU speech synthesis, so a run takes seconds. The sessions are
tests.client.Client ones, so the closing ledger check covers them too.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path

import asyncpg
import httpx
import msgspec
import pytest
import websockets
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from services.gateway import protocol
from tests.client import Client, token_for

pytestmark = [pytest.mark.e2e, pytest.mark.engine]

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"


def documented() -> tuple[set[str], set[int]]:
    """The error codes and close codes of docs/protocol.md's Errors section."""
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    codes: set[str] = set()
    closes: set[int] = set()
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith("| code "):
            continue
        first = line.split("|")[1].strip()
        if first.isdigit():
            closes.add(int(first))
        else:
            codes |= set(re.findall(r"`([a-z_]+)`", first))
    return codes, closes


CODES, CLOSES = documented()
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_every_error_and_close_code_in_the_code_is_documented():
    """What the services can send a client of protocol v1 is in docs/protocol.md's tables."""
    sent: set[str] = set()
    for path in SERVICES.rglob("*.py"):
        if "realtime" in path.relative_to(SERVICES).parts:
            continue  # the OpenAI Realtime wire speaks that protocol's own error codes
        text = path.read_text()
        sent |= set(re.findall(r'\.error\(\s*"([a-z_]+)"', text))  # the gateway's own error events
        for call in re.findall(r"ErrorEvent\((.*?)\)", text, re.DOTALL):  # the services' error events
            sent |= set(re.findall(r'code="([a-z_]+)"', call))
    for path in (SERVICES / "gateway").glob("*.py"):
        for line in re.findall(r"^\s+code = (.*)$", path.read_text(), re.MULTILINE):  # chosen at run time
            sent |= set(re.findall(r'"([a-z_]+)"', line))
    llm = (SERVICES / "llm" / "client.py").read_text()
    sent |= set(re.findall(r'^\s+code = "([a-z_]+)"', llm, re.MULTILINE))  # each LLM failure's code
    assert {"malformed_json", "turn_failed", "llm_auth", "no_capacity"} <= sent, "the patterns no longer match"
    assert sent - CODES == set()
    constants = {v for k, v in vars(protocol).items() if k.startswith("CLOSE_")}
    assert constants - CLOSES == set()
    assert {1000, 4400, 4401, 4403, 4404, 4406, 4408, 4409, 4410, 4429} <= CLOSES


# --- what is sent ---------------------------------------------------------------------------

BIG_INTS = st.sampled_from([2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30])
INTS = st.one_of(st.integers(-3, 12), st.integers(), BIG_INTS)
NUMBERS = st.one_of(INTS, st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1e308, -0.0, 5e-324]))
TEXTS = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "   ", "\x00", "a\x00b", "\ud800", "\u202e\u200b", "💬" * 50, "x" * 4001, " \n\t "]),
)
IDS = st.one_of(
    st.uuids().map(str),
    st.text(max_size=40),
    st.sampled_from(["", "00000000-0000-0000-0000-000000000000", "not-a-uuid", "../../etc", "*", ">"]),
)
LEAVES = st.one_of(st.none(), st.booleans(), INTS, st.floats(allow_nan=False, allow_infinity=False), TEXTS)
ANY_JSON = st.recursive(
    LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)


def _maybe(values):
    """A field's own kind of value, or any JSON at all."""
    return st.one_of(values, ANY_JSON)


CLIENT_SEQS = st.one_of(st.integers(-(2**40), 2**40), ANY_JSON.filter(lambda v: not isinstance(v, int)))
"""Out of 0..2**31-1 a client_seq is refused (messages.turn_seq is int4)."""

MESSAGES = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("text"), "text": _maybe(TEXTS)},
        optional={"client_seq": CLIENT_SEQS},
    ),
    st.fixed_dictionaries(
        {"type": st.just("interrupt")},
        optional={"message_id": _maybe(IDS), "sentence_index": _maybe(INTS), "offset_ms": _maybe(INTS)},
    ),
    st.fixed_dictionaries(
        {"type": st.just("playback"), "message_id": _maybe(IDS), "played_ms": _maybe(NUMBERS)},
        optional={"ended": _maybe(st.booleans())},
    ),
    st.fixed_dictionaries(
        {"type": st.just("latency"), "message_id": _maybe(IDS), "voice_to_voice_ms": _maybe(NUMBERS)}
    ),
    st.fixed_dictionaries(
        {"type": st.just("session.start")},
        optional={
            "protocol": _maybe(INTS),
            "token": _maybe(TEXTS),
            "conversation_id": _maybe(IDS),
            "avatar_ids": _maybe(st.lists(IDS, max_size=3)),
            "resume": _maybe(st.fixed_dictionaries({"session_id": IDS}, optional={"last_cursor": INTS})),
            "sample_rate": _maybe(INTS),
            "end_of_turn_ms": _maybe(INTS),
        },
    ),
    st.fixed_dictionaries({"type": st.just("session.end")}),
    st.fixed_dictionaries({"type": st.one_of(st.text(max_size=20), ANY_JSON)}),
    st.dictionaries(st.text(max_size=12), ANY_JSON, max_size=5),
)


def _with_extra_keys(msg: dict, extra: dict) -> dict:
    return {**extra, **msg}


JSON_FRAMES = st.one_of(
    st.builds(_with_extra_keys, MESSAGES, st.dictionaries(st.text(max_size=8), ANY_JSON, max_size=2)),
    ANY_JSON,
).map(json.dumps)
TEXT_FRAMES = st.one_of(
    JSON_FRAMES,
    st.text(max_size=80),
    st.builds(lambda s, n: s[:n], JSON_FRAMES, st.integers(0, 40)),  # truncated JSON
)
SIZES = st.one_of(
    st.integers(0, 64),
    st.sampled_from([1, 2, 3, 320, 640, 31_999, 32_000, 32_001, 64_000, 64_001]),
    st.integers(0, 70_000),
)
BINARY_FRAMES = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda n, fill: bytes([fill]) * n, SIZES, st.integers(0, 255)),
    st.builds(lambda n, seed: (seed.to_bytes(4, "little") * (n // 4 + 1))[:n], SIZES, st.integers(0, 2**32 - 1)),
)
FRAMES = st.one_of(TEXT_FRAMES, TEXT_FRAMES, BINARY_FRAMES)


# --- running it -----------------------------------------------------------------------------


CRASHES = ("Traceback", "Exception in ASGI application", "handler failed on")
"""What a service logs when bad input got further than a documented refusal."""


@pytest.fixture(scope="module")
def logs_from_here(stack):
    """Each service's log from the start of this module on (earlier tests break things on purpose)."""
    offsets = {name: (stack["logs"] / f"{name}.log").stat().st_size for name in stack["procs"]}

    def read() -> dict[str, str]:
        out = {}
        for name, offset in offsets.items():
            with open(stack["logs"] / f"{name}.log", "rb") as f:
                f.seek(offset)
                out[name] = f.read().decode(errors="replace")
        return out

    return read


@pytest.fixture
def llm_refusing(fake_llm):
    fake_llm.mode = "http_401"
    yield
    fake_llm.mode = "ok"


def _ends_session(frame: str | bytes) -> bool:
    if isinstance(frame, bytes):
        return False
    try:
        return isinstance(protocol.decoder.decode(frame), protocol.End)
    except msgspec.MsgspecError:
        return False


async def _answered(client: Client, frames: list[str | bytes]) -> None:
    """Send the frames, then a sentinel whose error says everything before it was handled;
    every error is documented, and only a session.end closes the session (with 1000)."""
    for frame in frames:
        try:
            await client.send_raw(frame)
        except websockets.ConnectionClosed:
            break
    sentinel = f"sentinel-{uuid.uuid4()}"
    ends = any(_ends_session(f) for f in frames)
    try:
        await client.send_raw(json.dumps({"type": sentinel}))
    except websockets.ConnectionClosed:
        pass

    def settled(r) -> bool:
        return client.close_code is not None or any(sentinel in e.get("message", "") for e in r.events("error"))

    await client.wait_for(lambda r: client.close_code is not None if ends else settled(r), 30)
    codes = {e["code"] for e in client.received.events("error")}
    assert codes <= CODES, f"undocumented error codes {codes - CODES} for {frames!r}"
    if client.close_code is not None:
        assert client.close_code in CLOSES, f"undocumented close {client.close_code} for {frames!r}"
        assert ends and client.close_code == 1000, f"closed {client.close_code} {client.close_reason} by {frames!r}"


@FUZZ
@given(frames=st.lists(FRAMES, min_size=1, max_size=8))
@example(frames=['{"type": "text", "text": "a\\u0000b"}'])  # found: a turn no attempt could store (fixed in db.py)
@example(frames=['{"type": "session.start"}', '{"type": "session.end"}', b"\x01"])
@example(frames=[b"\x00" * 32_001, b"\x00" * 3, b""])
async def test_random_and_mutated_frames_get_documented_answers(stack, logs_from_here, llm_refusing, frames):
    client = Client(stack["ws_url"])
    await client.connect(user="fuzzer")
    try:
        await _answered(client, frames)
    finally:
        await client.close()


@FUZZ
@given(first=FRAMES)
async def test_anything_but_a_session_start_first_is_closed_with_a_documented_code(stack, llm_refusing, first):
    async with websockets.connect(stack["ws_url"], max_size=None) as ws:
        await ws.send(first)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await ws.recv()
    code = closed.value.rcvd.code if closed.value.rcvd else None
    assert code in CLOSES, f"undocumented close {code} for {first!r}"
    try:
        is_start = isinstance(first, str) and isinstance(protocol.decoder.decode(first), protocol.Start)
    except msgspec.MsgspecError:
        is_start = False
    if not is_start:
        assert code == protocol.CLOSE_BAD_START


START_FIELDS = {
    "protocol": _maybe(INTS),
    "conversation_id": _maybe(IDS),
    "avatar_ids": _maybe(st.lists(IDS, max_size=3)),
    "language": _maybe(TEXTS),
    "end_of_turn_ms": _maybe(INTS),
    "sample_rate": _maybe(st.sampled_from([16000, 8000, 48000, 0, -1])),
    "barge_in": _maybe(st.booleans()),
    "resume": _maybe(st.fixed_dictionaries({"session_id": IDS}, optional={"last_cursor": INTS})),
}


@FUZZ
@given(start=st.fixed_dictionaries({}, optional=START_FIELDS))
@example(start={"language": "a\x00"})  # found: the session record could not be stored, the socket dropped (1006)
async def test_a_mutated_session_start_is_started_or_refused_with_a_documented_code(stack, llm_refusing, start):
    """With a valid credential: the session starts, or closes with a documented code and reason."""
    async with websockets.connect(stack["ws_url"], max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.start", "token": token_for("fuzzer-start"), **start}))
        try:
            first = json.loads(await ws.recv())
        except websockets.ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
            assert code in CLOSES and code >= 4000, f"undocumented close {code} for {start!r}"
            assert closed.rcvd.reason, f"close {code} without a reason for {start!r}"
            return
        assert first["type"] == "session.started", first
        await ws.send(json.dumps({"type": "session.end"}))


@pytest.fixture(scope="module")
async def answered_session(stack, fake_llm):
    """A session with one whole reply (audio and all), whose ids the control fuzzing reuses."""
    client = Client(stack["ws_url"])
    started = (await client.connect(user="fuzzer-control"))[0]
    await client.send_json({"type": "text", "text": "Tell me something"})
    await client.wait_for(lambda r: r.events("audio.stored"), 120)
    reply = client.received.events("reply.started")[0]
    yield client, {**started, "reply_id": reply["message_id"], "user_message_id": reply["user_message_id"]}
    await client.close()


async def _reply_row(stack, reply_id: str) -> tuple[str, str]:
    conn = await asyncpg.connect(stack["env"]["PARLEY_DATABASE_URL"])
    try:
        row = await conn.fetchrow("SELECT status, text FROM messages WHERE id=$1::uuid", reply_id)
    finally:
        await conn.close()
    return row["status"], row["text"]


async def test_an_interrupt_cannot_touch_another_users_reply(stack, answered_session):
    _, ids = answered_session
    before = await _reply_row(stack, ids["reply_id"])
    intruder = Client(stack["ws_url"])
    await intruder.connect(user="fuzzer-intruder")
    try:
        await intruder.send_json({"type": "interrupt", "message_id": ids["reply_id"], "sentence_index": 0})
        for _ in range(20):  # the interruption work queue is drained within this deadline
            assert await _reply_row(stack, ids["reply_id"]) == before
            await asyncio.sleep(0.5)
        assert not intruder.received.events("reply.interrupted")
    finally:
        await intruder.close()


def _control(ids: dict):
    known = st.sampled_from([ids["reply_id"], ids["user_message_id"], ids["conversation_id"]])
    any_id = st.one_of(known, IDS)
    return st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("interrupt")},
            optional={"message_id": any_id, "sentence_index": INTS, "offset_ms": INTS},
        ),
        st.fixed_dictionaries(
            {"type": st.just("playback"), "message_id": any_id, "played_ms": NUMBERS},
            optional={"ended": st.booleans()},
        ),
        st.fixed_dictionaries({"type": st.just("latency"), "message_id": any_id, "voice_to_voice_ms": NUMBERS}),
        st.fixed_dictionaries(
            {"type": st.just("session.start"), "token": st.just(token_for("fuzzer-control"))},
            optional={"conversation_id": st.one_of(st.just(ids["conversation_id"]), IDS)},
        ),
        st.fixed_dictionaries({"type": st.just("text"), "text": st.sampled_from(["", "  ", "x" * 4001])}),
    ).map(json.dumps)


@FUZZ
@given(data=st.data())
async def test_control_messages_out_of_order_and_repeated_on_a_live_session(
    stack, llm_refusing, answered_session, data
):
    client, ids = answered_session
    frames = data.draw(st.lists(_control(ids), min_size=1, max_size=10))
    await _answered(client, frames)


async def test_the_gateway_is_unharmed_and_still_answers(stack, logs_from_here, answered_session):
    for name, proc in stack["procs"].items():
        assert proc.proc.poll() is None, f"{name} exited during fuzzing"
    async with httpx.AsyncClient(base_url=stack["http_url"], trust_env=False) as http:
        assert (await http.get("/readyz")).status_code == 200
    for name, log in logs_from_here().items():
        crashes = [line for line in log.splitlines() if any(c in line for c in CRASHES)]
        assert crashes == [], f"{name}: {crashes[:5]}"
    fresh = Client(stack["ws_url"])
    await fresh.connect(user="fuzzer")
    await fresh.send_json({"type": "text", "text": "Are you still there?"})
    await fresh.wait_for(lambda r: r.events("audio.stored"), 120)
    assert not fresh.received.events("error")
    await fresh.close()


async def test_a_client_seq_out_of_range_is_refused_at_the_gateway(stack, llm_refusing):
    client = Client(stack["ws_url"])
    await client.connect(user="fuzzer")
    try:
        await client.send_json({"type": "text", "text": "Count on me", "client_seq": 2**31})
        errors = await client.wait_for(
            lambda r: [e for e in r.events("error") if e["code"] in ("unknown_message", "turn_failed")], 60
        )
        assert errors[0]["code"] == "unknown_message"
        assert not client.received.events("user.message")
    finally:
        await client.close()
