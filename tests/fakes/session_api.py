"""In-memory stand-ins for what a wire talks to: its session (`SessionApi`, wire.py) and its
client socket. A wire's unit tests feed client frames in and read back what it sent and what
it asked of the session, with no server and no bus.
"""

from __future__ import annotations

import json

from services.common import db, ids
from services.gateway.relay import Reply
from services.gateway.wire import Opening

CONV = "11111111-1111-4111-8111-111111111111"
AUDIO_SESSION = "44444444-4444-4444-8444-444444444444"
AVATAR = db.Avatar("aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa", "Ada", "a tester", "You test.", "en", "voices/ada.wav", None)


class FakeClientSocket:
    """The client's side of the WebSocket: what the wire sent, and how it closed."""

    def __init__(
        self,
        first: str | Exception | list[str] = "",
        offered: list[str] | None = None,
        headers: dict[str, str] | None = None,
        path: str = "/",
    ):
        self.first = first
        """The client's first message (a list: its first few, read one at a time)."""
        self.offered = offered or []
        self.headers = headers or {}
        self.path = path
        self.raw: list[str] = []
        """Text frames exactly as written, in order (`send_now` ones included)."""
        self.frames: list[bytes] = []
        self.accepted: str | None = None
        self.closed: tuple[int, str] | None = None

    @property
    def texts(self) -> list[dict]:
        return [json.loads(t) for t in self.raw]

    def types(self) -> list[str]:
        return [t["type"] for t in self.texts]

    async def accept(self, subprotocol: str | None) -> None:
        self.accepted = subprotocol

    async def first_text(self, timeout_s: float) -> str:
        first = self.first.pop(0) if isinstance(self.first, list) and self.first else self.first
        if isinstance(first, Exception):
            raise first
        if isinstance(first, list):
            raise TimeoutError  # nothing more came
        return first

    def send_text(self, text: str) -> None:
        self.raw.append(text)

    def send_bytes(self, data: bytes) -> None:
        self.frames.append(data)

    async def send_now(self, text: str) -> None:
        self.raw.append(text)

    async def close_now(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


class FakeHistory:
    """The conversation's stored messages, as the test puts them in `messages`."""

    def __init__(self):
        self.messages: dict[str, db.Message] = {}
        self.removed: list[str] = []

    async def get(self, message_id: str) -> db.Message | None:
        return self.messages.get(message_id)

    async def remove(self, message_id: str) -> bool:
        if message_id not in self.messages or message_id in self.removed:
            return False
        self.removed.append(message_id)
        return True


class FakeSession:
    """A session as a wire sees it (`SessionApi`): every call it receives is recorded in
    `calls` as (name, args...), and the replies it relays are `replies`, set up by the test."""

    def __init__(self, avatars: list[db.Avatar] | None = None, opening: Opening | None = None):
        self.conv = CONV
        self.audio_session_id = AUDIO_SESSION
        self.resume_id = AUDIO_SESSION
        self.user_id = "tester"
        self.opening = opening or Opening()
        self.avatars = list(avatars or [AVATAR])
        self.replies: dict[str, Reply] = {}
        self.calls: list[tuple] = []
        self.text_seq = 0
        self.turn_tools: list[tuple] = []
        """The tools and tool_choice each `submit_text` carried."""
        self.tool_refusals: list[tuple[str, str]] = []
        """What the next `tool_result` calls answer (none: taken)."""
        self.history = FakeHistory()
        self.over_reply: set[int] = set()
        """Utterances the test says began over a playing reply and have not yet counted."""

    @property
    def opened_at(self) -> float:
        return 0.0

    def named(self, name: str) -> list[tuple]:
        """The calls of one kind, without their name."""
        return [c[1:] for c in self.calls if c[0] == name]

    def reply(self, message_id: str) -> Reply | None:
        return self.replies.get(message_id)

    def unfinished(self) -> list[str]:
        return list(self.replies)

    def playback(self, message_id: str, played_ms: float, ended: bool) -> bool:
        self.calls.append(("playback", message_id, played_ms, ended))
        return message_id in self.replies

    def latency(self, message_id: str, voice_to_voice_ms: float) -> bool:
        self.calls.append(("latency", message_id, voice_to_voice_ms))
        return message_id in self.replies

    def mute(self, message_id: str) -> None:
        self.calls.append(("mute", message_id))

    def held(self, utterance_seq: int) -> bool:
        return utterance_seq in self.over_reply

    async def audio(self, frame: bytes) -> None:
        self.calls.append(("audio", frame))

    def text_turn_id(self, client_seq: int | None = None) -> tuple[int, str]:
        seq = client_seq if client_seq is not None else self.text_seq
        if client_seq is None:
            self.text_seq += 1
        return seq, ids.user_message_id(self.conv, self.audio_session_id, "text", seq)

    async def submit_text(
        self, message_id: str, seq: int, text: str, instructions: str | None = None, tools=None, tool_choice=None
    ) -> None:
        self.calls.append(("submit_text", message_id, seq, text, instructions))
        self.turn_tools.append((tools, tool_choice))

    async def answer_held(self, message_id: str, text: str, instructions=None, tools=None, tool_choice=None) -> None:
        self.calls.append(("answer_held", message_id, text, instructions))
        self.turn_tools.append((tools, tool_choice))

    async def tool_result(self, call_id: str, output, error: str | None, session=None) -> tuple[str, str] | None:
        self.calls.append(("tool_result", call_id, output, error) + ((session,) if session is not None else ()))
        return self.tool_refusals.pop(0) if self.tool_refusals else None

    async def interrupt(self, message_id: str, position, fact_id: str | None = None) -> None:
        self.calls.append(("interrupt", message_id, position, fact_id))

    async def cancel(self, message_id: str = "", reason: str = "") -> None:
        self.calls.append(("cancel", message_id, reason))

    async def cut(self, message_id: str) -> None:
        self.calls.append(("cut", message_id))

    async def commit_utterance(self) -> None:
        self.calls.append(("commit",))

    async def clear_utterance(self) -> None:
        self.calls.append(("clear",))

    async def replace_avatars(self, avatars: list[db.Avatar]) -> None:
        self.calls.append(("replace_avatars", [a.id for a in avatars]))
        self.avatars = avatars

    async def reopen_stt(self) -> None:
        self.calls.append(("reopen_stt",))

    def close(self, code: int, reason: str, end_reason: str | None = None) -> None:
        self.calls.append(("close", code, reason, end_reason))
