"""The orchestrator's LLM client against a local server, and sentence cutting."""

from __future__ import annotations

import pytest

from ops.devstack import free_port
from services.llm.client import (
    ChatClient,
    LLMAuthError,
    LLMBadResponse,
    LLMConnectError,
    LLMRateLimited,
    LLMServerError,
    LLMTimeout,
    RateLimits,
    TokenUsage,
    rate_limits,
)
from services.llm.sentences import SentenceCutter, speakable
from tests.fakes.llm_server import reply_for


def cut(text: str, step: int = 3, first_clause_words: int = 0) -> list[str]:
    """Feed the text in small deltas, as an LLM stream would."""
    c = SentenceCutter("en", first_clause_words=first_clause_words)
    out: list[str] = []
    for i in range(0, len(text), step):
        out += c.push(text[i : i + step])
    return out + c.flush()


def test_sentences_are_released_as_soon_as_the_next_one_begins():
    c = SentenceCutter("en", first_clause_words=0)
    assert c.push("Hello there! How") == ["Hello there!"]
    assert c.push(" are you") == []
    assert c.flush() == ["How are you"]


HARD_CASES = [
    ("It costs $3.50 today. Fine.", ["It costs $3.50 today.", "Fine."]),
    ("Pi is 3.14159 roughly. Next one.", ["Pi is 3.14159 roughly.", "Next one."]),
    ("Mr. and Mrs. Smith paid $1,234.56 total. Next one.", ["Mr. and Mrs. Smith paid $1,234.56 total.", "Next one."]),
    ("Dr. Smith arrives at 5 p.m. sharp. Bye.", ["Dr. Smith arrives at 5 p.m. sharp.", "Bye."]),
    ("It is 10 a.m. on Jan. 5th. Next one.", ["It is 10 a.m. on Jan. 5th.", "Next one."]),
    ("The U.S. economy grew 2.5% in Q3. Next one.", ["The U.S. economy grew 2.5% in Q3.", "Next one."]),
    ("I like fruit, e.g. apples and pears. Next one.", ["I like fruit, e.g. apples and pears.", "Next one."]),
    ("Version 2.0.1 is out! Next one.", ["Version 2.0.1 is out!", "Next one."]),
    ("Call 555.123.4567 tomorrow. Next one.", ["Call 555.123.4567 tomorrow.", "Next one."]),
    (
        "Visit https://example.com/a.html?b=1 today. Next one.",
        ["Visit https://example.com/a.html?b=1 today.", "Next one."],
    ),
    ("Go to www.site.org/q?x=1! Next one.", ["Go to www.site.org/q?x=1!", "Next one."]),
    ("See example.com/x. Next one.", ["See example.com/x.", "Next one."]),
    ("Mail a.b@example.org now. Next one.", ["Mail a.b@example.org now.", "Next one."]),
    ("Wait... what? Yes.", ["Wait... what?", "Yes."]),
    ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
]


@pytest.mark.parametrize("text,expected", HARD_CASES)
@pytest.mark.parametrize("step", [1, 3, 7])
def test_never_cut_inside_numbers_abbreviations_addresses(text, expected, step):
    assert cut(text, step) == expected


def test_a_mark_inside_a_sentence_is_put_to_pysbd_once():
    """After "e.g. " the sentence goes on for many tokens; only a new mark segments again."""
    c = SentenceCutter("en", first_clause_words=0)
    calls = []
    segment = c._seg.segment
    c._seg.segment = lambda text: calls.append(text) or segment(text)
    out = []
    for word in "I like fruit, e.g. apples and pears and plums and figs. Next one".split(" "):
        out += c.push(word + " ")
    assert out == ["I like fruit, e.g. apples and pears and plums and figs."]
    assert len(calls) == 2  # at "e.g. apples" and at "figs. Next"


def test_the_first_piece_may_be_a_clause_later_ones_are_sentences():
    text = "Well, I think that the weather, honestly, is great today. Yes, 3,500 people came, and more."
    assert cut(text, first_clause_words=4) == [
        "Well, I think that the weather,",
        "honestly, is great today.",
        "Yes, 3,500 people came, and more.",
    ]
    assert cut("Yes, 3,500 people came today. Fine.", first_clause_words=4) == [
        "Yes, 3,500 people came today.",
        "Fine.",
    ]


