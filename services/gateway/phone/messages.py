"""Twilio Media Streams' WebSocket messages, as Twilio's documentation gives them.

In: `connected`, `start`, `media`, `mark`, `dtmf`, `stop` (numbers such as sequenceNumber,
chunk and timestamp arrive as strings). Out: `media` (base64 µ-law at 8 kHz, no header),
`mark` (Twilio sends it back once the audio before it has been played) and `clear` (Twilio
drops the audio it holds and sends back the marks still pending).
"""

from __future__ import annotations

import msgspec


class _In(msgspec.Struct, tag_field="event", rename="camel", kw_only=True):
    sequence_number: str = ""


class Connected(_In, tag="connected"):
    protocol: str = ""
    version: str = ""


class MediaFormat(msgspec.Struct, rename="camel"):
    encoding: str
    sample_rate: int
    channels: int = 1


class StartInfo(msgspec.Struct, rename="camel", kw_only=True):
    account_sid: str = ""
    call_sid: str = ""
    stream_sid: str = ""
    tracks: list[str] = []
    custom_parameters: dict[str, str] = {}
    media_format: MediaFormat | None = None


class Start(_In, tag="start"):
    stream_sid: str
    start: StartInfo


class MediaInfo(msgspec.Struct, kw_only=True):
    track: str = "inbound"
    chunk: str = ""
    timestamp: str = ""
    payload: str


class Media(_In, tag="media"):
    stream_sid: str
    media: MediaInfo


class MarkInfo(msgspec.Struct):
    name: str


class Mark(_In, tag="mark"):
    stream_sid: str
    mark: MarkInfo


class DtmfInfo(msgspec.Struct, kw_only=True):
    track: str = "inbound_track"
    digit: str


class Dtmf(_In, tag="dtmf"):
    stream_sid: str
    dtmf: DtmfInfo


class Stop(_In, tag="stop"):
    stream_sid: str


In = Connected | Start | Media | Mark | Dtmf | Stop
decoder = msgspec.json.Decoder(In)

_encoder = msgspec.json.Encoder()


def media(stream_sid: str, payload: str) -> str:
    return _encoder.encode({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}}).decode()


def mark(stream_sid: str, name: str) -> str:
    return _encoder.encode({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}}).decode()


def clear(stream_sid: str) -> str:
    return _encoder.encode({"event": "clear", "streamSid": stream_sid}).decode()
