"""The orchestrator as users meet it: turns in order across replicas, several characters."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from ops import devstack
from services.common import ids
from services.tts.config import TtsSettings
from tests.client import Client
from tests.conftest import make_speech
from tests.fakes.llm_server import reply_for

pytestmark = [pytest.mark.e2e, pytest.mark.engine]


@pytest.fixture
def two_orchestrators(stack, tmp_path):
    """A second orchestrator replica beside the stack's own."""
    extra = devstack.ServiceProcess("llm", stack["env"], tmp_path / "llm-2.log").start()
    extra.wait_ready()
    yield
    assert extra.stop() == 0


@pytest.fixture
def slow_llm(fake_llm):
    fake_llm.token_delay_s = 0.08
    yield fake_llm
    fake_llm.token_delay_s = 0.005


async def _rows(stack, sql: str, *args):
    conn = await asyncpg.connect(stack["env"]["PARLEY_DATABASE_URL"])
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def test_a_new_turn_interrupts_the_reply_and_turns_stay_in_order(stack, two_orchestrators, slow_llm):
    client = Client(stack["ws_url"])
    await client.connect(user="grace")
    texts = ["First question here", "Second question here", "Third question here"]
    await client.send_json({"type": "text", "text": texts[0], "client_seq": 0})
    await client.wait_for(lambda r: r.events("reply.delta"), 30)
    for seq, text in enumerate(texts[1:], start=1):
        await client.send_json({"type": "text", "text": text, "client_seq": seq})
    users = await client.wait_for(lambda r: len(r.events("user.message")) == 3 and r.events("user.message"), 10)
    user_ids = [u["message_id"] for u in users]
    reply_ids = [ids.reply_id(u, ids.DEMO_AVATAR_ID) for u in user_ids]
    done = await client.wait_for(lambda r: len(r.events("reply.done")) == 3 and r.events("reply.done"), 60)
    by_reply = {d["message_id"]: d for d in done}
    assert set(by_reply) == set(reply_ids)

    first, last = by_reply[reply_ids[0]], by_reply[reply_ids[2]]
    assert first["status"] == "interrupted"
    assert reply_for(texts[0]).startswith(first["text"]) and first["text"] != reply_for(texts[0])
    assert by_reply[reply_ids[1]]["status"] == "interrupted"
    assert last["status"] == "complete" and last["text"] == reply_for(texts[2])

    # One reply streams at a time: each reply's text ends before the next one's begins.
    r = client.received
    spans = []
    for rid in reply_ids:
        deltas = [
            n
            for n, i in enumerate(r.items)
            if isinstance(i, dict) and i.get("message_id") == rid and i["type"] == "reply.delta"
        ]
        if deltas:
            spans.append((deltas[0], deltas[-1]))
    assert spans == sorted(spans) and all(a[1] < b[0] for a, b in zip(spans, spans[1:]))

    rows = await _rows(
        stack,
        "SELECT reply_to::text, status, text FROM messages WHERE role='avatar' AND reply_to = ANY($1::uuid[])",
        user_ids,
    )
    assert sorted(r["reply_to"] for r in rows) == sorted(user_ids)  # exactly one reply each
    stored = {r["reply_to"]: r for r in rows}
    assert stored[user_ids[0]]["status"] == "interrupted" and stored[user_ids[0]]["text"] == first["text"]
    assert stored[user_ids[2]]["status"] == "complete"
    await client.wait_for(lambda r: any(e["message_id"] == reply_ids[2] for e in r.events("audio.stored")), 120)
    await client.close()


