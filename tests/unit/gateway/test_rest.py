"""The REST API against the whole stack: avatars with uploaded voices (stored through the
storage service, spoken by a TTS worker), who may see and change what, soft deletion,
paginated conversations and messages, and a reason with every error. The checks that need
no stack (voice normalising, cursors, the body limit) run on their own at the end."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import re
import subprocess
import uuid

import asyncpg
import httpx
import pytest
import soundfile as sf
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from ops import devstack
from services.common import db, ids, objectstore
from services.gateway.config import GatewaySettings
from services.gateway.rest import cursors, limits
from services.gateway.voice import REFERENCE_RATE, VoiceRejected, normalise_voice
from tests.client import Client, auth_headers
from tests.conftest import make_speech

LIMIT = GatewaySettings.model_fields["max_voice_upload_bytes"].default


def on_stack(fn):
    return pytest.mark.e2e(pytest.mark.engine(fn))


def sox(*args: str) -> None:
    subprocess.run(["sox", *args], check=True)


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    """Recordings to upload: speech long enough, a long stereo FLAC, and ones to refuse."""
    d = tmp_path_factory.mktemp("voices")
    speech = make_speech(
        "Hello there, I am a brand new character and this is how my voice sounds when I talk.",
        d / "speech.wav",
        trailing_silence_s=4.0,
    )
    assert sf.info(str(speech)).duration >= 6.5
    sox("-n", "-r", "44100", "-c", "2", str(d / "long.flac"), "synth", "25", "sine", "220", "sine", "330", "vol", "0.5")
    sox("-n", "-r", "16000", "-c", "1", str(d / "short.wav"), "synth", "3", "sine", "300")
    sox("-n", "-r", "16000", "-c", "1", str(d / "silent.wav"), "trim", "0", "8")
    return {p.stem: p.read_bytes() for p in d.glob("*.*") if not p.name.endswith(".raw.wav")}


def http(stack) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=stack["http_url"], trust_env=False, timeout=60)


async def create_avatar(client: httpx.AsyncClient, user: str, voice: bytes, filename="voice.wav", **fields):
    return await client.post(
        "/v1/avatars",
        data={"name": "Nova", **fields},
        files={"voice": (filename, voice, "application/octet-stream")},
        headers=auth_headers(user),
    )


async def voice_key_of(stack, avatar_id: str) -> str:
    conn = await asyncpg.connect(stack["env"]["PARLEY_DATABASE_URL"])
    try:
        return await conn.fetchval("SELECT voice_key FROM avatars WHERE id=$1::uuid", avatar_id)
    finally:
        await conn.close()


async def stored_object(stack, key: str) -> bytes:
    async with objectstore.ObjectStore(stack["settings"]) as store:
        return await store.get(key)


async def ws_refused(stack, user: str, **start) -> int:
    """The close code of a session.start the gateway refuses."""
    client = Client(stack["ws_url"])
    with pytest.raises(AssertionError, match="connection closed"):
        await client.connect(user=user, **start)
    return client.close_code


# --- avatars --------------------------------------------------------------------------------


@on_stack
async def test_an_uploaded_voice_is_stored_normalised_and_speaks_in_a_conversation(stack, voices, fake_llm):
    async with http(stack) as api:
        made = await create_avatar(api, "rest-ann", voices["speech"], role_title="a ship's navigator")
        assert made.status_code == 201, made.text
        avatar = made.json()
        assert made.headers["location"] == f"/v1/avatars/{avatar['id']}"
        assert avatar["name"] == "Nova" and avatar["role_title"] == "a ship's navigator"
        assert avatar["language"] == "en" and avatar["has_voice"] and not avatar["public"]
        assert "{name}" in avatar["persona_prompt"] and "{role}" in avatar["persona_prompt"]

        listed = (await api.get("/v1/avatars", headers=auth_headers("rest-ann"))).json()
        assert {a["id"]: a["public"] for a in listed}[avatar["id"]] is False
        assert {a["id"]: a["public"] for a in listed}[ids.DEMO_AVATAR_ID] is True
        got = await api.get(f"/v1/avatars/{avatar['id']}", headers=auth_headers("rest-ann"))
        assert got.status_code == 200 and got.json() == avatar

    key = await voice_key_of(stack, avatar["id"])
    wav = await stored_object(stack, key)
    assert re.fullmatch(rf"voices/{avatar['id']}/[0-9a-f]{{16}}\.wav", key)
    assert key.endswith(hashlib.sha256(wav).hexdigest()[:16] + ".wav")
    info = sf.info(io.BytesIO(wav))
    assert (info.samplerate, info.channels, info.subtype) == (REFERENCE_RATE, 1, "PCM_16")
    assert info.duration == pytest.approx(sf.info(io.BytesIO(voices["speech"])).duration, abs=0.01)

    client = Client(stack["ws_url"])
    started = (await client.connect(user="rest-ann", avatar_ids=[avatar["id"]]))[0]
    await client.send_json({"type": "text", "text": "hi"})
    stored = (await client.wait_for(lambda r: r.events("audio.stored"), 180))[0]
    reply = client.received.events("reply.started")[0]
    assert reply["avatar_id"] == avatar["id"]
    assert client.received.audio(reply["message_id"]), "the reply was not spoken"
    assert "Nova" in fake_llm.requests[-1]["messages"][0]["content"]
    await client.close()

    conv = started["conversation_id"]
    async with http(stack) as api:
        page = (await api.get(f"/v1/conversations/{conv}/messages", headers=auth_headers("rest-ann"))).json()
        assert [m["role"] for m in page["items"]] == ["user", "avatar"] and page["next_cursor"] is None
        assert page["items"][1]["audio_key"] == stored["key"] and page["items"][1]["audio_url"]
        shown = (await api.get(f"/v1/conversations/{conv}", headers=auth_headers("rest-ann"))).json()
        assert shown["avatar_ids"] == [avatar["id"]]
        assert shown["last_message"]["role"] == "avatar"
        assert shown["last_message"]["text"] == page["items"][1]["text"][:200]

        audio = f"/v1/conversations/{conv}/messages/{stored['message_id']}/audio"
        assert (await api.get(audio, headers=auth_headers("rest-ben"))).status_code == 404
        mine = await api.get(audio, headers=auth_headers("rest-ann"))
        assert mine.status_code == 307 and stored["key"] in mine.headers["location"]


@on_stack
async def test_a_long_recording_is_cut_and_a_replaced_voice_gets_a_new_key(stack, voices):
    async with http(stack) as api:
        made = await create_avatar(api, "rest-ann", voices["long"], filename="long.flac", language="DE")
        assert made.status_code == 201, made.text
        avatar = made.json()
        assert avatar["language"] == "de"
        first_key = await voice_key_of(stack, avatar["id"])
        info = sf.info(io.BytesIO(await stored_object(stack, first_key)))
        assert (info.samplerate, info.channels) == (REFERENCE_RATE, 1)
        assert info.duration == pytest.approx(20.0, abs=0.01)

        replaced = await api.put(
            f"/v1/avatars/{avatar['id']}/voice",
            files={"voice": ("speech.wav", voices["speech"])},
            headers=auth_headers("rest-ann"),
        )
        assert replaced.status_code == 200, replaced.text
        when = dt.datetime.fromisoformat
        assert when(replaced.json()["updated_at"]) > when(avatar["updated_at"])
        second_key = await voice_key_of(stack, avatar["id"])
        assert second_key != first_key and second_key.startswith(f"voices/{avatar['id']}/")
        assert sf.info(io.BytesIO(await stored_object(stack, second_key))).duration < 20.0
        # Conversations that began with the old voice may still be speaking with it.
        assert await stored_object(stack, first_key)


@on_stack
async def test_uploads_that_cannot_be_a_voice_are_refused_with_a_reason(stack, voices):
    ann = auth_headers("rest-cat")
    async with http(stack) as api:
        cases = {
            "short": (voices["short"], 422, "at least 6 s"),
            "silent": (voices["silent"], 422, "silent"),
            "garbage": (b"this is not audio at all\n" * 200, 415, "not audio"),
            "empty": (b"", 422, "empty"),
            "just over the limit": (b"\0" * (LIMIT + 1), 413, f"over {LIMIT} bytes"),
            "far over the limit": (b"\0" * (LIMIT + limits.FORM_FIELDS_LIMIT + 1), 413, "over"),
        }
        for case, (data, status, reason) in cases.items():
            resp = await create_avatar(api, "rest-cat", data)
            assert resp.status_code == status, (case, resp.text)
            assert reason in resp.json()["detail"], case

        async def chunked():
            yield b'--x\r\nContent-Disposition: form-data; name="voice"; filename="v.wav"\r\n\r\n'
            for _ in range(LIMIT // 65536 + 4):
                yield b"\0" * 65536

        resp = await api.post(
            "/v1/avatars", content=chunked(), headers={**ann, "content-type": "multipart/form-data; boundary=x"}
        )
        assert resp.status_code == 413 and "over" in resp.json()["detail"]

        malformed = [
            {"data": {"name": "Nova"}},  # no voice
            {"json": {"name": "Nova"}},  # not a form
            {"content": b"--x\r\nnonsense", "headers": {"content-type": "multipart/form-data"}},  # no boundary
            {"data": {"name": "Nova", "language": "english"}, "files": {"voice": ("v.wav", voices["speech"])}},
            {"data": {"name": "  "}, "files": {"voice": ("v.wav", voices["speech"])}},
            {"data": {"name": "N" * 101}, "files": {"voice": ("v.wav", voices["speech"])}},
            {"data": {"name": "Nova"}, "files": [("voice", ("a.wav", b"1")), ("voice", ("b.wav", b"2"))]},
        ]
        for kwargs in malformed:
            kwargs["headers"] = {**ann, **kwargs.get("headers", {})}
            resp = await api.post("/v1/avatars", **kwargs)
            assert resp.status_code == 422, (kwargs.get("data"), resp.text)
            assert resp.json()["detail"]

        resp = await api.post("/v1/avatars", data={"name": "Nova"}, files={"voice": ("v.wav", voices["speech"])})
        assert resp.status_code == 401
        listed = (await api.get("/v1/avatars", headers=ann)).json()
        assert all(a["public"] for a in listed), "a refused upload created an avatar"


@on_stack
async def test_edit_and_soft_delete_and_public_avatars_are_read_only(stack, voices):
    dan = auth_headers("rest-dan")
    async with http(stack) as api:
        avatar = (await create_avatar(api, "rest-dan", voices["speech"], role_title="a guide")).json()
        url = f"/v1/avatars/{avatar['id']}"

        patched = await api.patch(
            url, json={"name": "Vera", "persona_prompt": "You are {name}. Be brief.", "language": "fr"}, headers=dan
        )
        assert patched.status_code == 200, patched.text
        assert (patched.json()["name"], patched.json()["language"]) == ("Vera", "fr")
        assert patched.json()["role_title"] == "a guide"
        cleared = await api.patch(url, json={"role_title": None}, headers=dan)
        assert cleared.json()["role_title"] is None
        assert (await api.get(url, headers=dan)).json() == cleared.json()
        for bad in ({"name": None}, {"name": ""}, {"language": "french"}, {"voice_key": "voices/x.wav"}, [1]):
            resp = await api.patch(url, json=bad, headers=dan)
            assert resp.status_code == 422 and resp.json()["detail"], bad

        demo = f"/v1/avatars/{ids.DEMO_AVATAR_ID}"
        assert (await api.get(demo, headers=dan)).json()["public"] is True
        for resp in (
            await api.patch(demo, json={"name": "Mine now"}, headers=dan),
            await api.put(f"{demo}/voice", files={"voice": ("v.wav", voices["speech"])}, headers=dan),
            await api.delete(demo, headers=dan),
        ):
            assert resp.status_code == 403 and resp.json()["detail"] == "public avatars are read-only"
        assert (await api.get(demo, headers=dan)).json()["name"] == "Ada"

        conv = await api.post("/v1/conversations", json={"avatar_ids": [avatar["id"]]}, headers=dan)
        assert conv.status_code == 201
        assert (await api.delete(url, headers=dan)).status_code == 204
        assert (await api.get(url, headers=dan)).status_code == 404
        assert (await api.delete(url, headers=dan)).status_code == 404
        assert (await api.patch(url, json={"name": "Back"}, headers=dan)).status_code == 404
        assert avatar["id"] not in [a["id"] for a in (await api.get("/v1/avatars", headers=dan)).json()]
        refused = await api.post("/v1/conversations", json={"avatar_ids": [avatar["id"]]}, headers=dan)
        assert refused.status_code == 404 and avatar["id"] in refused.json()["detail"]
        # The conversation it was in stays readable.
        kept = await api.get(f"/v1/conversations/{conv.json()['id']}", headers=dan)
        assert kept.status_code == 200 and kept.json()["avatar_ids"] == [avatar["id"]]
        assert (await api.get(f"/v1/conversations/{conv.json()['id']}/messages", headers=dan)).status_code == 200
    assert await ws_refused(stack, "rest-dan", avatar_ids=[avatar["id"]]) == 4404


@on_stack
async def test_another_users_private_avatar_is_invisible_and_unusable(stack, voices):
    async with http(stack) as api:
        avatar = (await create_avatar(api, "rest-eve", voices["speech"])).json()
        url = f"/v1/avatars/{avatar['id']}"
        frank = auth_headers("rest-frank")
        assert avatar["id"] not in [a["id"] for a in (await api.get("/v1/avatars", headers=frank)).json()]
        for resp in (
            await api.get(url, headers=frank),
            await api.patch(url, json={"name": "Stolen"}, headers=frank),
            await api.put(f"{url}/voice", files={"voice": ("v.wav", voices["speech"])}, headers=frank),
            await api.delete(url, headers=frank),
            await api.post("/v1/conversations", json={"avatar_ids": [avatar["id"]]}, headers=frank),
        ):
            assert resp.status_code == 404 and "no such avatar" in resp.json()["detail"]
        unchanged = await api.get(url, headers=auth_headers("rest-eve"))
        assert unchanged.json() == avatar
        for odd in ("not-a-uuid", "00000000-0000-0000-0000-00000000000g", str(uuid.uuid4())):
            assert (await api.get(f"/v1/avatars/{odd}", headers=frank)).status_code == 404
    assert await ws_refused(stack, "rest-frank", avatar_ids=[avatar["id"]]) == 4404


@on_stack
async def test_an_edited_avatar_speaks_as_edited_in_a_conversation_already_under_way(stack, voices, fake_llm):
    async with http(stack) as api:
        avatar = (await create_avatar(api, "rest-eve", voices["speech"])).json()
    client = Client(stack["ws_url"])
    await client.connect(user="rest-eve", avatar_ids=[avatar["id"]])
    await client.send_json({"type": "text", "text": "Who are you?"})
    await client.wait_for(lambda r: r.events("reply.done"), 120)
    assert "Nova" in fake_llm.requests[-1]["messages"][0]["content"]
    async with http(stack) as api:
        edited = await api.patch(
            f"/v1/avatars/{avatar['id']}",
            json={"name": "Vega", "persona_prompt": "You are {name}, and you speak in riddles."},
            headers=auth_headers("rest-eve"),
        )
        assert edited.status_code == 200, edited.text
    # The orchestrator re-reads a conversation's avatars after PARLEY_LLM_AVATAR_CACHE_S (1 s here).
    await asyncio.sleep(1.5)
    await client.send_json({"type": "text", "text": "And now?"})
    await client.wait_for(lambda r: len(r.events("reply.done")) == 2, 120)
    assert fake_llm.requests[-1]["messages"][0]["content"].startswith("You are Vega, and you speak in riddles.")
    await client.close()


@pytest.fixture(scope="module")
def storageless_gateway(stack, tmp_path_factory):
    """A gateway whose bus has no storage service on it."""
    bus = devstack.NatsServer(tmp_path_factory.mktemp("lonely-nats")).start()
    env = {**stack["env"], "PARLEY_NATS_URL": bus.url}
    proc = devstack.ServiceProcess("gateway", env, tmp_path_factory.mktemp("lonely-gw") / "gateway.log").start()
    try:
        proc.wait_ready()
        yield proc.base_url
    finally:
        proc.stop()
        bus.stop()


@on_stack
async def test_a_voice_upload_without_a_storage_service_is_503(stack, storageless_gateway, voices):
    async with httpx.AsyncClient(base_url=storageless_gateway, trust_env=False, timeout=60) as api:
        resp = await create_avatar(api, "rest-ivy", voices["speech"])
        assert resp.status_code == 503 and "storage service did not answer" in resp.json()["detail"]
        assert all(a["public"] for a in (await api.get("/v1/avatars", headers=auth_headers("rest-ivy"))).json())


# --- conversations and messages -------------------------------------------------------------


async def walk(api: httpx.AsyncClient, path: str, headers: dict, limit: int) -> list[list[dict]]:
    pages, cursor = [], None
    while True:
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        resp = await api.get(path, params=params, headers=headers)
        assert resp.status_code == 200, resp.text
        pages.append(resp.json()["items"])
        cursor = resp.json()["next_cursor"]
        if cursor is None:
            return pages


@on_stack
async def test_conversations_and_messages_page_without_gaps_or_repeats(stack):
    gil = auth_headers("rest-gil")
    async with http(stack) as api:
        made = []
        for _ in range(7):
            resp = await api.post("/v1/conversations", json={}, headers=gil)
            assert resp.status_code == 201 and resp.json()["avatar_ids"] == [ids.DEMO_AVATAR_ID]
            made.append(resp.json()["id"])

        pages = await walk(api, "/v1/conversations", gil, limit=3)
        assert [len(p) for p in pages] == [3, 3, 1]
        assert [c["id"] for p in pages for c in p] == made[::-1]  # newest first, each once
        first = pages[0][0]
        assert first["last_message"] is None and first["title"] is None and first["created_at"]

        conv = made[0]
        expected = await _insert_messages(stack, conv)
        path = f"/v1/conversations/{conv}/messages"
        for limit in (1, 4, 200):
            pages = await walk(api, path, gil, limit)
            assert [m["id"] for p in pages for m in p] == expected, limit
            assert all(len(p) == limit for p in pages[:-1]) and 0 < len(pages[-1]) <= limit
        listed = (await api.get(f"/v1/conversations/{conv}", headers=gil)).json()
        last = next(m for p in pages for m in p if m["id"] == expected[-1])  # the history's own last
        assert listed["last_message"]["text"] == last["text"] and last["text"].startswith("answer ")

        cursor = (await api.get(path, params={"limit": 2}, headers=gil)).json()["next_cursor"]
        other_cursor = (await api.get("/v1/conversations", params={"limit": 1}, headers=gil)).json()["next_cursor"]
        bad = {
            "/v1/conversations": ["nonsense", "!!!", cursor, "W10", "WyJjIl0"],
            f"/v1/conversations/{made[1]}/messages": [cursor, other_cursor],
            path: ["nonsense", other_cursor],
        }
        for where, cursors in bad.items():
            for c in cursors:
                resp = await api.get(where, params={"cursor": c}, headers=gil)
                assert resp.status_code == 400 and "cursor" in resp.json()["detail"], (where, c)
        hal = auth_headers("rest-hal")
        stolen = await api.get("/v1/conversations", params={"cursor": other_cursor}, headers=hal)
        assert stolen.status_code == 400
        for params in ({"limit": 0}, {"limit": 101}, {"limit": "x"}):
            assert (await api.get("/v1/conversations", params=params, headers=gil)).status_code == 422
        assert (await api.get(path, params={"limit": 201}, headers=gil)).status_code == 422

        assert (await api.get("/v1/conversations", headers=hal)).json() == {"items": [], "next_cursor": None}
        for where in (f"/v1/conversations/{conv}", path, "/v1/conversations/nope", "/v1/conversations/nope/messages"):
            resp = await api.get(where, headers=hal)
            assert resp.status_code == 404 and resp.json()["detail"] == "no such conversation"


async def _insert_messages(stack, conv: str) -> list[str]:
    """Nine question/answer pairs, three pairs to an instant, as the orchestrator's rows are
    written; returns their ids in the order the API must list them."""
    base = dt.datetime.now(dt.UTC)
    rows = []
    conn = await asyncpg.connect(stack["env"]["PARLEY_DATABASE_URL"])
    try:
        for i in range(9):
            at = base + dt.timedelta(seconds=i // 3)
            question, answer = ids.new_id(), ids.new_id()
            await conn.execute(
                """INSERT INTO messages (id, conversation_id, role, source, text, status, created_at)
                   VALUES ($1::uuid, $2::uuid, 'user', 'text', $3, 'complete', $4)""",
                question,
                conv,
                f"question {i}",
                at,
            )
            await conn.execute(
                """INSERT INTO messages (id, conversation_id, role, avatar_id, reply_to, text, status, created_at)
                   VALUES ($1::uuid, $2::uuid, 'avatar', $3::uuid, $4::uuid, $5, 'complete', $6)""",
                answer,
                conv,
                ids.DEMO_AVATAR_ID,
                question,
                f"answer {i}",
                at,
            )
            rows += [(at, False, uuid.UUID(question)), (at, True, uuid.UUID(answer))]
    finally:
        await conn.close()
    return [str(r[2]) for r in sorted(rows)]


# --- without the stack ----------------------------------------------------------------------


def _tone(seconds: float, rate: int, channels: int = 1) -> bytes:
    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    audio = np.stack([0.3 * np.sin(2 * np.pi * 220 * t)] * channels, axis=1)
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_normalise_voice_makes_mono_22050_and_keeps_at_most_max_s():
    wav, seconds = normalise_voice(_tone(9.0, 48000, channels=2), max_bytes=10**7, min_s=6, max_s=8)
    info = sf.info(io.BytesIO(wav))
    assert (info.samplerate, info.channels, info.subtype, seconds) == (22050, 1, "PCM_16", 8.0)


@pytest.mark.parametrize(
    ("data", "max_bytes", "status"),
    [
        (_tone(7.0, 16000), 1000, 413),
        (_tone(5.9, 16000), 10**7, 422),
        (_tone(7.0, 4000), 10**7, 422),
        (b"RIFF" + b"\0" * 100, 10**7, 415),
        (b"", 10**7, 422),
    ],
)
def test_normalise_voice_refuses_with_a_status(data, max_bytes, status):
    with pytest.raises(VoiceRejected) as refused:
        normalise_voice(data, max_bytes=max_bytes, min_s=6, max_s=20)
    assert refused.value.status == status and refused.value.detail


def test_cursors_round_trip_and_refuse_anything_else():
    at, row_id = dt.datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC), str(uuid.uuid4())
    conv = db.Conversation(row_id, [], None, at, at, None)
    assert cursors.conversation_position(cursors.conversation_cursor("u1", conv), "u1") == (at, row_id)
    reply = db.Message(row_id, "avatar", None, None, None, "", "complete", None, None, None, False, {}, at, None)
    assert cursors.message_position(cursors.message_cursor("c1", reply), "c1") == (at, True, row_id)
    for cursor, scope in [
        (cursors.conversation_cursor("u1", conv), "u2"),
        (cursors.message_cursor("c1", reply), "c2"),
        (cursors.encode_cursor("c", "u1", "soon", row_id), "u1"),
        (cursors.encode_cursor("c", "u1", 10**20, row_id), "u1"),
        (cursors.encode_cursor("c", "u1", 1, "not-a-uuid"), "u1"),
        ("%%%", "u1"),
        ("", "u1"),
    ]:
        with pytest.raises(cursors.BadCursor):
            cursors.conversation_position(cursor, scope)


async def test_body_limit_answers_413_with_a_reason_declared_or_chunked():
    async def echo(request):
        return JSONResponse({"size": len(await request.body())})

    app = limits.BodyLimit(Starlette(routes=[Route("/v1/avatars", echo, methods=["POST"])]), max_voice_bytes=1000)
    limit = 1000 + limits.FORM_FIELDS_LIMIT

    async def chunks(total: int):
        for _ in range(total // 4096 + 1):
            yield b"\0" * 4096

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw") as client:
        assert (await client.post("/v1/avatars", content=b"\0" * limit)).json() == {"size": limit}
        for body in (b"\0" * (limit + 1), chunks(limit + 1)):
            resp = await client.post("/v1/avatars", content=body)
            assert resp.status_code == 413 and f"over {limit} bytes" in resp.json()["detail"]
