"""The conversation as the Realtime client is told it: items, responses, and their order.

Every item names the one before it (`previous_item_id`); a response goes from `response.created`
through its output item and content part to `response.done`. This module writes those events;
the wire (wire.py) decides when.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass

from .. import events
from . import protocol as rt

STATUS = {"complete": "completed", "interrupted": "cancelled", "failed": "failed"}
"""A stored reply's status as a response status."""


@dataclass
class Response:
    id: str
    user_message_id: str
    reply_id: str
    """The assistant item's id: the reply's Parley message id."""
    modalities: list[str]
    metadata: dict[str, str] | None = None
    item_added: bool = False
    previous_item_id: str | None = None
    transcript: str = ""
    final_text: str | None = None
    final_status: str | None = None
    audio_done: bool = False
    error: tuple[str, str] | None = None
    cancelled: bool = False
    done: bool = False

    @property
    def audio(self) -> bool:
        return "audio" in self.modalities


@dataclass
class VoiceItem:
    started: bool = False
    committed: bool = False
    done: bool = False
    previous_item_id: str | None = None
    sent: str = ""
    """Transcript text already sent as deltas."""


class Output:
    def __init__(self, emit: Callable[[rt.ServerEvent], None]):
        self.emit = emit
        self.conversation_id = ""
        self.responses: dict[str, Response] = {}
        """By reply message id (the assistant item id)."""
        self.voice_items: dict[str, VoiceItem] = {}
        self.item_ids: set[str] = set()
        self.last_item_id: str | None = None

    def _chain(self, item_id: str) -> str | None:
        """Append an item to the conversation; the id of the one before it."""
        previous, self.last_item_id = self.last_item_id, item_id
        self.item_ids.add(item_id)
        return previous

    # --- user items -------------------------------------------------------------------------

    def text_item(self, item_id: str, text: str) -> None:
        previous = self._chain(item_id)
        added = rt.Item(id=item_id, role="user", status="completed", content=[rt.Content(type="input_text", text=text)])
        self.emit(rt.ItemAdded(item=added, previous_item_id=previous))
        self.emit(rt.ItemDone(item=added, previous_item_id=previous))

    def speech_started(self, item_id: str, start_ms: int) -> bool:
        """The first speech of a voice item; False for one already started or committed."""
        item = self.voice_items.setdefault(item_id, VoiceItem())
        if item.started or item.committed:
            return False
        item.started = True
        self.emit(rt.SpeechStarted(audio_start_ms=start_ms, item_id=item_id))
        return True

    def heard_so_far(self, item_id: str, stable: str) -> None:
        """Transcript deltas of a voice item from the stable part of its partials."""
        item = self.voice_items.setdefault(item_id, VoiceItem())
        if not item.done and stable.startswith(item.sent) and len(stable) > len(item.sent):
            self.emit(rt.TranscriptionDelta(item_id=item_id, delta=stable[len(item.sent) :]))
            item.sent = stable

    def commit(self, item_id: str, end_ms: int) -> tuple[VoiceItem, bool]:
        """The VAD closed the utterance: the buffer becomes a user audio item (True if it just did)."""
        item = self.voice_items.setdefault(item_id, VoiceItem())
        if item.committed:
            return item, False
        item.committed = True
        item.previous_item_id = self._chain(item_id)
        self.emit(rt.SpeechStopped(audio_end_ms=end_ms, item_id=item_id))
        self.emit(rt.Committed(item_id=item_id, previous_item_id=item.previous_item_id))
        audio = rt.Item(id=item_id, role="user", status="completed", content=[rt.Content(type="input_audio")])
        self.emit(rt.ItemAdded(item=audio, previous_item_id=item.previous_item_id))
        return item, True

    def transcribed(self, item: VoiceItem, ev: events.TranscriptFinal, heard: bool) -> None:
        """The voice item's final transcript (reported only when the client asked for transcription)."""
        item.done = True
        if heard:
            if ev.text.startswith(item.sent) and len(ev.text) > len(item.sent):
                self.emit(rt.TranscriptionDelta(item_id=ev.message_id, delta=ev.text[len(item.sent) :]))
            seconds = round(max(0.0, (ev.end_s or 0.0) - (ev.start_s or 0.0)), 3)
            usage = rt.DurationUsage(seconds=seconds)
            self.emit(rt.TranscriptionCompleted(item_id=ev.message_id, transcript=ev.text, usage=usage))
        content = [rt.Content(type="input_audio", transcript=ev.text if heard else None)]
        done = rt.Item(id=ev.message_id, role="user", status="completed", content=content)
        self.emit(rt.ItemDone(item=done, previous_item_id=item.previous_item_id))

    def transcription_failed(self, item_id: str, code: str, message: str) -> bool:
        item = self.voice_items.get(item_id)
        if item is None:
            return False
        item.done = True
        error = rt.Error(type="transcription_error", code=code, message=message)
        self.emit(rt.TranscriptionFailed(item_id=item_id, error=error))
        return True

    # --- responses --------------------------------------------------------------------------

    def active(self) -> Response | None:
        return next((r for r in self.responses.values() if not r.done), None)

    def by_id(self, response_id: str) -> Response | None:
        return next((r for r in self.responses.values() if r.id == response_id), None)

    def answering(self, user_message_id: str) -> Response | None:
        return next((r for r in self.responses.values() if r.user_message_id == user_message_id), None)

    def open(self, user_message_id: str, reply_id: str, modalities: list[str], metadata=None) -> Response:
        rec = Response(rt.new_id("resp"), user_message_id, reply_id, modalities, metadata)
        self.responses[reply_id] = rec
        self.emit(rt.ResponseCreated(response=self._response(rec, "in_progress")))
        return rec

    def start(self, rec: Response) -> None:
        """Its output item and content part, once something of it is to be sent."""
        if rec.item_added:
            return
        rec.item_added = True
        rec.previous_item_id = self._chain(rec.reply_id)
        item = self._item(rec, "in_progress")
        self.emit(rt.OutputItemAdded(response_id=rec.id, item=item))
        self.emit(rt.ItemAdded(item=item, previous_item_id=rec.previous_item_id))
        self.emit(rt.ContentPartAdded(response_id=rec.id, item_id=rec.reply_id, part=self._part(rec, "")))

    def text_delta(self, rec: Response, text: str) -> None:
        if rec.done:
            return
        self.start(rec)
        rec.transcript += text
        where = {"response_id": rec.id, "item_id": rec.reply_id, "delta": text}
        self.emit(rt.AudioTranscriptDelta(**where) if rec.audio else rt.TextDelta(**where))

    def audio_delta(self, rec: Response, pcm: bytes) -> None:
        """PCM16 at the API's rate."""
        if rec.done or not rec.audio:
            return
        self.start(rec)
        self.emit(rt.AudioDelta(response_id=rec.id, item_id=rec.reply_id, delta=base64.b64encode(pcm).decode()))

    def settle(self, rec: Response, audio_pending: bool) -> None:
        """Done once its text is final and, for audio, all its audio has been sent."""
        if rec.done or rec.final_status is None:
            return
        if rec.audio and audio_pending:
            return
        self.finish(rec, STATUS.get(rec.final_status, "failed"), "turn_detected")

    def finish(self, rec: Response, status: str, reason: str | None = None) -> None:
        """Close the response: its content part and item, then `response.done`."""
        if rec.done:
            return
        rec.done = True
        text = self._text(rec)
        if rec.item_added:
            where = {"response_id": rec.id, "item_id": rec.reply_id}
            if rec.audio:
                self.emit(rt.AudioDone(**where))
                self.emit(rt.AudioTranscriptDone(**where, transcript=text))
            else:
                self.emit(rt.TextDone(**where, text=text))
            self.emit(rt.ContentPartDone(**where, part=self._part(rec, text)))
            item = self._item(rec, "completed" if status == "completed" else "incomplete", text)
            self.emit(rt.ItemDone(item=item, previous_item_id=rec.previous_item_id))
            self.emit(rt.OutputItemDone(response_id=rec.id, item=item))
        details = None
        if status == "failed":
            code, message = rec.error or ("reply_failed", "the reply failed")
            error = rt.StatusError(type="server_error", code=code, message=message)
            details = rt.StatusDetails(type="failed", error=error)
        elif status != "completed":
            details = rt.StatusDetails(type=status, reason=reason)
        self.emit(rt.ResponseDone(response=self._response(rec, status, details)))

    def _item(self, rec: Response, status: str, text: str | None = None) -> rt.Item:
        content = []
        if text is not None:
            part = "output_audio" if rec.audio else "output_text"
            content = [rt.Content(type=part, transcript=text) if rec.audio else rt.Content(type=part, text=text)]
        return rt.Item(id=rec.reply_id, role="assistant", status=status, content=content)

    @staticmethod
    def _part(rec: Response, text: str) -> rt.Part:
        return rt.Part(type="audio", transcript=text) if rec.audio else rt.Part(type="text", text=text)

    def _response(self, rec: Response, status: str, details: rt.StatusDetails | None = None) -> rt.Response:
        output = [self._item(rec, "completed" if status == "completed" else "incomplete", self._text(rec))]
        return rt.Response(
            id=rec.id,
            status=status,
            status_details=details,
            output=output if rec.item_added and status != "in_progress" else [],
            conversation_id=self.conversation_id,
            output_modalities=rec.modalities,
            metadata=rec.metadata,
        )

    @staticmethod
    def _text(rec: Response) -> str:
        return rec.final_text if rec.final_status == "complete" and rec.final_text is not None else rec.transcript
