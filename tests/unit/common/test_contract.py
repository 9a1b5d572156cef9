"""The shared contract: message shapes, versions, audio headers, derived ids, audio frames."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from services.common import ids, schemas
from services.common.speech import StoredSentence
from services.gateway import protocol
from services.storage.engine import assemble


def test_every_payload_carries_its_version():
    turn = schemas.UserTurn(conversation_id="c", message_id="m", session_id="s", turn_seq=0, source="text", text="hi")
    assert msgspec.json.decode(schemas.encode(turn))["v"] == schemas.SCHEMA_VERSION
    ev = schemas.ReplyDelta(conversation_id="c", message_id="m", delta_seq=3, text="x")
    body = msgspec.json.decode(schemas.encode(ev))
    assert body["type"] == "reply.delta" and body["v"] == schemas.SCHEMA_VERSION


def test_consumers_ignore_fields_they_do_not_know():
    raw = (
        b'{"v":1,"conversation_id":"c","message_id":"m","session_id":"s","turn_seq":1,'
        b'"source":"voice","text":"t","added_later":42}'
    )
    assert schemas.decode(raw, schemas.UserTurn).turn_seq == 1


def test_events_decode_to_their_own_type():
    ev = schemas.AudioStored(conversation_id="c", message_id="m", key="k", url="u", duration_s=1.5)
    assert schemas.decode_event(schemas.encode(ev)) == ev
    with pytest.raises(msgspec.ValidationError):
        schemas.decode_event(b'{"type":"no.such.event","conversation_id":"c"}')


def test_audio_metadata_round_trips_through_headers():
    meta = schemas.AudioMeta(
        conversation_id="c",
        message_id="m",
        sentence_index=2,
        chunk_seq=7,
        sample_rate=24000,
        last=True,
        status="failed",
    )
    headers = meta.headers(msg_id="m.2")
    assert headers["Nats-Msg-Id"] == "m.2"
    assert schemas.AudioMeta.from_headers(headers) == meta
    with pytest.raises(msgspec.ValidationError):
        schemas.AudioMeta.from_headers({"Parley-Sentence": "1"})


def test_ids_a_retry_must_reproduce_are_derived():
    a = ids.user_message_id("conv", "sess", "voice", 3)
    assert a == ids.user_message_id("conv", "sess", "voice", 3)
    assert a != ids.user_message_id("conv", "sess", "voice", 4)
    assert a != ids.user_message_id("conv", "sess", "text", 3)
    assert a != ids.user_message_id("conv", "other", "voice", 3)
    r = ids.reply_id(a, "avatar")
    assert r == ids.reply_id(a, "avatar") != ids.reply_id(a, "avatar2")
    assert ids.tts_job_id(r, 0) != ids.tts_job_id(r, 1)
    uuid.UUID(a), uuid.UUID(r)
    assert ids.new_id() != ids.new_id()


def test_audio_frame_header_round_trips():
    mid = str(uuid.uuid4())
    frame = protocol.audio_frame(mid, 5, 9, 24000, b"\x01\x00\x02\x00")
    assert len(frame) == protocol.AUDIO_HEADER.size + 4 == 32
    assert protocol.parse_audio_frame(frame) == (mid, 5, 9, 24000, b"\x01\x00\x02\x00")


def test_client_messages_are_typed():
    assert isinstance(protocol.decoder.decode(b'{"type":"text","text":"hi"}'), protocol.Text)
    with pytest.raises(msgspec.ValidationError):
        protocol.decoder.decode(b'{"type":"text"}')


def test_reply_audio_is_assembled_in_sentence_order_without_failed_sentences():
    parts = [
        StoredSentence(1, b"\x02\x00" * 10, 24000, True),
        StoredSentence(0, b"\x01\x00" * 10, 24000, True),
        StoredSentence(2, b"", 24000, False),
    ]
    wav, duration, rate = assemble(parts)
    import io

    import soundfile as sf

    audio, sr = sf.read(io.BytesIO(wav), dtype="int16")
    assert sr == rate == 24000
    assert list(audio) == [1] * 10 + [2] * 10
    assert duration == pytest.approx(20 / 24000)
    assert assemble([StoredSentence(0, b"", 24000, False)]) == (b"", 0.0, 0)
