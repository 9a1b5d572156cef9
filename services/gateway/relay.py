"""The reply relay: each reply's audio to the client in sentence order, and what was heard.

TTS workers may synthesise a reply's sentences in parallel; `Playout` orders what arrives.
Audio goes out, then the `audio.end` marker, then `audio.stored`. The relay also keeps how
far the client has played each reply, which is what an interruption stores as heard, and
measures voice-to-voice time from the end of speech to the reply's first frame.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol

from nats.aio.msg import Msg as NatsMsg

from services.common import bus as busmod
from services.common import metrics, speech
from services.common.schemas import AudioMeta

from . import events
from .config import GatewaySettings
from .playout import Frame, Playout


class Sink(Protocol):
    """Where the relay writes: the session's wire."""

    def send(self, ev: events.ClientEvent, cursor: int | None = None) -> None: ...

    def send_audio(self, message_id: str, frame: Frame) -> None: ...


@dataclass
class Reply:
    playout: Playout = field(default_factory=Playout)
    stored: tuple[events.AudioStored, int] | None = None
    """The stored event and its cursor: sent after the end-of-audio marker."""
    first_audio_at: float | None = None
    """Monotonic time its first audio frame was queued for the client."""
    user_message_id: str | None = None
    latency_reported: bool = False
    spoken: bool = False
    """It answers a spoken turn of this session (a client may report its latency)."""
    sentence_s: dict[int, float] = field(default_factory=dict)
    """Seconds of audio sent to the client, per sentence."""
    played: tuple[float, float] | None = None
    """The client's newest playback report: (ms played, monotonic time of the report)."""
    playback_ended: bool = False
    paused_s: float | None = None
    """Paused (a barge-in that may prove false) with this much played; nothing is sent meanwhile."""
    kept: dict[int, list[Frame]] = field(default_factory=dict)
    """Its audio from the sentence being heard on, to send again when a pause resumes."""
    end_due: bool = False
    """Its end marker waits for a pause to resume or to end."""

    @property
    def sent_s(self) -> float:
        return sum(self.sentence_s.values())

    def played_s(self, now: float) -> float:
        """How far the client has played: its report carried forward in real time, or without
        one, real time since the first frame went out; never more than was sent."""
        if self.played is not None:
            ms, at = self.played
            estimate = ms / 1000 + (0.0 if self.playback_ended else now - at)
        else:
            estimate = now - (self.first_audio_at or now)
        if self.paused_s is not None:
            estimate = self.paused_s
        return min(estimate, self.sent_s)

    def playing(self, now: float) -> bool:
        if self.first_audio_at is None or self.playback_ended or self.paused_s is not None:
            return False
        return not self.playout.ended or self.played_s(now) < self.sent_s

    def keep(self, frame: Frame, now: float) -> None:
        self.kept.setdefault(frame.sentence_index, []).append(frame)
        heard = self.heard(now)[0]
        for index in [i for i in self.kept if i < heard]:
            del self.kept[index]

    def from_position(self, index: int, offset_s: float) -> list[Frame]:
        """The kept audio from (sentence, seconds into it) on."""
        out: list[Frame] = []
        for i in sorted(k for k in self.kept if k >= index):
            skip_s = offset_s if i == index else 0.0
            for f in self.kept[i]:
                frame_s = len(f.pcm) / 2 / f.sample_rate
                if skip_s >= frame_s:
                    skip_s -= frame_s
                    continue
                cut = int(skip_s * f.sample_rate) * 2
                out.append(Frame(f.sentence_index, f.chunk_seq, f.sample_rate, f.pcm[cut:]))
                skip_s = 0.0
        return out

    def heard(self, now: float) -> tuple[int, float]:
        """(sentence index, seconds into it) the client had played."""
        left = self.played_s(now)
        index, offset = 0, 0.0
        for index in sorted(self.sentence_s):
            offset = min(left, self.sentence_s[index])
            left -= offset
            if left <= 0:
                break
        return index, offset


