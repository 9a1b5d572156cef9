"""Every message that crosses the bus, as versioned msgspec structs.

One module for all services so that a producer and its consumers can never disagree on a
field. JSON payloads are msgspec-encoded structs; raw audio travels as the message body with
its metadata in NATS headers (see `AudioMeta`), never base64 inside JSON.

Versioning: each struct carries `v`. Additive changes (new optional fields) keep the version;
consumers ignore unknown fields, so old consumers keep working while producers roll forward.
"""

from __future__ import annotations

from typing import ClassVar, Literal, TypeVar

import msgspec

SCHEMA_VERSION = 1
T = TypeVar("T")

Status = Literal["streaming", "complete", "interrupted", "failed"]
TurnSource = Literal["voice", "text"]


class Msg(msgspec.Struct, kw_only=True):
    v: int = SCHEMA_VERSION


# --- Session control (core NATS request/reply and control subjects) -------------------------


class SttOpen(Msg):
    """Gateway asks an STT worker to own a live session's audio."""

    conversation_id: str
    session_id: str
    language: str | None = None
    end_of_turn_ms: int | None = None
    prompt: str | None = None
    """Words to bias recognition towards (an avatar's names and terms)."""
    replay_from_s: float | None = None
    """A takeover: read the session's audio kept in AUDIO_IN from this point (seconds since
    the session's audio began), numbering utterances from ``first_utterance_seq``."""
    first_utterance_seq: int = 0
    vad_threshold: float | None = None
    """Speech probability that starts speech; the worker's own setting when unset."""
    pad_ms: int | None = None
    """Audio kept before speech start and after its end; the worker's own setting when unset."""
    instructions: str | None = None
    """Carried onto every `UserTurn` of the session (see `UserTurn.instructions`)."""
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    """Carried onto every `UserTurn` of the session (see `UserTurn.tools`)."""
    partials: bool = True
    """Partial transcripts at the worker's cadence; False: none for this session."""
    turn_policy: str | None = None
    """`vad` (the turn ends after `end_of_turn_ms` of silence) or `smart` (the turn model is
    asked after `turn_short_ms`; the turn ends by `turn_long_ms`); unset: the worker's."""
    turn_short_ms: int | None = None
    turn_long_ms: int | None = None
    barge_in_ms: int = 600
    """Speech over a playing reply (`OverReply`) voiced this long is a barge-in, whatever its words."""
    barge_in_words: int = 0
    """A partial over a playing reply with this many words that are not backchannels is one;
    0: partials never are (they misread backchannels and noise more than the final does)."""
    hold: bool = False
    """Carried onto every `UserTurn` of the session (see `UserTurn.hold`)."""


class SttAlive(Msg):
    """An STT worker's heartbeat; ``leaving`` when it drains and hands its sessions over."""

    worker_id: str
    sessions: int = 0
    capacity: int = 0
    leaving: bool = False


class SttOpened(Msg):
    ok: bool
    worker_id: str = ""
    error: str = ""


class Control(Msg):
    """Control that must overtake queued work: core NATS, one subject per kind
    (`subjects.control(conversation_id, Kind.KIND)`), so each service subscribes, and is
    allowed, only the kinds it acts on."""

    KIND: ClassVar[str] = ""
    conversation_id: str


class SessionEnd(Control):
    """The person left: the STT worker closes the session, transcribing what it holds."""

    KIND: ClassVar[str] = "end"
    session_id: str = ""
    """The audio session to end; empty: every session of the conversation."""


class ReplyCancel(Control):
    """Stop a reply: `message_id` names the reply or its user turn; empty: whatever of the
    conversation is streaming."""

    KIND: ClassVar[str] = "cancel"
    message_id: str = ""
    reason: str = ""


class HistoryChanged(Control):
    """A message was taken out of the conversation's history: orchestrators forget what they
    hold of it (their next turn reads it again)."""

    KIND: ClassVar[str] = "history"


class SttRelease(Control):
    """Another worker took the session over: `worker_id` lets go of it."""

    KIND: ClassVar[str] = "release"
    session_id: str
    worker_id: str


class SessionResumed(Control):
    """A client resumed `session_id` on another connection: the old connection closes."""

    KIND: ClassVar[str] = "resumed"
    session_id: str


class UtteranceCommit(Control):
    """The client ends its turn itself: the utterance in progress is transcribed now."""

    KIND: ClassVar[str] = "commit"
    session_id: str


class UtteranceClear(Control):
    """The client discards what it said so far: the utterance in progress is never read."""

    KIND: ClassVar[str] = "clear"
    session_id: str


class OverReply(Control):
    """The utterance began while a reply was playing to the person: the STT worker says when
    it becomes a barge-in (`BargeIn`), and drops it, without a turn, if it is only a
    backchannel (`Backchannel`)."""

    KIND: ClassVar[str] = "over_reply"
    session_id: str
    utterance_seq: int


class SignRequest(Msg):
    """Gateway asks storage for URLs of stored objects (storage holds the bucket credentials)."""

    keys: list[str]


