"""The session's typed events (events.py) as Realtime server events.

Speech events make the user's audio items (speech started, committed, transcribed); reply
events and reply audio make the responses; errors become a failed transcription, a failed
response, or an error event. `Output` (output.py) writes them in the API's order.
"""

from __future__ import annotations

import numpy as np
import soxr

from services.common import ids

from .. import events
from ..playout import Frame
from . import protocol as rt
from .config import IN_RATE
from .connection import Connection
from .conversation import Conversation
from .output import Response, VoiceItem

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
        elif isinstance(ev, events.Error):
            if self.deferred.pop(ev.message_id or "", None) is None:
                self._on_error(ev)
        elif (rec := responses.get(getattr(ev, "message_id", ""))) is not None:
            self._on_reply(rec, ev)
        elif isinstance(ev, events.ReplyStarted):
            # A spoken turn's reply seen before its final transcript.
            self._on_reply(self.conversation.open_response(ev.user_message_id, conn.cfg.modalities), ev)

    def audio(self, message_id: str, frame: Frame) -> None:
        """Reply audio as base64 deltas at the API's rate, for audio responses still open."""
        rec = self.conn.out.responses.get(message_id)
        if rec is None or rec.done or not rec.audio:
            return
        pcm = frame.pcm
        if frame.sample_rate != IN_RATE:
            pcm = soxr.resample(np.frombuffer(pcm, "<i2"), frame.sample_rate, IN_RATE).astype("<i2").tobytes()
        self.conn.out.audio_delta(rec, pcm)

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
        return item

    def _on_final(self, ev: events.TranscriptFinal) -> None:
        item = self._commit(ev.message_id, round((ev.end_s or 0.0) * 1000))
        if item.done:
            return
        conn = self.conn
        conn.out.transcribed(item, ev, heard=conn.cfg.transcription is not None)
        if ids.reply_id(ev.message_id, conn.avatar.id) not in conn.out.responses:
            self.conversation.open_response(ev.message_id, conn.cfg.modalities)

    def _settle(self, rec: Response) -> None:
        audio_pending = self.conn.session.reply(rec.reply_id) is not None and not rec.audio_done
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
            rec.final_text, rec.final_status = ev.text, ev.status
            self._settle(rec)
        elif isinstance(ev, events.ReplyInterrupted):
            self.conversation.interruptions.stored(ev.message_id)

    def _on_error(self, ev: events.Error) -> None:
        out, mid = self.conn.out, ev.message_id or ""
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
