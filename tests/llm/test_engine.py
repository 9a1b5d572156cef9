"""The orchestrator's engine: sentence cutting and the streaming client against a local server."""

from __future__ import annotations

import pytest

from services.devstack import free_port
from services.llm.engine import (
    ChatClient,
    LLMAuthError,
    LLMBadResponse,
    LLMConnectError,
    LLMServerError,
    LLMTimeout,
    SentenceCutter,
    speakable,
)
from tests.fakes.llm_server import reply_for


def cut(text: str, step: int = 3) -> list[str]:
    c = SentenceCutter("en")
    out: list[str] = []
    for i in range(0, len(text), step):
        out += c.push(text[i : i + step])
    return out + c.flush()


def test_sentences_are_released_as_soon_as_the_next_one_begins():
    c = SentenceCutter("en")
    assert c.push("Hello there! How") == ["Hello there!"]
    assert c.push(" are you") == []
    assert c.flush() == ["How are you"]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("It costs $3.50 today. Fine.", ["It costs $3.50 today.", "Fine."]),
        ("Dr. Smith arrives at 5 p.m. sharp. Bye.", ["Dr. Smith arrives at 5 p.m. sharp.", "Bye."]),
        (
            "Mail a.b@example.org or see example.com/x.html now. Ok.",
            ["Mail a.b@example.org or see example.com/x.html now.", "Ok."],
        ),
    ],
)
def test_never_cut_inside_numbers_abbreviations_addresses(text, expected):
    assert cut(text) == expected


def test_markdown_is_kept_out_of_spoken_text():
    assert speakable("**Bold** and [a link](http://x.y) `code`") == "Bold and a link code"


@pytest.fixture
def client(fake_llm):
    c = ChatClient(fake_llm.base_url, "key", "m", first_token_timeout_s=5, retries=1)
    yield c
    fake_llm.mode = "ok"


async def _collect(client) -> str:
    return "".join([d async for d in client.stream([{"role": "user", "content": "one two"}])])


async def test_streams_the_reply(client, fake_llm):
    assert await _collect(client) == reply_for("one two")
    assert fake_llm.requests[-1]["stream"] is True


@pytest.mark.parametrize(
    "mode,error",
    [
        ("http_401", LLMAuthError),
        ("http_500", LLMServerError),
        ("malformed", LLMBadResponse),
    ],
)
async def test_provider_failures_are_typed(client, fake_llm, mode, error):
    fake_llm.mode = mode
    with pytest.raises(error):
        await _collect(client)


async def test_retries_only_before_the_first_token(client, fake_llm):
    fake_llm.mode = "http_500"
    before = len(fake_llm.requests)
    with pytest.raises(LLMServerError):
        await _collect(client)
    assert len(fake_llm.requests) - before == 2  # first try + one retry
    fake_llm.mode = "malformed"  # fails after tokens: never retried
    before = len(fake_llm.requests)
    with pytest.raises(LLMBadResponse):
        await _collect(client)
    assert len(fake_llm.requests) - before == 1


async def test_unreachable_endpoint():
    c = ChatClient(f"http://127.0.0.1:{free_port()}/v1", None, "m", retries=0)
    with pytest.raises(LLMConnectError):
        await _collect(c)


async def test_first_token_timeout(fake_llm):
    fake_llm.mode = "silent"
    c = ChatClient(fake_llm.base_url, None, "m", first_token_timeout_s=0.3, retries=0)
    try:
        with pytest.raises(LLMTimeout):
            await _collect(c)
    finally:
        fake_llm.mode = "ok"
