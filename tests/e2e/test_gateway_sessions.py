"""The gateway's front door and session life: tokens and keys, who may reach what, browser
origins, every limit, resuming through another gateway process, and barge-in.

A second gateway process runs with tight limits (seconds, not hours) against the same bus
and database as the main stack, so limits are observed as they are, and a resume crosses
processes the way it crosses replicas.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import jwt
import pytest
import websockets

from ops import devstack
from services.common import backchannel
from tests.client import AudioChunk, Client, auth_headers, token_for
from tests.conftest import make_speech
from tests.fakes.llm_server import reply_for

pytestmark = [pytest.mark.e2e, pytest.mark.engine]


@pytest.fixture(scope="module")
def strict_gateway(stack, tmp_path_factory):
    env = {
        **stack["env"],
        "PARLEY_IDLE_TIMEOUT_S": "2",
        "PARLEY_MAX_SESSION_S": "6",
        "PARLEY_MAX_SESSIONS_PER_USER": "2",
        "PARLEY_ALLOWED_ORIGINS": '["https://app.example"]',
        "PARLEY_WS_DEFLATE": "true",
        "PARLEY_OPS_PORT": str(ops_port := devstack.free_port()),
        "PARLEY_MAX_UNSTARTED_PER_ADDRESS": "3",
    }
    proc = devstack.ServiceProcess("gateway", env, tmp_path_factory.mktemp("gw2") / "gateway.log").start()
    proc.wait_ready()
    ops_url = f"http://127.0.0.1:{ops_port}"
    yield {"ws_url": f"ws://127.0.0.1:{proc.port}/v1/ws", "http_url": proc.base_url, "ops_url": ops_url, "proc": proc}
    proc.stop()


@pytest.fixture(scope="module")
def second_gateway(stack, tmp_path_factory):
    """Another replica with the stack's own settings."""
    proc = devstack.ServiceProcess("gateway", stack["env"], tmp_path_factory.mktemp("gw3") / "gateway.log").start()
    proc.wait_ready()
    yield {"ws_url": f"ws://127.0.0.1:{proc.port}/v1/ws", "http_url": proc.base_url, "proc": proc}
    proc.stop()


async def _closed_with(url: str, start: dict, headers: dict | None = None) -> tuple[int, str]:
    async with websockets.connect(url, additional_headers=headers) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.send(json.dumps({"type": "session.start", **start}))
            while True:
                await ws.recv()
    return closed.value.rcvd.code, closed.value.rcvd.reason


def _forged(user: str, **claims) -> str:
    now = int(time.time())
    payload = {"sub": user, "aud": "parley", "iat": now, "exp": now + 600, **claims}
    return jwt.encode(payload, "not-the-gateway-secret-but-long-enough-for-hs256", algorithm="HS256")


# --- identity ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token,code",
    [
        (None, "unauthenticated"),
        (token_for("olga", ttl_s=-120), "token_expired"),
        (_forged("olga"), "invalid_token"),
        (token_for("olga", audience="someone-else"), "invalid_token"),
        (token_for("olga", ttl_s=30 * 86400), "invalid_token"),
        ("pk_not-a-key", "invalid_api_key"),
    ],
    ids=["missing", "expired", "forged", "wrong-audience", "too-long-lived", "unknown-key"],
)
async def test_a_socket_without_a_valid_credential_is_closed_4401(stack, token, code):
    start = {"token": token} if token else {}
    close_code, reason = await _closed_with(stack["ws_url"], start)
    assert close_code == 4401
    assert reason.startswith(code)


async def test_rest_without_a_valid_credential_is_401(stack):
    async with httpx.AsyncClient(base_url=stack["http_url"], trust_env=False) as http:
        for headers in ({}, {"Authorization": f"Bearer {_forged('olga')}"}, {"Authorization": "Basic b2xnYTpw"}):
            resp = await http.get("/v1/avatars", headers=headers)
            assert resp.status_code == 401, headers
            assert resp.headers["www-authenticate"] == "Bearer"


