"""Twilio's side of a phone call into a `<Connect><Stream>`, written from Twilio's documentation
(Media Streams WebSocket messages, TwiML `<Stream>`, webhook security), not from Parley's code.

`TwilioCall.dial` makes the incoming-call webhook request, signed with the account's auth token
by Twilio's own helper library, and reads the TwiML; `connect` opens the stream the TwiML names,
signing the handshake, and sends `connected` and `start`. From then on the call behaves as
Twilio's media server does: the caller's audio goes out as 20 ms µ-law `media` messages in real
time (silence when nobody speaks), the audio sent back is played in real time from a buffer,
each `mark` is echoed once the audio before it has played (at once when nothing is buffered),
and a `clear` empties the buffer and echoes every mark still pending.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import websockets
from twilio.request_validator import RequestValidator

FRAME_BYTES = 160
"""20 ms of µ-law at 8 kHz."""
SILENCE = b"\xff" * FRAME_BYTES


def sid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


@dataclass
class Stream:
    """What the TwiML answered: the stream's URL and its `<Parameter>`s."""

    url: str
    parameters: dict[str, str]


@dataclass
class Played:
    """What the caller's phone did with the audio sent to it."""

    received: bytearray = field(default_factory=bytearray)
    received_at: list[float] = field(default_factory=list)
    """When each `media` message arrived (monotonic)."""
    played: bytearray = field(default_factory=bytearray)
    clears: list[int] = field(default_factory=list)
    """How many bytes had been played at each `clear`."""
    marks_echoed: list[str] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    """Every message from the server, in order."""