async def _avatar_with_voice(stack, name: str, espeak_voice: str, tmp_path) -> str:
    """A second character with a voice of its own, uploaded the way `parley seed` does it."""
    import hashlib
    import subprocess

    from services.common import objectstore

    avatar_id = ids.new_id()
    wav = tmp_path / f"{name}.wav"
    speech = subprocess.run(
        ["espeak-ng", "-v", espeak_voice, "--stdout", "I am a second character with a voice of my own, listen."],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["sox", "-t", "wav", "-", "-r", "22050", "-c", "1", str(wav)], input=speech, check=True)
    key = objectstore.voice_key(avatar_id, hashlib.sha256(wav.read_bytes()).hexdigest())
    async with objectstore.ObjectStore(stack["settings"]) as store:
        await store.put(key, wav.read_bytes(), "audio/wav")
    await _rows(
        stack,
        "INSERT INTO avatars (id, name, persona_prompt, language, voice_key) VALUES ($1::uuid, $2, $3, 'en', $4)",
        avatar_id,
        name,
        "You are {name}, {role}.",
        key,
    )
    return avatar_id


async def test_two_characters_answer_in_their_own_voices(stack, fake_llm, tmp_path):
    bo = await _avatar_with_voice(stack, "Bo", "en-us+m3", tmp_path)
    client = Client(stack["ws_url"])
    await client.connect(user="heidi", avatar_ids=[ids.DEMO_AVATAR_ID, bo])
    await client.send_json({"type": "text", "text": "Bo and Ada, what do you think?"})
    user_id = (await client.wait_for(lambda r: r.events("user.message"), 10))[0]["message_id"]
    stored = await client.wait_for(lambda r: len(r.events("audio.stored")) == 2 and r.events("audio.stored"), 120)
    started = client.received.events("reply.started")
    # Conversation order, not the order named in the text.
    assert [s["avatar_id"] for s in started] == [ids.DEMO_AVATAR_ID, bo]
    assert [s["message_id"] for s in started] == [ids.reply_id(user_id, a) for a in (ids.DEMO_AVATAR_ID, bo)]
    audio = {s["message_id"]: b"".join(c.pcm for c in client.received.audio(s["message_id"])) for s in started}
    assert all(audio.values()) and len(set(audio.values())) == 2  # two voices, two different streams
    assert {s["message_id"] for s in stored} == set(audio)

    ada_prompt, bo_prompt = fake_llm.requests[-2]["messages"], fake_llm.requests[-1]["messages"]
    assert "Ada" in ada_prompt[0]["content"] and "Bo" in ada_prompt[0]["content"]
    assert bo_prompt[0]["content"].startswith("You are Bo")
    assert bo_prompt[-2]["content"] == "Bo and Ada, what do you think?"
    assert bo_prompt[-1] == {"role": "user", "content": "Ada: " + reply_for("Bo and Ada, what do you think?")}
    await client.close()


async def test_redelivered_facts_change_no_row(stack, fake_llm):
    """Every fact of a finished turn delivered once more, past de-duplication: nothing changes."""
    import nats

    from services.common import schemas, subjects

    client = Client(stack["ws_url"])
    started = (await client.connect(user="ivan"))[0]
    conv = started["conversation_id"]
    await client.send_json({"type": "text", "text": "Only once please"})
    await client.wait_for(lambda r: r.events("audio.stored"), 120)
    user_id = client.received.events("user.message")[0]["message_id"]
    reply_id = ids.reply_id(user_id, ids.DEMO_AVATAR_ID)
    query = "SELECT id::text, role, status, text, audio_key, timings FROM messages WHERE conversation_id=$1::uuid"
    before = sorted(map(tuple, await _rows(stack, query, conv)))
    requests_before = len(fake_llm.requests)

    nc = await nats.connect(stack["env"]["PARLEY_NATS_URL"])
    js = nc.jetstream()
    turn = schemas.UserTurn(
        conversation_id=conv,
        message_id=user_id,
        session_id=started["session_id"],
        turn_seq=0,
        source="text",
        text="Only once please",
    )
    done = schemas.ReplyDone(
        conversation_id=conv,
        message_id=reply_id,
        user_message_id=user_id,
        avatar_id=ids.DEMO_AVATAR_ID,
        status="complete",
        text=reply_for("Only once please"),
        sentence_count=len(client.received.events("reply.sentence")),
    )
    again = {"Nats-Msg-Id": "redelivered-" + ids.new_id()}
    await js.publish(subjects.turn(conv), schemas.encode(turn), headers=again)
    await js.publish(
        subjects.reply_done(conv), schemas.encode(done), headers={"Nats-Msg-Id": "redelivered-" + ids.new_id()}
    )
    # The orchestrator and storage have taken and acked the redelivered facts.
    for stream, consumer in (("PARLEY_TURNS", "llm"), ("PARLEY_REPLIES", "storage")):
        for _ in range(300):
            info = await js.consumer_info(stream, consumer)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                break
            await asyncio.sleep(0.05)
        assert info.num_pending == 0 and info.num_ack_pending == 0, stream
    await nc.close()

    after = sorted(map(tuple, await _rows(stack, query, conv)))
    assert after == before
    assert len(fake_llm.requests) == requests_before  # the turn was not answered again
    assert len(client.received.events("reply.started")) == 1
    # Storage announced the URL again; the event log took it as the duplicate it is.
    assert len(client.received.events("audio.stored")) == 1
    await client.close()


