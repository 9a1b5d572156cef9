"""The Realtime API's event shapes and the session settings they map onto (no stack needed)."""

from __future__ import annotations

import msgspec
import pytest

from services.common import db
from services.gateway.realtime import config as rtsession
from services.gateway.realtime import protocol as rt
from services.gateway.wire import Opening

_AVATAR = db.Avatar("a1", "Ada", None, "You are Ada.", "en", None, None)


def test_ga_and_beta_session_updates_decode_to_the_same_settings():
    ga = rt.decoder.decode(
        b'{"type": "session.update", "session": {"type": "realtime", "output_modalities": ["audio"],'
        b' "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection":'
        b' {"type": "server_vad", "silence_duration_ms": 700}}, "output": {"voice": "Ada"}}}}'
    )
    beta = rt.decoder.decode(
        b'{"type": "session.update", "session": {"modalities": ["text", "audio"], "input_audio_format": "pcm16",'
        b' "voice": "Ada", "turn_detection": {"type": "server_vad", "silence_duration_ms": 700},'
        b' "temperature": 0.8}}'
    )
    assert ga.session.audio.output.voice == beta.session.voice == "Ada"
    assert ga.session.audio.input.turn_detection == beta.session.turn_detection
    assert rtsession.modalities(beta.session.modalities, "p") == ["audio"]
    assert rtsession.check_format(ga.session.audio.input.format, msgspec.UNSET, "p", "audio/pcmu") == "audio/pcm"
    assert rtsession.check_format(msgspec.UNSET, beta.session.input_audio_format, "p", "audio/pcmu") == "audio/pcm"


def test_an_explicit_null_is_told_apart_from_a_missing_field():
    off = rt.decoder.decode(b'{"type": "session.update", "session": {"audio": {"input": {"transcription": null}}}}')
    assert off.session.audio.input.transcription is None
    assert off.session.audio.input.turn_detection is msgspec.UNSET
    cfg = rtsession.Config(model="m")
    rtsession.apply_turn_detection(cfg, None)  # push-to-talk: the client commits its turns
    opening = Opening()
    rtsession.apply_stt(cfg, opening)
    assert cfg.turn_type == "none" and opening.stt.end_of_turn_ms == rtsession.PUSH_TO_TALK_MS
    assert opening.barge_in is False
    assert opening.stt.hold is True  # a commit makes a user item; the client asks for its response
    assert rtsession.describe(cfg, _AVATAR, "s", "c", 0).audio.input.turn_detection is None


@pytest.mark.parametrize(
    "turn,param",
    [
        ({"type": "semantic_vad", "eagerness": "eager"}, "eagerness"),
        ({"threshold": 1.0}, "threshold"),
        ({"prefix_padding_ms": -1}, "prefix_padding_ms"),
        ({"silence_duration_ms": 50}, "silence_duration_ms"),
    ],
)
def test_turn_detection_outside_what_the_vad_does_is_refused(turn, param):
    cfg = rtsession.Config(model="m")
    with pytest.raises(rtsession.Refused) as refused:
        rtsession.apply_turn_detection(cfg, msgspec.convert(turn, rt.TurnDetectionIn))
    assert refused.value.param == f"session.audio.input.turn_detection.{param}"
    assert cfg == rtsession.Config(model="m")


def test_api_settings_parley_does_not_honour_exactly_are_taken_at_their_nearest_with_a_warning():
    cfg = rtsession.Config(model="m")
    warnings: list[rt.Warning] = []
    turn = {"type": "server_vad_v2", "create_response": False, "silence_duration_ms": 700}
    rtsession.apply_turn_detection(cfg, msgspec.convert(turn, rt.TurnDetectionIn), warnings)
    assert (cfg.turn_type, cfg.silence_duration_ms) == ("server_vad", 700)
    assert [w.param for w in warnings] == ["session.audio.input.turn_detection.type"]
    assert cfg.create_response is False and cfg.hold  # honoured as it is: no warning
    opening = Opening()
    rtsession.apply_stt(cfg, opening)
    assert opening.stt.hold is True
    assert rtsession.describe(cfg, _AVATAR, "s", "c", 0).audio.input.turn_detection.create_response is False
    update = {"instructions": "Be kind.", "tools": [{"type": "mcp", "server_label": "x"}], "audio": {"input": {}}}
    cfg, _, warnings = rtsession.updated(cfg, msgspec.convert(update, rt.SessionIn), set())
    assert cfg.instructions == "Be kind." and cfg.tools == []
    assert [w.param for w in warnings] == ["session.tools"]