class TwilioCall:
    def __init__(self, http_url: str, public_url: str, auth_token: str, account_sid: str | None = None):
        self.http_url = http_url
        self.public_url = public_url.rstrip("/")
        self.validator = RequestValidator(auth_token)
        self.account_sid = account_sid or sid("AC")
        self.call_sid = sid("CA")
        self.stream_sid = sid("MZ")
        self.phone = Played()
        self.ws = None
        self.closed: tuple[int, str] | None = None
        self._seq = 0
        self._chunk = 0
        self._mic: asyncio.Queue[bytes] = asyncio.Queue()
        self._buffer = bytearray()
        self._marks: list[tuple[int, str]] = []
        """(buffer position the mark follows, name)."""
        self._tasks: list[asyncio.Task] = []
        self._sending = asyncio.Lock()

    # --- the webhook ----------------------------------------------------------------------

    async def dial(self, path: str, signature: str | None = None) -> tuple[int, Stream | str]:
        """Twilio's incoming-call request (POST, form-encoded); the TwiML's stream, or the error."""
        form = {
            "CallSid": self.call_sid,
            "AccountSid": self.account_sid,
            "From": "+14155550100",
            "To": "+14155550199",
            "Caller": "+14155550100",
            "Called": "+14155550199",
            "CallStatus": "ringing",
            "Direction": "inbound",
            "ApiVersion": "2010-04-01",
        }
        signed = signature or self.validator.compute_signature(self.public_url + path, form)
        async with httpx.AsyncClient(base_url=self.http_url, trust_env=False) as http:
            resp = await http.post(path, data=form, headers={"X-Twilio-Signature": signed})
        if resp.status_code != 200:
            return resp.status_code, resp.text
        assert resp.headers["content-type"].split(";")[0] in ("text/xml", "application/xml")
        stream = ET.fromstring(resp.content).find("Connect/Stream")
        params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
        return 200, Stream(stream.get("url"), params)

    # --- the stream -----------------------------------------------------------------------

    async def connect(self, stream: Stream, signature: str | None = "sign", start: dict | None = None) -> None:
        """Open the stream's WebSocket (signed unless `signature` is None) and send `connected`
        and `start` (or `start` as given: a test's bad one)."""
        url = urlsplit(stream.url)
        local = self.http_url.replace("http://", "ws://") + url.path
        headers = {}
        if signature == "sign":
            headers["X-Twilio-Signature"] = self.validator.compute_signature(stream.url, {})
        elif signature is not None:
            headers["X-Twilio-Signature"] = signature
        self.ws = await websockets.connect(local, additional_headers=headers, max_size=None)
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self.send(start or self.start_message(stream.parameters))
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._play())]

    def start_message(self, parameters: dict[str, str]) -> dict:
        self._seq += 1
        return {
            "event": "start",
            "sequenceNumber": str(self._seq),
            "start": {
                "accountSid": self.account_sid,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": ["inbound"],
                "customParameters": parameters,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
            "streamSid": self.stream_sid,
        }

    async def send(self, message: dict) -> None:
        async with self._sending:
            await self.ws.send(json.dumps(message))

    def media_message(self, payload: bytes) -> dict:
        self._seq += 1
        self._chunk += 1
        media = {
            "track": "inbound",
            "chunk": str(self._chunk),
            "timestamp": str((self._chunk - 1) * 20),
            "payload": base64.b64encode(payload).decode(),
        }
        return {"event": "media", "sequenceNumber": str(self._seq), "media": media, "streamSid": self.stream_sid}

    async def stream_microphone(self) -> None:
        """Start the caller's line: 20 ms every 20 ms, what `say` queued or silence."""
        self._tasks.append(asyncio.create_task(self._microphone()))

    def say(self, mulaw: bytes) -> float:
        """Queue speech on the line; the seconds it will take."""
        for offset in range(0, len(mulaw), FRAME_BYTES):
            self._mic.put_nowait(mulaw[offset : offset + FRAME_BYTES].ljust(FRAME_BYTES, b"\xff"))
        return len(mulaw) / 8000

    async def press(self, digit: str) -> None:
        self._seq += 1
        dtmf = {"track": "inbound_track", "digit": digit}
        await self.send({"event": "dtmf", "streamSid": self.stream_sid, "sequenceNumber": str(self._seq), "dtmf": dtmf})

    async def stop(self) -> None:
        """The caller hangs up: `stop`, then the socket closes."""
        self._seq += 1
        body = {"accountSid": self.account_sid, "callSid": self.call_sid}
        await self.send({"event": "stop", "sequenceNumber": str(self._seq), "stop": body, "streamSid": self.stream_sid})
        await self.hang_up()

    async def hang_up(self) -> None:
        """The socket goes, with or without a `stop` before it."""
        for task in self._tasks:
            task.cancel()
        if self.ws is not None:
            await self.ws.close()

    async def wait_closed(self, timeout: float = 30) -> tuple[int, str]:
        """The server closed the stream: its code and reason."""
        deadline = time.monotonic() + timeout
        while self.closed is None:
            assert time.monotonic() < deadline, "the stream stayed open"
            await asyncio.sleep(0.05)
        return self.closed

    async def wait_for(self, pred, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while not (value := pred(self.phone)):
            assert self.closed is None, f"the stream closed: {self.closed}"
            assert time.monotonic() < deadline, f"timed out; got {[m['event'] for m in self.phone.messages][-20:]}"
            await asyncio.sleep(0.05)
        return value

    async def _microphone(self) -> None:
        start = time.monotonic()
        n = 0
        while True:
            frame = self._mic.get_nowait() if not self._mic.empty() else SILENCE
            await self.send(self.media_message(frame))
            n += 1
            await asyncio.sleep(max(0.0, start + n * 0.02 - time.monotonic()))

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                self.phone.messages.append(message)
                assert message["streamSid"] == self.stream_sid, message
                if message["event"] == "media":
                    audio = base64.b64decode(message["media"]["payload"])
                    self._buffer += audio
                    self.phone.received += audio
                    self.phone.received_at.append(time.monotonic())
                elif message["event"] == "mark":
                    self._marks.append((len(self._buffer), message["mark"]["name"]))
                    await self._echo_played()
                elif message["event"] == "clear":
                    self.phone.clears.append(len(self.phone.played))
                    self._buffer.clear()
                    pending, self._marks = self._marks, []
                    for _, name in pending:
                        await self._echo(name)
        except websockets.ConnectionClosed as exc:
            self.closed = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (1006, "")
        finally:
            if self.closed is None:
                self.closed = (self.ws.close_code or 1006, self.ws.close_reason or "")

    async def _play(self) -> None:
        """The phone's speaker: 20 ms of the buffer every 20 ms."""
        start = time.monotonic()
        n = 0
        while True:
            n += 1
            await asyncio.sleep(max(0.0, start + n * 0.02 - time.monotonic()))
            frame = bytes(self._buffer[:FRAME_BYTES])
            del self._buffer[:FRAME_BYTES]
            self.phone.played += frame
            self._marks = [(max(0, at - len(frame)), name) for at, name in self._marks]
            await self._echo_played()

    async def _echo_played(self) -> None:
        while self._marks and self._marks[0][0] == 0:
            await self._echo(self._marks.pop(0)[1])

    async def _echo(self, name: str) -> None:
        self._seq += 1
        self.phone.marks_echoed.append(name)
        mark = {"event": "mark", "sequenceNumber": str(self._seq), "streamSid": self.stream_sid, "mark": {"name": name}}
        try:
            await self.send(mark)
        except websockets.ConnectionClosed:
            pass
