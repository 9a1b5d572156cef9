"""The gateway's session coordinator without a server: an in-memory bus, repository and socket,
and a wire that records what the client would have been sent. Each test runs in milliseconds;
tests/e2e runs the same paths through real processes."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from services.common import db, ids, schemas, subjects
from services.common.schemas import AudioMeta
from services.gateway import events, protocol
from services.gateway.config import GatewaySettings
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
    host = SimpleNamespace(bus=bus, db=database, auth=FakeAuth(), settings=GatewaySettings(), sessions=set())
    socket, wire = FakeSocket(), RecordingWire(Opening(token="t", avatar_ids=[AVATAR.id]))
    session = Session(host, socket, wire)
    running = asyncio.create_task(session.run())
    await _until(lambda: "session.started" in wire.kinds())
    yield SimpleNamespace(bus=bus, db=database, socket=socket, wire=wire, session=session, host=host)
    socket.inbox.put_nowait({"type": "websocket.disconnect"})
    await asyncio.wait_for(running, 5)


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


async def test_speech_over_a_playing_reply_stops_it_where_playback_stood(live):
    conv, reply = live.session.conv, ids.new_id()
    started = schemas.ReplyStarted(conversation_id=conv, message_id=reply, user_message_id=ids.new_id(), avatar_id="a")
    await live.bus.deliver(subjects.live(conv, "reply_started"), schemas.encode(started))
    meta = AudioMeta(conversation_id=conv, message_id=reply, sentence_index=0, chunk_seq=0, sample_rate=24000)
    await live.bus.deliver(subjects.live(conv, "audio"), b"\x01\x00" * 2400, meta.headers())
    assert live.wire.audio == [(reply, 0, 0)]

    speech = schemas.SpeechStarted(
        conversation_id=conv, session_id=live.session.audio_session_id, utterance_seq=0, start_s=1.0
    )
    await live.bus.deliver(subjects.live(conv, "speech_started"), schemas.encode(speech))
    assert live.wire.kinds()[-2:] == ["speech.started", "playback.stop"]
    (cut,) = [p.decode(schemas.Interruption) for p in live.bus.on(subjects.interrupt(conv))]
    assert cut.message_id == reply and cut.sentence_index == 0
    cancels = [p.decode(schemas.ReplyCancel) for p in live.bus.on(subjects.control(conv, "cancel"))]
    assert [(c.message_id, c.reason) for c in cancels] == [(reply, "barge-in")]
    assert live.wire.barge_ins == 1
    await live.bus.deliver(subjects.live(conv, "audio"), b"\x01\x00" * 2400, meta.headers())
    assert live.wire.audio == [(reply, 0, 0)]  # nothing more of it is sent


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