class ReplyRelay:
    def __init__(self, bus: busmod.Bus, settings: GatewaySettings, conversation_id: str, wire: Sink):
        self.bus = bus
        self.settings = settings
        self.conv = conversation_id
        self.wire = wire
        self.replies: dict[str, Reply] = {}
        """Replies this connection saw start, by message id."""
        self.interrupted: set[str] = set()
        """Replies whose audio is no longer forwarded."""
        self._speech_end_at: dict[str, float] = {}
        self._audio_before_final: dict[str, tuple[Reply, float]] = {}
        self._fills: set[asyncio.Task] = set()
        self.closed = False

    def started(self, ev: events.ReplyStarted) -> None:
        now = time.monotonic()
        for reply in self.replies.values():
            if reply.kept and reply.paused_s is None and not reply.playing(now):
                reply.kept.clear()  # played out: nothing of it will be sent again
        self.replies.setdefault(ev.message_id, Reply()).user_message_id = ev.user_message_id

    def live_audio(self, msg: NatsMsg, whole: bool) -> None:
        """A live chunk of a reply's sentence, or (`whole`) the stored sentence relayed live."""
        meta = AudioMeta.from_headers(msg.headers)
        if (reply := self.replies.get(meta.message_id)) is None:
            return
        if whole:
            frames = reply.playout.whole(meta.sentence_index, msg.data, meta.sample_rate, meta.status == "ok")
        else:
            frames = reply.playout.chunk(meta.sentence_index, meta.chunk_seq, msg.data, meta.last, meta.sample_rate)
        self._play(meta.message_id, frames)

    def final(self, ev: events.ClientEvent, cursor: int) -> None:
        """A final event of the conversation. A reply this connection did not see start (it
        began before a resume) gets its final form only, no audio."""
        mid = getattr(ev, "message_id", None)
        reply = self.replies.get(mid) if mid else None
        if isinstance(ev, events.TranscriptFinal):
            self._transcribed(ev)
        elif reply is None:
            pass
        elif isinstance(ev, events.ReplyDone):
            self.wire.send(ev, cursor)
            self._play(ev.message_id, reply.playout.count(ev.sentence_count))
            return
        elif isinstance(ev, events.ReplyInterrupted):
            reply.playout.ended = True  # nothing more is played of it
        elif isinstance(ev, events.SentenceFailed):
            self.wire.send(ev, cursor)
            self._play(ev.message_id, reply.playout.failed(ev.sentence_index))
            return
        elif isinstance(ev, events.AudioStored) and not reply.playout.ended:
            reply.stored = (ev, cursor)  # the URL follows the end-of-message marker
            fill = asyncio.create_task(self._fill_from_store(ev.message_id))
            self._fills.add(fill)
            fill.add_done_callback(self._fills.discard)
            return
        self.wire.send(ev, cursor)

    def _transcribed(self, ev: events.TranscriptFinal) -> None:
        if not ev.speech_end_at:
            return
        early = self._audio_before_final.pop(ev.message_id, None)
        if early is None:
            self._speech_end_at[ev.message_id] = ev.speech_end_at
        else:
            early[0].spoken = True
            metrics.VOICE_TO_VOICE_SECONDS.observe(early[1] - ev.speech_end_at)

    def playback(self, message_id: str, played_ms: float, ended: bool) -> bool:
        """The client's playback report; False for a reply whose audio this session did not send.
        While paused, the client's count is where it stopped (its stop ends nothing yet)."""
        reply = self.replies.get(message_id)
        if reply is None or reply.first_audio_at is None:
            return False
        if reply.paused_s is not None:
            reply.paused_s = played_ms / 1000
            return True
        reply.played = (played_ms, time.monotonic())
        reply.playback_ended = reply.playback_ended or ended
        return True

    def pause(self, message_id: str) -> tuple[int, float] | None:
        """Stop sending a playing reply, keeping its place; the client is told to stop playing it."""
        now = time.monotonic()
        reply = self.replies.get(message_id)
        if reply is None or message_id in self.interrupted or not reply.playing(now):
            return None
        reply.paused_s = reply.played_s(now)
        position = reply.heard(now)
        self.wire.send(events.PlaybackPause(conversation_id=self.conv, message_id=message_id, **_at(position)))
        return position

    def stop_playback(self, message_id: str) -> tuple[int, float]:
        """Tell the client to stop playing a reply for good; where it was heard (or paused)."""
        position = self.replies[message_id].heard(time.monotonic())
        self.wire.send(events.PlaybackStop(conversation_id=self.conv, message_id=message_id, **_at(position)))
        return position

    def resume(self, message_id: str) -> None:
        """Play a paused reply on from where it stopped: its kept audio again, then what comes."""
        reply = self.replies.get(message_id)
        if reply is None or reply.paused_s is None or message_id in self.interrupted:
            return
        now = time.monotonic()
        index, offset = reply.heard(now)
        reply.played, reply.paused_s = (reply.played_s(now) * 1000, now), None
        self.wire.send(events.PlaybackResume(conversation_id=self.conv, message_id=message_id, **_at((index, offset))))
        for frame in reply.from_position(index, offset):
            self.wire.send_audio(message_id, frame)
        metrics.EVENTS.labels("gateway", "reply_resumed").inc()
        self._end_if_due(message_id, reply)

    def stopped(self, message_id: str) -> None:
        """A reply's audio is no longer forwarded: a pause that ends so still sends its end marker."""
        self.interrupted.add(message_id)
        if (reply := self.replies.get(message_id)) is not None:
            reply.kept.clear()
            self._end_if_due(message_id, reply)

    def latency(self, message_id: str, voice_to_voice_ms: float) -> bool:
        """Counted once per spoken reply this session relayed; False for anything else."""
        reply = self.replies.get(message_id)
        if reply is None or not reply.spoken or reply.latency_reported:
            return False
        reply.latency_reported = True
        metrics.CLIENT_VOICE_TO_VOICE_SECONDS.observe(voice_to_voice_ms / 1000)
        return True

    def unfinished(self, now: float) -> list[str]:
        """Replies still arriving or playing."""
        return [m for m, r in self.replies.items() if not r.playout.ended or r.playing(now) or r.paused_s is not None]

    def playing(self, now: float) -> list[tuple[str, Reply]]:
        """Replies playing now that have not been interrupted."""
        return [(m, r) for m, r in self.replies.items() if m not in self.interrupted and r.playing(now)]

    async def _fill_from_store(self, message_id: str) -> None:
        """The reply is stored, so every sentence is in PARLEY_SPEECH. What has not arrived live
        a moment later (lost while the bus was down) is read back from there, so the reply
        plays to its end and the end marker and URL follow."""
        await asyncio.sleep(self.settings.audio_fill_after_s)
        reply = self.replies.get(message_id)
        if self.closed or reply is None or reply.playout.ended or reply.playout.sentence_count is None:
            return
        playout = reply.playout
        for index in range(playout.next_sentence, playout.sentence_count):
            sentence = await speech.read(self.bus, self.conv, message_id, index)
            if sentence is None:
                frames = playout.failed(index)
            else:
                frames = playout.whole(index, sentence.pcm16, sentence.sample_rate, sentence.ok)
            metrics.EVENTS.labels("gateway", "audio_filled_from_store").inc()
            self._play(message_id, frames)
            if playout.ended:
                return

    def _play(self, message_id: str, frames: list[Frame]) -> None:
        """Send what may be heard now; then, once the reply is complete, the end marker and URL."""
        reply = self.replies[message_id]
        if message_id not in self.interrupted:
            for frame in frames:
                self._send_audio(message_id, reply, frame)
        playout = reply.playout
        if not playout.ended and playout.complete:
            playout.ended = True
            reply.end_due = True
        self._end_if_due(message_id, reply)

    def _end_if_due(self, message_id: str, reply: Reply) -> None:
        if not reply.end_due or (reply.paused_s is not None and message_id not in self.interrupted):
            return
        reply.end_due = False
        count = reply.playout.sentence_count
        self.wire.send(events.AudioEnd(conversation_id=self.conv, message_id=message_id, sentence_count=count))
        if reply.stored is not None:
            self.wire.send(*reply.stored)

    def _send_audio(self, message_id: str, reply: Reply, frame: Frame) -> None:
        if reply.first_audio_at is None:
            reply.first_audio_at = time.monotonic()
            spoke_at = self._speech_end_at.pop(reply.user_message_id or "", None)
            reply.spoken = spoke_at is not None
            if spoke_at:
                metrics.VOICE_TO_VOICE_SECONDS.observe(time.time() - spoke_at)
            elif reply.user_message_id:
                # Live audio may overtake the final transcript (an ordered consumer) under load;
                # a typed turn has none, so only the newest few wait.
                self._audio_before_final[reply.user_message_id] = (reply, time.time())
                while len(self._audio_before_final) > 16:
                    del self._audio_before_final[next(iter(self._audio_before_final))]
        index = frame.sentence_index
        reply.sentence_s[index] = reply.sentence_s.get(index, 0.0) + len(frame.pcm) / 2 / frame.sample_rate
        reply.keep(frame, time.monotonic())
        if reply.paused_s is None:
            self.wire.send_audio(message_id, frame)

    def close(self) -> None:
        self.closed = True
        for fill in list(self._fills):
            fill.cancel()


def _at(position: tuple[int, float]) -> dict:
    return {"sentence_index": position[0], "offset_ms": round(position[1] * 1000)}