def test_markdown_and_emoji_are_kept_out_of_spoken_text():
    assert speakable("**Bold** and [a link](http://x.y) `code` 😀") == "Bold and a link code"
    assert speakable("- first item\n2. second item") == "first item second item"


@pytest.fixture
def client(fake_llm):
    c = ChatClient(fake_llm.base_url, "key", "m", first_token_timeout_s=5, retries=1)
    yield c
    fake_llm.mode = "ok"


async def _collect(client) -> str:
    return "".join([d async for d in client.stream([{"role": "user", "content": "one two"}]) if isinstance(d, str)])


async def test_streams_the_reply_and_its_token_usage(client, fake_llm):
    deltas = [d async for d in client.stream([{"role": "user", "content": "one two"}])]
    assert "".join(d for d in deltas if isinstance(d, str)) == reply_for("one two")
    assert deltas[-1] == TokenUsage(2, len(reply_for("one two").split()))
    assert fake_llm.requests[-1]["stream"] is True
    assert fake_llm.requests[-1]["stream_options"] == {"include_usage": True}


async def test_the_endpoints_rate_limit_headers_come_first(client, fake_llm):
    deltas = [d async for d in client.stream([{"role": "user", "content": "one two"}])]
    assert deltas[0] == RateLimits(
        (
            {"name": "requests", "limit": 500, "remaining": 499, "reset_seconds": 0.12},
            {"name": "tokens", "limit": 30000, "remaining": 29950, "reset_seconds": 66.5},
        )
    )


def test_rate_limit_headers_are_read_as_the_providers_write_them():
    headers = {
        "x-ratelimit-remaining-tokens": "10",
        "x-ratelimit-reset-tokens": "1h2m3s",
        "x-ratelimit-limit-requests": "x",
    }
    assert rate_limits(headers) == RateLimits(({"name": "tokens", "remaining": 10, "reset_seconds": 3723.0},))
    assert rate_limits({"x-ratelimit-reset-requests": "2.5"}).limits == ({"name": "requests", "reset_seconds": 2.5},)
    assert rate_limits({"x-ratelimit-reset-requests": "soon"}) is None
    assert rate_limits({}) is None


@pytest.mark.parametrize(
    "mode,error",
    [
        ("http_429", LLMRateLimited),
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


async def test_a_stream_that_never_ends_is_cut_at_the_total_timeout(fake_llm):
    fake_llm.mode = "endless"
    c = ChatClient(fake_llm.base_url, None, "m", total_timeout_s=0.5, retries=0)
    got = []
    try:
        with pytest.raises(LLMTimeout):
            async for delta in c.stream([{"role": "user", "content": "hi"}]):
                got.append(delta)
    finally:
        fake_llm.mode = "ok"
    assert got  # tokens flowed until the deadline


async def test_a_stream_that_stalls_mid_reply_fails_at_the_stall_timeout(fake_llm):
    fake_llm.mode = "stall"
    c = ChatClient(fake_llm.base_url, None, "m", stall_timeout_s=0.3, total_timeout_s=30, retries=0)
    got = []
    try:
        with pytest.raises(LLMTimeout, match="stalled"):
            async for delta in c.stream([{"role": "user", "content": "hi"}]):
                got.append(delta)
    finally:
        fake_llm.mode = "ok"
    assert len([d for d in got if isinstance(d, str)]) == 3  # the words before the stall


async def test_a_stream_that_ends_without_done_is_not_a_whole_reply(fake_llm):
    """A body that ends cleanly mid-reply (a server or proxy that died) is an error, not a
    short reply; a last chunk with a `finish_reason` ends a reply as `[DONE]` does."""
    from services.llm.client import _deltas

    fake_llm.mode = "drop"
    c = ChatClient(fake_llm.base_url, None, "m", retries=0)
    try:
        with pytest.raises(LLMBadResponse, match="DONE"):
            await _collect(c)
    finally:
        fake_llm.mode = "ok"
    stop = '{"choices": [{"index": 0, "delta": {"content": "."}, "finish_reason": "stop"}]}'
    going = '{"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": null}]}'
    assert _deltas(stop) == (["."], True) and _deltas(going) == (["a"], False)