class SignReply(Msg):
    urls: dict[str, str]


class VoicePut(msgspec.Struct, kw_only=True, frozen=True):
    """Gateway asks storage to keep an avatar's reference voice. The body is the WAV (mono
    PCM16); this travels in headers beside it, like `AudioMeta`. `sha256` is the body's digest:
    storage checks it and names the object by it."""

    avatar_id: str
    sha256: str

    def headers(self) -> dict[str, str]:
        return {"Parley-V": str(SCHEMA_VERSION), "Parley-Avatar": self.avatar_id, "Parley-Sha256": self.sha256}

    @classmethod
    def from_headers(cls, headers: dict[str, str] | None) -> VoicePut:
        h = headers or {}
        try:
            return cls(avatar_id=h["Parley-Avatar"], sha256=h["Parley-Sha256"])
        except KeyError as exc:
            raise msgspec.ValidationError(f"bad voice headers: missing {exc}") from exc


class VoiceStored(Msg):
    """Storage's answer to `VoicePut`: the object's key, or why it was not stored."""

    key: str = ""
    error: str = ""


# --- Facts (JetStream) ----------------------------------------------------------------------


class UserTurn(Msg):
    """A closed user turn, spoken or typed: what the orchestrator answers."""

    conversation_id: str
    message_id: str
    session_id: str
    turn_seq: int
    source: TurnSource
    text: str
    language: str | None = None
    confidence: float | None = None
    speech_start_s: float | None = None
    speech_end_s: float | None = None
    # wall-clock stage marks (seconds since epoch): speech_end, eot, final, received ...
    marks: dict[str, float] = {}
    instructions: str | None = None
    """The session's own system prompt (an OpenAI Realtime client's `instructions`): it stands
    in for the answering avatar's persona."""
    tools: list[dict] | None = None
    """The session's own tools (a Realtime client's function tools, `services.common.tools.Tool`
    of kind `client`), offered beside the avatar's."""
    tool_choice: str | dict | None = None
    """How the first round may use the tools: `auto` (unset), `none`, `required`, or
    `{"type": "function", "name": ...}`."""
    hold: bool = False
    """Store the user message and answer none of it (`TurnHeld`): the client asks for each
    response itself (a Realtime session's `create_response: false`, or push-to-talk)."""
    answer_held: bool = False
    """The response a client asked for to its held turn `message_id`: the user message is
    stored and in the history already."""


class TtsJob(Msg):
    """One sentence of a reply to synthesise; any TTS replica may take it."""

    conversation_id: str
    message_id: str
    job_id: str
    sentence_index: int
    text: str
    language: str
    avatar_id: str
    voice_key: str | None = None
    created_at: float = 0.0


class Interruption(Msg):
    """The person cut a reply off; where playback stood says what they actually heard."""

    conversation_id: str
    message_id: str
    sentence_index: int | None = None
    offset_s: float | None = None


class ReplyDone(Msg):
    """A reply has stopped streaming (complete, interrupted or failed); storage assembles audio."""

    conversation_id: str
    message_id: str
    user_message_id: str
    avatar_id: str
    status: Status
    text: str
    sentence_count: int
    error: str = ""


# --- Client events (published by services, relayed to the client by the gateway) -----------


class Event(msgspec.Struct, kw_only=True, tag_field="type"):
    """Base of everything the gateway relays to a client as a JSON event."""

    v: int = SCHEMA_VERSION
    conversation_id: str


class SpeechStarted(Event, tag="speech.started"):
    session_id: str
    utterance_seq: int
    start_s: float


class SpeechStopped(Event, tag="speech.stopped"):
    session_id: str
    utterance_seq: int
    end_s: float


class BargeIn(Event, tag="speech.barge_in"):
    """Speech over a playing reply counts as cutting it off: voiced for `SttOpen.barge_in_ms`
    (``reason`` "speech"), or a partial with enough words that are not backchannels ("words")."""

    session_id: str
    utterance_seq: int
    reason: Literal["speech", "words"]


class Backchannel(Event, tag="speech.backchannel"):
    """An utterance over a playing reply held only backchannel words: no turn was made of it.
    A final event: it is what the ledger holds for the utterance instead of a user message."""

    session_id: str
    utterance_seq: int
    text: str


class TranscriptPartial(Event, tag="transcript.partial"):
    """What is recognised so far of an utterance still being spoken. A later partial (higher
    ``partial_seq``) supersedes an earlier one; ``stable`` is the leading part of ``text``
    that no later partial of the utterance changes."""

    session_id: str
    utterance_seq: int
    partial_seq: int
    text: str
    stable: str = ""


class TranscriptFinal(Event, tag="transcript.final"):
    session_id: str
    utterance_seq: int
    message_id: str
    text: str
    language: str | None = None
    confidence: float | None = None
    start_s: float | None = None
    end_s: float | None = None
    speech_end_at: float | None = None


