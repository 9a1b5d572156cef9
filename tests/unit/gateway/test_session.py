"""The gateway's session coordinator without a server: an in-memory bus, repository and socket,
and a wire that records what the client would have been sent. Each test runs in milliseconds;
tests/e2e runs the same paths through real processes."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import msgspec
import pytest

from services.common import db, ids, schemas, subjects
from services.common.schemas import AudioMeta
from services.gateway import events, protocol
from services.gateway.config import GatewaySettings
from services.gateway.doorway import Doorway
from services.gateway.session import Session
from services.gateway.wire import Opening
from tests.fakes.bus import MemoryBus

AVATAR = db.Avatar(ids.new_id(), "Ada", "a tester", None, "en", "voices/ada.wav", None)


class FakeAvatars:
    async def get(self, avatar_id):
        return AVATAR if avatar_id == AVATAR.id else None

    async def of_conversation(self, conv):
        return [AVATAR]


class FakeConversations:
    def __init__(self):
        self.created: dict[str, list[str]] = {}

    async def create(self, conv, user_id, avatar_ids):
        self.created[conv] = avatar_ids


class FakeSessions:
    def __init__(self):
        self.ended: list[tuple[str, str]] = []

    async def open(self, *args):
        return True

    async def end(self, resume_id, connection, reason):
        self.ended.append((resume_id, reason))


class FakeDatabase:
    def __init__(self):
        self.avatars = FakeAvatars()
        self.conversations = FakeConversations()
        self.sessions = FakeSessions()


class FakeAuth:
    def origin_allowed(self, origin, host):
        return True

    async def authenticate(self, credential):
        return SimpleNamespace(user_id="tester")


class FakeSocket:
    """The client's side: frames the test pushes in, and how the socket was closed."""

    def __init__(self):
        self.headers: dict[str, str] = {}
        self.address = "127.0.0.1"
        self.opened_at = 0.0
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.closed: tuple[int, str] | None = None

    async def receive(self, on_message, on_expired):
        while (message := await self.inbox.get())["type"] != "websocket.disconnect":
            await on_message(message)

    async def sender(self):
        return None

    def close(self, code, reason):
        self.closed = (code, reason)
        self.inbox.put_nowait({"type": "websocket.disconnect"})

    def finish(self):
        pass


class RecordingWire:
    def __init__(self, opening: Opening):
        self.opening = opening
        self.sent: list[events.ClientEvent] = []
        self.audio: list[tuple[str, int, int]] = []
        self.barge_ins = 0
        self.session = None

    async def accept(self):
        pass

    async def open(self):
        return self.opening

    def attach(self, session):
        self.session = session

    async def on_message(self, message):
        await self.session.audio(message["bytes"])

    def send(self, ev, cursor=None):
        self.sent.append(ev)

    def send_audio(self, message_id, frame):
        self.audio.append((message_id, frame.sentence_index, frame.chunk_seq))

    def error(self, code, message, retryable=False):
        self.sent.append(events.Error(conversation_id=None, code=code, message=message, retryable=retryable))

    async def refuse(self, code, reason):
        self.refused = (code, reason)

    async def barged_in(self):
        self.barge_ins += 1

    async def closed(self):
        pass

    def kinds(self) -> list[str]:
        return [type(e).__struct_config__.tag for e in self.sent]


async def _until(check, timeout_s: float = 5.0):
    for _ in range(int(timeout_s / 0.005)):
        if check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("never happened")


@pytest.fixture
async def live():
    bus = MemoryBus()
    bus.responders[subjects.STT_OPEN] = lambda _: schemas.encode(schemas.SttOpened(ok=True, worker_id="stt-1"))
    database = FakeDatabase()
    host = SimpleNamespace(
        bus=bus, db=database, auth=FakeAuth(), settings=GatewaySettings(), sessions=set(), doorway=Doorway(8)
    )
    socket, wire = FakeSocket(), RecordingWire(Opening(token="t", avatar_ids=[AVATAR.id]))
    session = Session(host, socket, wire)
    running = asyncio.create_task(session.run())
    await _until(lambda: "session.started" in wire.kinds())
    yield SimpleNamespace(bus=bus, db=database, socket=socket, wire=wire, session=session, host=host)
    socket.inbox.put_nowait({"type": "websocket.disconnect"})
    await asyncio.wait_for(running, 5)



