"""Client protocol v1: what a client may send, and the binary audio frame it receives.

docs/protocol.md is the reference; this module is its code.
"""

from __future__ import annotations

import struct
import uuid
from typing import Annotated, Any, Literal

import msgspec

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)


class ClientMessage(msgspec.Struct, kw_only=True, tag_field="type", forbid_unknown_fields=False):
    pass


class Resume(msgspec.Struct, kw_only=True):
    session_id: str
    """The `session_id` of the dropped session's `session.started`."""
    last_cursor: Annotated[int, msgspec.Meta(ge=0)] | None = None
    """The highest `cursor` the client saw; omitted: every final event since the session began."""


class Turn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How the end of a spoken turn is decided (docs/protocol.md, "Turn taking")."""

    policy: Literal["vad", "smart"] | None = None
    """`vad`: after `end_of_turn_ms` of silence. `smart`: after `short_ms` the worker asks
    whether the words (and, as configured, the sound) say the person is done; the turn ends
    then, or after `long_ms` whatever they said. Omitted: the server's default."""
    short_ms: Annotated[int, msgspec.Meta(ge=100, le=2000)] | None = None
    long_ms: Annotated[int, msgspec.Meta(ge=200, le=10000)] | None = None

    def __post_init__(self) -> None:
        if self.short_ms is not None and self.long_ms is not None and self.short_ms >= self.long_ms:
            raise ValueError("turn.short_ms must be shorter than turn.long_ms")


class Interruption(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """When speech over a playing reply cuts it off (docs/protocol.md, "Barge-in")."""

    min_ms: Annotated[int, msgspec.Meta(ge=100, le=5000)] = 600
    """Speech voiced this long stops the reply, whatever its words."""
    min_words: Annotated[int, msgspec.Meta(ge=0, le=10)] = 0
    """A partial transcript with this many words that are not backchannels stops it at once;
    0 (the default, docs/benchmarks.md "Barge-in"): partials never do."""
    resume_ms: Annotated[int, msgspec.Meta(ge=0, le=10000)] = 2000
    """A stop on sound alone pauses the reply; with no words in it (or none said this long after
    the speech stopped) it resumes. 0: never pause, every stop is final."""


class Start(ClientMessage, tag="session.start"):
    protocol: int = PROTOCOL_VERSION
    token: str | None = None
    """A user token (JWT) or API key, for clients that cannot send an Authorization header."""
    conversation_id: str | None = None
    avatar_ids: list[str] = []
    language: str | None = None
    end_of_turn_ms: Annotated[int, msgspec.Meta(ge=100, le=5000)] | None = None
    turn: Turn | None = None
    sample_rate: Literal[16000] = 16000
    """Mic audio is 16 kHz PCM16 mono; a client that captures at another rate resamples
    before sending (declaring another rate is refused rather than misheard)."""
    resume: Resume | None = None
    barge_in: bool = True
    """Speaking over a reply that is playing stops it (off for push-to-talk clients)."""
    interruption: Interruption = msgspec.field(default_factory=Interruption)
    partials: bool = True
    """Partial transcripts while the person speaks (where the STT worker makes them); off,
    each utterance is decoded once, when it ends, and its transcript depends on nothing else."""


class Text(ClientMessage, tag="text"):
    text: str
    client_seq: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] | None = None
    """Stored as the turn's 32-bit sequence: anything outside is refused here, not at the database."""


class Interrupt(ClientMessage, tag="interrupt"):
    """Stop a reply. With the playback position, the stored reply keeps only what was heard."""

    message_id: str | None = None
    sentence_index: int | None = None
    offset_ms: int | None = None


class Playback(ClientMessage, tag="playback"):
    """How much of a reply's audio the client has played (from the reply's first sample), and
    whether it finished or stopped. The gateway uses the newest report to tell what was heard
    when the person speaks over the reply or interrupts it without a position."""

    message_id: str
    played_ms: Annotated[float, msgspec.Meta(ge=0)]
    ended: bool = False


class End(ClientMessage, tag="session.end"):
    pass


class Latency(ClientMessage, tag="latency"):
    """The client's own measure of a spoken turn: from sending the last sample of the
    person's speech (the `end_s` of the utterance's final transcript) to receiving the
    first audio frame of the reply to it. Feeds the client-measured voice-to-voice metric."""

    message_id: str
    voice_to_voice_ms: Annotated[float, msgspec.Meta(gt=0, lt=120_000)]


class ToolResult(ClientMessage, tag="tool.result"):
    """The answer to a client tool's `tool.call`: its `output` (any JSON), or an `error` the
    avatar is told about. One answer per call; the call's own timeout bounds the wait."""

    call_id: str
    output: Any = None
    error: str | None = None


Incoming = Start | Text | Interrupt | Playback | End | Latency | ToolResult
decoder = msgspec.json.Decoder(Incoming)

# Server -> client audio: a 28-byte little-endian header, then PCM16 mono samples.
#   u8 version (1) | u8 kind (1 = reply audio) | 16 bytes message id (UUID)
#   | u16 sentence index | u32 chunk sequence | u32 sample rate
AUDIO_HEADER = struct.Struct("<BB16sHII")
AUDIO_KIND = 1


def audio_frame(message_id: str, sentence_index: int, chunk_seq: int, sample_rate: int, pcm: bytes) -> bytes:
    head = AUDIO_HEADER.pack(
        PROTOCOL_VERSION, AUDIO_KIND, uuid.UUID(message_id).bytes, sentence_index, chunk_seq, sample_rate
    )
    return head + pcm


def parse_audio_frame(frame: bytes) -> tuple[str, int, int, int, bytes]:
    """For clients and tests: (message id, sentence index, chunk seq, sample rate, pcm)."""
    version, kind, mid, idx, seq, rate = AUDIO_HEADER.unpack_from(frame)
    if version != PROTOCOL_VERSION or kind != AUDIO_KIND:
        raise ValueError(f"unknown audio frame version {version} kind {kind}")
    return str(uuid.UUID(bytes=mid)), idx, seq, rate, frame[AUDIO_HEADER.size :]


SUBPROTOCOL = f"parley.v{PROTOCOL_VERSION}"
"""Offered in Sec-WebSocket-Protocol, it is accepted; `session.start.protocol` decides."""

# WebSocket close codes (4000-4999 are the application's).
CLOSE_IDLE = 4000
CLOSE_SESSION_TOO_LONG = 4001
CLOSE_BAD_START = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_UNSUPPORTED_VERSION = 4406
CLOSE_START_TIMEOUT = 4408
CLOSE_SUPERSEDED = 4409
CLOSE_RESUME_EXPIRED = 4410
CLOSE_TOO_MANY_SESSIONS = 4429
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN = 1013
