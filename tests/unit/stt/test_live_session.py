"""One live STT session without a server: the in-memory bus, the real Silero VAD and a decoder
that answers at once. Speech becomes speech events and one user turn under its derived id;
the client's commit ends the utterance at once, its clear drops it; control of another
session or another worker is not this session's; frames of another session are ignored."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from services.common import ids, schemas, subjects
from services.common.schemas import AudioMeta
from services.stt.config import SttSettings
from services.stt.live import LiveSession
from services.stt.turns import TurnJudge
from services.stt.vad import SileroVad
from services.stt.whisper import Transcript
from tests.fakes.bus import MemoryBus

FRAME = 320  # 20 ms at 16 kHz


class AnsweringDecoder:
    """The batcher's interface; every final decode reads as `text`, no partials."""

    def __init__(self, text: str):
        self.text = text
        self.confidence = 0.9
        self.finals = 0

    def submit(self, request) -> Future:
        self.finals += 1
        fut: Future = Future()
        fut.set_result(Transcript(self.text, "en", self.confidence, len(request.audio) / 16000))
        return fut

    def submit_partial(self, key, request) -> Future:
        raise AssertionError("partials are off in these tests")

    def drop_partial(self, key) -> None:
        pass


class Worker:
    def __init__(self):
        self.bus = MemoryBus()
        self.vad = SileroVad.shared()
        self.decoder = AnsweringDecoder("hello there")
        self.turns = TurnJudge(None, None)
        self.settings = SttSettings(instance_id="stt-1")
        self.partial_interval_ms = 0
        self.closed: list[tuple[str, bool]] = []

    def spawn(self, coro) -> None:
        asyncio.ensure_future(coro)

    async def close_session(self, conv: str, flush: bool, session=None) -> None:
        self.closed.append((conv, flush))


@pytest.fixture
async def live(speech_wav):
    w = Worker()
    conv, session = ids.new_id(), ids.new_id()
    req = schemas.SttOpen(conversation_id=conv, session_id=session, partials=False)
    s = LiveSession(w, req)
    await s.start()
    audio, _ = sf.read(speech_wav, dtype="int16")
    yield SimpleNamespace(worker=w, bus=w.bus, session=s, conv=conv, id=session, audio=audio)
    await s.close(flush=False)


async def _feed(live, audio: np.ndarray, session_id: str | None = None, start: int = 0) -> int:
    for n, at in enumerate(range(0, len(audio) - FRAME + 1, FRAME)):
        offset = start + at
        meta = AudioMeta(conversation_id=live.conv, session_id=session_id or live.id, chunk_seq=n, offset=offset)
        await live.bus.deliver(subjects.audio_in(live.conv), audio[at : at + FRAME].tobytes(), meta.headers())
    return start + len(audio) // FRAME * FRAME


async def _turns(live, n: int, timeout_s: float = 5.0) -> list[schemas.UserTurn]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(live.bus.on(subjects.turn(live.conv))) < n:
        assert asyncio.get_running_loop().time() < deadline, "no user turn"
        await asyncio.sleep(0.01)
    return [p.decode(schemas.UserTurn) for p in live.bus.on(subjects.turn(live.conv))]


async def test_speech_becomes_speech_events_and_one_turn_under_its_derived_id(live):
    await _feed(live, live.audio)
    (turn,) = await _turns(live, 1)
    assert (turn.text, turn.source, turn.turn_seq) == ("hello there", "voice", 0)
    assert turn.message_id == ids.user_message_id(live.conv, live.id, "voice", 0)
    assert live.bus.on(subjects.live(live.conv, "speech_started"))
    assert live.bus.on(subjects.live(live.conv, "speech_stopped"))
    (final,) = [p.decode(schemas.TranscriptFinal) for p in live.bus.on(subjects.event(live.conv, "transcript_final"))]
    assert (final.message_id, final.text) == (turn.message_id, "hello there")


