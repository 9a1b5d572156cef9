"""A stand-in TTS worker: the real sentence work queue and audio messages, no model.

    python -m bench.standins.tts --nats nats://... [--first-chunk-ms 0] [--rtf 0]
                                 [--chunk-ms 200] [--ms-per-char 60] [--capacity 64] [--log FILE]

Why: the gateway's playout and the storage service's assembly must see what they see from
services/tts (live 24 kHz PCM16 chunks on `parley.live.<conv>.audio` with `AudioMeta`
headers, an empty `Parley-Last: 1` chunk ending the sentence, then the whole sentence with
its text and first-audio time in `PARLEY_SPEECH`, de-duplicated by job id, and the job acked
only after that) while synthesis itself costs nothing, or a fixed, known time. It pulls
`PARLEY_TTS` with the same durable consumer and settings as the real worker, through the
same `Worker` loop. A sentence's audio lasts `--ms-per-char` per character of its text (low
noise); the first chunk goes out `--first-chunk-ms` after the job arrived, the rest at
`--rtf` (seconds of work per second of audio: 0 sends them all at once). Cancellations are
not watched: the benchmarks using it never interrupt. With `--log`, one JSON line per
sentence: job created, received, first chunk and last chunk sent (epoch seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import nats
import numpy as np
import uvloop

from services.common import bus as busmod
from services.common import schemas, speech, subjects

RATE = 24000


class StandInTts:
    def __init__(self, bus: busmod.Bus, args):
        self.bus = bus
        self.first_s = args.first_chunk_ms / 1000
        self.rtf = args.rtf
        self.chunk_bytes = RATE * 2 * args.chunk_ms // 1000
        self.per_char_s = args.ms_per_char / 1000
        rng = np.random.default_rng(3)
        self.noise = rng.normal(0, 300, RATE * 30).clip(-32768, 32767).astype("<i2").tobytes()
        self.log = open(args.log, "a", buffering=1) if args.log else None  # noqa: SIM115

    async def handle(self, msg) -> None:
        received = time.time()
        job = schemas.decode(msg.data, schemas.TtsJob)
        total = min(len(self.noise), int(len(job.text) * self.per_char_s * RATE) * 2)
        pcm = self.noise[:total]
        live = speech.LiveSentence(self.bus, job, RATE)
        if self.first_s:
            await asyncio.sleep(self.first_s - (time.time() - received))
        first_at = None
        for off in range(0, len(pcm), self.chunk_bytes):
            chunk = pcm[off : off + self.chunk_bytes]
            if live.seq and self.rtf:
                # Paced from the first chunk: chunk k is ready k chunks' audio x rtf later.
                due = first_at + off / 2 / RATE * self.rtf
                await asyncio.sleep(max(0.0, due - time.time()))
            if first_at is None:
                first_at = time.time()
            await live.send(chunk)
        last_at = time.time()
        await live.end()
        sentence = speech.StoredSentence(job.sentence_index, pcm, RATE, True, job.text, first_at)
        await speech.keep(self.bus, job.conversation_id, job.message_id, sentence, msg_id=job.job_id)
        if self.log is not None:
            rec = {
                "message_id": job.message_id,
                "sentence_index": job.sentence_index,
                "created": job.created_at,
                "received": received,
                "first_chunk": first_at,
                "last_chunk": last_at,
            }
            self.log.write(json.dumps(rec) + "\n")


async def main_async(args) -> None:
    nc = await nats.connect(args.nats, name="bench-tts-standin", max_reconnect_attempts=-1)
    bus = busmod.Bus(nc)
    await busmod.ensure_streams(bus)
    tts = StandInTts(bus, args)
    worker = busmod.Worker(
        bus,
        busmod.WorkQueue(subjects.TTS_STREAM, "tts", subjects.TTS_ALL, ack_wait_s=6.0, max_deliver=3),
        tts.handle,
        concurrency=args.capacity,
        service="tts",
    )
    await worker.start()
    await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nats", required=True)
    ap.add_argument("--first-chunk-ms", type=float, default=0.0)
    ap.add_argument("--rtf", type=float, default=0.0, help="synthesis seconds per audio second after the first chunk")
    ap.add_argument("--chunk-ms", type=int, default=200)
    ap.add_argument("--ms-per-char", type=float, default=60.0, help="audio per character of text")
    ap.add_argument("--capacity", type=int, default=64, help="sentences at once (engine lanes)")
    ap.add_argument("--log")
    uvloop.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
