"""The session's link to the STT worker that owns its audio: open, follow, take over.

Full workers are not in the `stt` queue group, so "no responders" means no worker has room;
a heartbeat heard on `parley.stt.alive.*` tells whether any is running. The gateway follows
the owner's heartbeat and moves the session to another worker when it stops beating or
leaves, replaying the session's audio from just after the newest final transcript.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import msgspec
from nats.aio.msg import Msg as NatsMsg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from services.common import bus as busmod
from services.common import metrics, schemas, subjects
from services.common.logs import ctx

from . import events
from .config import GatewaySettings
from .wire import SttOptions

log = logging.getLogger(__name__)

REPLAY_MARGIN_S = 0.05
"""A takeover replays from just after the newest final's speech, inside the silence that ended it."""


class SttLink:
    def __init__(
        self,
        bus: busmod.Bus,
        settings: GatewaySettings,
        conversation_id: str,
        audio_session_id: str,
        options: SttOptions,
        hotwords: str,
        on_error: Callable[[str, str], None],
    ):
        self.bus = bus
        self.settings = settings
        self.conv = conversation_id
        self.session_id = audio_session_id
        self.options = options
        self._on_error = on_error
        self.hotwords = hotwords
        """The avatars' names: what recognition most often gets wrong and must not."""
        self.worker = ""
        self.last_final: tuple[int, float] | None = None
        """(utterance_seq, end_s) of the newest final transcript: a takeover replays after it."""
        self._seen = 0.0
        self._leaving = False
        self._alive_sub = None
        self._watch: asyncio.Task | None = None
        self._closed = False

    async def start(self) -> tuple[str, str] | None:
        """Open the session on a worker and watch it; the error code and message if none took it."""
        error = await self.open()
        if error is None:
            self._watch = asyncio.create_task(self._watch_owner())
        return error

    def note_final(self, ev: events.TranscriptFinal) -> None:
        if ev.session_id == self.session_id and ev.end_s is not None:
            if self.last_final is None or ev.utterance_seq > self.last_final[0]:
                self.last_final = (ev.utterance_seq, ev.end_s)

    async def open(self, takeover: bool = False) -> tuple[str, str] | None:
        """Find a worker for the session; a takeover asks it to replay after the newest final."""
        req = self._request()
        if takeover:
            req.replay_from_s = self.last_final[1] + REPLAY_MARGIN_S if self.last_final else 0.0
            req.first_utterance_seq = self.last_final[0] + 1 if self.last_final else 0
        last = "no speech recognition worker answered"
        for _ in range(self.settings.stt_open_attempts):
            try:
                reply = await self.bus.nc.request(
                    subjects.STT_OPEN, schemas.encode(req), timeout=self.settings.stt_open_timeout_s
                )
                opened = schemas.decode(reply.data, schemas.SttOpened)
                if opened.ok:
                    await self._follow(opened.worker_id)
                    return None
                last = opened.error
            except NoRespondersError:
                last = ""
            except NatsTimeout:
                last = "no speech recognition worker answered"
            await asyncio.sleep(0.1)
        if not last:
            last = "no_capacity" if await self._any_worker() else "no speech recognition worker is running"
        code = "no_capacity" if last == "no_capacity" else "stt_unavailable"
        return code, f"speech input is unavailable: {last}; typed text still works"

    async def reopen(self) -> None:
        """Apply new recognition options: the session is opened again on whichever worker answers,
        replayed from after the newest final transcript (the takeover path)."""
        old = self.worker
        error = await self.open(takeover=True)
        if error is not None:
            self._on_error(*error)
            return
        if self._watch is None:
            self._watch = asyncio.create_task(self._watch_owner())
        if old and old != self.worker:
            await self._release(old)

    def _request(self) -> schemas.SttOpen:
        o = self.options
        return schemas.SttOpen(
            conversation_id=self.conv,
            session_id=self.session_id,
            language=o.language,
            end_of_turn_ms=o.end_of_turn_ms,
            prompt=", ".join(p for p in (self.hotwords, o.prompt) if p) or None,
            partials=o.partials,
            vad_threshold=o.vad_threshold,
            pad_ms=o.pad_ms,
            instructions=o.instructions,
            tools=o.tools,
            tool_choice=o.tool_choice,
            turn_policy=o.turn_policy,
            turn_short_ms=o.turn_short_ms,
            turn_long_ms=o.turn_long_ms,
            barge_in_ms=o.barge_in_ms,
            barge_in_words=o.barge_in_words,
            hold=o.hold,
        )

    async def _any_worker(self) -> bool:
        heard = asyncio.Event()

        async def on_beat(msg: NatsMsg) -> None:
            heard.set()

        sub = await self.bus.nc.subscribe(subjects.stt_alive("*"), cb=on_beat)
        try:
            await asyncio.wait_for(heard.wait(), min(1.0, self.settings.stt_takeover_after_s))
            return True
        except TimeoutError:
            return False
        finally:
            await sub.unsubscribe()

    async def _follow(self, worker_id: str) -> None:
        """Watch the heartbeat of the worker that owns the session's audio."""
        if self._alive_sub is not None:
            await self._alive_sub.unsubscribe()
        self.worker = worker_id
        self._seen = time.monotonic()
        self._leaving = False

        async def on_beat(msg: NatsMsg) -> None:
            try:
                alive = schemas.decode(msg.data, schemas.SttAlive)
            except msgspec.DecodeError:
                return
            self._seen = time.monotonic()
            self._leaving = self._leaving or alive.leaving

        self._alive_sub = await self.bus.nc.subscribe(subjects.stt_alive(worker_id), cb=on_beat)

    async def _watch_owner(self) -> None:
        """Move the session to another worker when its owner stops beating or leaves."""
        while not self._closed:
            await asyncio.sleep(0.25)
            silent = time.monotonic() - self._seen > self.settings.stt_takeover_after_s
            if not (silent or self._leaving):
                continue
            old = self.worker
            log.warning(
                "STT worker %s %s; moving the session",
                old,
                "is leaving" if self._leaving else "stopped answering",
                extra=ctx(conversation_id=self.conv, session_id=self.session_id),
            )
            error = await self.open(takeover=True)
            beat_again = time.monotonic() - self._seen < self.settings.stt_takeover_after_s
            if error is not None and beat_again and not self._leaving:
                continue  # the owner was slow, not gone: it beat again while no other answered
            if error is not None:
                self._on_error(*error)
                self._seen = time.monotonic()  # try again after another silent spell
                continue
            metrics.EVENTS.labels("gateway", "stt_takeover").inc()
            if self.worker == old:
                continue  # the owner took its own session back (after a bus outage): nothing to release
            await self._release(old)

    async def _release(self, worker_id: str) -> None:
        await self.bus.control(
            schemas.SttRelease(conversation_id=self.conv, session_id=self.session_id, worker_id=worker_id)
        )

    async def close(self) -> None:
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
        if self._alive_sub is not None:
            try:
                await self._alive_sub.unsubscribe()
            except Exception:
                pass