async def test_a_token_in_the_authorization_header_and_an_api_key_both_work(stack):
    client = Client(stack["ws_url"])
    started = (await client.connect(headers=auth_headers("pat")))[0]
    await client.close()
    async with httpx.AsyncClient(base_url=stack["http_url"], trust_env=False) as http:
        made = await http.post("/v1/api-keys", json={"name": "backend"}, headers=auth_headers("pat"))
        assert made.status_code == 201
        key = made.json()["key"]
        assert key.startswith("pk_")
        as_key = {"Authorization": f"Bearer {key}"}
        history = await http.get(f"/v1/conversations/{started['conversation_id']}/messages", headers=as_key)
        assert history.status_code == 200  # the key acts as pat, who owns the conversation
        keyed = Client(stack["ws_url"])
        await keyed.connect(token=key, conversation_id=started["conversation_id"])
        await keyed.close()
        listed = await http.get("/v1/api-keys", headers=auth_headers("pat"))
        assert [k["id"] for k in listed.json()] == [made.json()["id"]]
        assert "key" not in listed.json()[0]
        assert (await http.delete(f"/v1/api-keys/{made.json()['id']}", headers=auth_headers("pat"))).status_code == 204
        assert (await http.get("/v1/avatars", headers=as_key)).status_code == 401
    code, reason = await _closed_with(stack["ws_url"], {"token": key})
    assert (code, reason.split(":")[0]) == (4401, "invalid_api_key")


async def test_tenants_keep_users_of_the_same_name_apart(stack):
    client = Client(stack["ws_url"])
    started = (await client.connect(token=token_for("sam", tenant="acme")))[0]
    await client.close()
    code, _ = await _closed_with(
        stack["ws_url"], {"token": token_for("sam", tenant="globex"), "conversation_id": started["conversation_id"]}
    )
    assert code == 4403


async def test_one_user_cannot_reach_anothers_conversation_by_any_route(stack):
    alice = Client(stack["ws_url"])
    started = (await alice.connect(user="alice-owner"))[0]
    conv = started["conversation_id"]
    await alice.send_json({"type": "text", "text": "Private words."})
    stored = (await alice.wait_for(lambda r: r.events("audio.stored"), 120))[0]
    await alice.close()

    code, _ = await _closed_with(stack["ws_url"], {"token": token_for("bob-intruder"), "conversation_id": conv})
    assert code == 4403
    code, _ = await _closed_with(
        stack["ws_url"], {"token": token_for("bob-intruder"), "resume": {"session_id": started["session_id"]}}
    )
    assert code == 4410
    bob = auth_headers("bob-intruder")
    async with httpx.AsyncClient(base_url=stack["http_url"], trust_env=False) as http:
        assert (await http.get(f"/v1/conversations/{conv}/messages", headers=bob)).status_code == 404
        audio = f"/v1/conversations/{conv}/messages/{stored['message_id']}/audio"
        assert (await http.get(audio, headers=bob)).status_code == 404
        mine = await http.get(audio, headers=auth_headers("alice-owner"))
        assert mine.status_code == 307 and stored["key"] in mine.headers["location"]


async def test_browser_origins_outside_the_allowlist_are_refused(stack, strict_gateway):
    url = strict_gateway["ws_url"]
    start = {"token": token_for("orla")}
    assert (await _closed_with(url, start, {"Origin": "https://evil.example"}))[0] == 4403
    for origin in ("https://app.example", strict_gateway["http_url"]):
        client = Client(url)
        await client.connect(headers={"Origin": origin}, **start)
        await client.close()
    async with httpx.AsyncClient(base_url=strict_gateway["http_url"], trust_env=False) as http:
        evil = await http.get("/v1/avatars", headers={**auth_headers("orla"), "Origin": "https://evil.example"})
        assert evil.status_code == 403
        ok = await http.get("/v1/avatars", headers={**auth_headers("orla"), "Origin": "https://app.example"})
        assert ok.status_code == 200


# --- limits --------------------------------------------------------------------------------


async def test_an_idle_session_is_closed_with_a_reason(strict_gateway):
    client = Client(strict_gateway["ws_url"])
    await client.connect(user="idle-ivy")
    await client.wait_for(lambda r: client.close_code is not None, 15)
    assert client.close_code == 4000
    assert [e["code"] for e in client.received.events("error")][-1] == "idle_timeout"


