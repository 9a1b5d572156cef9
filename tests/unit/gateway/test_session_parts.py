"""The gateway session's parts without a server: typed events, the reply relay, the native wire
and the Realtime API's items and responses, each against in-memory fakes."""

from __future__ import annotations

import json
from types import SimpleNamespace

import msgspec

from services.common import schemas
from services.common.schemas import AudioMeta
from services.gateway import events, protocol
from services.gateway.config import GatewaySettings
from services.gateway.native import NativeWire
from services.gateway.realtime.output import Output
from services.gateway.relay import ReplyRelay

CONV = "11111111-1111-4111-8111-111111111111"
REPLY = "22222222-2222-4222-8222-222222222222"
USER_MSG = "33333333-3333-4333-8333-333333333333"


class FakeWire:
    """Records what the session would have written to the client."""

    def __init__(self):
        self.sent: list[tuple[events.ClientEvent, int | None]] = []
        self.audio: list[tuple[str, int, int, bytes]] = []

    def send(self, ev, cursor=None):
        self.sent.append((ev, cursor))

    def send_audio(self, message_id, frame):
        self.audio.append((message_id, frame.sentence_index, frame.chunk_seq, frame.pcm))

    def error(self, code, message, retryable=False):
        self.sent.append((events.Error(conversation_id=CONV, code=code, message=message), None))

    def kinds(self) -> list[str]:
        return [type(ev).__struct_config__.tag for ev, _ in self.sent]


class FakeSocket:
    def __init__(self, first: str = ""):
        self.first, self.texts, self.frames, self.closed = first, [], [], None
        self.offered: list[str] = []

    async def accept(self, subprotocol):
        self.accepted = subprotocol

    async def first_text(self, timeout_s):
        return self.first

    async def close_now(self, code, reason):
        self.closed = (code, reason)

    def send_text(self, text):
        self.texts.append(json.loads(text))

    def send_bytes(self, data):
        self.frames.append(data)


def _chunk(index: int, seq: int, pcm: bytes, last: bool = False) -> SimpleNamespace:
    meta = AudioMeta(conversation_id=CONV, message_id=REPLY, sentence_index=index, chunk_seq=seq, last=last)
    return SimpleNamespace(headers=meta.headers(), data=pcm)


def _relay() -> tuple[ReplyRelay, FakeWire]:
    wire = FakeWire()
    relay = ReplyRelay(bus=None, settings=GatewaySettings(audio_fill_after_s=60), conversation_id=CONV, wire=wire)
    relay.started(events.ReplyStarted(conversation_id=CONV, message_id=REPLY, user_message_id=USER_MSG, avatar_id="a"))
    return relay, wire


def test_a_bus_only_field_never_reaches_the_client():
    bus = msgspec.json.encode(
        {**msgspec.to_builtins(schemas.UserMessage(conversation_id=CONV, message_id=USER_MSG, text="hi")), "x": 1}
    )
    ev = events.from_bus(bus)
    assert isinstance(ev, events.UserMessage)
    assert json.loads(events.to_json(ev, seq=4, cursor=9)) == {
        "type": "user.message",
        "v": 1,
        "conversation_id": CONV,
        "message_id": USER_MSG,
        "text": "hi",
        "seq": 4,
        "cursor": 9,
    }


async def test_the_relay_plays_sentences_in_order_then_the_end_marker_then_the_stored_url():
    relay, wire = _relay()
    relay.live_audio(_chunk(1, 0, b"\x02\x00" * 240), whole=False)
    relay.live_audio(_chunk(1, 1, b"", last=True), whole=False)
    assert wire.audio == []  # sentence 1 waits for sentence 0
    stored = events.AudioStored(conversation_id=CONV, message_id=REPLY, key="k", url="u", duration_s=0.02)
    relay.final(stored, cursor=7)
    relay.final(
        events.ReplyDone(conversation_id=CONV, message_id=REPLY, status="complete", text="x", sentence_count=2), 8
    )
    relay.live_audio(_chunk(0, 0, b"\x01\x00" * 240), whole=False)
    relay.live_audio(_chunk(0, 1, b"", last=True), whole=False)
    assert [(a[1], a[2]) for a in wire.audio] == [(0, 0), (1, 0)]
    assert wire.kinds() == ["reply.done", "audio.end", "audio.stored"]
    assert wire.sent[-1] == (stored, 7)
    relay.close()


