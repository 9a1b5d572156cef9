"""The stored sentence: one synthesised sentence of a reply, kept in PARLEY_SPEECH.

TTS writes it once per sentence (de-duplicated by the job id); the gateway reads it to fill
audio a client missed, the orchestrator to rebuild the text a person heard before cutting a
reply off, storage to assemble the reply's WAV. The body is the sentence's PCM16; its
metadata, spoken text and the time its first chunk went out live ride in headers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from nats.js.errors import NotFoundError

from . import subjects
from .schemas import AudioMeta, TtsJob

if TYPE_CHECKING:
    from .bus import Bus

FIRST_AUDIO_HEADER = "Parley-First-Audio-At"
TEXT_HEADER = "Parley-Text"


@dataclass(frozen=True)
class StoredSentence:
    index: int
    pcm16: bytes
    sample_rate: int
    ok: bool
    """False: a marker that the sentence could not be synthesised (no audio)."""
    text: str = ""
    """The sentence as it was spoken (the TTS job's text)."""
    first_audio_at: float | None = None
    """Epoch seconds its first chunk went out live."""

    @property
    def duration_s(self) -> float:
        return len(self.pcm16) / 2 / self.sample_rate if self.sample_rate else 0.0


async def keep(bus: Bus, conversation_id: str, message_id: str, sentence: StoredSentence, msg_id: str) -> None:
    """Store the sentence (or its failure marker); a redelivered job's copy is dropped by `msg_id`."""
    meta = AudioMeta(
        conversation_id=conversation_id,
        message_id=message_id,
        sentence_index=sentence.index,
        sample_rate=sentence.sample_rate,
        last=True,
        status="ok" if sentence.ok else "failed",
    )
    headers = meta.headers(msg_id=msg_id)
    headers[TEXT_HEADER] = quote(sentence.text)
    if sentence.first_audio_at is not None:
        headers[FIRST_AUDIO_HEADER] = repr(sentence.first_audio_at)
    subject = subjects.speech(conversation_id, message_id, sentence.index)
    await bus.store(subject, sentence.pcm16, headers)


async def read(bus: Bus, conversation_id: str, message_id: str, index: int) -> StoredSentence | None:
    """The stored sentence, or None while it has not been synthesised (or has expired)."""
    try:
        raw = await bus.js.get_last_msg(subjects.SPEECH_STREAM, subjects.speech(conversation_id, message_id, index))
    except NotFoundError:
        return None
    headers = raw.headers or {}
    meta = AudioMeta.from_headers(headers)
    first = headers.get(FIRST_AUDIO_HEADER)
    return StoredSentence(
        index=index,
        pcm16=raw.data or b"",
        sample_rate=meta.sample_rate,
        ok=meta.status == "ok",
        text=unquote(headers.get(TEXT_HEADER, "")),
        first_audio_at=float(first) if first else None,
    )


class LiveSentence:
    """One sentence's audio as it streams live (core NATS, `parley.live.<conv>.audio`):
    numbered chunks, then an empty chunk marked last that ends the sentence."""

    def __init__(self, bus: Bus, job: TtsJob, sample_rate: int):
        self.bus = bus
        self.job = job
        self.sample_rate = sample_rate
        self.subject = subjects.live(job.conversation_id, "audio")
        self.seq = 0

    async def send(self, pcm16: bytes) -> None:
        await self._publish(pcm16, last=False)
        self.seq += 1

    async def end(self) -> None:
        await self._publish(b"", last=True)

    async def _publish(self, data: bytes, last: bool) -> None:
        job = self.job
        meta = AudioMeta(
            conversation_id=job.conversation_id,
            message_id=job.message_id,
            sentence_index=job.sentence_index,
            chunk_seq=self.seq,
            sample_rate=self.sample_rate,
            last=last,
        )
        await self.bus.nc.publish(self.subject, data, headers=meta.headers())