async def test_a_session_whose_event_feed_cannot_be_made_is_told_to_try_again():
    """The bus stays out of reach past its patience while the session begins (a cluster with no
    meta leader cannot make the consumer of its final events): the session is refused 1013
    with the reason, not dropped with 1006, and nothing of it is left behind."""
    import nats.errors

    bus = MemoryBus()
    bus.publish_patience_s = 0.3
    bus.responders[subjects.STT_OPEN] = lambda _: schemas.encode(schemas.SttOpened(ok=True, worker_id="stt-1"))
    tries = []

    async def no_meta_leader(*args, **kwargs):
        tries.append(args)
        raise nats.errors.TimeoutError

    bus.js.subscribe = no_meta_leader
    host = SimpleNamespace(
        bus=bus, db=FakeDatabase(), auth=FakeAuth(), settings=GatewaySettings(), sessions=set(), doorway=Doorway(8)
    )
    socket, wire = FakeSocket(), RecordingWire(Opening(token="t", avatar_ids=[AVATAR.id]))
    session = Session(host, socket, wire)
    await asyncio.wait_for(session.run(), 5)
    assert len(tries) > 1  # tried again within the patience
    code, reason = wire.refused
    assert code == 1013 and reason.startswith("bus_unavailable")
    assert session not in host.sessions

async def test_a_session_opens_speech_input_with_the_avatars_names_and_follows_the_conversation(live):
    conv = live.session.conv
    (started,) = [e for e in live.wire.sent if isinstance(e, events.SessionStarted)]
    assert started.speech_input and started.session_id == live.session.resume_id
    assert live.db.conversations.created[conv] == [AVATAR.id]
    (req,) = [p.decode(schemas.SttOpen) for p in live.bus.on(subjects.STT_OPEN)]
    assert (req.conversation_id, req.session_id, req.prompt) == (conv, live.session.audio_session_id, "Ada")
    for subject in (subjects.live_all(conv), subjects.speech_all(conv), subjects.control(conv, "resumed")):
        assert live.bus.subscribed(subject)
    assert any(s.stream == subjects.EVENTS_STREAM for s in live.bus.subs)
    assert live.session in live.host.sessions


async def test_mic_frames_are_published_with_their_offset_in_the_session(live):
    for _ in range(2):
        live.socket.inbox.put_nowait({"type": "websocket.receive", "bytes": b"\x00\x00" * 320})
    await _until(lambda: len(live.bus.on("parley.audio.")) == 2)
    metas = [AudioMeta.from_headers(p.headers) for p in live.bus.on("parley.audio.")]
    assert [(m.chunk_seq, m.offset) for m in metas] == [(0, 0), (1, 320)]
    assert {m.session_id for m in metas} == {live.session.audio_session_id}



async def test_mic_audio_while_the_bus_is_down_is_held_a_while_then_dropped_with_a_reason(live):
    """A blip loses no word: frames are held while the bus is down and passed on in order once
    it is back. Past the hold they are dropped and the client hears why; offsets go on
    counting, so the STT worker sees the gap for what it was."""
    live.host.settings.mic_outage_hold_s = 0.04  # two 20 ms frames
    live.bus.nc.is_connected = False
    for _ in range(4):
        live.socket.inbox.put_nowait({"type": "websocket.receive", "bytes": b"\x00\x00" * 320})
    await _until(lambda: [e for e in live.wire.sent if isinstance(e, events.Error)])
    assert not live.bus.on("parley.audio.")
    (error,) = [e for e in live.wire.sent if isinstance(e, events.Error)]
    assert error.code == "audio_not_heard" and error.retryable and "not heard" in error.message
    live.bus.nc.is_connected = True
    live.socket.inbox.put_nowait({"type": "websocket.receive", "bytes": b"\x00\x00" * 320})
    await _until(lambda: len(live.bus.on("parley.audio.")) == 3)
    metas = [AudioMeta.from_headers(p.headers) for p in live.bus.on("parley.audio.")]
    assert [(m.chunk_seq, m.offset) for m in metas] == [(0, 0), (1, 320), (4, 1280)]

async def _playing(live) -> tuple[str, str, AudioMeta]:
    """A reply whose first chunk (0.1 s) has gone out to the client."""
    conv, reply = live.session.conv, ids.new_id()
    started = schemas.ReplyStarted(conversation_id=conv, message_id=reply, user_message_id=ids.new_id(), avatar_id="a")
    await live.bus.deliver(subjects.live(conv, "reply_started"), schemas.encode(started))
    meta = AudioMeta(conversation_id=conv, message_id=reply, sentence_index=0, chunk_seq=0, sample_rate=24000)
    await live.bus.deliver(subjects.live(conv, "audio"), b"\x01\x00" * 2400, meta.headers())
    assert live.wire.audio == [(reply, 0, 0)]
    return conv, reply, meta


