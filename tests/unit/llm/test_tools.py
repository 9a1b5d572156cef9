"""A reply that calls tools, without a bus server: an in-memory bus and tool-call store, a scripted
LLM, the webhook a real HTTP server and the MCP server a real one (the `mcp` package's), both on
loopback ports. What the avatar says before a call is spoken first, the call is signed and made
once, its answer read by the next round; every kind of failure becomes an error the LLM reads;
an interruption lets a call in flight finish; an MCP server is listed once per conversation."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from msgspec import to_builtins

from services.common import db, ids, schemas, subjects
from services.common.tools import Tool
from services.llm.client import ToolCallPart
from services.llm.config import LlmSettings
from services.llm.mcp_tools import McpServers
from services.llm.reply import ReplyStream
from services.llm.tools import ToolBox, ToolDeps
from services.llm.webhook import Webhooks
from tests.fakes.bus import MemoryBus
from tests.fakes.llm import MemoryKv, RoundsLLM
from tests.fakes.mcp_server import FakeMcp
from tests.fakes.repo import MemoryToolCalls
from tests.fakes.webhook_server import FakeWebhook

CONV = ids.new_id()
SECRET = "s3cret-s3cret-s3cret"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.fixture(scope="module")
def webhook():
    server = FakeWebhook(SECRET).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def fresh(webhook):
    webhook.requests.clear()
    webhook.mode, webhook.failures = "ok", 1
    webhook.hold.set()
    webhook.entered.clear()


def _avatar(webhook, *extra: Tool) -> db.Avatar:
    tools = [Tool(kind="webhook", name="weather", parameters=WEATHER, url=webhook.url, secret=SECRET, timeout_s=5)]
    return db.Avatar(ids.new_id(), "Ada", None, "p", "en", None, None, tools=[to_builtins(t) for t in [*tools, *extra]])


def _call(name: str, args: str, index: int = 0) -> list:
    third = max(1, len(args) // 3)
    return [
        ToolCallPart(index, f"call_{index}", name, ""),
        ToolCallPart(index, None, None, args[:third]),
        ToolCallPart(index, None, None, args[third:]),
    ]


class Reply:
    """One reply's stream with its tools, over the in-memory bus and call store."""

    def __init__(self, avatar: db.Avatar, llm: RoundsLLM, calls: MemoryToolCalls | None = None, **settings):
        self.bus, self.llm = MemoryBus(), llm
        self.settings = LlmSettings(tools_allow_private_urls=True, llm_tool_filler_after_s=0, **settings)
        self.calls = calls or MemoryToolCalls()
        self.results = MemoryKv()
        self.webhooks = Webhooks(self.settings)
        turn = schemas.UserTurn(
            conversation_id=CONV, message_id=ids.new_id(), session_id="s", turn_seq=0, source="text", text="Hi"
        )
        self.reply_id = ids.reply_id(turn.message_id, avatar.id)
        self.avatar, self.turn = avatar, turn
        self.mcp = McpServers(self.settings)

    async def run(
        self,
        cancel: asyncio.Event | None = None,
        reply_id: str | None = None,
        session_tools: list[dict] | None = None,
        system=None,
    ):
        deps = ToolDeps(self.bus, self.settings, self.calls, self.webhooks, self.results, self.mcp)

        async def ready() -> None:
            return None

        rid = reply_id or self.reply_id
        box = ToolBox(deps, CONV, rid, self.avatar, ready, session_tools)
        await box.prepare()
        stream = ReplyStream(self.bus, self.llm, self.settings, self.turn, self.avatar, rid)
        prompt = [{"role": "system", "content": "You are Ada."}, {"role": "user", "content": "Hi"}]
        try:
            return await stream.run(prompt, cancel or asyncio.Event(), asyncio.Event(), box, None, system)
        finally:
            await self.webhooks.aclose()

    def spoken(self) -> list[str]:
        return [p.decode(schemas.TtsJob).text for p in self.bus.on(subjects.tts_job(CONV))]

    def events(self, kind) -> list:
        return [
            p.decode(kind)
            for p in self.bus.on(f"parley.event.{CONV}.")
            if json.loads(p.data)["type"] == kind.__struct_config__.tag
        ]

    def tool_messages(self, n: int = 1) -> list[dict]:
        return [m for m in self.llm.requests[n]["messages"] if m["role"] == "tool"]


