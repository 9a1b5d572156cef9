"""Twilio Media Streams as a wire of the session: a phone call through `<Connect><Stream>`.

The caller's µ-law audio goes to the STT worker like any microphone's; each reply's audio goes
back as µ-law `media`, each frame followed by a `mark` naming the reply and how much of it had
been sent, so Twilio's echo of the mark is the call's playback report and an interruption
stores what the caller heard. A pause or stop of the reply is a `clear`; the marks Twilio
returns for cleared audio carry an older generation and are ignored. Twilio has no channel for
errors: a message it would never send closes the stream (the session's teardown keeps what
was said), anything else is logged.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time

import msgspec

from services.common.logs import ctx

from .. import events, protocol
from ..auth import Authenticator
from ..client_socket import ClientSocket
from ..config import GatewaySettings
from ..playout import Frame
from ..wire import Opening, SessionApi, SttOptions
from . import messages as tw
from .audio import PHONE_RATE, CallerAudio, ReplyAudio
from .keypad import Keypad
from .signature import call_token_valid, public_urls, signed

log = logging.getLogger(__name__)

CLOSE_BAD_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
MAX_PAYLOAD_BYTES = PHONE_RATE
"""One second of µ-law; Twilio sends 20 ms (160 bytes) a message."""


class Refusal(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


class _Outgoing:
    """A reply's audio on its way to the phone."""

    def __init__(self) -> None:
        self.audio = ReplyAudio()
        self.sent_ms = 0.0
        """How far into the reply the audio sent so far reaches (where a resume sent it from, on)."""
        self.stopped = False