async def test_an_interrupted_reply_keeps_only_what_was_heard(stack, fake_llm):
    client = Client(stack["ws_url"])
    await client.connect(user="judy")
    await client.send_json({"type": "text", "text": "Tell me a story"})
    await client.wait_for(lambda r: r.events("audio.stored"), 120)
    reply_id = client.received.events("reply.started")[0]["message_id"]
    sentences = [e["text"] for e in client.received.events("reply.sentence")]
    played = [c for c in client.received.audio(reply_id) if c.sentence_index == 1]
    duration_s = sum(len(c.pcm) for c in played) / 2 / 24000
    offset_ms = int(duration_s * 1000 * 0.6)
    await client.send_json({"type": "interrupt", "message_id": reply_id, "sentence_index": 1, "offset_ms": offset_ms})
    event = (await client.wait_for(lambda r: r.events("reply.interrupted"), 30))[0]
    second = sentences[1].split()
    expected = " ".join(sentences[0].split() + second[: int(len(second) * (offset_ms / 1000) / duration_s)])
    assert event["message_id"] == reply_id and event["text"] == expected
    rows = await _rows(stack, "SELECT status, text FROM messages WHERE id=$1::uuid", reply_id)
    assert rows[0]["status"] == "interrupted" and rows[0]["text"] == expected

    await client.send_json({"type": "text", "text": "Go on"})
    await client.wait_for(lambda r: len(r.events("reply.done")) == 2, 60)
    prompt = fake_llm.requests[-1]["messages"]
    assert prompt[-2] == {"role": "assistant", "content": expected}  # the next turn's history is what was heard
    await client.close()


async def test_no_cancelled_sentence_is_synthesised(stack):
    import nats

    from services.common import schemas, subjects

    client = Client(stack["ws_url"])
    await client.connect(user="ken")
    await client.send_json({"type": "text", "text": "Talk for a while"})
    first = await client.wait_for(lambda r: r.audio(), 60)
    reply_id = first[0].message_id
    await client.send_json({"type": "interrupt", "message_id": reply_id})
    done = (await client.wait_for(lambda r: r.events("reply.done"), 30))[0]
    count = done["sentence_count"]
    assert count >= 3

    nc = await nats.connect(stack["env"]["PARLEY_NATS_URL"])
    js = nc.jetstream()
    statuses: dict[int, str] = {}
    for _ in range(200):  # until the TTS worker has settled every sentence of the reply
        for i in range(count):
            if i not in statuses:
                try:
                    raw = await js.get_last_msg("PARLEY_SPEECH", subjects.speech(done["conversation_id"], reply_id, i))
                    statuses[i] = schemas.AudioMeta.from_headers(raw.headers).status
                except nats.js.errors.NotFoundError:
                    pass
        if len(statuses) == count:
            break
        await asyncio.sleep(0.1)
    await nc.close()
    assert len(statuses) == count
    synthesised = sorted(i for i, s in statuses.items() if s == "ok")
    # Only sentences already in a TTS lane when the person cut in (the one playing, and the
    # next while capacity allowed); every later one is skipped.
    capacity = TtsSettings().tts_capacity
    assert synthesised == list(range(len(synthesised))) and 1 <= len(synthesised) <= capacity < count
    await client.close()