class UserMessage(Event, tag="user.message"):
    """A typed user message was accepted onto the bus."""

    message_id: str
    text: str


class TurnHeld(Event, tag="turn.held"):
    """A user turn stored unanswered, as its session asked (`UserTurn.hold`): the client may
    now ask for the response to it. A final event: it is what the ledger holds for the
    missing reply."""

    message_id: str
    text: str


class ReplyStarted(Event, tag="reply.started"):
    message_id: str
    user_message_id: str
    avatar_id: str
    avatar_name: str = ""


class ReplyDelta(Event, tag="reply.delta"):
    message_id: str
    delta_seq: int
    text: str


class ReplySentence(Event, tag="reply.sentence"):
    message_id: str
    sentence_index: int
    text: str


class ReplyCompleted(Event, tag="reply.done"):
    message_id: str
    status: Status
    text: str
    sentence_count: int
    usage: dict[str, int] | None = None
    """`input_tokens` and `output_tokens` of the LLM over the reply (none when announced again)."""
    rate_limits: list[dict] | None = None
    """The LLM endpoint's `requests` and `tokens` limits after the reply, where it states them."""


class ReplyInterrupted(Event, tag="reply.interrupted"):
    """The stored reply now holds only what the person heard before cutting it off."""

    message_id: str
    text: str


class SentenceFailed(Event, tag="audio.sentence_failed"):
    message_id: str
    sentence_index: int
    error: str


class AudioStored(Event, tag="audio.stored"):
    message_id: str
    key: str
    url: str
    duration_s: float


class ToolCalled(Event, tag="tool.call"):
    """An avatar calls a tool. For a `client` tool the client runs it and answers with a
    `tool.result` message; the others are run by Parley and said here for the client to show."""

    message_id: str
    """The reply that calls it."""
    call_id: str
    name: str
    arguments: str
    kind: str
    round: int = 0
    index: int = 0
    round_calls: int = 1
    """How many calls the LLM asked for in this round (a client may wait for all of them)."""
    sentences_before: int = 0
    """Sentences of the reply sent to speech before the call (what the avatar said first)."""


class ToolDone(Event, tag="tool.done"):
    """A tool call's outcome, as the LLM reads it: `ok`, or `error` with why."""

    message_id: str
    call_id: str
    name: str
    status: Literal["ok", "error"]
    error: str | None = None


class ErrorEvent(Event, tag="error"):
    code: str
    message: str
    message_id: str | None = None
    retryable: bool = False


ClientEvent = (
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
    | ReplyCompleted
    | ReplyInterrupted
    | SentenceFailed
    | AudioStored
    | ToolCalled
    | ToolDone
    | ErrorEvent
)


# --- Audio metadata in headers --------------------------------------------------------------


class AudioMeta(msgspec.Struct, kw_only=True, frozen=True):
    """Metadata of a PCM16 mono body, carried in NATS headers next to the raw bytes."""

    conversation_id: str
    message_id: str = ""
    session_id: str = ""
    sentence_index: int = 0
    chunk_seq: int = 0
    offset: int = 0
    """Samples of the stream before this chunk (mic audio: since the session began)."""
    sample_rate: int = 16000
    last: bool = False
    status: Literal["ok", "failed"] = "ok"

    def headers(self, msg_id: str | None = None) -> dict[str, str]:
        h = {
            "Parley-V": str(SCHEMA_VERSION),
            "Parley-Conversation": self.conversation_id,
            "Parley-Message": self.message_id,
            "Parley-Session": self.session_id,
            "Parley-Sentence": str(self.sentence_index),
            "Parley-Chunk": str(self.chunk_seq),
            "Parley-Offset": str(self.offset),
            "Parley-Rate": str(self.sample_rate),
            "Parley-Last": "1" if self.last else "0",
            "Parley-Status": self.status,
        }
        if msg_id:
            h["Nats-Msg-Id"] = msg_id
        return h

    @classmethod
    def from_headers(cls, headers: dict[str, str] | None) -> AudioMeta:
        h = headers or {}
        try:
            return cls(
                conversation_id=h["Parley-Conversation"],
                message_id=h.get("Parley-Message", ""),
                session_id=h.get("Parley-Session", ""),
                sentence_index=int(h.get("Parley-Sentence", "0")),
                chunk_seq=int(h.get("Parley-Chunk", "0")),
                offset=int(h.get("Parley-Offset", "0")),
                sample_rate=int(h.get("Parley-Rate", "16000")),
                last=h.get("Parley-Last") == "1",
                status="failed" if h.get("Parley-Status") == "failed" else "ok",
            )
        except (KeyError, ValueError) as exc:
            raise msgspec.ValidationError(f"bad audio headers: {exc}") from exc


_json_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(ClientEvent)


def encode(msg: msgspec.Struct) -> bytes:
    return _json_encoder.encode(msg)


def decode(data: bytes, type_: type[T]) -> T:
    return msgspec.json.decode(data, type=type_)


def decode_event(data: bytes) -> ClientEvent:
    return _event_decoder.decode(data)
