"""A client's live session: the coordinator between one wire and the bus.

The gateway is the natural supervisor of a live session: it admits it (admission.py), asks an
STT worker to own its audio (stt_link.py), publishes the client's audio and turns, and relays
the conversation's events and reply audio back (feed.py, relay.py). The session talks to its client
only through a `Wire` (wire.py), so the native protocol and the Realtime API share all of it
and neither subclasses it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from fastapi import WebSocketDisconnect
from nats.errors import Error as NatsError

from services.common import bus as busmod
from services.common import db, ids, metrics, schemas, subjects
from services.common.logs import ctx

from . import events, protocol
from .admission import Admitted, Refused, admit
from .auth import Authenticator, AuthError, bearer
from .barge import BargeIns
from .client_socket import ClientSocket
from .config import GatewaySettings
from .doorway import Doorway
from .feed import Feed, replay_from
from .history import ConversationHistory
from .mic import MicInput
from .relay import Reply, ReplyRelay
from .stt_link import SttLink
from .tool_answers import AnswerRefused, ToolAnswers
from .wire import Opening, Wire

log = logging.getLogger(__name__)


class Host(Protocol):
    """What a session needs of the gateway service that holds it."""

    bus: busmod.Bus
    db: db.Database
    auth: Authenticator
    settings: GatewaySettings
    sessions: set
    tool_answers: ToolAnswers
    doorway: Doorway


class Session:
    def __init__(self, gateway: Host, socket: ClientSocket, wire: Wire):
        self.gw = gateway
        self.socket = socket
        self.wire = wire
        self.bus = gateway.bus
        self.settings = gateway.settings
        self.conv = ""
        self.user_id = ""
        self.audio_session_id = ids.new_id()
        """This connection's audio session on the bus (STT, speech events, control)."""
        self.resume_id = self.audio_session_id
        """The client-facing session: stable across resumes, the key of its stored record."""
        self.opening = Opening()
        self.text_seq = 0
        self.avatars: list[db.Avatar] = []
        """Who answers in this conversation, in order."""
        self.stt: SttLink | None = None
        self.relay: ReplyRelay | None = None
        self.feed: Feed | None = None
        self.closed = False
        self.end_reason = "dropped"
        self._recorded = False
        self._subs: list = []
        self.mic: MicInput | None = None
        self.barge: BargeIns | None = None
        self._bus_error_at = 0.0
        wire.attach(self)

    @property
    def opened_at(self) -> float:
        return self.socket.opened_at

    @property
    def connection(self) -> str:
        return f"{self.settings.instance_id}/{self.audio_session_id}"

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        opening = await self._open()
        if opening is None:
            return
        try:
            principal = opening.principal or await self.gw.auth.authenticate(
                bearer(self.socket.headers.get("authorization")) or opening.token
            )
        except AuthError as exc:
            await self.wire.refuse(protocol.CLOSE_UNAUTHENTICATED, f"{exc.code}: {exc.message}"[:120])
            return
        self.user_id = principal.user_id
        self.opening = opening
        try:
            admitted = await admit(
                self.gw.db, self.settings, self.user_id, opening, self.audio_session_id, self.connection
            )
        except Refused as exc:
            await self.wire.refuse(exc.code, exc.reason)
            return
        self._recorded = True
        try:
            await self._begin(admitted)
        except (TimeoutError, NatsError) as exc:
            # The bus stayed out of reach past its patience (a cluster with no meta leader
            # cannot make the session's consumer): the client hears it and tries again.
            log.warning("session could not begin: %s", type(exc).__name__, extra=ctx(conversation_id=self.conv))
            await self.wire.refuse(protocol.CLOSE_TRY_AGAIN, f"bus_unavailable: {type(exc).__name__}; try again")
            await self._teardown()
            return
        self.gw.sessions.add(self)
        metrics.ACTIVE_SESSIONS.labels("gateway").set(len(self.gw.sessions))
        sender = asyncio.create_task(self.socket.sender())
        try:
            await self.socket.receive(self._on_message, self._expired)
        except WebSocketDisconnect:
            pass
        finally:
            self.gw.sessions.discard(self)
            metrics.ACTIVE_SESSIONS.labels("gateway").set(len(self.gw.sessions))
            await self._teardown()
            self.socket.finish()
            try:
                await asyncio.wait_for(sender, 5)
            except Exception:
                sender.cancel()

    async def _open(self) -> Opening | None:
        """What the client asks for, or None once it is refused."""
        await self.wire.accept()
        if not self.gw.auth.origin_allowed(self.socket.headers.get("origin"), self.socket.headers.get("host")):
            await self.wire.refuse(protocol.CLOSE_FORBIDDEN, "origin not allowed")
            return None
        with self.gw.doorway.waiting(self.socket.address) as room:
            if room:
                return await self.wire.open()
        metrics.EVENTS.labels("gateway", "unstarted_refused").inc()
        reason = "too many sockets from this address have not started a session"
        await self.wire.refuse(protocol.CLOSE_TOO_MANY_SESSIONS, reason)
        return None

    async def _begin(self, admitted: Admitted) -> None:
        """Subscribe, open speech input, say `session.started`, then replay or follow final events."""
        self.conv, self.resume_id = admitted.conversation_id, admitted.resume_id
        resumed = admitted.resumed
        if resumed is not None:
            # The dropped connection, if its gateway has not noticed yet, lets go now.
            await self.bus.control(schemas.SessionResumed(conversation_id=self.conv, session_id=self.resume_id))
        self.avatars = await self.gw.db.avatars.of_conversation(self.conv)
        self.history = ConversationHistory(self.gw.db, self.bus, self.conv)
        self.mic = MicInput(self.bus, self.settings, self.conv, self.audio_session_id, self.wire.error)
        self.relay = ReplyRelay(self.bus, self.settings, self.conv, self.wire)
        self.stt = SttLink(
            self.bus,
            self.settings,
            self.conv,
            self.audio_session_id,
            self.opening.stt,
            _names(self.avatars),
            lambda code, message: self.wire.error(code, message, retryable=True),
        )
        self.barge = BargeIns(self.bus, self.conv, self.audio_session_id, self.relay, self.opening, self.cut)
        self.feed = Feed(self.bus, self.conv, self.relay, self.stt, self.wire, self._own_speech)
        await self.feed.listen()
        self._subs.append(await self.bus.on_control(self.conv, schemas.SessionResumed, self._on_resumed))
        stt_error = await self.stt.start()
        self.wire.send(
            events.SessionStarted(
                protocol=protocol.PROTOCOL_VERSION,
                conversation_id=self.conv,
                session_id=self.resume_id,
                audio_session_id=self.audio_session_id,
                resumed=resumed is not None,
                audio_in=events.AudioFormat(sample_rate=16000),
                audio_out=events.AudioFormat(sample_rate=24000),
                speech_input=stt_error is None,
            )
        )
        await self.feed.follow(replay_from(self.opening, resumed))
        if stt_error is not None:
            self.wire.error(*stt_error, retryable=True)
        log.info(
            "session %s",
            "resumed" if resumed else "started",
            extra=ctx(conversation_id=self.conv, session_id=self.audio_session_id),
        )

    async def _teardown(self) -> None:
        self.closed = True
        if self.barge is not None:
            try:
                await self.barge.close()
            except Exception:
                log.warning("could not store a paused reply as heard", extra=ctx(conversation_id=self.conv))
        if self.stt is not None:
            await self.stt.close()
        if self.relay is not None:
            self.relay.close()
        if self.feed is not None:
            await self.feed.close()
        await self.wire.closed()
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        if not self.conv:
            return
        try:
            await self.bus.control(schemas.SessionEnd(conversation_id=self.conv, session_id=self.audio_session_id))
        except Exception:
            log.warning("could not announce session end", extra=ctx(conversation_id=self.conv))
        if self._recorded and self.end_reason != "resumed":
            try:
                await self.gw.db.sessions.end(self.resume_id, self.connection, self.end_reason)
            except Exception:
                log.warning("could not record session end", extra=ctx(conversation_id=self.conv))

    def close(self, code: int, reason: str, end_reason: str | None = None) -> None:
        """Close after everything already queued has been sent (an error event explaining why)."""
        if end_reason is not None:
            self.end_reason = end_reason
        self.socket.close(code, reason)

    def _expired(self, too_long: bool) -> None:
        s = self.settings
        if too_long:
            self.wire.error("session_too_long", f"sessions last at most {s.max_session_s:g} s; start a new one")
            self.close(protocol.CLOSE_SESSION_TOO_LONG, "maximum session length", "max_length")
        else:
            self.wire.error("idle_timeout", f"nothing received for {s.idle_timeout_s:g} s")
            self.close(protocol.CLOSE_IDLE, "idle timeout", "idle")

    async def _on_message(self, message: dict) -> None:
        try:
            await self.wire.on_message(message)
        except (TimeoutError, NatsError) as exc:
            # The bus is down or reconnecting: the client hears it (once a second at most)
            # and may resend; a text with client_seq is the same turn again.
            now = time.monotonic()
            if now - self._bus_error_at >= 1.0:
                self._bus_error_at = now
                self.wire.error(
                    "bus_unavailable",
                    f"the message could not be passed on ({type(exc).__name__}); send it again",
                    retryable=True,
                )

    # --- what a wire asks of the session ----------------------------------------------------

    def reply(self, message_id: str) -> Reply | None:
        return self.relay.replies.get(message_id)

    def unfinished(self) -> list[str]:
        return self.relay.unfinished(time.monotonic())

    def playback(self, message_id: str, played_ms: float, ended: bool) -> bool:
        return self.relay.playback(message_id, played_ms, ended)

    def latency(self, message_id: str, voice_to_voice_ms: float) -> bool:
        return self.relay.latency(message_id, voice_to_voice_ms)

    def mute(self, message_id: str) -> None:
        self.relay.stopped(message_id)

    async def reopen_stt(self) -> None:
        await self.stt.reopen()

    async def audio(self, frame: bytes) -> None:
        """Mic audio (PCM16, 16 kHz) for the STT worker."""
        await self.mic.publish(frame)

    def text_turn_id(self, client_seq: int | None = None) -> tuple[int, str]:
        """(turn seq, user message id) of the next typed turn. The client's own numbering spans
        resumes, so a resend after a reconnect is the same turn."""
        if client_seq is not None:
            seq, namespace = client_seq, self.resume_id
        else:
            seq, namespace = self.text_seq, self.audio_session_id
            self.text_seq += 1
        return seq, ids.user_message_id(self.conv, namespace, "text", seq)

    async def submit_text(
        self,
        message_id: str,
        seq: int,
        text: str,
        instructions: str | None = None,
        tools: list[dict] | None = None,
        tool_choice: str | dict | None = None,
    ) -> None:
        """A typed user turn onto the bus (de-duplicated by its message id)."""
        asked = {"instructions": instructions, "tools": tools, "tool_choice": tool_choice}
        await self._turn(message_id, message_id, turn_seq=seq, source="text", text=text, **asked)

    async def answer_held(
        self,
        message_id: str,
        text: str,
        instructions: str | None = None,
        tools: list[dict] | None = None,
        tool_choice: str | dict | None = None,
    ) -> None:
        """The response to a spoken turn stored unanswered: a turn of its own on the bus (the
        held turn's msg id is taken), after the held one."""
        asked = {"instructions": instructions, "tools": tools, "tool_choice": tool_choice}
        answer = {"turn_seq": 0, "source": "voice", "text": text, "answer_held": True}
        await self._turn(f"answer.{message_id}", message_id, **answer, **asked)

    async def _turn(self, msg_id: str, message_id: str, **fields) -> None:
        turn = schemas.UserTurn(
            conversation_id=self.conv,
            message_id=message_id,
            session_id=self.audio_session_id,
            marks={"received": time.time()},
            **fields,
        )
        await self.bus.publish_fact(subjects.turn(self.conv), turn, msg_id=msg_id)

    async def tool_result(
        self, call_id: str, output: object, error: str | None, session: dict | None = None
    ) -> tuple[str, str] | None:
        try:
            await self.gw.tool_answers.put(self.conv, call_id, output, error, session)
        except AnswerRefused as exc:
            return exc.code, str(exc)
        return None

    async def interrupt(self, message_id: str, position: tuple[int, float] | None, fact_id: str | None = None) -> None:
        """Stop forwarding the reply's audio and have it stored as heard up to `position`.
        One interruption per reply is kept (de-duplicated by id) unless `fact_id` names a later one."""
        self.mute(message_id)
        await self.bus.publish_fact(
            subjects.interrupt(self.conv),
            schemas.Interruption(
                conversation_id=self.conv,
                message_id=message_id,
                sentence_index=position[0] if position else None,
                offset_s=position[1] if position else None,
            ),
            msg_id=fact_id or f"interrupt.{message_id}",
        )

    async def cancel(self, message_id: str = "", reason: str = "") -> None:
        await self.bus.control(schemas.ReplyCancel(conversation_id=self.conv, message_id=message_id, reason=reason))

    async def commit_utterance(self) -> None:
        await self.bus.control(schemas.UtteranceCommit(conversation_id=self.conv, session_id=self.audio_session_id))

    async def clear_utterance(self) -> None:
        await self.bus.control(schemas.UtteranceClear(conversation_id=self.conv, session_id=self.audio_session_id))

    async def replace_avatars(self, avatars: list[db.Avatar]) -> None:
        """Another cast for a conversation nobody has answered yet (a Realtime client's voice)."""
        await self.gw.db.conversations.replace_avatars(self.conv, [a.id for a in avatars])
        self.avatars = avatars
        self.stt.hotwords = _names(avatars)

    def held(self, utterance_seq: int) -> bool:
        return self.barge.held(utterance_seq)

    async def cut(self, message_id: str) -> None:
        """The person cut the reply off: it stops where playback stood (or was paused)."""
        position = self.relay.stop_playback(message_id)
        await self.interrupt(message_id, position)
        metrics.EVENTS.labels("gateway", "barge_in").inc()
        await self.cancel(message_id, "barge-in")
        await self.wire.barged_in()

    async def _on_resumed(self, ctl: schemas.SessionResumed) -> None:
        if ctl.session_id == self.resume_id and not self.closed:
            self.close(protocol.CLOSE_SUPERSEDED, "session resumed on another connection", "resumed")

    async def _own_speech(self, ev: events.ClientEvent) -> None:
        if not await self.barge.heard(ev) and isinstance(ev, events.SpeechStarted) and self.opening.barge_in:
            await self.wire.barged_in()  # nothing plays yet: what is being made of a reply stops


def _names(avatars: list[db.Avatar]) -> str:
    return ", ".join(a.name for a in avatars)
