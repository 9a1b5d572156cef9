"""The OpenAI Agents SDK's realtime client on /v1/realtime, used as its authors intend: a
`RealtimeAgent` and a `RealtimeRunner` pointed at Parley with `model_config={"url", "api_key"}`,
at the SDK's default settings (semantic_vad, gpt-4o-mini-transcribe, voice "ash", audio/pcm at
24 kHz). Every session must see no `error` event: the SDK turns any server event it cannot
validate into one, so this also holds each event to the SDK's own types.
"""

from __future__ import annotations

import asyncio
import time
import wave

import httpx
import numpy as np
import pytest
import soxr
from agents import function_tool
from agents.realtime import RealtimeAgent, RealtimeRunner

from tests.client import auth_headers
from tests.conftest import settled_conversations
from tests.fakes.llm_server import reply_for

pytestmark = [pytest.mark.e2e, pytest.mark.engine]

RATE = 24000
CONVERSATIONS: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """Get the weather for a city."""
    return f"Sunny and 21 C in {city}"


class AgentSession:
    """One SDK session: every event it yields, read in the background; waits on them."""

    def __init__(self, session):
        self.session = session
        self.events: list = []
        self.raw: list[dict] = []
        """The server events as sent (the SDK's raw_server_event)."""
        self.failure: BaseException | None = None
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for event in self.session:
                self.events.append(event)
                if event.type == "raw_model_event" and event.data.type == "raw_server_event":
                    self.raw.append(event.data.data)
                    if event.data.data.get("type") == "session.created":
                        CONVERSATIONS.append(event.data.data["session"]["parley"]["conversation_id"])
        except Exception as exc:
            self.failure = exc

    def of(self, type_: str) -> list:
        return [e for e in self.events if e.type == type_]

    def sent(self, type_: str) -> list[dict]:
        return [e for e in self.raw if e.get("type") == type_]

    async def wait_for(self, pred, timeout: float = 120.0):
        deadline = time.monotonic() + timeout
        while not (value := pred(self)):
            assert not self._reader.done(), f"the session ended: {self.failure!r}"
            got = [e.type for e in self.events if e.type != "raw_model_event"][-20:]
            assert time.monotonic() < deadline, f"timed out; got {got}, sent {[e['type'] for e in self.raw][-20:]}"
            await asyncio.sleep(0.05)
        return value

    async def turn_ended(self, after: int, timeout: float = 120.0) -> None:
        """The `agent_end` of the next response after `after` of them."""
        await self.wait_for(lambda s: len(s.of("agent_end")) > after, timeout)

    def history(self) -> list:
        updates = [e for e in self.events if e.type in ("history_updated", "history_added")]
        return list(self.session._history) if updates else []

    def assistant_said(self) -> list[str]:
        out = []
        for item in self.history():
            if item.type == "message" and item.role == "assistant" and item.content:
                part = item.content[0]
                out.append((part.transcript if part.type == "audio" else part.text) or "")
        return out

    def conversation_id(self) -> str:
        return self.sent("session.created")[0]["session"]["parley"]["conversation_id"]

    def assert_no_error(self) -> None:
        errors = [e.error for e in self.of("error")]
        assert errors == [], errors


async def _key(stack, user: str) -> str:
    async with httpx.AsyncClient(base_url=stack["http_url"], trust_env=False) as http:
        made = await http.post("/v1/api-keys", json={"name": "agents"}, headers=auth_headers(user))
        return made.json()["key"]


async def _open(stack, user: str, agent: RealtimeAgent):
    url = stack["http_url"].replace("http://", "ws://") + "/v1/realtime"
    runner = RealtimeRunner(agent)
    return await runner.run(model_config={"url": url, "api_key": await _key(stack, user)})


def _pcm24(path) -> bytes:
    with wave.open(str(path)) as w:
        pcm16k = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    return soxr.resample(pcm16k, 16000, RATE).astype("<i2").tobytes()


async def _speak(session, pcm: bytes) -> None:
    """40 ms chunks at a microphone's pace, as the SDK's examples send them."""
    step = RATE * 2 * 40 // 1000
    start = time.monotonic()
    for n, offset in enumerate(range(0, len(pcm), step)):
        await session.send_audio(pcm[offset : offset + step])
        await asyncio.sleep(max(0.0, start + (n + 1) * 0.04 - time.monotonic()))


async def test_a_typed_turn_is_answered_under_the_agents_instructions(stack, fake_llm):
    agent = RealtimeAgent(name="Assistant", instructions="You are a ferry timetable clerk.")
    async with await _open(stack, "agents-text", agent) as session:
        s = AgentSession(session)
        await s.wait_for(lambda s: s.sent("session.updated"), 30)
        await session.send_message("When does the first ferry leave?")
        await s.turn_ended(0)
        assert s.assistant_said() == [reply_for("When does the first ferry leave?")]
        prompt = next(r["messages"] for r in reversed(fake_llm.requests) if "first ferry" in str(r["messages"]))
        assert prompt[0]["content"].startswith("You are a ferry timetable clerk.")
        assert s.of("audio")
        s.assert_no_error()


