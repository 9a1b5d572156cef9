"""The session's typed events (events.py) as Realtime server events.

Speech events make the user's audio items (speech started, committed, transcribed); reply
events and reply audio make the responses; a reply's calls of client tools end its response
with `function_call` items once the audio said before them is sent, and what the reply says
after the client answered them is a response of its own; errors become a failed
transcription, a failed response, or an error event. `Output` (output.py) writes them in the
API's order.
"""

from __future__ import annotations

import asyncio

import numpy as np
import soxr

from services.common import g711, ids

from .. import events
from ..playout import Frame
from . import protocol as rt
from .buffer import LAWS
from .config import FORMATS
from .connection import Connection
from .conversation import Conversation
from .output import Response, VoiceItem

CALL_POLL_S = 0.05
CALL_WAIT_S = 15.0
"""The longest a response waits for the audio said before its function calls."""
_SPEECH = events.SpeechStarted | events.SpeechStopped | events.TranscriptPartial | events.BargeIn | events.Backchannel


class ServerEvents:
    def __init__(self, conn: Connection, conversation: Conversation):
        self.conn = conn
        self.conversation = conversation
        self.deferred: dict[str, list[events.ClientEvent]] = {}
        """Speech events of utterances begun over a playing reply, by item: written once the
        speech counts (a client stops playing at `speech_started`), dropped if it was only
        "mhm" (no item is made of it)."""

    def send(self, ev: events.ClientEvent) -> None:
        """Speech of this connection only: other connections' speech events name other audio sessions."""
        conn, responses = self.conn, self.conn.out.responses
        if isinstance(ev, events.SessionStarted):
            conn.out.conversation_id = ev.conversation_id
            conn.emit(rt.SessionCreated(session=conn.described()))
        elif isinstance(ev, events.PlaybackStop):
            self.conversation.interruptions.expect(ev.message_id)
            if (rec := responses.get(ev.message_id)) is not None:
                conn.out.finish(rec, "cancelled", "turn_detected")
        elif isinstance(ev, events.AudioEnd):
            if (rec := responses.get(ev.message_id)) is not None:
                rec.audio_done = True
                self._settle(rec)
        elif isinstance(ev, _SPEECH):
            if ev.session_id == conn.session.audio_session_id:
                self._on_speech(ev)
        elif isinstance(ev, events.TranscriptFinal):
            if ev.session_id == conn.session.audio_session_id:
                self._flush(ev.message_id)
                self._on_final(ev)
        elif isinstance(ev, events.TurnHeld):
            self.conversation.held.stored(ev.message_id, ev.text)
        elif isinstance(ev, events.Error):
            if self.deferred.pop(ev.message_id or "", None) is None:
                self._on_error(ev)
        elif isinstance(ev, events.ToolCall | events.ToolDone):
            if isinstance(ev, events.ToolCall):
                self._on_call(ev)
        elif (rec := self._current(getattr(ev, "message_id", ""), ev)) is not None:
            self._on_reply(rec, ev)
        elif isinstance(ev, events.ReplyStarted):
            # A spoken turn's reply seen before its final transcript.
            self._on_reply(self.conversation.open_response(ev.user_message_id, conn.cfg.modalities), ev)

    def audio(self, message_id: str, frame: Frame) -> None:
        """Reply audio as base64 deltas at the API's rate, for audio responses still open."""
        out = self.conn.out
        rec = out.responses.get(message_id)
        waiting = out.continuing.get(message_id)
        if waiting is not None and frame.sentence_index >= waiting.call_after:
            rec = self.conn.continuation(message_id, claimed=False)
        if rec is None or rec.done or not rec.audio:
            return
        fmt = self.conn.cfg.output_format
        pcm, rate = frame.pcm, FORMATS[fmt]
        if frame.sample_rate != rate:
            pcm = soxr.resample(np.frombuffer(pcm, "<i2"), frame.sample_rate, rate).astype("<i2").tobytes()
        out.audio_delta(rec, g711.encode(pcm, LAWS[fmt]) if fmt in LAWS else pcm)
        self._calls_due(rec)

    def _current(self, message_id: str, ev: events.ClientEvent) -> Response | None:
        """The response a reply event belongs to: after function calls, the one that goes on."""
        out = self.conn.out
        if message_id in out.continuing and isinstance(ev, events.ReplyDelta | events.ReplySentence):
            return self.conn.continuation(message_id, claimed=False)
        if isinstance(ev, events.ReplyDone):
            out.continuing.pop(message_id, None)  # nothing more comes of it
        return out.responses.get(message_id)

    def _on_call(self, ev: events.ToolCall) -> None:
        """A round's calls, once all have been seen: those of client tools end the response."""
        rec = self.conn.out.responses.get(ev.message_id)
        if rec is None or rec.done:
            return
        seen = rec.round_calls.setdefault(ev.round, [])
        if ev.call_id in {c.call_id for c in seen}:
            return
        seen.append(ev)
        if len(seen) < ev.round_calls:
            return
        calls = sorted((c for c in seen if c.kind == "client"), key=lambda c: c.index)
        if calls:
            rec.pending_calls, rec.call_after = calls, calls[0].sentences_before
            self._calls_due(rec)

    def _calls_due(self, rec: Response) -> None:
        """The function calls are written once the audio of what was said before them is sent
        (looked at again every CALL_POLL_S: a sentence's end is a marker, not a frame), or
        after CALL_WAIT_S whatever came."""
        if not rec.pending_calls or rec.done:
            return
        loop = asyncio.get_running_loop()
        if rec.calls_wait_until is None:
            rec.calls_wait_until = loop.time() + CALL_WAIT_S
        reply = self.conn.session.reply(rec.reply_id)
        behind = rec.audio and reply is not None and reply.playout.next_sentence < rec.call_after
        if behind and loop.time() < rec.calls_wait_until:
            loop.call_later(CALL_POLL_S, self._calls_due, rec)
            return
        calls, rec.pending_calls = rec.pending_calls, None
        self.conn.out.function_calls(rec, calls)

    def _on_speech(self, ev: _SPEECH) -> None:
        session = self.conn.session
        item_id = ids.user_message_id(session.conv, session.audio_session_id, "voice", ev.utterance_seq)
        if isinstance(ev, events.Backchannel):
            self.deferred.pop(item_id, None)
            return
        if isinstance(ev, events.BargeIn):
            self._flush(item_id)
            return
        if session.held(ev.utterance_seq):
            self.deferred.setdefault(item_id, []).append(ev)
            return
        self._flush(item_id)
        self._speech(item_id, ev)

    def _speech(self, item_id: str, ev: _SPEECH) -> None:
        out = self.conn.out
        if isinstance(ev, events.SpeechStarted):
            if out.speech_started(item_id, round(ev.start_s * 1000)):
                self.conn.buffer.speaking = item_id
        elif isinstance(ev, events.SpeechStopped):
            self._commit(item_id, round(ev.end_s * 1000))
        elif self.conn.cfg.transcription is not None:
            out.heard_so_far(item_id, ev.stable)

    def _flush(self, item_id: str) -> None:
        for ev in self.deferred.pop(item_id, []):
            self._speech(item_id, ev)

    def _commit(self, item_id: str, end_ms: int) -> VoiceItem:
        """The VAD closed the utterance: what was buffered is committed as a user audio item."""
        item, new = self.conn.out.commit(item_id, end_ms)
        if new:
            self.conn.buffer.committed(item_id)
            self.conversation.begun = True
            if self.conn.cfg.hold:
                self.conversation.held.committed(item_id)
        return item

    def _on_final(self, ev: events.TranscriptFinal) -> None:
        item = self._commit(ev.message_id, round((ev.end_s or 0.0) * 1000))
        if item.done:
            return
        conn = self.conn
        conn.out.transcribed(item, ev, heard=conn.cfg.transcription is not None)
        seconds = max(0.0, (ev.end_s or 0.0) - (ev.start_s or 0.0))
        rec = conn.out.responses.get(ids.reply_id(ev.message_id, conn.avatar.id))
        if rec is None and (conn.cfg.hold or ev.message_id in self.conversation.held.turns):
            self.conversation.held.transcribed(ev.message_id, seconds)  # answered when the client asks
            return
        rec = rec or self.conversation.open_response(ev.message_id, conn.cfg.modalities)
        rec.input_audio_s = seconds

    def _settle(self, rec: Response) -> None:
        reply = self.conn.session.reply(rec.reply_id)
        audio_pending = reply is not None and not rec.audio_done
        if reply is not None and rec.audio:
            rec.output_audio_s = max(0.0, reply.sent_s - rec.audio_offset_ms / 1000)
        self.conn.out.settle(rec, audio_pending=audio_pending)

    def _on_reply(self, rec: Response, ev: events.ClientEvent) -> None:
        if isinstance(ev, events.ReplyStarted):
            if rec.cancelled:
                self.conversation.interruptions.stop_soon(rec.reply_id, (0, 0.0))
            elif not rec.done:
                self.conn.out.start(rec)
        elif isinstance(ev, events.ReplyDelta):
            self.conn.out.text_delta(rec, ev.text)

        elif isinstance(ev, events.ReplyDone):
            rec.final_text, rec.final_status, rec.tokens = ev.text, ev.status, ev.usage
            rec.rate_limits = ev.rate_limits
            self._settle(rec)
        elif isinstance(ev, events.ReplyInterrupted):
            self.conversation.interruptions.stored(ev.message_id)

    def _on_error(self, ev: events.Error) -> None:
        out, mid = self.conn.out, ev.message_id or ""
        self.conversation.held.failed(mid, ev.code, ev.message)
        if ev.code in ("no_speech_recognized", "transcription_failed"):
            if out.transcription_failed(mid, ev.code, ev.message):
                return
        rec = out.responses.get(mid) or out.answering(mid)
        if rec is None:
            self.conn.error(ev.code, ev.message)
            return
        rec.error = (ev.code, ev.message)
        if ev.code in ("turn_failed", "no_avatar"):
            out.finish(rec, "failed")
