"""The OpenAI Realtime API's event shapes, as far as Parley speaks them (docs/openai-realtime.md).

Client events are decoded leniently: fields Parley does not know are ignored, so a client
written for a newer API version still talks to it. Where the beta API named a field
differently (`modalities`, `voice`, `input_audio_format`, `turn_detection` at the session's
top level) both names are read. Server events are written in the GA form only.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

# --- client -> server -----------------------------------------------------------------------


class _In(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    pass


class AudioFormatIn(_In, kw_only=True):
    type: str = "audio/pcm"
    rate: int | None = None


class TranscriptionIn(_In, kw_only=True):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None


class TurnDetectionIn(_In, kw_only=True):
    type: str = "server_vad"
    threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None
    idle_timeout_ms: int | None = None
    eagerness: str | None = None


class VoiceRef(_In, kw_only=True):
    id: str


class AudioInputIn(_In, kw_only=True):
    format: AudioFormatIn | None | UnsetType = UNSET
    transcription: TranscriptionIn | None | UnsetType = UNSET
    turn_detection: TurnDetectionIn | None | UnsetType = UNSET


class AudioOutputIn(_In, kw_only=True):
    format: AudioFormatIn | None | UnsetType = UNSET
    voice: str | VoiceRef | None | UnsetType = UNSET


class AudioIn(_In, kw_only=True):
    input: AudioInputIn | None | UnsetType = UNSET
    output: AudioOutputIn | None | UnsetType = UNSET


class SessionIn(_In, kw_only=True):
    type: str | UnsetType = UNSET
    model: str | UnsetType = UNSET
    instructions: str | None | UnsetType = UNSET
    output_modalities: list[str] | UnsetType = UNSET
    audio: AudioIn | None | UnsetType = UNSET
    tools: list[Any] | None | UnsetType = UNSET
    tool_choice: str | dict[str, Any] | UnsetType = UNSET
    # the beta API's names
    modalities: list[str] | UnsetType = UNSET
    voice: str | VoiceRef | None | UnsetType = UNSET
    input_audio_format: str | UnsetType = UNSET
    output_audio_format: str | UnsetType = UNSET
    input_audio_transcription: TranscriptionIn | None | UnsetType = UNSET
    turn_detection: TurnDetectionIn | None | UnsetType = UNSET


class ContentIn(_In, kw_only=True):
    type: str
    text: str | None = None
    audio: str | None = None
    transcript: str | None = None


class ItemIn(_In, kw_only=True):
    id: str | None = None
    type: str = "message"
    role: str | None = None
    content: list[ContentIn] = []
    call_id: str | None = None
    """A `function_call_output`: the call it answers, and its `output` (a string, often JSON)."""
    output: str | None = None


class ResponseParams(_In, kw_only=True):
    output_modalities: list[str] | None = None
    modalities: list[str] | None = None
    instructions: str | None = None
    conversation: str | None = None
    input: list[Any] | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    metadata: dict[str, str] | None = None


class ClientEvent(_In, tag_field="type", kw_only=True):
    event_id: str | None = None


class SessionUpdate(ClientEvent, tag="session.update", kw_only=True):
    session: SessionIn


class AudioAppend(ClientEvent, tag="input_audio_buffer.append", kw_only=True):
    audio: str


class AudioCommit(ClientEvent, tag="input_audio_buffer.commit", kw_only=True):
    pass


class AudioClear(ClientEvent, tag="input_audio_buffer.clear", kw_only=True):
    pass


class ItemCreate(ClientEvent, tag="conversation.item.create", kw_only=True):
    item: ItemIn
    previous_item_id: str | None = None


class ItemTruncate(ClientEvent, tag="conversation.item.truncate", kw_only=True):
    item_id: str
    content_index: int
    audio_end_ms: int


class ItemRetrieve(ClientEvent, tag="conversation.item.retrieve", kw_only=True):
    item_id: str


class ItemDelete(ClientEvent, tag="conversation.item.delete", kw_only=True):
    item_id: str


class ResponseCreate(ClientEvent, tag="response.create", kw_only=True):
    response: ResponseParams | None = None


class ResponseCancel(ClientEvent, tag="response.cancel", kw_only=True):
    response_id: str | None = None


Incoming = (
    SessionUpdate
    | AudioAppend
    | AudioCommit
    | AudioClear
    | ItemCreate
    | ItemTruncate
    | ItemRetrieve
    | ItemDelete
    | ResponseCreate
    | ResponseCancel
)

SUPPORTED = frozenset(t.__struct_config__.tag for t in Incoming.__args__)
REFUSED = frozenset(
    {
        "output_audio_buffer.clear",
        "transcription_session.update",
    }
)
"""Client events of the API that Parley knows and answers with an `unsupported` error."""


class Envelope(_In, kw_only=True):
    type: str | None = None
    event_id: str | None = None


envelope_decoder = msgspec.json.Decoder(Envelope)
decoder = msgspec.json.Decoder(Incoming)

_PATH = re.compile(r"at `\$\.?([^`]*)`")


def error_param(exc: msgspec.ValidationError) -> str | None:
    """The field a validation error points at, as OpenAI names it in `error.param`."""
    found = _PATH.search(str(exc))
    return found.group(1) or None if found else None


# --- server -> client -----------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


class _Out(msgspec.Struct, kw_only=True):
    pass


class AudioFormat(_Out, omit_defaults=True, kw_only=True):
    type: str
    rate: int | None = None
    """PCM's; G.711 formats name none (8 kHz is theirs)."""