def _weather_llm(args: str = '{"city": "Paris"}') -> RoundsLLM:
    return RoundsLLM([["Let me check. ", *_call("weather", args)], ["It is sunny."]])


async def test_a_webhook_call_is_signed_made_once_and_its_answer_read_by_the_next_round(webhook):
    r = Reply(_avatar(webhook), _weather_llm())
    out = await r.run()

    assert out.status == "complete" and r.spoken() == ["Let me check.", "It is sunny."]
    call_id = ids.tool_call_id(r.reply_id, 0, 0)
    (req,) = webhook.requests
    assert req["signed"] and req["headers"]["idempotency-key"] == call_id
    assert req["body"] == {
        "call_id": call_id,
        "name": "weather",
        "arguments": {"city": "Paris"},
        "conversation_id": CONV,
        "avatar_id": r.avatar.id,
    }
    assert r.llm.requests[0]["tools"][0]["function"]["name"] == "weather"
    (answer,) = r.tool_messages()
    assert answer["tool_call_id"] == call_id and json.loads(answer["content"])["forecast"] == "sunny in Paris"
    asked = r.llm.requests[1]["messages"][-2]
    assert asked["role"] == "assistant" and asked["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'
    assert r.calls.calls[call_id].status == "ok" and out.calls[0]["id"] == call_id
    assert [e.call_id for e in r.events(schemas.ToolCalled)] == [call_id]
    assert [(e.status, e.error) for e in r.events(schemas.ToolDone)] == [("ok", None)]


async def test_a_call_stored_by_an_earlier_attempt_is_not_made_again(webhook):
    first = Reply(_avatar(webhook), _weather_llm())
    await first.run()
    again = Reply(first.avatar, _weather_llm(), calls=first.calls)
    out = await again.run(reply_id=first.reply_id)

    assert len(webhook.requests) == 1 and out.status == "complete"
    assert json.loads(again.tool_messages()[0]["content"])["forecast"] == "sunny in Paris"


async def test_a_5xx_is_retried_under_the_same_idempotency_key(webhook):
    webhook.mode, webhook.failures = "fail_first", 2
    r = Reply(_avatar(webhook), _weather_llm())
    await r.run()
    assert len(webhook.requests) == 3 and len(set(webhook.keys())) == 1
    assert r.calls.calls[ids.tool_call_id(r.reply_id, 0, 0)].status == "ok"


@pytest.mark.parametrize(
    ("mode", "args", "name", "why"),
    [
        ("ok", '{"city": "Paris"}', "horoscope", "there is no tool named 'horoscope'"),
        ("ok", '{"city": "Par', "weather", "the arguments are not JSON"),
        ("ok", '{"town": "Paris"}', "weather", "do not fit the tool's schema"),
        ("500", '{"city": "Paris"}', "weather", "the tool answered 500"),
        ("huge", '{"city": "Paris"}', "weather", "over 65536 bytes"),
        ("not_json", '{"city": "Paris"}', "weather", "not JSON"),
        ("redirect", '{"city": "Paris"}', "weather", "the tool answered 307"),
    ],
)
async def test_what_goes_wrong_is_an_error_result_the_llm_reads(webhook, mode, args, name, why):
    webhook.mode = mode
    r = Reply(_avatar(webhook), RoundsLLM([[*_call(name, args)], ["Sorry, I could not."]]), llm_tool_retries=1)
    out = await r.run()

    assert out.status == "complete" and r.spoken() == ["Sorry, I could not."]
    (answer,) = r.tool_messages()
    assert why in json.loads(answer["content"])["error"]
    (done,) = r.events(schemas.ToolDone)
    assert done.status == "error" and why in done.error
    assert not any(req["headers"].get("location") for req in webhook.requests)


async def test_a_webhook_that_does_not_answer_in_time_is_an_error(webhook):
    webhook.mode = "hang_once"
    avatar = _avatar(webhook)
    avatar.tools[0]["timeout_s"] = 0.5
    r = Reply(avatar, _weather_llm())
    await r.run()
    assert "did not answer within 0.5 s" in json.loads(r.tool_messages()[0]["content"])["error"]


async def test_an_interruption_lets_the_call_in_flight_finish_and_keeps_it(webhook):
    webhook.hold.clear()
    cancel = asyncio.Event()
    r = Reply(_avatar(webhook), _weather_llm())
    run = asyncio.create_task(r.run(cancel))
    await asyncio.to_thread(webhook.entered.wait, 5)
    cancel.set()
    await asyncio.sleep(0.1)
    webhook.hold.set()
    out = await run

    assert out.status == "interrupted" and len(r.llm.requests) == 1
    assert out.calls and json.loads(out.calls[0]["output"])["forecast"] == "sunny in Paris"
    assert r.calls.calls[ids.tool_call_id(r.reply_id, 0, 0)].status == "ok"


async def test_calls_of_one_round_run_at_once(webhook):
    webhook.hold.clear()
    arrived = threading.Event()

    def both_in() -> None:
        while len(webhook.requests) < 2:
            threading.Event().wait(0.01)
        arrived.set()

    args = '{"city": "Oslo"}'
    r = Reply(_avatar(webhook), RoundsLLM([[*_call("weather", args, 0), *_call("weather", args, 1)], ["Done."]]))
    run = asyncio.create_task(r.run())
    await asyncio.wait_for(asyncio.to_thread(both_in), 5)
    webhook.hold.set()
    await run
    assert arrived.is_set() and len(r.tool_messages()) == 2


async def test_rounds_are_bounded_and_the_last_must_answer_in_words(webhook):
    r = Reply(_avatar(webhook), RoundsLLM([[*_call("weather", '{"city": "Rome"}')]]), llm_tool_max_rounds=2)
    await r.run()
    assert len(r.llm.requests) == 3 and len(webhook.requests) == 2
    assert [q["tool_choice"] for q in r.llm.requests] == ["auto", "auto", "none"]


async def test_a_slow_round_has_the_avatar_say_a_filler(webhook):
    webhook.mode, webhook.delay_s = "slow", 0.6
    r = Reply(_avatar(webhook), RoundsLLM([[*_call("weather", '{"city": "Rome"}')], ["Sunny."]]))
    r.settings.llm_tool_filler_after_s = 0.1
    out = await r.run()
    assert r.spoken() == ["One moment.", "Sunny."] and out.text.startswith("One moment.")


async def test_a_client_tool_waits_for_the_answer_the_gateway_stored(webhook):
    clock = Tool(kind="client", name="clock", parameters={"type": "object", "properties": {}}, timeout_s=2)
    r = Reply(_avatar(webhook, clock), RoundsLLM([[*_call("clock", "{}")], ["Noon."]]))
    call_id = ids.tool_call_id(r.reply_id, 0, 0)

    async def client_answers() -> None:
        while not r.events(schemas.ToolCalled):
            await asyncio.sleep(0.01)
        await r.results.put(subjects.tool_result_key(CONV, call_id), json.dumps({"output": {"time": "12:00"}}).encode())

    answering = asyncio.create_task(client_answers())
    await r.run()
    await answering
    assert r.events(schemas.ToolCalled)[0].kind == "client"
    assert json.loads(r.tool_messages()[0]["content"]) == {"time": "12:00"}


async def test_a_handoff_answered_with_new_instructions_and_tools_changes_the_rest_of_the_reply(webhook):
    """A Realtime client changes its session (a handoff) before it answers the call: the next
    round's system message and offered functions are the session's as it answered."""
    transfer = Tool(kind="client", name="transfer_to_spanish", parameters={"type": "object", "properties": {}})
    hola = Tool(kind="client", name="hola", parameters={"type": "object", "properties": {}})
    r = Reply(_avatar(webhook), RoundsLLM([[*_call("transfer_to_spanish", "{}")], ["Hola."]]))
    call_id = ids.tool_call_id(r.reply_id, 0, 0)

    async def client_answers() -> None:
        while not r.events(schemas.ToolCalled):
            await asyncio.sleep(0.01)
        session = {"instructions": "Habla español.", "tools": [to_builtins(hola)]}
        answer = {"output": '{"assistant": "Spanish"}', "session": session}
        await r.results.put(subjects.tool_result_key(CONV, call_id), json.dumps(answer).encode())

    answering = asyncio.create_task(client_answers())
    await r.run(session_tools=[to_builtins(transfer)], system=lambda i: {"role": "system", "content": f"[{i}]"})
    await answering
    first, second = r.llm.requests
    assert first["messages"][0]["content"] == "You are Ada."
    assert second["messages"][0] == {"role": "system", "content": "[Habla español.]"}
    assert _offered(first) == ["transfer_to_spanish", "weather"] and _offered(second) == ["hola", "weather"]


def _offered(request: dict) -> list[str]:
    return sorted(t["function"]["name"] for t in request["tools"])


async def test_a_client_that_never_answers_is_an_error_in_time(webhook):
    clock = Tool(kind="client", name="clock", parameters={"type": "object", "properties": {}}, timeout_s=0.3)
    r = Reply(_avatar(webhook, clock), RoundsLLM([[*_call("clock", "{}")], ["No clock."]]))
    await r.run()
    assert "the client did not answer within 0.3 s" in json.loads(r.tool_messages()[0]["content"])["error"]


@pytest.fixture(scope="module")
def mcp_server():
    server = FakeMcp().start()
    yield server
    server.stop()


def _lessons(url: str, **kw) -> Tool:
    return Tool(kind="mcp", name="lessons", url=url, **{"timeout_s": 10, **kw})


async def test_an_mcp_tool_is_listed_once_per_conversation_and_called(webhook, mcp_server):
    llm = RoundsLLM([[*_call("lessons__find_lesson", '{"topic": "fractions"}')], ["Here it is."]])
    r = Reply(_avatar(webhook, _lessons(mcp_server.url)), llm)
    out = await r.run()
    listed = mcp_server.asked["tools/list"]

    offered = {t["function"]["name"] for t in llm.requests[0]["tools"]}
    assert offered == {"weather", "lessons__find_lesson", "lessons__grade"}
    assert out.status == "complete" and r.spoken() == ["Here it is."]
    assert json.loads(r.tool_messages()[0]["content"]) == {"lesson": "The lesson on fractions", "minutes": 20}
    assert r.events(schemas.ToolCalled)[0].kind == "mcp"
    r.llm = RoundsLLM([["Again."]])
    await r.run(reply_id=ids.new_id())  # the same conversation: not listed again
    assert listed >= 1 and mcp_server.asked["tools/list"] == listed
    other = Reply(r.avatar, RoundsLLM([["Hi."]]))
    other.mcp = r.mcp
    await other.run()
    assert mcp_server.asked["tools/list"] == listed


async def test_an_mcp_tool_that_fails_is_an_error_result(webhook, mcp_server):
    llm = RoundsLLM([[*_call("lessons__grade", '{"answer": "42"}')], ["It could not grade."]])
    r = Reply(_avatar(webhook, _lessons(mcp_server.url, allowed_tools=["grade"])), llm)
    await r.run()
    assert {t["function"]["name"] for t in llm.requests[0]["tools"]} == {"weather", "lessons__grade"}
    assert "the MCP tool says" in json.loads(r.tool_messages()[0]["content"])["error"]


async def test_an_mcp_server_that_is_down_offers_nothing_and_says_so(webhook):
    from ops.devstack import free_port

    llm = RoundsLLM([["Hello."]])
    down = _lessons(f"http://127.0.0.1:{free_port()}/mcp", timeout_s=2)
    r = Reply(_avatar(webhook, down), llm)
    out = await r.run()
    assert out.status == "complete" and [t["function"]["name"] for t in llm.requests[0]["tools"]] == ["weather"]
    (error,) = r.events(schemas.ErrorEvent)
    assert error.code == "mcp_unavailable" and error.retryable


def test_a_listed_tool_that_cannot_be_offered_is_left_out():
    from types import SimpleNamespace

    from services.llm.mcp_tools import _offered

    server = _lessons("https://mcp.example.com/mcp")
    good = SimpleNamespace(name="ok", description="d", input_schema={"type": "object", "properties": {}})
    assert _offered(server, good).name == "lessons__ok"
    for bad in (
        SimpleNamespace(name="has space", description="", input_schema={"type": "object"}),
        SimpleNamespace(name="str", description="", input_schema={"type": "string"}),
        SimpleNamespace(name="broken", description="", input_schema={"type": "object", "properties": 5}),
    ):
        assert _offered(server, bad) is None
