"""Tools as users meet them, on the whole stack: an avatar's tools put over REST, a typed and a
spoken turn that call a webhook and speak its answer, a client tool answered over the native
protocol, and the orchestrator killed around a call without the webhook's work done twice."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import asyncpg
import httpx
import pytest

from services.common import ids
from tests.client import Client, auth_headers
from tests.conftest import make_speech
from tests.e2e.test_faults import llm_process  # noqa: F401  (the fixture)
from tests.fakes.webhook_server import FakeWebhook

pytestmark = [pytest.mark.e2e, pytest.mark.engine]

SECRET = "tool-secret-0123456789"
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.fixture(scope="module")
def webhook():
    server = FakeWebhook(SECRET).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def tool_llm(fake_llm, webhook):
    fake_llm.tool_arguments = {"weather": {"city": "Paris"}}
    webhook.requests.clear()
    webhook.mode = "ok"
    webhook.hold.set()
    webhook.entered.clear()
    yield fake_llm
    fake_llm.tool_arguments, fake_llm.after_tool_delay_s = {}, 0.0


def _weather(webhook, **kw) -> dict:
    return {"kind": "webhook", "name": "weather", "parameters": CITY, "url": webhook.url, "secret": SECRET, **kw}


async def _avatar(stack, user: str, tmp_path, tools: list[dict]) -> str:
    voice = tmp_path / "voice.wav"
    subprocess.run(["sox", "-n", "-r", "22050", "-c", "1", str(voice), "synth", "8", "sine", "180"], check=True)
    async with httpx.AsyncClient(base_url=stack["http_url"], trust_env=False, timeout=60) as http:
        made = await http.post(
            "/v1/avatars",
            data={"name": "Tess", "language": "en"},
            files={"voice": ("voice.wav", voice.read_bytes(), "audio/wav")},
            headers=auth_headers(user),
        )
        assert made.status_code == 201, made.text
        avatar = made.json()["id"]
        put = await http.put(f"/v1/avatars/{avatar}/tools", json={"tools": tools}, headers=auth_headers(user))
        assert put.status_code == 200, put.text
    return avatar


async def _calls(stack, reply_id: str):
    conn = await asyncpg.connect(stack["env"]["PARLEY_DATABASE_URL"])
    try:
        return await conn.fetch(
            """SELECT id::text, name, status, result, error FROM tool_calls
               WHERE reply_id=$1::uuid ORDER BY round, call_index""",
            reply_id,
        )
    finally:
        await conn.close()


async def test_tools_are_put_read_and_checked_over_rest(stack, webhook, tmp_path):
    user = "tools-rest"
    avatar = await _avatar(stack, user, tmp_path, [_weather(webhook)])
    async with httpx.AsyncClient(base_url=stack["http_url"], trust_env=False, timeout=30) as http:
        me = auth_headers(user)
        shown = (await http.get(f"/v1/avatars/{avatar}/tools", headers=me)).json()
        assert shown[0]["has_secret"] and "secret" not in shown[0] and shown[0]["parameters"] == CITY
        before = (await http.get(f"/v1/avatars/{avatar}", headers=me)).json()["version"]
        clock = {"kind": "client", "name": "clock", "description": "the time where the user is"}
        no_secret = {k: v for k, v in _weather(webhook).items() if k != "secret"}
        again = await http.put(f"/v1/avatars/{avatar}/tools", json={"tools": [no_secret, clock]}, headers=me)
        assert again.status_code == 200 and again.json()["version"] == before + 1
        assert [t["has_secret"] for t in again.json()["tools"]] == [True, False]  # the secret was kept

        refused = {
            "not a JSON Schema": [{"kind": "client", "name": "c", "parameters": {"type": "object", "properties": 1}}],
            "given twice": [clock, clock],
            "needs a secret": [{**no_secret, "name": "fresh_hook"}],
            "no url or secret": [{**clock, "url": webhook.url}],
        }
        for why, tools in refused.items():
            resp = await http.put(f"/v1/avatars/{avatar}/tools", json={"tools": tools}, headers=me)
            assert resp.status_code == 422 and why in resp.text, (why, resp.text)
        bad_name = await http.put(
            f"/v1/avatars/{avatar}/tools", json={"tools": [{**clock, "name": "no spaces"}]}, headers=me
        )
        assert bad_name.status_code == 422
        demo = await http.put(f"/v1/avatars/{ids.DEMO_AVATAR_ID}/tools", json={"tools": [clock]}, headers=me)
        assert demo.status_code == 403
        other = await http.put(
            f"/v1/avatars/{avatar}/tools", json={"tools": [clock]}, headers=auth_headers("tools-someone-else")
        )
        assert other.status_code == 404
        assert (await http.get(f"/v1/avatars/{avatar}", headers=me)).json()["version"] == before + 1


async def test_a_typed_turn_calls_a_webhook_and_speaks_its_answer(stack, webhook, tmp_path):
    avatar = await _avatar(stack, "tools-typed", tmp_path, [_weather(webhook)])
    client = Client(stack["ws_url"])
    await client.connect(user="tools-typed", avatar_ids=[avatar])
    await client.send_json({"type": "text", "text": "What is the weather in Paris?"})
    done = (await client.wait_for(lambda r: r.events("reply.done"), 60))[0]
    stored = await client.wait_for(lambda r: r.events("audio.stored"), 60)

    (call,) = client.received.events("tool.call")
    assert (call["name"], call["kind"], json.loads(call["arguments"])) == ("weather", "webhook", {"city": "Paris"})
    assert call["call_id"] == ids.tool_call_id(done["message_id"], 0, 0)
    (tool_done,) = client.received.events("tool.done")
    assert (tool_done["call_id"], tool_done["status"]) == (call["call_id"], "ok")
    (req,) = webhook.requests
    assert req["signed"] and req["headers"]["idempotency-key"] == call["call_id"]
    assert done["status"] == "complete" and "sunny in Paris" in done["text"]
    assert done["text"].startswith("Let me check.") and stored[0]["duration_s"] > 0
    spoken = [e["text"] for e in client.received.events("reply.sentence")]
    assert spoken[0] == "Let me check." and "sunny in Paris" in " ".join(spoken[1:])
    (row,) = await _calls(stack, done["message_id"])
    assert row["status"] == "ok" and json.loads(row["result"])["forecast"] == "sunny in Paris"
    await client.close()


async def test_a_spoken_turn_calls_the_tool(stack, webhook, tmp_path):
    avatar = await _avatar(stack, "tools-spoken", tmp_path, [_weather(webhook)])
    wav = make_speech("What is the weather like in Paris today?", tmp_path / "ask.wav")
    client = Client(stack["ws_url"])
    await client.connect(user="tools-spoken", avatar_ids=[avatar])
    await client.stream_wav(wav)
    final = (await client.wait_for(lambda r: r.events("transcript.final"), 60))[0]
    assert "weather" in final["text"].lower()
    done = (await client.wait_for(lambda r: r.events("reply.done"), 60))[0]
    assert done["status"] == "complete" and "sunny in Paris" in done["text"]
    assert len(webhook.requests) == 1 and client.received.events("tool.done")[0]["status"] == "ok"
    await client.close()


async def test_a_client_tool_is_answered_over_the_native_protocol(stack, tmp_path, tool_llm):
    clock = {"kind": "client", "name": "clock", "description": "the user's local time", "timeout_s": 20}
    avatar = await _avatar(stack, "tools-client", tmp_path, [clock])
    client = Client(stack["ws_url"])
    await client.connect(user="tools-client", avatar_ids=[avatar])
    await client.send_json({"type": "tool.result", "call_id": ids.new_id(), "output": "early"})
    await client.send_json({"type": "text", "text": "What does the clock say?"})
    call = (await client.wait_for(lambda r: r.events("tool.call"), 60))[0]
    assert call["kind"] == "client" and call["name"] == "clock"
    await client.send_json({"type": "tool.result", "call_id": call["call_id"], "output": {"time": "half past four"}})
    await client.send_json({"type": "tool.result", "call_id": call["call_id"], "output": {"time": "again"}})
    done = (await client.wait_for(lambda r: r.events("reply.done"), 60))[0]
    assert done["status"] == "complete" and "half past four" in done["text"] and "again" not in done["text"]
    codes = [e["code"] for e in client.received.events("error")]
    assert codes == ["unknown_tool_call", "tool_call_finished"]
    await client.close()


async def test_a_kill_between_the_call_and_the_answer_calls_the_webhook_once(
    stack, webhook, tmp_path, tool_llm, llm_process  # noqa: F811
):
    """kill -9 after the webhook answered and its result was stored, before the LLM spoke it:
    the redelivered turn asks for the call again, finds its stored result, and does not call."""
    avatar = await _avatar(stack, "tools-kill", tmp_path, [_weather(webhook)])
    client = Client(stack["ws_url"])
    await client.connect(user="tools-kill", avatar_ids=[avatar])
    tool_llm.after_tool_delay_s = 60
    await client.send_json({"type": "text", "text": "Weather in Paris please"})
    user_id = (await client.wait_for(lambda r: r.events("user.message"), 30))[0]["message_id"]
    reply_id = ids.reply_id(user_id, avatar)
    await client.wait_for(lambda r: r.events("tool.done"), 60)
    llm_process.proc.kill()
    llm_process.proc.wait()
    killed_at = time.monotonic()
    tool_llm.after_tool_delay_s = 0
    llm_process.start()
    llm_process.wait_ready()

    done = (await client.wait_for(lambda r: r.events("reply.done"), 120))[0]
    print(f"recovered {time.monotonic() - killed_at:.1f} s after the kill")
    assert done["message_id"] == reply_id and done["status"] == "complete" and "sunny in Paris" in done["text"]
    assert len(webhook.requests) == 1
    assert [r["status"] for r in await _calls(stack, reply_id)] == ["ok"]
    await client.close()


async def test_a_kill_mid_call_calls_again_under_the_same_idempotency_key(
    stack, webhook, tmp_path, tool_llm, llm_process  # noqa: F811
):
    """kill -9 while the webhook works: its answer is lost with the process, so the redelivered
    turn calls again, and the webhook sees the same idempotency key (it can do the work once)."""
    avatar = await _avatar(stack, "tools-kill-mid", tmp_path, [_weather(webhook)])
    client = Client(stack["ws_url"])
    await client.connect(user="tools-kill-mid", avatar_ids=[avatar])
    webhook.hold.clear()
    await client.send_json({"type": "text", "text": "Weather in Paris now"})
    await asyncio.to_thread(webhook.entered.wait, 60)
    llm_process.proc.kill()
    llm_process.proc.wait()
    webhook.hold.set()
    llm_process.start()
    llm_process.wait_ready()

    done = (await client.wait_for(lambda r: r.events("reply.done"), 120))[0]
    assert done["status"] == "complete" and "sunny in Paris" in done["text"]
    keys = webhook.keys()
    assert len(keys) == 2 and len(set(keys)) == 1 and keys[0] == ids.tool_call_id(done["message_id"], 0, 0)
    assert [r["status"] for r in await _calls(stack, done["message_id"])] == ["ok"]
    await client.close()
