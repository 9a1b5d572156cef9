"""TTS worker: pulls sentence jobs, streams audio chunks live, keeps each whole sentence.

Live chunks go out on core NATS the moment the model yields them (the client is waiting);
the whole sentence is then stored in PARLEY_SPEECH (JetStream, de-duplicated by job id) for
storage to assemble, and only after that is the job acked. A worker takes `tts_capacity`
sentences at once, one per engine lane. Cancellations are watched as they are written to
the `parley_cancelled` bucket, so a cancelled reply's jobs are skipped before synthesis
starts and a stream in progress stops before its next chunk, without a lookup per chunk
(`services.common.cancels`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.msg import Msg as NatsMsg

from services.common import bus as busmod
from services.common import metrics, objectstore, schemas, speech, subjects
from services.common.audio import OUTPUT_RATE
from services.common.cancels import Cancels
from services.common.logs import ctx
from services.common.runtime import Service

from .config import TtsSettings
from .engine import SynthesisError, Voice, XttsEngine

log = logging.getLogger(__name__)

_END = object()
_ACK_WAIT_S = 6.0


class TtsService(Service):
    name = "tts"

    def __init__(self, settings: TtsSettings):
        super().__init__(settings)
        self.settings: TtsSettings = settings
        self._voices: dict[str, Voice] = {}
        """The cloned voice per reference key, so a sentence neither refetches nor rehashes it."""

    async def start(self) -> None:
        s = self.settings
        self.engine = XttsEngine(
            s.tts_model,
            device=_device(s.tts_device),
            temperature=s.tts_temperature,
            speed=s.tts_speed,
            stream_chunk_size=s.tts_stream_chunk_size,
            latent_cache_dir=s.tts_latent_cache_dir,
            lanes=s.tts_capacity,
        )
        await asyncio.to_thread(self.engine.load)
        self.store = await objectstore.ObjectStore(s).__aenter__()
        self.on_close(self.store.aclose)
        self.bus = await self.open_bus()
        self.cancels = await Cancels.watch(self.bus.js)
        self.on_close(self.cancels.close)
        self.worker = busmod.Worker(
            self.bus,
            # A short ack wait, kept alive while a sentence streams: a killed worker's
            # sentence goes to another within seconds, not half a minute.
            busmod.WorkQueue(subjects.TTS_STREAM, "tts", subjects.TTS_ALL, ack_wait_s=_ACK_WAIT_S, max_deliver=3),
            self.handle_job,
            concurrency=s.tts_capacity,
            give_up=self._give_up,
            service=self.name,
        )
        await self.worker.start()
        self.workers.append(self.worker)

    async def _voice(self, key: str) -> Voice:
        """Reference audio is fetched and cloned once per key (the engine's latent cache, by
        content hash, spares the conditioning work for a recording seen under another key)."""
        if key not in self._voices:
            self._voices[key] = await asyncio.to_thread(self.engine.voice, await self.store.get(key))
        return self._voices[key]

    async def handle_job(self, msg: NatsMsg) -> None:
        job = schemas.decode(msg.data, schemas.TtsJob)
        metrics.BUS_HOP_SECONDS.labels("tts_job").observe(max(0.0, time.time() - job.created_at))
        if await self.cancels.confirmed(job.message_id):
            await self._keep(job, b"", ok=False)
            return
        if not job.voice_key:
            await self._fail(job, "the avatar has no reference voice")
            return
        keep_alive = asyncio.create_task(busmod.keep_alive(msg, every_s=_ACK_WAIT_S / 3))
        try:
            voice = await self._voice(job.voice_key)
            pcm, first_at = await self._synthesise(job, voice)
        except SynthesisError as exc:
            await self._fail(job, str(exc))
            return
        finally:
            keep_alive.cancel()
        await self._keep(job, pcm, ok=True, first_audio_at=first_at)

    async def _synthesise(self, job: schemas.TtsJob, voice) -> tuple[bytes, float | None]:
        """Stream the sentence live; returns its whole audio and when its first chunk went out."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue = asyncio.Queue()
        stop = False

        def produce() -> None:
            try:
                for chunk in self.engine.stream(job.text, job.language, voice):
                    if stop or job.message_id in self.cancels:
                        return
                    loop.call_soon_threadsafe(chunks.put_nowait, chunk)
            except BaseException as exc:
                loop.call_soon_threadsafe(chunks.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(chunks.put_nowait, _END)

        t0 = time.perf_counter()
        producer = asyncio.create_task(asyncio.to_thread(produce))
        live = speech.LiveSentence(self.bus, job, OUTPUT_RATE)
        parts: list[bytes] = []
        first_at = None
        try:
            while (item := await chunks.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item if isinstance(item, SynthesisError) else SynthesisError(str(item))
                if live.seq == 0:
                    first_at = time.time()
                    metrics.stage("tts_first_chunk", time.perf_counter() - t0)
                    metrics.stage("tts_queue_to_first_chunk", time.time() - job.created_at)
                data = item.tobytes()
                parts.append(data)
                await live.send(data)
                if job.message_id in self.cancels:
                    stop = True
                    break
        finally:
            stop = True
            await producer
        await live.end()
        metrics.stage("tts_sentence", time.perf_counter() - t0)
        return b"".join(parts), first_at

    async def _keep(self, job: schemas.TtsJob, pcm: bytes, ok: bool, first_audio_at: float | None = None) -> None:
        """The whole sentence (or a marker that there is none) for storage to assemble."""
        sentence = speech.StoredSentence(job.sentence_index, pcm, OUTPUT_RATE, ok, job.text, first_audio_at)
        await speech.keep(self.bus, job.conversation_id, job.message_id, sentence, msg_id=job.job_id)

    async def _fail(self, job: schemas.TtsJob, reason: str) -> None:
        log.warning("sentence failed: %s", reason, extra=ctx(message_id=job.message_id))
        metrics.EVENTS.labels("tts", "sentence_failed").inc()
        await self.bus.publish_event(
            schemas.SentenceFailed(
                conversation_id=job.conversation_id,
                message_id=job.message_id,
                sentence_index=job.sentence_index,
                error=reason,
            ),
            msg_id=f"tts-fail.{job.job_id}",
        )
        await self._keep(job, b"", ok=False)

    async def _give_up(self, msg: NatsMsg, exc: BaseException) -> None:
        await self._fail(schemas.decode(msg.data, schemas.TtsJob), f"synthesis failed: {exc}")


def _device(name: str) -> str:
    if name != "auto":
        return name
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"