async def test_a_session_ends_at_its_maximum_length_even_when_busy(strict_gateway):
    client = Client(strict_gateway["ws_url"])
    await client.connect(user="long-lou")
    silence = b"\x00\x00" * 1600  # 100 ms
    deadline = time.monotonic() + 20
    while client.close_code is None and time.monotonic() < deadline:
        try:
            await client.send_raw(silence)
        except websockets.ConnectionClosed:
            break  # closed by the server between the check and the send: what is under test
        await asyncio.sleep(0.1)
    await client.wait_for(lambda r: client.close_code is not None, 5)
    assert client.close_code == 4001
    assert "session_too_long" in [e["code"] for e in client.received.events("error")]


async def test_a_user_holds_at_most_the_configured_sessions(strict_gateway):
    url = strict_gateway["ws_url"]
    first, second = Client(url), Client(url)
    await first.connect(user="busy-bea")
    await second.connect(user="busy-bea")
    code, reason = await _closed_with(url, {"token": token_for("busy-bea")})
    assert code == 4429 and "2" in reason
    await first.send_json({"type": "session.end"})
    await first.wait_for(lambda r: first.close_code is not None, 10)
    third = Client(url)
    await third.connect(user="busy-bea")  # the ended session no longer counts
    for c in (second, third):
        await c.close()


async def test_metrics_and_api_docs_are_served_on_the_ops_port_only(strict_gateway):
    """With PARLEY_OPS_PORT (as the deploy files set it) the client port shows no metrics or API
    schema to anyone who reaches it; health answers on both (a load balancer checks the client port)."""
    client, ops = strict_gateway["http_url"], strict_gateway["ops_url"]
    async with httpx.AsyncClient(trust_env=False) as http:
        for path in ("/metrics", "/docs", "/redoc", "/openapi.json"):
            assert (await http.get(client + path)).status_code == 404, path
            assert (await http.get(ops + path)).status_code == 200, path
        assert "parley_active_sessions" in (await http.get(ops + "/metrics")).text
        assert "/v1/avatars" in (await http.get(ops + "/openapi.json")).json()["paths"]
        for path in ("/healthz", "/readyz"):
            assert (await http.get(client + path)).status_code == 200
            assert (await http.get(ops + path)).status_code == 200
        assert (await http.get(ops + "/v1/avatars")).status_code == 404  # no client surface there


async def test_an_address_holds_only_so_many_sockets_that_have_not_started_a_session(strict_gateway):
    url = strict_gateway["ws_url"]
    waiting = [await websockets.connect(url) for _ in range(3)]
    try:
        async with websockets.connect(url) as extra:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await extra.recv()
        assert closed.value.rcvd.code == 4429 and "not started a session" in closed.value.rcvd.reason
        await waiting.pop().close()
        # The one that left makes room; a socket that starts its session is served as ever.
        deadline = time.monotonic() + 10
        while True:
            try:
                started = await Client(url).connect(user="patient-pat")
                break
            except AssertionError as refused:  # until the gateway has seen the close
                assert "not started a session" in str(refused) and time.monotonic() < deadline, refused
                await asyncio.sleep(0.1)
        assert started[0]["type"] == "session.started"
    finally:
        for ws in waiting:
            await ws.close()


async def test_audio_faster_than_real_time_is_dropped_with_an_error(stack):
    client = Client(stack["ws_url"])
    await client.connect(user="fast-fay")
    frame = b"\x00\x00" * 16000  # 1 s per frame
    for _ in range(12):  # 12 s of audio at once: past the 5 s burst allowance
        await client.send_raw(frame)
    errors = await client.wait_for(lambda r: r.events("error"), 10)
    assert [e["code"] for e in errors] == ["audio_too_fast"]  # once, however many frames it drops
    await client.send_json({"type": "text", "text": "Still here?"})
    await client.wait_for(lambda r: r.events("user.message"), 10)
    await client.close()


# --- resume --------------------------------------------------------------------------------


def _final_ids(client: Client) -> list[tuple[str, str]]:
    return [(e["type"], e.get("message_id", "")) for e in client.received.events() if "cursor" in e]


