"""One reply's stream without a server: an in-memory bus and a scripted LLM. Tokens are relayed
as they come, each sentence goes to TTS the moment it is complete (its spoken form, its derived
job id), a cancel stops the stream at the next token, and an LLM failure is told to the client."""

from __future__ import annotations

import asyncio

from services.common import db, ids, schemas, subjects
from services.llm.client import LLMTimeout
from services.llm.config import LlmSettings
from services.llm.reply import ReplyStream
from tests.fakes.bus import MemoryBus
from tests.fakes.llm import ScriptedLLM

CONV = ids.new_id()
AVATAR = db.Avatar(ids.new_id(), "Ada", "a tester", None, "en", "voices/ada.wav", None)


def _stream(bus: MemoryBus, llm: ScriptedLLM) -> tuple[ReplyStream, str]:
    turn = schemas.UserTurn(
        conversation_id=CONV, message_id=ids.new_id(), session_id="s", turn_seq=0, source="text", text="Hi"
    )
    reply_id = ids.reply_id(turn.message_id, AVATAR.id)
    return ReplyStream(bus, llm, LlmSettings(), turn, AVATAR, reply_id), reply_id


async def test_sentences_go_to_tts_as_they_complete_in_their_spoken_form():
    bus = MemoryBus()
    llm = ScriptedLLM(["Hello **there**. ", "How are ", "you today? ", "Fine"])
    stream, reply_id = _stream(bus, llm)
    first_out = asyncio.Event()
    out = await stream.run([{"role": "user", "content": "Hi"}], asyncio.Event(), first_out)

    assert (out.status, out.text, out.tokens, out.sentences) == (
        "complete",
        "Hello **there**. How are you today? Fine",
        4,
        3,
    )
    jobs = [p.decode(schemas.TtsJob) for p in bus.on(subjects.tts_job(CONV))]
    assert [(j.job_id, j.text) for j in jobs] == [
        (ids.tts_job_id(reply_id, 0), "Hello there."),
        (ids.tts_job_id(reply_id, 1), "How are you today?"),
        (ids.tts_job_id(reply_id, 2), "Fine"),
    ]
    assert [p.msg_id for p in bus.on(subjects.tts_job(CONV))] == [j.job_id for j in jobs]
    assert {(j.voice_key, j.language, j.avatar_id) for j in jobs} == {(AVATAR.voice_key, "en", AVATAR.id)}
    live = [p.subject.rsplit(".", 1)[-1] for p in bus.on(f"parley.live.{CONV}.")]
    assert live[0] == "reply_started" and live.count("reply_delta") == 4 and live.count("reply_sentence") == 3
    assert first_out.is_set() and {"started", "first_token", "first_sentence", "done"} <= out.timings.keys()


async def test_a_cancel_stops_the_stream_at_the_next_token():
    bus = MemoryBus()
    cancel = asyncio.Event()
    stream, _ = _stream(bus, ScriptedLLM(["One. ", "Two. ", "Three. ", "Four. ", "Five."]))

    async def cancel_after_first_sentence():
        while not bus.on(subjects.tts_job(CONV)):
            await asyncio.sleep(0)
        cancel.set()

    canceller = asyncio.create_task(cancel_after_first_sentence())
    out = await stream.run([], cancel, asyncio.Event())
    await canceller
    # "One." is cut when "Two" begins; the cancel comes then; the next token is the last one relayed.
    assert (out.status, out.tokens, out.sentences, out.text) == ("interrupted", 3, 1, "One. Two. Three. ")
    assert len(bus.on(subjects.tts_job(CONV))) == 1  # nothing flushed after the cancel


async def test_an_llm_failure_is_stored_as_failed_and_told_to_the_client():
    bus = MemoryBus()
    llm = ScriptedLLM(["Hello. ", "and"], fail_after=1, error=LLMTimeout("no token for 10 s"))
    stream, reply_id = _stream(bus, llm)
    out = await stream.run([], asyncio.Event(), asyncio.Event())
    assert out.status == "failed" and out.error == "llm_timeout: no token for 10 s"
    (event,) = [p for p in bus.on(f"parley.event.{CONV}.")]
    err = event.decode(schemas.ErrorEvent)
    assert (err.code, err.message_id, err.retryable, event.msg_id) == (
        "llm_timeout",
        reply_id,
        True,
        f"llm-fail.{reply_id}",
    )
