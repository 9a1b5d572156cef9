"""The TTS worker process on the bus: cancellation within a chunk, and a failing sentence
that does not stop the next one. Jobs are published as the orchestrator publishes them."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest

from ops.cli import demo_voice_key
from services.common import ids, schemas, subjects

pytestmark = [pytest.mark.e2e, pytest.mark.engine]

LONG = " ".join(["This text is long on purpose, so that the worker streams many chunks of it, one after another."] * 6)
"""Longer than XTTS's 250 characters for English: spoken in three parts, two chunks each
with the tiny model's cap on audio tokens."""


class Listener:
    """Live audio chunks and failure events of one conversation, as they arrive."""

    def __init__(self, nc, conv: str):
        self.nc, self.conv = nc, conv
        self.chunks: list[tuple[float, schemas.AudioMeta, int]] = []
        self.failed: list[schemas.SentenceFailed] = []
        self.first = asyncio.Event()

    async def start(self) -> Listener:
        await self.nc.subscribe(subjects.live(self.conv, "audio"), cb=self._on_audio)
        await self.nc.subscribe(f"parley.event.{self.conv}.*", cb=self._on_event)
        return self

    async def _on_audio(self, msg) -> None:
        meta = schemas.AudioMeta.from_headers(msg.headers)
        self.chunks.append((time.monotonic(), meta, len(msg.data)))
        if msg.data:
            self.first.set()

    async def _on_event(self, msg) -> None:
        ev = schemas.decode_event(msg.data)
        if isinstance(ev, schemas.SentenceFailed):
            self.failed.append(ev)

    def audio(self, message_id: str, sentence_index: int = 0) -> list[tuple[float, int]]:
        return [
            (t, n)
            for t, m, n in self.chunks
            if m.message_id == message_id and m.sentence_index == sentence_index and n > 0
        ]

    def ended(self, message_id: str, sentence_index: int = 0) -> bool:
        return any(
            m.last and m.message_id == message_id and m.sentence_index == sentence_index for _, m, _ in self.chunks
        )


def job(conv: str, reply: str, index: int, text: str, language: str = "en") -> schemas.TtsJob:
    return schemas.TtsJob(
        conversation_id=conv,
        message_id=reply,
        job_id=ids.tts_job_id(reply, index),
        sentence_index=index,
        text=text,
        language=language,
        avatar_id=ids.DEMO_AVATAR_ID,
        voice_key=demo_voice_key(),
        created_at=time.time(),
    )


async def _until(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def _speech_status(js, conv: str, reply: str, index: int) -> str:
    raw = await js.get_last_msg("PARLEY_SPEECH", subjects.speech(conv, reply, index))
    return schemas.AudioMeta.from_headers(raw.headers).status


async def test_a_cancel_stops_the_stream_in_progress_within_a_chunk(stack):
    nc = await nats.connect(stack["env"]["PARLEY_NATS_URL"])
    js = nc.jetstream()
    kv = await js.key_value(subjects.CANCEL_BUCKET)
    conv = ids.new_id()
    listener = await Listener(nc, conv).start()
    whole, cut = ids.new_id(), ids.new_id()

    await js.publish(subjects.tts_job(conv), schemas.encode(job(conv, whole, 0, LONG)))
    await _until(lambda: listener.ended(whole))
    full = len(listener.audio(whole))
    assert full >= 4  # enough chunks for a cut to show

    await js.publish(subjects.tts_job(conv), schemas.encode(job(conv, cut, 0, LONG)))
    await _until(lambda: listener.audio(cut))
    await kv.put(cut, b"1")
    cancelled_at = time.monotonic()
    await _until(lambda: listener.ended(cut))
    after = [t for t, _ in listener.audio(cut) if t > cancelled_at]
    # Chunks already on their way when the cancel landed may still arrive: the one being
    # published and the one XTTS had finished; no further chunk is synthesised.
    assert len(after) <= 2
    assert len(listener.audio(cut)) < full
    await nc.close()


async def test_a_failing_sentence_is_reported_and_the_next_one_plays(stack):
    nc = await nats.connect(stack["env"]["PARLEY_NATS_URL"])
    js = nc.jetstream()
    conv, reply = ids.new_id(), ids.new_id()
    listener = await Listener(nc, conv).start()

    await js.publish(subjects.tts_job(conv), schemas.encode(job(conv, reply, 0, "Bonjour.", language="xx")))
    await js.publish(subjects.tts_job(conv), schemas.encode(job(conv, reply, 1, "This one still plays.")))
    await _until(lambda: listener.ended(reply, 1) and listener.failed)
    assert [(f.message_id, f.sentence_index) for f in listener.failed] == [(reply, 0)]
    assert "not supported" in listener.failed[0].error
    assert listener.audio(reply, 1) and not listener.audio(reply, 0)
    assert await _speech_status(js, conv, reply, 0) == "failed"
    assert await _speech_status(js, conv, reply, 1) == "ok"
    await nc.close()


async def test_queued_sentences_of_a_cancelled_reply_are_never_synthesised(stack):
    nc = await nats.connect(stack["env"]["PARLEY_NATS_URL"])
    js = nc.jetstream()
    kv = await js.key_value(subjects.CANCEL_BUCKET)
    conv, reply = ids.new_id(), ids.new_id()
    listener = await Listener(nc, conv).start()

    await kv.put(reply, b"1")
    for i in range(3):
        await js.publish(subjects.tts_job(conv), schemas.encode(job(conv, reply, i, f"Sentence number {i}.")))
    statuses: dict[int, str] = {}

    async def settled() -> bool:
        for i in range(3):
            if i not in statuses:
                try:
                    statuses[i] = await _speech_status(js, conv, reply, i)
                except nats.js.errors.NotFoundError:
                    pass
        return len(statuses) == 3

    deadline = time.monotonic() + 60
    while not await settled():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)
    assert statuses == {0: "failed", 1: "failed", 2: "failed"}  # stored as "no audio" markers
    assert not any(listener.audio(reply, i) for i in range(3))
    assert not listener.failed  # skipped, not failed: the reply was cancelled
    await nc.close()


async def test_a_poison_job_fails_on_its_own_and_the_others_keep_flowing(stack):
    """A job that makes the worker raise on every delivery (its voice object is missing) is
    retried, then reported as a failed sentence; jobs behind it are synthesised meanwhile."""
    nc = await nats.connect(stack["env"]["PARLEY_NATS_URL"])
    js = nc.jetstream()
    conv, poisoned, healthy = ids.new_id(), ids.new_id(), ids.new_id()
    listener = await Listener(nc, conv).start()

    poison = job(conv, poisoned, 0, "This voice does not exist.")
    poison.voice_key = "voices/no-such-voice.wav"
    await js.publish(subjects.tts_job(conv), schemas.encode(poison))
    for i in range(3):
        await js.publish(subjects.tts_job(conv), schemas.encode(job(conv, healthy, i, f"Sentence {i} plays.")))
    await _until(lambda: all(listener.ended(healthy, i) for i in range(3)) and listener.failed, 120)

    assert all(listener.audio(healthy, i) for i in range(3))
    assert [(f.message_id, f.sentence_index) for f in listener.failed] == [(poisoned, 0)]
    assert "synthesis failed" in listener.failed[0].error
    for _ in range(100):
        try:
            if await _speech_status(js, conv, poisoned, 0) == "failed":
                break
        except nats.js.errors.NotFoundError:
            pass
        await asyncio.sleep(0.05)
    assert await _speech_status(js, conv, poisoned, 0) == "failed"
    await nc.close()
