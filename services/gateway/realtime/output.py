"""The conversation as the Realtime client is told it: items, responses, and their order.

Every item names the one before it (`previous_item_id`); a response goes from `response.created`
through its output item and content part to `response.done`. This module writes those events;
the wire (wire.py) decides when.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

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
    item_id: str = ""
    """Its assistant message item: the reply's id, or a new one for a reply's continuation."""
    text_offset: int = 0
    audio_offset_ms: float = 0.0
    """A continuation after a function call: how much of the reply's text and audio came before."""
    claimed: bool = True
    """False for a continuation the reply began before the client's `response.create` for it."""
    round_calls: dict[int, list] = field(default_factory=dict)
    """The tool calls seen of each round (`events.ToolCall`), until the round is whole."""
    pending_calls: list | None = None
    call_after: int = 0
    """The reply's sentences before its function calls: their audio ends this response."""
    calls_wait_until: float | None = None
    called: bool = False
    """It ended at function calls: the reply went on in another response."""
    tokens: dict[str, int] | None = None
    """The LLM's `input_tokens` and `output_tokens` for the reply (its `reply.done`)."""
    rate_limits: list[dict] | None = None
    """The LLM endpoint's limits as its `reply.done` reported them."""
    input_audio_s: float = 0.0
    output_audio_s: float = 0.0

    def __post_init__(self) -> None:
        self.item_id = self.item_id or self.reply_id

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
        """By reply message id: the reply's newest response (its assistant item id is the reply's,
        or a new one for a continuation after a function call)."""
        self._all: list[Response] = []
        """The newest responses, continuations included (an item is truncated by its own id)."""
        self.voice_items: dict[str, VoiceItem] = {}
        self.item_ids: set[str] = set()
        self.last_item_id: str | None = None
        self.call_items: dict[str, rt.FunctionCallItem | rt.FunctionCallOutputItem] = {}
        """The function call items and their outputs, by item id (retrieved as they were)."""
        self.continuing: dict[str, Response] = {}
        """Replies whose response ended at a function call, by reply id: the client's
        `response.create` (or the reply going on) opens the response that continues it."""

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

    def silence_item(self, item_id: str) -> None:
        """An idle timeout's committed silence: a user audio item with nothing said."""
        item = self._committed(item_id)
        item.done = True
        self.emit(rt.ItemDone(item=_audio_in(item_id), previous_item_id=item.previous_item_id))

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
        item = self.voice_items.get(item_id)
        if item is not None and item.committed:
            return item, False
        self.emit(rt.SpeechStopped(audio_end_ms=end_ms, item_id=item_id))
        return self._committed(item_id), True

    def _committed(self, item_id: str) -> VoiceItem:
        item = self.voice_items.setdefault(item_id, VoiceItem())
        item.committed = True
        item.previous_item_id = self._chain(item_id)
        self.emit(rt.Committed(item_id=item_id, previous_item_id=item.previous_item_id))
        self.emit(rt.ItemAdded(item=_audio_in(item_id), previous_item_id=item.previous_item_id))
        return item

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

    def by_item(self, item_id: str) -> Response | None:
        """The response whose assistant message item this is (a reply's continuation included)."""
        found = self.responses.get(item_id)
        return found or next((r for r in self._all if r.item_id == item_id), None)

    def answering(self, user_message_id: str) -> Response | None:
        return next((r for r in self.responses.values() if r.user_message_id == user_message_id), None)

    def open(self, user_message_id: str, reply_id: str, modalities: list[str], metadata=None, **more) -> Response:
        rec = Response(rt.new_id("resp"), user_message_id, reply_id, modalities, metadata, **more)
        self.responses[reply_id] = rec
        self._all.append(rec)
        del self._all[:-64]
        self.emit(rt.ResponseCreated(response=self._response(rec, "in_progress")))
        return rec

    def continuation(self, reply_id: str, audio_sent_ms: float, claimed: bool) -> Response:
        """The response that goes on with a reply after its function calls were answered."""
        prev = self.continuing.pop(reply_id)
        return self.open(
            prev.user_message_id,
            reply_id,
            prev.modalities,
            prev.metadata,
            item_id=rt.new_id("item"),
            text_offset=prev.text_offset + len(prev.transcript),
            audio_offset_ms=audio_sent_ms,
            claimed=claimed,
        )

    def function_calls(self, rec: Response, calls: list[events.ToolCall]) -> None:
        """End the response at the avatar's function calls: what it said before them, then one
        `function_call` item each; the reply goes on in a later response once they are answered."""
        if rec.done:
            return
        rec.done = True
        output: list[rt.Item | rt.FunctionCallItem] = []
        if rec.item_added:
            output.append(self._close_message(rec, "completed", rec.transcript))
        for n, c in enumerate(calls, start=len(output)):
            item = rt.FunctionCallItem(id=c.call_id, status="in_progress", name=c.name, call_id=c.call_id, arguments="")
            previous = self._chain(c.call_id)
            at = {"response_id": rec.id, "output_index": n}
            self.emit(rt.OutputItemAdded(**at, item=item))
            self.emit(rt.ItemAdded(item=item, previous_item_id=previous))
            self.emit(rt.FunctionCallArgumentsDelta(**at, item_id=c.call_id, call_id=c.call_id, delta=c.arguments))
            self.emit(
                rt.FunctionCallArgumentsDone(
                    **at, item_id=c.call_id, call_id=c.call_id, name=c.name, arguments=c.arguments
                )
            )
            done = rt.FunctionCallItem(
                id=c.call_id, status="completed", name=c.name, call_id=c.call_id, arguments=c.arguments
            )
            self.emit(rt.ItemDone(item=done, previous_item_id=previous))
            self.emit(rt.OutputItemDone(**at, item=done))
            output.append(done)
            self.call_items[c.call_id] = done
        rec.called = True
        response = self._response(rec, "completed")
        response.output = output
        self.emit(rt.ResponseDone(response=response))
        self.continuing[rec.reply_id] = rec

    def call_output(self, item_id: str, call_id: str, output: str) -> None:
        """The client's `function_call_output` item, added to the conversation."""
        previous = self._chain(item_id)
        item = rt.FunctionCallOutputItem(id=item_id, call_id=call_id, output=output)
        self.call_items[item_id] = item
        self.emit(rt.ItemAdded(item=item, previous_item_id=previous))
        self.emit(rt.ItemDone(item=item, previous_item_id=previous))

    def start(self, rec: Response) -> None:
        """Its output item and content part, once something of it is to be sent."""
        if rec.item_added:
            return
        rec.item_added = True
        rec.previous_item_id = self._chain(rec.item_id)
        item = _item(rec, "in_progress")
        self.emit(rt.OutputItemAdded(response_id=rec.id, item=item))
        self.emit(rt.ItemAdded(item=item, previous_item_id=rec.previous_item_id))
        self.emit(rt.ContentPartAdded(response_id=rec.id, item_id=rec.item_id, part=_part(rec, "")))

    def text_delta(self, rec: Response, text: str) -> None:
        if rec.done or (not rec.transcript and not text.strip() and rec.text_offset):
            return  # a continuation does not begin with the space between the reply's rounds
        self.start(rec)
        rec.transcript += text
        where = {"response_id": rec.id, "item_id": rec.item_id, "delta": text}
        self.emit(rt.AudioTranscriptDelta(**where) if rec.audio else rt.TextDelta(**where))

    def audio_delta(self, rec: Response, pcm: bytes) -> None:
        """PCM16 at the API's rate."""
        if rec.done or not rec.audio:
            return
        self.start(rec)
        self.emit(rt.AudioDelta(response_id=rec.id, item_id=rec.item_id, delta=base64.b64encode(pcm).decode()))

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
        self.continuing.pop(rec.reply_id, None)
        if rec.item_added:
            self._close_message(rec, "completed" if status == "completed" else "incomplete", _text(rec))
        details = None
        if status == "failed":
            code, message = rec.error or ("reply_failed", "the reply failed")
            error = rt.StatusError(type="server_error", code=code, message=message)
            details = rt.StatusDetails(type="failed", error=error)
        elif status != "completed":
            details = rt.StatusDetails(type=status, reason=reason)
        if rec.rate_limits:
            self.emit(rt.RateLimitsUpdated(rate_limits=[msgspec.convert(r, rt.RateLimit) for r in rec.rate_limits]))
        self.emit(rt.ResponseDone(response=self._response(rec, status, details)))

    def _close_message(self, rec: Response, status: str, text: str) -> rt.Item:
        where = {"response_id": rec.id, "item_id": rec.item_id}
        if rec.audio:
            self.emit(rt.AudioDone(**where))
            self.emit(rt.AudioTranscriptDone(**where, transcript=text))
        else:
            self.emit(rt.TextDone(**where, text=text))
        self.emit(rt.ContentPartDone(**where, part=_part(rec, text)))
        item = _item(rec, status, text)
        self.emit(rt.ItemDone(item=item, previous_item_id=rec.previous_item_id))
        self.emit(rt.OutputItemDone(response_id=rec.id, item=item))
        return item

    def _response(self, rec: Response, status: str, details: rt.StatusDetails | None = None) -> rt.Response:
        output = [_item(rec, "completed" if status == "completed" else "incomplete", _text(rec))]
        return rt.Response(
            id=rec.id,
            status=status,
            status_details=details,
            usage=_usage(rec) if status != "in_progress" else None,
            output=output if rec.item_added and status != "in_progress" else [],
            conversation_id=self.conversation_id,
            output_modalities=rec.modalities,
            metadata=rec.metadata,
        )


