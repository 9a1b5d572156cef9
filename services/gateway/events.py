"""What the gateway sends a client: one typed struct per event of docs/protocol.md.

The bus structs in `services.common.schemas` are what services tell each other; a client event
is made from one (`from_bus`) and carries only the fields the public protocol names, so a field
added on the bus never reaches a client by accident. A wire (the native protocol, the Realtime
API) receives these and writes them in its own form.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from services.common import schemas

SCHEMA_VERSION = schemas.SCHEMA_VERSION


class ClientEvent(msgspec.Struct, kw_only=True, tag_field="type"):
    v: int = SCHEMA_VERSION
    conversation_id: str | None


class AudioFormat(msgspec.Struct, kw_only=True):
    encoding: str = "pcm_s16le"
    sample_rate: int
    channels: int = 1


class SessionStarted(ClientEvent, tag="session.started"):
    protocol: int
    session_id: str
    """The resumable session (a resume names it)."""
    audio_session_id: str
    """This connection's audio stream: the `session_id` of its speech events."""
    resumed: bool
    audio_in: AudioFormat
    audio_out: AudioFormat
    speech_input: bool


class SpeechStarted(ClientEvent, tag="speech.started"):
    session_id: str
    utterance_seq: int
    start_s: float


class SpeechStopped(ClientEvent, tag="speech.stopped"):
    session_id: str
    utterance_seq: int
    end_s: float


class BargeIn(ClientEvent, tag="speech.barge_in"):
    session_id: str
    utterance_seq: int
    reason: Literal["speech", "words"]


class Backchannel(ClientEvent, tag="speech.backchannel"):
    session_id: str
    utterance_seq: int
    text: str


class TranscriptPartial(ClientEvent, tag="transcript.partial"):
    session_id: str
    utterance_seq: int
    partial_seq: int
    text: str
    stable: str = ""


class TranscriptFinal(ClientEvent, tag="transcript.final"):
    session_id: str
    utterance_seq: int
    message_id: str
    text: str
    language: str | None = None
    confidence: float | None = None
    start_s: float | None = None
    end_s: float | None = None
    speech_end_at: float | None = None


class UserMessage(ClientEvent, tag="user.message"):
    message_id: str
    text: str


class TurnHeld(ClientEvent, tag="turn.held"):
    """A user turn stored unanswered: this client asks for each response itself."""

    message_id: str
    text: str


class ReplyStarted(ClientEvent, tag="reply.started"):
    message_id: str
    user_message_id: str
    avatar_id: str
    avatar_name: str = ""


class ReplyDelta(ClientEvent, tag="reply.delta"):
    message_id: str
    delta_seq: int
    text: str


class ReplySentence(ClientEvent, tag="reply.sentence"):
    message_id: str
    sentence_index: int
    text: str


class ReplyDone(ClientEvent, tag="reply.done"):
    message_id: str
    status: Literal["streaming", "complete", "interrupted", "failed"]
    text: str
    sentence_count: int
    usage: dict[str, int] | None = None
    rate_limits: list[dict] | None = None


class ReplyInterrupted(ClientEvent, tag="reply.interrupted"):
    message_id: str
    text: str


class SentenceFailed(ClientEvent, tag="audio.sentence_failed"):
    message_id: str
    sentence_index: int
    error: str


class AudioEnd(ClientEvent, tag="audio.end"):
    message_id: str
    sentence_count: int | None


class PlaybackStop(ClientEvent, tag="playback.stop"):
    message_id: str
    sentence_index: int
    offset_ms: int


class PlaybackPause(ClientEvent, tag="playback.pause"):
    """Speech over the reply may be an interruption: stop playing it; it resumes or stops."""

    message_id: str
    sentence_index: int
    offset_ms: int


class PlaybackResume(ClientEvent, tag="playback.resume"):
    """It was not one: the reply's audio follows again from this position."""

    message_id: str
    sentence_index: int
    offset_ms: int


class AudioStored(ClientEvent, tag="audio.stored"):
    message_id: str
    key: str
    url: str
    duration_s: float


class ToolCall(ClientEvent, tag="tool.call"):
    """An avatar calls a tool; for `kind` "client" the client runs it and answers `tool.result`."""

    message_id: str
    call_id: str
    name: str
    arguments: str
    kind: str
    round: int = 0
    index: int = 0
    round_calls: int = 1
    sentences_before: int = 0


class ToolDone(ClientEvent, tag="tool.done"):
    message_id: str
    call_id: str
    name: str
    status: Literal["ok", "error"]
    error: str | None = None


class Error(ClientEvent, tag="error"):
    code: str
    message: str
    message_id: str | None = None
    retryable: bool = False


FromBus = (
    SpeechStarted
    | SpeechStopped
    | BargeIn
    | Backchannel
    | TranscriptPartial
    | TranscriptFinal
    | UserMessage
    | TurnHeld
    | ReplyStarted
    | ReplyDelta
    | ReplySentence
    | ReplyDone
    | ReplyInterrupted
    | SentenceFailed
    | AudioStored
    | ToolCall
    | ToolDone
    | Error
)
"""The client events a bus event becomes (the same `type` tag on both sides)."""


def from_bus(data: bytes) -> FromBus:
    """The client's form of a bus event (`schemas.ClientEvent` JSON): its public fields,
    nothing else. Raises msgspec.DecodeError for what no client event reads."""
    return _bus_decoder.decode(data)


def to_json(ev: ClientEvent, seq: int, cursor: int | None = None) -> str:
    """The native protocol's text frame: the event with its per-connection `seq` and, for a
    final event, its `cursor` in the conversation's event log."""
    body = msgspec.to_builtins(ev)
    body["seq"] = seq
    if cursor is not None:
        body["cursor"] = cursor
    return _encoder.encode(body).decode()


_encoder = msgspec.json.Encoder()
_bus_decoder = msgspec.json.Decoder(FromBus)