async def test_a_dropped_client_resumes_through_another_gateway_and_gets_what_it_missed(stack, second_gateway):
    first = Client(stack["ws_url"])
    started = (await first.connect(user="roaming-rae", barge_in=False))[0]
    await first.send_json({"type": "text", "text": "First question?", "client_seq": 0})
    await first.wait_for(lambda r: r.events("audio.stored"), 120)
    seen_cursor = max(e["cursor"] for e in first.received.events() if "cursor" in e)
    await first.send_json({"type": "text", "text": "Second question, then I vanish?", "client_seq": 1})
    await first.wait_for(lambda r: r.events("reply.started")[1:], 60)
    first._ws.transport.abort()  # a network drop: no close frame
    await first.wait_for(lambda r: first.close_code is not None, 10)

    second = Client(second_gateway["ws_url"])
    resumed = (
        await second.connect(
            user="roaming-rae", resume={"session_id": started["session_id"], "last_cursor": seen_cursor}
        )
    )[0]
    assert resumed["resumed"] is True
    # Nothing live (the reply was streaming at the drop) overtakes session.started.
    assert second.received.items[0]["type"] == "session.started" and resumed["seq"] == 1
    assert resumed["session_id"] == started["session_id"]
    assert resumed["conversation_id"] == started["conversation_id"]
    second_reply = first.received.events("reply.started")[1]["message_id"]
    done = await second.wait_for(lambda r: [e for e in r.events("reply.done") if e["message_id"] == second_reply], 120)
    assert done[0]["text"] == reply_for("Second question, then I vanish?")
    await second.wait_for(lambda r: [e for e in r.events("audio.stored") if e["message_id"] == second_reply], 120)
    assert all(e["cursor"] > seen_cursor for e in second.received.events() if "cursor" in e)
    # Nothing of the first reply (seen before the cursor) comes again.
    first_reply = first.received.events("reply.started")[0]["message_id"]
    assert first_reply not in {m for _, m in _final_ids(second)}

    # A resend of the turn the client was unsure of is the same turn, not a new one.
    await second.send_json({"type": "text", "text": "Second question, then I vanish?", "client_seq": 1})
    await second.send_json({"type": "text", "text": "Third, after the resume?", "client_seq": 2})
    await second.wait_for(lambda r: len(r.events("reply.started")) >= 1, 60)
    third = await second.wait_for(
        lambda r: [e for e in r.events("reply.done") if e["text"] == reply_for("Third, after the resume?")], 120
    )
    async with httpx.AsyncClient(base_url=stack["http_url"], trust_env=False) as http:
        resp = await http.get(
            f"/v1/conversations/{started['conversation_id']}/messages", headers=auth_headers("roaming-rae")
        )
    body = resp.json()
    rows = body["items"] if isinstance(body, dict) else body
    assert [r["text"] for r in rows if r["role"] == "user"] == [
        "First question?",
        "Second question, then I vanish?",
        "Third, after the resume?",
    ]
    assert third[0]["status"] == "complete"
    await second.close()


async def test_the_old_connection_lets_go_when_its_session_is_resumed(stack):
    first = Client(stack["ws_url"])
    started = (await first.connect(user="twice-tia"))[0]
    second = Client(stack["ws_url"])
    await second.connect(user="twice-tia", resume={"session_id": started["session_id"]})
    await first.wait_for(lambda r: first.close_code is not None, 10)
    assert first.close_code == 4409
    await second.send_json({"type": "text", "text": "Who holds the session?"})
    await second.wait_for(lambda r: r.events("user.message"), 10)
    await second.close()


async def test_a_session_the_client_ended_cannot_be_resumed(stack):
    client = Client(stack["ws_url"])
    started = (await client.connect(user="done-dee"))[0]
    await client.send_json({"type": "session.end"})
    await client.wait_for(lambda r: client.close_code is not None, 10)
    code, _ = await _closed_with(
        stack["ws_url"], {"token": token_for("done-dee"), "resume": {"session_id": started["session_id"]}}
    )
    assert code == 4410