def _audio_in(item_id: str) -> rt.Item:
    return rt.Item(id=item_id, role="user", status="completed", content=[rt.Content(type="input_audio")])


def _item(rec: Response, status: str, text: str | None = None) -> rt.Item:
    content = []
    if text is not None:
        part = "output_audio" if rec.audio else "output_text"
        content = [rt.Content(type=part, transcript=text) if rec.audio else rt.Content(type=part, text=text)]
    return rt.Item(id=rec.item_id, role="assistant", status=status, content=content)


def _part(rec: Response, text: str) -> rt.Part:
    return rt.Part(type="audio", transcript=text) if rec.audio else rt.Part(type="text", text=text)


def _text(rec: Response) -> str:
    """What the response said: the stored reply's text (its part, after function calls) once final."""
    if rec.final_status == "complete" and rec.final_text is not None:
        return rec.final_text[rec.text_offset :].lstrip()
    return rec.transcript


def _usage(rec: Response) -> rt.Usage:
    text_in, text_out = (rec.tokens or {}).get("input_tokens", 0), (rec.tokens or {}).get("output_tokens", 0)
    audio_in, audio_out = round(rec.input_audio_s * 10), round(rec.output_audio_s * 20)
    return rt.Usage(
        total_tokens=text_in + text_out + audio_in + audio_out,
        input_tokens=text_in + audio_in,
        output_tokens=text_out + audio_out,
        input_token_details=rt.InputTokenDetails(text_tokens=text_in, audio_tokens=audio_in),
        output_token_details=rt.OutputTokenDetails(text_tokens=text_out, audio_tokens=audio_out),
    )