async def test_a_commit_ends_the_utterance_at_once_and_a_clear_drops_it(live):
    speech = live.audio[: int(len(live.audio) * 0.6)]  # speech without its trailing silence
    at = await _feed(live, speech)
    assert not live.bus.on(subjects.turn(live.conv))
    await live.bus.deliver(
        subjects.control(live.conv, "commit"),
        schemas.encode(schemas.UtteranceCommit(conversation_id=live.conv, session_id=live.id)),
    )
    (turn,) = await _turns(live, 1)
    assert turn.turn_seq == 0

    await _feed(live, speech, start=at)
    await live.bus.deliver(
        subjects.control(live.conv, "clear"),
        schemas.encode(schemas.UtteranceClear(conversation_id=live.conv, session_id=live.id)),
    )
    finals = live.worker.decoder.finals
    await _feed(live, np.zeros(16000, dtype=np.int16), start=at + len(speech) // FRAME * FRAME)
    await asyncio.sleep(0.05)
    assert len(live.bus.on(subjects.turn(live.conv))) == 1 and live.worker.decoder.finals == finals


async def test_control_of_another_session_or_worker_is_not_this_sessions(live):
    conv = live.conv
    for ctl in (
        schemas.SessionEnd(conversation_id=conv, session_id=ids.new_id()),
        schemas.SttRelease(conversation_id=conv, session_id=live.id, worker_id="stt-2"),
    ):
        await live.bus.deliver(subjects.control(conv, ctl.KIND), schemas.encode(ctl))
    await live.bus.deliver(subjects.control(conv, "end"), b"not json")
    await asyncio.sleep(0)
    assert live.worker.closed == []

    release = schemas.SttRelease(conversation_id=conv, session_id=live.id, worker_id="stt-1")
    await live.bus.deliver(subjects.control(conv, "release"), schemas.encode(release))
    end = schemas.SessionEnd(conversation_id=conv, session_id=live.id)
    await live.bus.deliver(subjects.control(conv, "end"), schemas.encode(end))
    await asyncio.sleep(0)
    assert live.worker.closed == [(conv, False), (conv, True)]  # released untranscribed; ended flushed


async def test_frames_of_another_session_are_ignored(live):
    await _feed(live, live.audio, session_id=ids.new_id())
    await asyncio.sleep(0.05)
    assert not live.bus.on(subjects.turn(live.conv)) and live.worker.decoder.finals == 0


async def _over_reply(live, seq: int = 0) -> None:
    ctl = schemas.OverReply(conversation_id=live.conv, session_id=live.id, utterance_seq=seq)
    await live.bus.deliver(subjects.control(live.conv, "over_reply"), schemas.encode(ctl))


def _live_of(live, kind, type_) -> list:
    return [p.decode(type_) for p in live.bus.on(subjects.live(live.conv, kind))]


def _backchannels(live) -> list[schemas.Backchannel]:
    """Final events: what the ledger holds for an utterance that made no turn."""
    return [p.decode(schemas.Backchannel) for p in live.bus.on(subjects.event(live.conv, "speech_backchannel"))]


async def _said_over_a_reply(live) -> None:
    """The speech, named by the gateway as begun over a playing reply once it has started."""
    half = len(live.audio) // 2
    at = await _feed(live, live.audio[:half])
    assert _live_of(live, "speech_started", schemas.SpeechStarted)
    await _over_reply(live)
    await _feed(live, live.audio[half:], start=at)


async def test_a_backchannel_over_a_reply_makes_no_turn_and_is_said_as_one(live):
    live.worker.decoder.text = "Mm-hmm."
    await _said_over_a_reply(live)
    for _ in range(500):
        if _backchannels(live):
            break
        await asyncio.sleep(0.01)
    (said,) = _backchannels(live)
    assert (said.session_id, said.utterance_seq, said.text) == (live.id, 0, "Mm-hmm.")
    assert live.bus.on(subjects.turn(live.conv)) == []
    assert live.bus.on(subjects.event(live.conv, "transcript_final")) == []


async def test_the_same_backchannel_over_no_reply_is_a_turn(live):
    live.worker.decoder.text = "Mm-hmm."
    await _feed(live, live.audio)
    (turn,) = await _turns(live, 1)
    assert turn.text == "Mm-hmm." and _backchannels(live) == []


async def test_speech_over_a_reply_voiced_long_enough_is_a_barge_in_once_and_its_words_a_turn(live):
    await _said_over_a_reply(live)
    (turn,) = await _turns(live, 1)
    assert turn.text == "hello there"
    (barge,) = _live_of(live, "speech_barge_in", schemas.BargeIn)
    assert (barge.session_id, barge.utterance_seq, barge.reason) == (live.id, 0, "speech")


async def test_speech_over_a_reply_shorter_than_the_barge_in_wait_is_none(speech_wav):
    w = Worker()
    conv, session = ids.new_id(), ids.new_id()
    req = schemas.SttOpen(conversation_id=conv, session_id=session, partials=False, barge_in_ms=5000)
    s = LiveSession(w, req)
    await s.start()
    audio, _ = sf.read(speech_wav, dtype="int16")
    live = SimpleNamespace(worker=w, bus=w.bus, session=s, conv=conv, id=session, audio=audio)
    try:
        await _said_over_a_reply(live)
        await _turns(live, 1)
        assert _live_of(live, "speech_barge_in", schemas.BargeIn) == []
    finally:
        await s.close(flush=False)


async def test_words_over_a_reply_that_whisper_was_unsure_of_are_no_words_and_no_turn(live):
    live.worker.decoder.text, live.worker.decoder.confidence = "A campaign.", 0.27
    await _said_over_a_reply(live)
    for _ in range(500):
        if live.bus.on(subjects.event(live.conv, "error")):
            break
        await asyncio.sleep(0.01)
    (nothing,) = [p.decode(schemas.ErrorEvent) for p in live.bus.on(subjects.event(live.conv, "error"))]
    assert nothing.code == "no_speech_recognized" and "A campaign." in nothing.message
    assert nothing.message_id == ids.user_message_id(live.conv, live.id, "voice", 0)
    assert live.bus.on(subjects.turn(live.conv)) == []


async def test_the_same_unsure_words_over_no_reply_are_a_turn(live):
    live.worker.decoder.text, live.worker.decoder.confidence = "A campaign.", 0.27
    await _feed(live, live.audio)
    (turn,) = await _turns(live, 1)
    assert turn.text == "A campaign."