async def _said(live, ev: schemas.Event, final: bool = False) -> None:
    """A speech event of this session's person, live or (`final`) from the event log."""
    kind = type(ev).__struct_config__.tag.replace(".", "_")
    subject = subjects.event(ev.conversation_id, kind) if final else subjects.live(ev.conversation_id, kind)
    await live.bus.deliver(subject, schemas.encode(ev))


def _speech(live, kind, **fields):
    return kind(conversation_id=live.session.conv, session_id=live.session.audio_session_id, utterance_seq=0, **fields)


def _cut(live) -> list[tuple[str, str]]:
    conv = live.session.conv
    cancels = [p.decode(schemas.ReplyCancel) for p in live.bus.on(subjects.control(conv, "cancel"))]
    return [(c.message_id, c.reason) for c in cancels]


async def test_speech_over_a_playing_reply_plays_on_until_the_worker_says_it_counts(live):
    conv, reply, _ = await _playing(live)
    await _said(live, _speech(live, schemas.SpeechStarted, start_s=1.0))
    assert live.wire.kinds()[-1] == "speech.started"
    (over,) = [p.decode(schemas.OverReply) for p in live.bus.on(subjects.control(conv, "over_reply"))]
    assert (over.session_id, over.utterance_seq) == (live.session.audio_session_id, 0)
    assert _cut(live) == [] and live.wire.barge_ins == 0


async def test_speech_with_words_over_a_playing_reply_stops_it_where_playback_stood(live):
    conv, reply, meta = await _playing(live)
    await _said(live, _speech(live, schemas.SpeechStarted, start_s=1.0))
    await _said(live, _speech(live, schemas.BargeIn, reason="words"))
    assert live.wire.kinds()[-2:] == ["speech.barge_in", "playback.stop"]
    (cut,) = [p.decode(schemas.Interruption) for p in live.bus.on(subjects.interrupt(conv))]
    assert cut.message_id == reply and cut.sentence_index == 0
    assert _cut(live) == [(reply, "barge-in")]
    assert live.wire.barge_ins == 1
    await live.bus.deliver(subjects.live(conv, "audio"), b"\x01\x00" * 2400, meta.headers())
    assert live.wire.audio == [(reply, 0, 0)]  # nothing more of it is sent


async def test_a_backchannel_over_a_playing_reply_leaves_it_playing(live):
    conv, reply, meta = await _playing(live)
    await _said(live, _speech(live, schemas.SpeechStarted, start_s=1.0))
    await _said(live, _speech(live, schemas.Backchannel, text="Mhm."), final=True)
    second = msgspec.structs.replace(meta, chunk_seq=1).headers()
    await live.bus.deliver(subjects.live(conv, "audio"), b"\x01\x00" * 2400, second)
    assert live.wire.audio == [(reply, 0, 0), (reply, 0, 1)]
    assert "playback.pause" not in live.wire.kinds() and "playback.stop" not in live.wire.kinds()
    assert _cut(live) == [] and live.bus.on(subjects.interrupt(conv)) == []


async def test_a_barge_in_that_yields_no_words_resumes_the_reply_where_it_paused(live):
    conv, reply, meta = await _playing(live)
    await _said(live, _speech(live, schemas.SpeechStarted, start_s=1.0))
    await _said(live, _speech(live, schemas.BargeIn, reason="speech"))
    (pause,) = [e for e in live.wire.sent if isinstance(e, events.PlaybackPause)]
    assert pause.message_id == reply and pause.sentence_index == 0 and 0 <= pause.offset_ms <= 100
    # What comes while it is paused is held, not sent.
    second = msgspec.structs.replace(meta, chunk_seq=1).headers()
    await live.bus.deliver(subjects.live(conv, "audio"), b"\x02\x00" * 2400, second)
    assert live.wire.audio == [(reply, 0, 0)]
    # A cough: the worker recognised nothing.
    message_id = ids.user_message_id(conv, live.session.audio_session_id, "voice", 0)
    nothing = schemas.ErrorEvent(conversation_id=conv, code="no_speech_recognized", message="", message_id=message_id)
    await _said(live, nothing, final=True)
    (resumed,) = [e for e in live.wire.sent if isinstance(e, events.PlaybackResume)]
    assert (resumed.message_id, resumed.sentence_index, resumed.offset_ms) == (reply, 0, pause.offset_ms)
    # The audio from the pause on goes out again (the rest of chunk 0, then chunk 1), once.
    assert live.wire.audio[1:] == ([(reply, 0, 0)] if pause.offset_ms < 100 else []) + [(reply, 0, 1)]
    assert _cut(live) == [] and live.bus.on(subjects.interrupt(conv)) == []
    assert [m for m, _ in live.session.relay.playing(time.monotonic())] == [reply]