async def test_a_spoken_turn_at_the_sdks_default_semantic_vad(stack, speech_wav, fake_llm):
    agent = RealtimeAgent(name="Assistant", instructions="You are brief.")
    async with await _open(stack, "agents-voice", agent) as session:
        s = AgentSession(session)
        await s.wait_for(lambda s: s.sent("session.updated"), 30)
        await _speak(session, _pcm24(speech_wav) + b"\x00\x00" * RATE)
        await s.turn_ended(0)
        users = [i for i in s.history() if i.type == "message" and i.role == "user"]
        assert users and "weather" in (users[0].content[0].transcript or "").lower()
        assert len(s.assistant_said()) == 1 and s.assistant_said()[0]
        s.assert_no_error()


async def test_an_interrupt_keeps_what_was_heard(stack, fake_llm):
    """`session.interrupt()` while the reply plays: the SDK truncates the item where its playback
    stood, retrieves it, and its history holds only what was heard, as Parley stored it."""
    agent = RealtimeAgent(name="Assistant", instructions="You talk a lot.")
    fake_llm.token_delay_s = 0.25  # the reply is still being written while its first sentence plays
    try:
        async with await _open(stack, "agents-cut", agent) as session:
            s = AgentSession(session)
            await s.wait_for(lambda s: s.sent("session.updated"), 30)
            await session.send_message("Talk on and on?")
            await s.wait_for(lambda s: s.of("audio"), 60)
            first_audio = time.monotonic()
            # Two seconds into the reply, as a person listening would cut in.
            await s.wait_for(lambda s: sum(len(e.audio.data) for e in s.of("audio")) >= 2 * RATE * 2, 60)
            await asyncio.sleep(max(0.0, first_audio + 2.0 - time.monotonic()))
            await session.interrupt()
            await s.wait_for(lambda s: s.of("audio_interrupted"), 10)
            await s.turn_ended(0, 60)
            done = s.sent("response.done")[0]["response"]
            assert done["status"] == "cancelled"
            truncated = await s.wait_for(lambda s: s.sent("conversation.item.truncated"), 30)
            retrieved = await s.wait_for(lambda s: s.sent("conversation.item.retrieved"), 30)
            heard = retrieved[0]["item"]["content"][0]["transcript"]
            full = reply_for("Talk on and on?")
            assert full.startswith(heard) and len(heard) < len(full) and truncated[0]["audio_end_ms"] > 0
            assert s.assistant_said() == [heard]
            fake_llm.token_delay_s = 0.005
            await session.send_message("And now?")
            await s.turn_ended(1)
            s.assert_no_error()
    finally:
        fake_llm.token_delay_s = 0.005
    rows = await _messages(stack, "agents-cut", s.conversation_id())
    assert [m["text"] for m in rows if m["role"] == "avatar"][0] == heard


async def _messages(stack, user: str, conversation_id: str) -> list[dict]:
    async with httpx.AsyncClient(base_url=stack["http_url"], trust_env=False) as http:
        resp = await http.get(f"/v1/conversations/{conversation_id}/messages", headers=auth_headers(user))
        return resp.json()["items"]


async def test_update_agent_and_a_handoff_change_whose_instructions_answer(stack, fake_llm):
    spanish = RealtimeAgent(name="Spanish", instructions="Habla siempre en español.", handoff_description="Spanish")
    agent = RealtimeAgent(name="Assistant", instructions="You are English.", handoffs=[spanish])
    async with await _open(stack, "agents-handoff", agent) as session:
        s = AgentSession(session)
        await s.wait_for(lambda s: s.sent("session.updated"), 30)
        await session.send_message("Please transfer_to_spanish now.")
        await s.wait_for(lambda s: s.of("handoff"), 60)
        await s.turn_ended(1)
        continued = [r for r in fake_llm.requests if r["messages"][-1]["role"] == "tool"][-1]
        assert continued["messages"][0]["content"].startswith("Habla siempre en español.")
        await session.update_agent(RealtimeAgent(name="Poet", instructions="You answer in rhyme."))
        await s.wait_for(lambda s: len(s.sent("session.updated")) >= 3, 30)
        await session.send_message("Say something.")
        await s.turn_ended(2)
        asked = [r["messages"] for r in fake_llm.requests if r["messages"][-1]["content"] == "Say something."]
        assert asked[-1][0]["content"].startswith("You answer in rhyme.")
        s.assert_no_error()


async def test_a_function_tool_runs_in_the_sdk_and_its_answer_is_spoken(stack, fake_llm):
    fake_llm.tool_arguments = {"get_weather": {"city": "Paris"}}
    agent = RealtimeAgent(name="Assistant", instructions="You know the weather.", tools=[get_weather])
    try:
        async with await _open(stack, "agents-tool", agent) as session:
            s = AgentSession(session)
            await s.wait_for(lambda s: s.sent("session.updated"), 30)
            await session.send_message("Use get_weather for Paris?")
            await s.wait_for(lambda s: s.of("tool_end"), 60)
            assert s.of("tool_end")[0].output == "Sunny and 21 C in Paris"
            await s.turn_ended(1)
            assert any("Sunny and 21 C in Paris" in said for said in s.assistant_said())
            s.assert_no_error()
    finally:
        fake_llm.tool_arguments = {}


async def test_every_agents_sdk_conversation_balances(stack):
    assert CONVERSATIONS
    assert await settled_conversations(stack["settings"], CONVERSATIONS) == []