def test_server_vad_maps_onto_the_stt_session():
    cfg = rtsession.Config(model="m")
    turn = rt.TurnDetectionIn(
        threshold=0.6, prefix_padding_ms=250, silence_duration_ms=800, interrupt_response=False, idle_timeout_ms=9000
    )
    rtsession.apply_turn_detection(cfg, turn)
    assert (cfg.threshold, cfg.prefix_padding_ms, cfg.silence_duration_ms) == (0.6, 250, 800)
    assert cfg.interrupt_response is False


@pytest.mark.parametrize(
    "eagerness,waits", [("high", (200, 800)), ("medium", (200, 1600)), ("auto", (200, 1600)), ("low", (300, 2400))]
)
def test_semantic_vad_is_the_smart_policy_with_waits_by_eagerness(eagerness, waits):
    cfg = rtsession.Config(model="m")
    rtsession.apply_turn_detection(cfg, rt.TurnDetectionIn(type="semantic_vad", eagerness=eagerness))
    opening = Opening()
    rtsession.apply_stt(cfg, opening)
    assert (opening.stt.turn_policy, opening.stt.turn_short_ms, opening.stt.turn_long_ms) == ("smart", *waits)
    assert rtsession.describe(cfg, _AVATAR, "s", "c", 0).audio.input.turn_detection == rt.SemanticVad(
        eagerness=eagerness
    )


def test_server_vad_is_the_vad_policy():
    cfg = rtsession.Config(model="m")
    rtsession.apply_turn_detection(cfg, rt.TurnDetectionIn(type="server_vad", silence_duration_ms=700))
    opening = Opening()
    rtsession.apply_stt(cfg, opening)
    assert (opening.stt.turn_policy, opening.stt.end_of_turn_ms) == ("vad", 700)


@pytest.mark.parametrize(
    ("fmt", "beta", "kind"),
    [
        ({"type": "audio/pcmu"}, "g711_ulaw", "audio/pcmu"),
        ({"type": "audio/pcma", "rate": 8000}, "g711_alaw", "audio/pcma"),
        ({"type": "audio/pcm", "rate": 24000}, "pcm16", "audio/pcm"),
    ],
)
def test_pcm16_at_24khz_and_g711_at_8khz_are_the_formats(fmt, beta, kind):
    assert rtsession.check_format(msgspec.convert(fmt, rt.AudioFormatIn), msgspec.UNSET, "p", "audio/pcm") == kind
    assert rtsession.check_format(msgspec.UNSET, beta, "p", "audio/pcm") == kind
    assert rtsession.check_format(msgspec.UNSET, msgspec.UNSET, "p", kind) == kind


@pytest.mark.parametrize(
    "fmt", [{"type": "audio/pcm", "rate": 16000}, {"type": "audio/pcmu", "rate": 16000}, {"type": "audio/opus"}]
)
def test_other_formats_and_rates_are_refused(fmt):
    with pytest.raises(rtsession.Refused):
        rtsession.check_format(msgspec.convert(fmt, rt.AudioFormatIn), msgspec.UNSET, "p", "audio/pcm")
    with pytest.raises(rtsession.Refused):
        rtsession.check_format(msgspec.UNSET, "g722", "p", "audio/pcm")


def test_validation_errors_name_the_field():
    with pytest.raises(msgspec.ValidationError) as bad:
        rt.decoder.decode(
            b'{"type": "conversation.item.truncate", "item_id": 3, "content_index": 0, "audio_end_ms": 1}'
        )
    assert rt.error_param(bad.value) == "item_id"


def test_server_events_carry_their_type_and_an_event_id():
    body = msgspec.json.decode(rt.encoder.encode(rt.Cleared()))
    assert body["type"] == "input_audio_buffer.cleared" and body["event_id"].startswith("event_")