async def test_a_response_cancelled_before_its_turn_is_taken_is_never_answered(stack, fake_llm):
    """A client may cancel a response whose turn no replica holds yet (the core NATS cancel
    overtakes the turn's fact): the turn is kept, its reply stored empty, nothing spoken."""
    import nats

    from services.common import schemas, subjects

    client = Client(stack["ws_url"])
    started = (await client.connect(user="lena"))[0]
    conv = started["conversation_id"]
    user_id = ids.new_id()
    reply_id = ids.reply_id(user_id, ids.DEMO_AVATAR_ID)
    requests_before = len(fake_llm.requests)

    nc = await nats.connect(stack["env"]["PARLEY_NATS_URL"])
    js = nc.jetstream()
    cancel = schemas.ReplyCancel(conversation_id=conv, message_id=user_id, reason="test")
    await nc.publish(subjects.control(conv, cancel.KIND), schemas.encode(cancel))
    await js.publish(
        subjects.interrupt(conv),
        schemas.encode(schemas.Interruption(conversation_id=conv, message_id=reply_id, sentence_index=0, offset_s=0.0)),
        headers={"Nats-Msg-Id": f"interrupt.{reply_id}"},
    )
    # Longer than the interruption's first few redeliveries: it must wait for the reply's row.
    await asyncio.sleep(2.5)
    turn = schemas.UserTurn(
        conversation_id=conv,
        message_id=user_id,
        session_id=started["session_id"],
        turn_seq=7,
        source="text",
        text="Never mind",
    )
    await js.publish(subjects.turn(conv), schemas.encode(turn), headers={"Nats-Msg-Id": f"turn.{user_id}"})
    done = (await client.wait_for(lambda r: r.events("reply.done"), 60))[0]
    assert done["message_id"] == reply_id and done["status"] == "interrupted" and done["text"] == ""
    rows = await _rows(
        stack, "SELECT id::text, role, status, text FROM messages WHERE id=ANY($1::uuid[])", [user_id, reply_id]
    )
    assert sorted((r["role"], r["status"], r["text"]) for r in rows) == [
        ("avatar", "interrupted", ""),
        ("user", "complete", "Never mind"),
    ]
    # The interruption is taken and acked once the row exists.
    for _ in range(200):
        info = await js.consumer_info("PARLEY_INTERRUPTS", "llm-interrupts")
        if info.num_pending == 0 and info.num_ack_pending == 0:
            break
        await asyncio.sleep(0.05)
    assert info.num_pending == 0 and info.num_ack_pending == 0
    await nc.close()
    assert len(fake_llm.requests) == requests_before  # nothing was asked of the LLM
    assert not client.received.events("reply.started") and not client.received.audio()
    await client.close()


async def test_an_avatars_name_the_model_mishears_is_heard_as_its_hotword(stack, fake_llm, tmp_path):
    """tiny.en hears "Kayleigh" for espeak's "Kaelith" unaided (tests/unit/stt/test_real_whisper.py);
    the session gives its avatars' names to the STT worker as hotwords, so the name is heard."""
    kaelith = await _avatar_with_voice(stack, "Kaelith", "en-us+f2", tmp_path)
    client = Client(stack["ws_url"])
    await client.connect(user="hotword-user", avatar_ids=[kaelith])
    await client.stream_wav(make_speech("Hello Kaelith, what can you do?", tmp_path / "name.wav"))
    (final,) = await client.wait_for(lambda r: r.events("transcript.final"), 60)
    assert "Kaelith" in final["text"], final["text"]
    await client.wait_for(lambda r: r.events("audio.stored"), 120)
    assert client.received.events("reply.started")[0]["avatar_id"] == kaelith
    await client.close()