def test_what_was_heard_follows_the_clients_playback_report():
    relay, wire = _relay()
    relay.live_audio(_chunk(0, 0, b"\x01\x00" * 16000), whole=False)  # 1 s of sentence 0 at 16 kHz
    relay.live_audio(_chunk(0, 1, b"", last=True), whole=False)
    relay.live_audio(_chunk(1, 0, b"\x01\x00" * 16000), whole=False)
    assert relay.playback(REPLY, played_ms=1500, ended=True)
    reply = relay.replies[REPLY]
    sentence, offset = reply.heard(now=0.0)
    assert sentence == 1 and abs(offset - 0.5) < 1e-9
    assert not relay.playback("44444444-4444-4444-8444-444444444444", 10, False)


async def test_the_native_wire_opens_with_what_session_start_asks_for():
    start = protocol.Start(avatar_ids=["a"], language="de", end_of_turn_ms=700, barge_in=False, partials=False)
    socket = FakeSocket(msgspec.json.encode(start).decode())
    opening = await NativeWire(socket, start_timeout_s=1, max_text_chars=100).open()
    assert opening.avatar_ids == ["a"] and opening.barge_in is False
    assert (opening.stt.language, opening.stt.end_of_turn_ms, opening.stt.partials) == ("de", 700, False)


async def test_the_native_wire_refuses_a_first_message_that_is_not_session_start():
    socket = FakeSocket(json.dumps({"type": "text", "text": "hi"}))
    assert await NativeWire(socket, start_timeout_s=1, max_text_chars=100).open() is None
    assert socket.closed == (protocol.CLOSE_BAD_START, "the first message must be session.start")


def test_the_native_wire_numbers_its_events_and_frames_reply_audio():
    socket = FakeSocket()
    wire = NativeWire(socket, start_timeout_s=1, max_text_chars=100)
    wire.send(events.UserMessage(conversation_id=CONV, message_id=USER_MSG, text="a"))
    wire.error("bad", "worse", retryable=True)
    assert [(t["seq"], t["type"]) for t in socket.texts] == [(1, "user.message"), (2, "error")]
    assert socket.texts[1]["retryable"] is True and socket.texts[1]["conversation_id"] is None
    wire.send_audio(REPLY, SimpleNamespace(sentence_index=2, chunk_seq=3, sample_rate=24000, pcm=b"\x01\x00"))
    assert protocol.parse_audio_frame(socket.frames[0]) == (REPLY, 2, 3, 24000, b"\x01\x00")


def test_a_realtime_text_response_is_sent_in_the_apis_order_and_chained_to_the_item_before():
    sent = []
    out = Output(sent.append)
    out.conversation_id = CONV
    out.text_item("item_user", "hello")
    rec = out.open(USER_MSG, REPLY, ["text"])
    out.text_delta(rec, "Hi")
    out.text_delta(rec, " there.")
    rec.final_text, rec.final_status = "Hi there.", "complete"
    out.settle(rec, audio_pending=False)
    out.text_delta(rec, " late")  # nothing after response.done
    assert [type(e).__struct_config__.tag for e in sent] == [
        "conversation.item.added",
        "conversation.item.done",
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "conversation.item.done",
        "response.output_item.done",
        "response.done",
    ]
    assert sent[4].previous_item_id == "item_user"
    assert sent[-1].response.status == "completed" and sent[-1].response.output[0].content[0].text == "Hi there."


def test_a_realtime_audio_response_waits_for_its_audio_before_it_is_done():
    sent = []
    out = Output(sent.append)
    rec = out.open(USER_MSG, REPLY, ["audio"])
    rec.final_text, rec.final_status = "Hi.", "complete"
    out.settle(rec, audio_pending=True)
    assert not rec.done
    out.audio_delta(rec, b"\x01\x00")
    out.settle(rec, audio_pending=False)
    tags = [type(e).__struct_config__.tag for e in sent]
    assert tags.index("response.output_audio.delta") < tags.index("response.done")
    assert rec.done