async def test_a_client_resumes_after_its_gateway_is_killed(stack, tmp_path):
    doomed = devstack.ServiceProcess("gateway", stack["env"], tmp_path / "doomed.log").start()
    doomed.wait_ready()
    client = Client(f"ws://127.0.0.1:{doomed.port}/v1/ws")
    started = (await client.connect(user="orphan-oz", barge_in=False))[0]
    await client.send_json({"type": "text", "text": "Are you still there?", "client_seq": 0})
    await client.wait_for(lambda r: r.events("reply.started"), 60)
    killed_at = time.monotonic()
    doomed.stop(sig=9)
    await client.wait_for(lambda r: client.close_code is not None, 10)
    cursors = [e["cursor"] for e in client.received.events() if "cursor" in e]

    again = Client(stack["ws_url"])
    resume = {"session_id": started["session_id"], **({"last_cursor": max(cursors)} if cursors else {})}
    assert (await again.connect(user="orphan-oz", resume=resume))[0]["resumed"] is True
    reply = client.received.events("reply.started")[0]["message_id"]
    await again.wait_for(lambda r: [e for e in r.events("audio.stored") if e["message_id"] == reply], 120)
    recovered_s = time.monotonic() - killed_at
    assert recovered_s > 0
    await again.close()


# --- barge-in ------------------------------------------------------------------------------


async def _a_playing_reply(stack, user: str) -> tuple[Client, str, asyncio.Task]:
    """A client whose playback of a long reply stalls half a second in (it keeps reporting
    500 ms played): the reply plays while the test speaks over it, and that is what was heard."""
    client = Client(stack["ws_url"])
    await client.connect(user=user)
    await client.send_json({"type": "text", "text": "Tell me a long story?"})
    reply = (await client.wait_for(lambda r: r.audio(), 120))[0].message_id

    async def report_playing() -> None:
        while True:
            await client.send_json({"type": "playback", "message_id": reply, "played_ms": 500})
            await asyncio.sleep(0.1)

    return client, reply, asyncio.create_task(report_playing())


async def test_speaking_over_a_playing_reply_stops_it_where_playback_stood(stack, speech_wav):
    client, reply, reporter = await _a_playing_reply(stack, "barge-bo")
    try:
        await client.stream_wav(speech_wav)
        stop = await client.wait_for(lambda r: r.events("playback.stop"), 60)
    finally:
        reporter.cancel()
    assert stop[0]["message_id"] == reply
    # The position is the reported 500 ms (carried forward in real time until the speech
    # was detected), counted through the reply's sentences as sent.
    sent_s: dict[int, float] = {}
    for chunk in client.received.audio(reply):
        sent_s[chunk.sentence_index] = sent_s.get(chunk.sentence_index, 0) + len(chunk.pcm) / 2 / chunk.sample_rate
    position_s = sum(v for k, v in sent_s.items() if k < stop[0]["sentence_index"]) + stop[0]["offset_ms"] / 1000
    assert 0.45 <= position_s <= 0.75
    interrupted = await client.wait_for(
        lambda r: [e for e in r.events("reply.interrupted") if e["message_id"] == reply], 60
    )
    full = reply_for("Tell me a long story?")
    heard = interrupted[0]["text"]
    assert full.startswith(heard) and len(heard) < len(full)
    stop_at = client.received.index(lambda i: isinstance(i, dict) and i["type"] == "playback.stop")
    later_audio = [i for i in client.received.items[stop_at:] if isinstance(i, AudioChunk) and i.message_id == reply]
    assert later_audio == []
    await client.close()


async def test_a_backchannel_over_a_playing_reply_leaves_it_playing_and_makes_no_turn(stack, tmp_path):
    yeah = make_speech("Yeah.", tmp_path / "yeah.wav")
    client, reply, reporter = await _a_playing_reply(stack, "nodding-nell")
    try:
        await client.stream_wav(yeah)
        (said,) = await client.wait_for(lambda r: r.events("speech.backchannel"), 60)
    finally:
        reporter.cancel()
    assert backchannel.only_backchannel(said["text"], "en")
    done = await client.wait_for(lambda r: [e for e in r.events("reply.done") if e["message_id"] == reply], 120)
    assert done[0]["status"] == "complete"
    for kind in ("speech.barge_in", "playback.pause", "playback.stop", "transcript.final", "reply.interrupted"):
        assert client.received.events(kind) == [], kind
    assert [e["message_id"] for e in client.received.events("reply.started")] == [reply]
    await client.close()