async def test_a_paused_reply_stops_for_good_once_the_speech_becomes_a_turn(live):
    conv, reply, _ = await _playing(live)
    live.session.relay.playback(reply, 40, False)
    await _said(live, _speech(live, schemas.SpeechStarted, start_s=1.0))
    await _said(live, _speech(live, schemas.BargeIn, reason="speech"))
    live.session.relay.playback(reply, 60, False)  # the client says where it stopped
    message_id = ids.user_message_id(conv, live.session.audio_session_id, "voice", 0)
    final = _speech(live, schemas.TranscriptFinal, message_id=message_id, text="Wait, stop.")
    await _said(live, final, final=True)
    assert live.wire.kinds()[-1] == "playback.stop"
    (cut,) = [p.decode(schemas.Interruption) for p in live.bus.on(subjects.interrupt(conv))]
    assert (cut.message_id, cut.sentence_index, cut.offset_s) == (reply, 0, 0.06)
    assert _cut(live) == [(reply, "barge-in")]


async def test_a_pause_with_no_words_in_time_after_the_speech_stopped_resumes(live):
    live.session.opening.resume_ms = 50
    conv, reply, _ = await _playing(live)
    await _said(live, _speech(live, schemas.SpeechStarted, start_s=1.0))
    await _said(live, _speech(live, schemas.BargeIn, reason="speech"))
    await asyncio.sleep(0.2)
    assert "playback.resume" not in live.wire.kinds()  # never while the person is still speaking
    await _said(live, _speech(live, schemas.SpeechStopped, end_s=2.0))
    await _until(lambda: "playback.resume" in live.wire.kinds())
    assert _cut(live) == []
    # Words that come after all still stop it.
    message_id = ids.user_message_id(conv, live.session.audio_session_id, "voice", 0)
    await _said(live, _speech(live, schemas.TranscriptFinal, message_id=message_id, text="Hold on."), final=True)
    assert _cut(live) == [(reply, "barge-in")]


async def test_a_session_that_ends_while_paused_stores_the_reply_as_heard_up_to_the_pause(live):
    conv, reply, _ = await _playing(live)
    await _said(live, _speech(live, schemas.SpeechStarted, start_s=1.0))
    await _said(live, _speech(live, schemas.BargeIn, reason="speech"))
    live.socket.inbox.put_nowait({"type": "websocket.disconnect"})
    await _until(lambda: live.bus.on(subjects.interrupt(conv)))
    (cut,) = [p.decode(schemas.Interruption) for p in live.bus.on(subjects.interrupt(conv))]
    assert cut.message_id == reply and cut.sentence_index == 0


async def test_a_push_to_talk_session_is_never_paused_but_drops_backchannels_all_the_same(live):
    live.session.opening.barge_in = False
    conv, reply, _ = await _playing(live)
    await _said(live, _speech(live, schemas.SpeechStarted, start_s=1.0))
    assert live.bus.on(subjects.control(conv, "over_reply"))
    await _said(live, _speech(live, schemas.BargeIn, reason="speech"))
    assert "playback.pause" not in live.wire.kinds() and _cut(live) == []


async def test_a_resume_elsewhere_closes_this_connection_and_leaves_the_record_to_the_new_one(live):
    conv = live.session.conv
    resumed = schemas.SessionResumed(conversation_id=conv, session_id=live.session.resume_id)
    await live.bus.deliver(subjects.control(conv, "resumed"), schemas.encode(resumed))
    assert live.socket.closed == (protocol.CLOSE_SUPERSEDED, "session resumed on another connection")
    await _until(lambda: live.session.closed)
    await _until(lambda: live.bus.on(subjects.control(conv, "end")))
    (end,) = [p.decode(schemas.SessionEnd) for p in live.bus.on(subjects.control(conv, "end"))]
    assert end.session_id == live.session.audio_session_id
    assert live.db.sessions.ended == []  # the connection that resumed it holds the session's record now