class TwilioWire:
    def __init__(self, socket: ClientSocket, settings: GatewaySettings, auth: Authenticator):
        self.socket = socket
        self.settings = settings
        self.auth = auth
        self.session: SessionApi | None = None
        self.stream_sid = ""
        self.call_sid = ""
        self.caller = CallerAudio()
        self.keypad = Keypad(self._keys)
        self._replies: dict[str, _Outgoing] = {}
        self._generation = 0
        """One more at each `clear`: marks of an older generation report audio that was dropped."""

    def attach(self, session: SessionApi) -> None:
        self.session = session

    async def accept(self) -> None:
        await self.socket.accept(None)

    async def refuse(self, code: int, reason: str) -> None:
        log.warning("phone stream refused: %s", reason, extra=ctx(call_sid=self.call_sid))
        await self.socket.close_now(code, reason)

    # --- connecting -------------------------------------------------------------------------

    async def open(self) -> Opening | None:
        """`connected`, then `start`: who calls, which avatar answers, in which format."""
        try:
            start = await self._start()
            opening = await self._opening(start)
        except Refusal as exc:
            await self.refuse(exc.code, exc.reason[:120])
            return None
        log.info("phone call", extra=ctx(call_sid=self.call_sid))
        return opening

    async def _start(self) -> tw.Start:
        deadline = time.monotonic() + self.settings.start_timeout_s
        while True:
            try:
                raw = await self.socket.first_text(max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                raise Refusal(protocol.CLOSE_START_TIMEOUT, "no start message in time") from None
            except Exception:
                raise Refusal(protocol.CLOSE_BAD_START, "Twilio Media Streams sends JSON text messages") from None
            try:
                msg = tw.decoder.decode(raw)
            except msgspec.DecodeError as exc:
                raise Refusal(protocol.CLOSE_BAD_START, f"not a Media Streams message: {exc}") from None
            if isinstance(msg, tw.Start):
                break
            if not isinstance(msg, tw.Connected):
                raise Refusal(protocol.CLOSE_BAD_START, f"{type(msg).__name__.lower()} before start")
        fmt = msg.start.media_format
        if fmt is not None and (fmt.encoding, fmt.sample_rate, fmt.channels) != ("audio/x-mulaw", PHONE_RATE, 1):
            raise Refusal(protocol.CLOSE_BAD_START, f"unsupported media format {msgspec.to_builtins(fmt)}")
        self.stream_sid = msg.stream_sid or msg.start.stream_sid
        self.call_sid = msg.start.call_sid
        if not self.stream_sid:
            raise Refusal(protocol.CLOSE_BAD_START, "start carries no streamSid")
        return msg

    async def _opening(self, start: tw.Start) -> Opening:
        """A Parley token in the custom parameters, or Twilio's signature on the handshake with
        the call token the TwiML endpoint gave this call. A signature that does not verify is
        refused whatever else the call carries."""
        s = self.settings
        params = start.start.custom_parameters
        avatar_id = params.get("avatar_id") or s.default_avatar_id
        opening = Opening(avatar_ids=[avatar_id], stt=SttOptions(language=params.get("language"), partials=False))
        given = self.socket.headers.get("x-twilio-signature")
        secret = s.twilio_auth_token.get_secret_value() if s.twilio_auth_token else None
        urls = public_urls(s.public_url, self.socket.headers.get("host"), self.socket.path, websocket=True)
        urls += [url + "/" for url in urls]  # Twilio's advice for handshakes that do not verify
        if given and secret and not signed(secret, urls, (), given):
            raise Refusal(protocol.CLOSE_FORBIDDEN, "X-Twilio-Signature does not sign this stream's URL")
        if params.get("token"):
            opening.token = params["token"]
            return opening
        if not given:
            raise Refusal(protocol.CLOSE_UNAUTHENTICATED, "unauthenticated: an unsigned call carries no token")
        if not secret:
            raise Refusal(protocol.CLOSE_UNAUTHENTICATED, "unauthenticated: this gateway takes no Twilio-signed calls")
        if s.twilio_account_sid and start.start.account_sid != s.twilio_account_sid:
            raise Refusal(protocol.CLOSE_FORBIDDEN, "the call comes from another Twilio account")
        if not call_token_valid(secret, params.get("call_token", ""), self.call_sid, avatar_id):
            raise Refusal(protocol.CLOSE_FORBIDDEN, "call_token missing, expired or not this call's")
        opening.principal = await self.auth.as_user(s.twilio_user, "twilio")
        return opening

    # --- reading ----------------------------------------------------------------------------

    async def on_message(self, message: dict) -> None:
        try:
            await self._on_message(message)
        except Refusal as exc:
            log.warning("phone stream closed: %s", exc.reason, extra=ctx(call_sid=self.call_sid))
            self.session.close(exc.code, exc.reason[:120], "protocol_error")

    async def _on_message(self, message: dict) -> None:
        if message.get("text") is None:
            raise Refusal(CLOSE_BAD_DATA, "Twilio Media Streams sends JSON text messages")
        try:
            msg = tw.decoder.decode(message["text"])
        except msgspec.DecodeError as exc:
            raise Refusal(CLOSE_BAD_DATA, f"not a Media Streams message: {exc}") from None
        if isinstance(msg, tw.Connected | tw.Start):
            raise Refusal(CLOSE_POLICY, f"{type(msg).__name__.lower()} after start")
        if msg.stream_sid != self.stream_sid:
            raise Refusal(CLOSE_POLICY, f"message for stream {msg.stream_sid!r}; this socket streams {self.stream_sid}")
        if isinstance(msg, tw.Media):
            await self._media(msg.media)
        elif isinstance(msg, tw.Mark):
            self._played(msg.mark.name)
        elif isinstance(msg, tw.Dtmf):
            if not await self.keypad.press(msg.dtmf.digit):
                raise Refusal(CLOSE_POLICY, f"{msg.dtmf.digit!r} is no key of a phone")
        elif isinstance(msg, tw.Stop):
            self.session.close(1000, "call ended", "client")

    async def _media(self, media: tw.MediaInfo) -> None:
        if media.track not in ("inbound", "inbound_track"):
            return  # <Connect><Stream> sends the caller's track only
        try:
            mulaw = base64.b64decode(media.payload, validate=True)
        except (binascii.Error, ValueError):
            raise Refusal(CLOSE_BAD_DATA, "media payload is not base64") from None
        if len(mulaw) > MAX_PAYLOAD_BYTES:
            raise Refusal(CLOSE_TOO_BIG, f"media payloads hold at most {MAX_PAYLOAD_BYTES} bytes (1 s)")
        if mulaw and (pcm := self.caller.pcm16k(mulaw)):
            await self.session.audio(pcm)

    def _played(self, name: str) -> None:
        """A mark of ours came back: the audio before it has been played to the caller."""
        parts = name.split(" ")
        if len(parts) not in (3, 4) or parts[1] != str(self._generation):
            return
        try:
            played_ms = float(parts[2])
        except ValueError:
            return
        self.session.playback(parts[0], played_ms, len(parts) == 4)

    async def _keys(self, text: str) -> None:
        """Keys pressed stop what the avatar is saying and are the caller's next turn."""
        session = self.session
        for message_id in session.unfinished():
            await session.cut(message_id)
        seq, message_id = session.text_turn_id()
        await session.submit_text(message_id, seq, text)

    # --- writing ----------------------------------------------------------------------------

    def send(self, ev: events.ClientEvent, cursor: int | None = None) -> None:
        if isinstance(ev, events.PlaybackPause | events.PlaybackStop):
            self._clear(ev.message_id, stop=isinstance(ev, events.PlaybackStop))
        elif isinstance(ev, events.PlaybackResume):
            self._resumed(ev.message_id)
        elif isinstance(ev, events.AudioEnd):
            self._ended(ev.message_id)
        elif isinstance(ev, events.Error):
            self.error(ev.code, ev.message, ev.retryable)

    def send_audio(self, message_id: str, frame: Frame) -> None:
        out = self._replies.setdefault(message_id, _Outgoing())
        if out.stopped:
            return
        out.sent_ms += len(frame.pcm) / 2 / frame.sample_rate * 1000
        self._media_out(out.audio.mulaw(frame.pcm, frame.sample_rate))
        self._mark(message_id, out)

    def error(self, code: str, message: str, retryable: bool = False) -> None:
        log.warning("phone call: %s: %s", code, message, extra=ctx(call_sid=self.call_sid))

    async def barged_in(self) -> None:
        pass  # a reply cut off was stopped with a clear already

    async def closed(self) -> None:
        self.keypad.close()

    def _media_out(self, mulaw: bytes) -> None:
        if mulaw:
            self.socket.send_text(tw.media(self.stream_sid, base64.b64encode(mulaw).decode()))

    def _mark(self, message_id: str, out: _Outgoing, end: bool = False) -> None:
        name = f"{message_id} {self._generation} {out.sent_ms:.0f}" + (" end" if end else "")
        self.socket.send_text(tw.mark(self.stream_sid, name))

    def _clear(self, message_id: str, stop: bool) -> None:
        self.socket.send_text(tw.clear(self.stream_sid))
        self._generation += 1
        for out in self._replies.values():
            out.audio.restart()
        if stop and (out := self._replies.get(message_id)) is not None:
            out.stopped = True

    def _resumed(self, message_id: str) -> None:
        """The relay sends the reply again from where the caller stopped hearing it."""
        reply = self.session.reply(message_id)
        out = self._replies.get(message_id)
        if reply is not None and out is not None:
            out.sent_ms = reply.played[0] if reply.played else 0.0

    def _ended(self, message_id: str) -> None:
        out = self._replies.get(message_id)
        if out is None or out.stopped:
            return
        self._media_out(out.audio.flush())
        self._mark(message_id, out, end=True)