async def test_a_sound_with_no_words_over_a_playing_reply_pauses_it_and_resumes_it_where_it_stopped(stack, tmp_path):
    # espeak-ng's "Hmph.": voiced long enough to pause the reply; Whisper reads it unsure
    # ("A campaign.", confidence about 0.3), so no words came of it: a false interruption.
    grunt = make_speech("Hmph.", tmp_path / "hmph.wav")
    client, reply, reporter = await _a_playing_reply(stack, "grunting-gus")
    try:
        await client.stream_wav(grunt)
        (pause,) = await client.wait_for(lambda r: r.events("playback.pause"), 60)
        (resume,) = await client.wait_for(lambda r: r.events("playback.resume"), 60)
    finally:
        reporter.cancel()
    assert pause["message_id"] == resume["message_id"] == reply
    assert resume["sentence_index"] == pause["sentence_index"] and resume["offset_ms"] <= pause["offset_ms"]
    (nothing,) = await client.wait_for(lambda r: r.events("error") + r.events("transcript.final"), 60)
    assert nothing["type"] == "error" and nothing["code"] == "no_speech_recognized", nothing
    # The reply's audio follows again from where it stopped, and it ends as a whole reply.
    resumed_at = client.received.index(lambda i: isinstance(i, dict) and i["type"] == "playback.resume")
    await client.wait_for(lambda r: [e for e in r.events("audio.end") if e["message_id"] == reply], 120)
    again = [i for i in client.received.items[resumed_at:] if isinstance(i, AudioChunk) and i.message_id == reply]
    assert again and again[0].sentence_index == resume["sentence_index"]
    done = await client.wait_for(lambda r: [e for e in r.events("reply.done") if e["message_id"] == reply], 120)
    assert done[0]["status"] == "complete"
    for kind in ("playback.stop", "transcript.final", "reply.interrupted"):
        assert client.received.events(kind) == [], kind
    await client.close()


async def test_a_push_to_talk_client_is_not_barged_in(stack, speech_wav):
    client = Client(stack["ws_url"])
    await client.connect(user="ptt-pia", barge_in=False)
    await client.send_json({"type": "text", "text": "Keep talking?"})
    await client.wait_for(lambda r: r.audio(), 120)
    await client.stream_wav(speech_wav)
    await client.wait_for(lambda r: r.events("transcript.final"), 60)
    assert client.received.events("playback.stop") == []
    await client.close()


async def test_a_reply_of_another_users_conversation_cannot_be_interrupted(stack):
    owner = Client(stack["ws_url"])
    await owner.connect(user="reply-owner")
    await owner.send_json({"type": "text", "text": "Mine to keep?"})
    done = (await owner.wait_for(lambda r: r.events("reply.done"), 120))[0]
    intruder = Client(stack["ws_url"])
    await intruder.connect(user="reply-intruder")
    await intruder.send_json({"type": "interrupt", "message_id": done["message_id"], "sentence_index": 0})
    await intruder.send_json({"type": "text", "text": "x", "client_seq": 2**31})
    errors = await intruder.wait_for(lambda r: len(r.events("error")) >= 2 and r.events("error"), 10)
    assert [e["code"] for e in errors] == ["unknown_reply", "unknown_message"]
    await owner.close()
    await intruder.close()
    async with httpx.AsyncClient(base_url=stack["http_url"], trust_env=False) as http:
        rows = (
            await http.get(f"/v1/conversations/{done['conversation_id']}/messages", headers=auth_headers("reply-owner"))
        ).json()["items"]
    assert [(r["status"], r["text"]) for r in rows if r["role"] == "avatar"] == [("complete", done["text"])]


async def test_permessage_deflate_is_declined_unless_configured(stack, strict_gateway):
    """PCM does not compress: by default the gateway answers a client's offer without the
    extension; PARLEY_WS_DEFLATE=true (the strict gateway) accepts it."""
    for url, accepted in ((stack["ws_url"], False), (strict_gateway["ws_url"], True)):
        async with websockets.connect(url, compression="deflate") as ws:
            offered = ws.request.headers.get("Sec-WebSocket-Extensions", "")
            answered = ws.response.headers.get("Sec-WebSocket-Extensions", "")
            assert "permessage-deflate" in offered
            assert ("permessage-deflate" in answered) is accepted, answered