class Transcription(_Out, kw_only=True):
    model: str
    language: str | None = None
    prompt: str | None = None


class TurnDetection(_Out, kw_only=True):
    type: str = "server_vad"
    threshold: float
    prefix_padding_ms: int
    silence_duration_ms: int
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = None


class SemanticVad(_Out, kw_only=True):
    type: str = "semantic_vad"
    eagerness: str = "auto"
    create_response: bool = True
    interrupt_response: bool = True


class AudioInput(_Out, kw_only=True):
    format: AudioFormat
    transcription: Transcription | None
    turn_detection: TurnDetection | SemanticVad | None
    noise_reduction: None = None


class AudioOutput(_Out, kw_only=True):
    format: AudioFormat
    voice: str
    speed: float = 1.0


class Audio(_Out, kw_only=True):
    input: AudioInput
    output: AudioOutput


class Warning(_Out, kw_only=True):
    """A setting of the update Parley took at its nearest behaviour, and how."""

    param: str
    message: str


class ParleyInfo(_Out, omit_defaults=True, kw_only=True):
    """Not part of OpenAI's API: where the session's history lives in Parley's REST API, and
    (in `session.updated`, when there are any) the update's settings Parley took at their
    nearest behaviour."""

    conversation_id: str
    avatar_id: str
    avatar_name: str
    warnings: list[Warning] = []


class Session(_Out, kw_only=True):
    type: str = "realtime"
    object: str = "realtime.session"
    id: str
    model: str
    output_modalities: list[str]
    instructions: str
    audio: Audio
    tools: list[Any] = []
    tool_choice: str | dict[str, Any] = "auto"
    max_output_tokens: str = "inf"
    tracing: None = None
    truncation: str = "auto"
    prompt: None = None
    expires_at: int
    parley: ParleyInfo


class Content(_Out, omit_defaults=True, kw_only=True):
    type: str
    text: str | None = None
    transcript: str | None = None


class Item(_Out, kw_only=True):
    id: str
    object: str = "realtime.item"
    type: str = "message"
    role: str
    status: str
    content: list[Content]


class FunctionCallItem(_Out, kw_only=True):
    """The avatar calls one of the session's function tools; the client runs it."""

    id: str
    object: str = "realtime.item"
    type: str = "function_call"
    status: str
    name: str
    call_id: str
    arguments: str


class FunctionCallOutputItem(_Out, kw_only=True):
    id: str
    object: str = "realtime.item"
    type: str = "function_call_output"
    status: str = "completed"
    call_id: str
    output: str


AnyItem = Item | FunctionCallItem | FunctionCallOutputItem


class StatusError(_Out, kw_only=True):
    type: str
    code: str
    message: str | None = None


class StatusDetails(_Out, omit_defaults=True, kw_only=True):
    type: str
    reason: str | None = None
    error: StatusError | None = None


class InputTokenDetails(_Out, kw_only=True):
    text_tokens: int = 0
    audio_tokens: int = 0
    cached_tokens: int = 0


class OutputTokenDetails(_Out, kw_only=True):
    text_tokens: int = 0
    audio_tokens: int = 0


class Usage(_Out, kw_only=True):
    """OpenAI's usage of a response: the LLM's text tokens as its stream counted them; audio
    tokens at OpenAI's published rates (10 a second of the user's speech, 20 a second of the
    reply's audio), so a client's counters and budgets work (Parley's STT and TTS bill no tokens)."""

    total_tokens: int
    input_tokens: int
    output_tokens: int
    input_token_details: InputTokenDetails
    output_token_details: OutputTokenDetails


class Response(_Out, kw_only=True):
    id: str
    object: str = "realtime.response"
    status: str
    status_details: StatusDetails | None = None
    output: list[Item | FunctionCallItem] = []
    conversation_id: str
    output_modalities: list[str]
    metadata: dict[str, str] | None = None
    usage: Usage | None = None


class Error(_Out, kw_only=True):
    type: str
    code: str
    message: str
    param: str | None = None
    event_id: str | None = None


