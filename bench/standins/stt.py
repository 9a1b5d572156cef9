"""A stand-in STT worker: the real session protocol on the bus, no VAD, no model.

    python -m bench.standins.stt --nats nats://... [--final-ms 0] [--capacity 1000]

Why: to time everything around speech recognition, the worker must behave on the bus as
services/stt does (answer `parley.stt.open`, beat its heartbeat, read the session's audio
from AUDIO_IN through an ordered consumer, publish the same events and facts with the same
ids and marks) while adding nothing of its own. The end of speech comes from the marker the
bench client writes into its last speech frame (see bench/standins/__init__.py), so the
`speech_end` mark is the client's own clock of its last speech sample, `eot` is when the
frame reached this worker and `final` when the transcript goes out (`--final-ms` later, to
stand for a recogniser). The transcript is the marker's text with the user message id
appended (`[id=...]`), so the LLM stand-in can say which turn it is answering.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import time

import nats
import uvloop
from nats.js.api import DeliverPolicy

from bench.standins import parse_frame
from services.common import bus as busmod
from services.common import ids, schemas, subjects
from services.common.schemas import AudioMeta

RATE = 16000


class Session:
    def __init__(self, worker: Worker, req: schemas.SttOpen):
        self.worker = worker
        self.conv = req.conversation_id
        self.session_id = req.session_id
        self.utterance = req.first_utterance_seq
        self.start_s: float | None = None
        self.subs: list = []

    async def start(self) -> None:
        bus = self.worker.bus
        self.subs.append(
            await bus.js.subscribe(
                subjects.audio_in(self.conv), ordered_consumer=True, deliver_policy=DeliverPolicy.NEW, cb=self.on_audio
            )
        )
        self.subs.append(await bus.on_control(self.conv, schemas.SessionEnd, self.on_end))

    async def close(self) -> None:
        for sub in self.subs:
            try:
                await sub.unsubscribe()
            except Exception:
                pass

    async def on_end(self, ctl: schemas.SessionEnd) -> None:
        if ctl.session_id in ("", self.session_id):
            self.worker.spawn(self.worker.close(self.conv, self))

    async def on_audio(self, msg) -> None:
        now = time.time()
        meta = AudioMeta.from_headers(msg.headers)
        if meta.session_id != self.session_id:
            return
        mark = parse_frame(msg.data)
        if mark is None:
            return
        bus = self.worker.bus
        if self.start_s is None:
            self.start_s = meta.offset / RATE
            await bus.publish_live(
                schemas.SpeechStarted(
                    conversation_id=self.conv,
                    session_id=self.session_id,
                    utterance_seq=self.utterance,
                    start_s=self.start_s,
                )
            )
        if mark[0] != "E":
            return
        _, sent_at, text = mark
        seq, start_s = self.utterance, self.start_s
        end_s = (meta.offset + len(msg.data) // 2) / RATE
        self.utterance += 1
        self.start_s = None
        marks = {"speech_end": sent_at, "eot": now}
        await bus.publish_live(
            schemas.SpeechStopped(conversation_id=self.conv, session_id=self.session_id, utterance_seq=seq, end_s=end_s)
        )
        self.worker.spawn(self.final(seq, start_s, end_s, text, marks))

    async def final(self, seq: int, start_s: float, end_s: float, text: str, marks: dict) -> None:
        """As services/stt publishes a transcript: the client event, then the fact."""
        if self.worker.final_s:
            await asyncio.sleep(self.worker.final_s - (time.time() - marks["eot"]))
        bus = self.worker.bus
        message_id = ids.user_message_id(self.conv, self.session_id, "voice", seq)
        text = f"{text} [id={message_id}]"
        marks["final"] = time.time()
        await bus.publish_event(
            schemas.TranscriptFinal(
                conversation_id=self.conv,
                session_id=self.session_id,
                utterance_seq=seq,
                message_id=message_id,
                text=text,
                language="en",
                confidence=1.0,
                start_s=start_s,
                end_s=end_s,
                speech_end_at=marks["speech_end"],
            ),
            msg_id=f"final.{message_id}",
        )
        await bus.publish_fact(
            subjects.turn(self.conv),
            schemas.UserTurn(
                conversation_id=self.conv,
                message_id=message_id,
                session_id=self.session_id,
                turn_seq=seq,
                source="voice",
                text=text,
                language="en",
                confidence=1.0,
                speech_start_s=start_s,
                speech_end_s=end_s,
                marks=marks,
            ),
            msg_id=message_id,
        )


class Worker:
    def __init__(self, bus: busmod.Bus, final_ms: float, capacity: int):
        self.bus = bus
        self.final_s = final_ms / 1000
        self.capacity = capacity
        self.worker_id = f"bench-stt-{socket.gethostname()}-{os.getpid()}"
        self.sessions: dict[str, Session] = {}
        self.tasks: set[asyncio.Task] = set()

    def spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def on_open(self, msg) -> None:
        req = schemas.decode(msg.data, schemas.SttOpen)
        old = self.sessions.pop(req.conversation_id, None)
        if old is not None:
            await old.close()
        session = self.sessions[req.conversation_id] = Session(self, req)
        await session.start()
        await msg.respond(schemas.encode(schemas.SttOpened(ok=True, worker_id=self.worker_id)))

    async def close(self, conv: str, session: Session) -> None:
        if self.sessions.get(conv) is session:
            del self.sessions[conv]
            await session.close()

    async def run(self) -> None:
        await busmod.ensure_streams(self.bus)
        await self.bus.nc.subscribe(subjects.STT_OPEN, queue="stt", cb=self.on_open)
        while True:
            alive = schemas.SttAlive(worker_id=self.worker_id, sessions=len(self.sessions), capacity=self.capacity)
            await self.bus.nc.publish(subjects.stt_alive(self.worker_id), schemas.encode(alive))
            await asyncio.sleep(0.5)


async def main_async(args) -> None:
    nc = await nats.connect(args.nats, name="bench-stt-standin", max_reconnect_attempts=-1)
    await Worker(busmod.Bus(nc), args.final_ms, args.capacity).run()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nats", required=True)
    ap.add_argument("--final-ms", type=float, default=0.0, help="end of speech to final transcript")
    ap.add_argument("--capacity", type=int, default=1000)
    uvloop.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
