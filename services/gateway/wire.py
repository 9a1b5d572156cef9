"""What a session asks of a client protocol, and what a protocol asks of a session.

A `Wire` reads one client protocol off the socket and writes the session's typed events in
that protocol's form; the `Session` (session.py) never knows which protocol it talks to. The
native protocol, the OpenAI Realtime API and Twilio Media Streams (phone calls) are its wires.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from services.common import db

from . import events, protocol
from .auth import Principal
from .history import ConversationHistory
from .playout import Frame
from .relay import Reply


@dataclass
class SttOptions:
    """How the STT worker is asked to treat the session's audio."""

    language: str | None = None
    end_of_turn_ms: int | None = None
    partials: bool = True
    vad_threshold: float | None = None
    pad_ms: int | None = None
    instructions: str | None = None
    """Carried onto every spoken turn (the Realtime API's session `instructions`)."""
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    """The session's own tools, carried onto every spoken turn (the Realtime API's `tools`)."""
    prompt: str | None = None
    """Words to bias recognition towards, besides the avatars' names."""
    turn_policy: str | None = None
    """`vad` or `smart` (None: the worker's default), with the smart policy's two waits."""
    turn_short_ms: int | None = None
    turn_long_ms: int | None = None
    barge_in_ms: int = 600
    """Speech over a playing reply voiced this long is a barge-in, whatever its words."""
    barge_in_words: int = 0
    """A partial over a playing reply with this many words that are not backchannels is one;
    0: partials never are."""
    hold: bool = False
    """Spoken turns are stored unanswered: the client asks for each response (`answer_held`)."""


@dataclass
class Opening:
    """What a client asked for when it connected."""

    token: str | None = None
    principal: Principal | None = None
    """Who calls, when the wire has established it itself (a call signed by Twilio)."""
    conversation_id: str | None = None
    avatar_ids: list[str] = field(default_factory=list)
    resume: protocol.Resume | None = None
    barge_in: bool = True
    """Speech over a playing reply stops it."""
    resume_ms: int = 2000
    """A barge-in on sound alone pauses the reply; it resumes if its speech held no words, or
    nothing was said of them this long after the speech stopped. 0: every barge-in is final."""
    stt: SttOptions = field(default_factory=SttOptions)


class SessionApi(Protocol):
    """What a wire may ask of its session (session.py implements it)."""

    conv: str
    audio_session_id: str
    resume_id: str
    user_id: str
    opening: Opening
    avatars: list[db.Avatar]
    history: ConversationHistory
    """The conversation's stored messages (set once the session has begun)."""

    @property
    def opened_at(self) -> float: ...

    def reply(self, message_id: str) -> Reply | None:
        """A reply this connection relays."""

    def unfinished(self) -> list[str]:
        """Replies still arriving or playing."""

    def playback(self, message_id: str, played_ms: float, ended: bool) -> bool: ...

    def latency(self, message_id: str, voice_to_voice_ms: float) -> bool: ...

    def mute(self, message_id: str) -> None:
        """Forward no more of the reply's audio."""

    def held(self, utterance_seq: int) -> bool:
        """The utterance began over a playing reply and may yet prove a mere backchannel."""

    async def audio(self, frame: bytes) -> None: ...

    def text_turn_id(self, client_seq: int | None = None) -> tuple[int, str]: ...

    async def submit_text(
        self,
        message_id: str,
        seq: int,
        text: str,
        instructions: str | None = None,
        tools: list[dict] | None = None,
        tool_choice: str | dict | None = None,
    ) -> None: ...

    async def answer_held(
        self,
        message_id: str,
        text: str,
        instructions: str | None = None,
        tools: list[dict] | None = None,
        tool_choice: str | dict | None = None,
    ) -> None:
        """Ask for the response to a spoken turn stored unanswered (`SttOptions.hold`)."""

    async def tool_result(
        self, call_id: str, output: object, error: str | None, session: dict | None = None
    ) -> tuple[str, str] | None:
        """A client tool's answer; (code, message) when it is refused. `session`: the client
        session's `instructions` and `tools` now, for the rest of the reply (a handoff)."""

    async def interrupt(
        self, message_id: str, position: tuple[int, float] | None, fact_id: str | None = None
    ) -> None: ...

    async def cancel(self, message_id: str = "", reason: str = "") -> None:
        """Stop a reply (named by its id or its user turn's; none: whatever is streaming)."""

    async def cut(self, message_id: str) -> None:
        """The caller cut the reply off: it stops where playback stood, stored as heard."""

    async def commit_utterance(self) -> None:
        """The client ends its turn itself: what it said so far is transcribed now."""

    async def clear_utterance(self) -> None:
        """The client drops what it said so far, untranscribed."""

    async def replace_avatars(self, avatars: list[db.Avatar]) -> None: ...

    async def reopen_stt(self) -> None: ...

    def close(self, code: int, reason: str, end_reason: str | None = None) -> None: ...


class Wire(Protocol):
    async def accept(self) -> None:
        """Complete the WebSocket handshake (each protocol picks its own subprotocol)."""

    async def open(self) -> Opening | None:
        """Read what the client asks for; None once refused."""

    def attach(self, session: SessionApi) -> None:
        """The session this wire serves, before anything is sent."""

    async def on_message(self, message: dict) -> None:
        """One text or binary frame from the client."""

    def send(self, ev: events.ClientEvent, cursor: int | None = None) -> None:
        """An event for the client (`cursor`: a final event's place in the event log)."""

    def send_audio(self, message_id: str, frame: Frame) -> None:
        """A frame of reply audio, in playout order."""

    def error(self, code: str, message: str, retryable: bool = False) -> None:
        """A problem the client should hear about; the session goes on."""

    async def refuse(self, code: int, reason: str) -> None:
        """End the connection before the session runs, with a close code and reason."""

    async def barged_in(self) -> None:
        """The person spoke over the avatar and what was playing has been stopped."""

    async def closed(self) -> None:
        """The session has ended: stop what the wire started."""