class ServerEvent(_Out, tag_field="type", kw_only=True):
    event_id: str = msgspec.field(default_factory=lambda: new_id("event"))


class ErrorEvent(ServerEvent, tag="error", kw_only=True):
    error: Error


class SessionCreated(ServerEvent, tag="session.created", kw_only=True):
    session: Session


class SessionUpdated(ServerEvent, tag="session.updated", kw_only=True):
    session: Session


class SpeechStarted(ServerEvent, tag="input_audio_buffer.speech_started", kw_only=True):
    audio_start_ms: int
    item_id: str


class SpeechStopped(ServerEvent, tag="input_audio_buffer.speech_stopped", kw_only=True):
    audio_end_ms: int
    item_id: str


class RateLimit(_Out, omit_defaults=True, kw_only=True):
    name: str
    limit: int | None = None
    remaining: int | None = None
    reset_seconds: float | None = None


class RateLimitsUpdated(ServerEvent, tag="rate_limits.updated", kw_only=True):
    """The LLM endpoint's limits as it stated them for this response (sent before `response.done`)."""

    rate_limits: list[RateLimit]


class TimeoutTriggered(ServerEvent, tag="input_audio_buffer.timeout_triggered", kw_only=True):
    audio_start_ms: int
    audio_end_ms: int
    item_id: str


class Committed(ServerEvent, tag="input_audio_buffer.committed", kw_only=True):
    item_id: str
    previous_item_id: str | None = None


class Cleared(ServerEvent, tag="input_audio_buffer.cleared", kw_only=True):
    pass


class ItemAdded(ServerEvent, tag="conversation.item.added", kw_only=True):
    item: AnyItem
    previous_item_id: str | None = None


class ItemDone(ServerEvent, tag="conversation.item.done", kw_only=True):
    item: AnyItem
    previous_item_id: str | None = None


class ItemRetrieved(ServerEvent, tag="conversation.item.retrieved", kw_only=True):
    item: AnyItem


class ItemDeleted(ServerEvent, tag="conversation.item.deleted", kw_only=True):
    item_id: str


class ItemTruncated(ServerEvent, tag="conversation.item.truncated", kw_only=True):
    item_id: str
    content_index: int
    audio_end_ms: int


class TranscriptionDelta(ServerEvent, tag="conversation.item.input_audio_transcription.delta", kw_only=True):
    item_id: str
    content_index: int = 0
    delta: str


class DurationUsage(_Out, kw_only=True):
    type: str = "duration"
    seconds: float


class TranscriptionCompleted(ServerEvent, tag="conversation.item.input_audio_transcription.completed", kw_only=True):
    item_id: str
    content_index: int = 0
    transcript: str
    usage: DurationUsage


class TranscriptionFailed(ServerEvent, tag="conversation.item.input_audio_transcription.failed", kw_only=True):
    item_id: str
    content_index: int = 0
    error: StatusError


class ResponseCreated(ServerEvent, tag="response.created", kw_only=True):
    response: Response


class ResponseDone(ServerEvent, tag="response.done", kw_only=True):
    response: Response


class _InResponse(ServerEvent, kw_only=True):
    response_id: str
    output_index: int = 0


class OutputItemAdded(_InResponse, tag="response.output_item.added", kw_only=True):
    item: Item | FunctionCallItem


class OutputItemDone(_InResponse, tag="response.output_item.done", kw_only=True):
    item: Item | FunctionCallItem


class FunctionCallArgumentsDelta(_InResponse, tag="response.function_call_arguments.delta", kw_only=True):
    item_id: str
    call_id: str
    delta: str


class FunctionCallArgumentsDone(_InResponse, tag="response.function_call_arguments.done", kw_only=True):
    item_id: str
    call_id: str
    name: str
    arguments: str


class _InPart(_InResponse, kw_only=True):
    item_id: str
    content_index: int = 0


class Part(_Out, omit_defaults=True, kw_only=True):
    type: str
    text: str | None = None
    transcript: str | None = None


class ContentPartAdded(_InPart, tag="response.content_part.added", kw_only=True):
    part: Part


class ContentPartDone(_InPart, tag="response.content_part.done", kw_only=True):
    part: Part


class AudioDelta(_InPart, tag="response.output_audio.delta", kw_only=True):
    delta: str


class AudioDone(_InPart, tag="response.output_audio.done", kw_only=True):
    pass


class AudioTranscriptDelta(_InPart, tag="response.output_audio_transcript.delta", kw_only=True):
    delta: str


class AudioTranscriptDone(_InPart, tag="response.output_audio_transcript.done", kw_only=True):
    transcript: str


class TextDelta(_InPart, tag="response.output_text.delta", kw_only=True):
    delta: str


class TextDone(_InPart, tag="response.output_text.done", kw_only=True):
    text: str


encoder = msgspec.json.Encoder()
