"""A protocol v1 test client: what any client of Parley does, written plainly."""

from __future__ import annotations

import asyncio
import json
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import websockets

from services.gateway.auth import mint_token
from services.gateway.protocol import parse_audio_frame

TEST_JWT_SECRET = "parley-test-secret-not-for-production-use"
"""The gateway fixtures' PARLEY_AUTH_JWT_SECRET: test clients sign their own user tokens."""


def token_for(user: str, **claims) -> str:
    return mint_token(TEST_JWT_SECRET, user, **claims)


def auth_headers(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(user)}"}


@dataclass
class AudioChunk:
    message_id: str
    sentence_index: int
    chunk_seq: int
    sample_rate: int
    pcm: bytes


@dataclass
class Received:
    """Everything the client saw, in arrival order."""

    items: list = field(default_factory=list)  # dict events and AudioChunk
    times: list = field(default_factory=list)  # monotonic arrival time of each item

    def events(self, type_: str | None = None) -> list[dict]:
        return [i for i in self.items if isinstance(i, dict) and (type_ is None or i["type"] == type_)]

    def audio(self, message_id: str | None = None) -> list[AudioChunk]:
        return [i for i in self.items if isinstance(i, AudioChunk) and message_id in (None, i.message_id)]

    def index(self, pred) -> int:
        for n, item in enumerate(self.items):
            if pred(item):
                return n
        raise AssertionError("no such item")


# Every client of this test run, so the ledger check can see what each one was told.
CLIENTS: list[Client] = []


def forget_clients_of(ws_url: str) -> None:
    """Conversations of a stack of a test's own live in that stack's database: the suite's
    closing ledger check (the `closing_ledger` fixture, tests/conftest.py) reads the shared
    stack's and must not see them."""
    CLIENTS[:] = [c for c in CLIENTS if c.url != ws_url]


class Client:
    def __init__(self, url: str):
        self.url = url
        self.received = Received()
        self._ws = None
        self._reader: asyncio.Task | None = None
        self._changed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.samples_sent = 0
        self._sent: list[tuple[int, float]] = []  # (samples sent so far, monotonic time), per frame

    async def connect(self, user: str | None = None, headers: dict | None = None, **start) -> dict:
        """Open the socket and start a session; `user` signs a token for that user."""
        self._ws = await websockets.connect(self.url, max_size=None, additional_headers=headers)
        CLIENTS.append(self)
        if user is not None:
            start.setdefault("token", token_for(user))
        await self.send_json({"type": "session.start", **start})
        self._reader = asyncio.create_task(self._read())
        return await self.wait_for(lambda r: r.events("session.started"), 30)

    async def send_json(self, obj: dict) -> None:
        await self._ws.send(json.dumps(obj))

    async def send_raw(self, data: str | bytes) -> None:
        await self._ws.send(data)

    async def _read(self) -> None:
        try:
            async for frame in self._ws:
                if isinstance(frame, bytes):
                    mid, idx, seq, rate, pcm = parse_audio_frame(frame)
                    self.received.items.append(AudioChunk(mid, idx, seq, rate, pcm))
                else:
                    self.received.items.append(json.loads(frame))
                self.received.times.append(time.monotonic())
                self._changed.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self._ws.close_code
            self.close_reason = self._ws.close_reason
            self._changed.set()

    async def wait_for(self, pred, timeout: float = 60.0):
        """Until `pred(received)` is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = pred(self.received)
            if value:
                return value
            if self._reader is not None and self._reader.done():
                raise AssertionError(f"connection closed ({self.close_code} {self.close_reason}) while waiting")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out; got: {[i if isinstance(i, dict) else 'audio' for i in self.received.items][-30:]}"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def stream_wav(self, path: Path, frame_ms: int = 20, realtime: bool = True) -> None:
        with wave.open(str(path)) as w:
            assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
            pcm = w.readframes(w.getnframes())
        step = 16000 * 2 * frame_ms // 1000
        start = time.monotonic()
        for n, off in enumerate(range(0, len(pcm), step)):
            await self._ws.send(pcm[off : off + step])
            self.samples_sent += len(pcm[off : off + step]) // 2
            self._sent.append((self.samples_sent, time.monotonic()))
            if realtime:
                await asyncio.sleep(max(0.0, start + (n + 1) * frame_ms / 1000 - time.monotonic()))

    def voice_to_voice(self, reply_id: str) -> float | None:
        """As a client measures it: from sending the last sample of the speech the reply
        answers (its final transcript's end_s) to receiving the reply's first audio frame."""
        r = self.received
        started = next((e for e in r.events("reply.started") if e["message_id"] == reply_id), None)
        final = next(
            (e for e in r.events("transcript.final") if started and e["message_id"] == started["user_message_id"]),
            None,
        )
        first = next((n for n, i in enumerate(r.items) if isinstance(i, AudioChunk) and i.message_id == reply_id), None)
        if final is None or first is None:
            return None
        end_sample = round(final["end_s"] * 16000)
        sent = next((t for samples, t in self._sent if samples >= end_sample), None)
        return None if sent is None else r.times[first] - sent

    async def report_latency(self, reply_id: str) -> float:
        """Send the client-measured voice to voice of a spoken reply, as the web client does."""
        seconds = self.voice_to_voice(reply_id)
        assert seconds is not None and seconds > 0, "no spoken turn and audio to measure"
        await self.send_json({"type": "latency", "message_id": reply_id, "voice_to_voice_ms": seconds * 1000})
        return seconds

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await self._reader
