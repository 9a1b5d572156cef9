"""The decode batcher: every session's pending decodes in one model call, finals first."""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future

from .vad import SAMPLE_RATE
from .whisper import DecodeRequest, WhisperEngine


class Superseded(Exception):
    """A partial decode replaced by a newer one of the same session before it ran."""


class DecodeBatcher:
    """Every decode of a worker goes through one thread that batches what is pending.

    Requests of all sessions wait in two queues, finals and partials; each model call takes
    up to ``max_batch`` of them, finals first (a person is waiting on those), then the
    oldest partials. Nothing waits for a batch to fill: whatever arrived while the previous
    call ran forms the next one, so one session alone is decoded at once and many sessions
    share calls. A session has at most one partial pending; a newer one replaces it.
    ``on_batch(size, audio_seconds, seconds)`` reports each call (metrics).
    """

    def __init__(self, engine: WhisperEngine, max_batch: int = 16, on_batch=None) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.on_batch = on_batch
        self._cv = threading.Condition()
        self._finals: deque[tuple[DecodeRequest, Future]] = deque()
        self._partials: dict[object, tuple[DecodeRequest, Future]] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="stt-decode", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        with self._cv:
            return len(self._finals) + len(self._partials)

    def submit(self, request: DecodeRequest) -> Future:
        """Queue a final decode (of an utterance or a window of one)."""
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the decoder is closed")
            self._finals.append((request, fut))
            self._cv.notify()
        return fut

    def submit_partial(self, key: object, request: DecodeRequest) -> Future:
        """Queue a partial decode for ``key`` (a session), replacing one still pending."""
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the decoder is closed")
            old = self._partials.pop(key, None)
            if old is not None:
                old[1].set_exception(Superseded())
            self._partials[key] = (request, fut)
            self._cv.notify()
        return fut

    def drop_partial(self, key: object) -> None:
        """Forget ``key``'s pending partial: its utterance or window has ended, and the final
        decode supersedes it (nor should it share the final's batch)."""
        with self._cv:
            old = self._partials.pop(key, None)
        if old is not None:
            old[1].set_exception(Superseded())

    def close(self) -> None:
        """Decode what is queued, then stop the thread."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join()

    def _take(self) -> list[tuple[DecodeRequest, Future]] | None:
        with self._cv:
            while not self._finals and not self._partials:
                if self._closed:
                    return None
                self._cv.wait()
            batch = []
            while self._finals and len(batch) < self.max_batch:
                batch.append(self._finals.popleft())
            while self._partials and len(batch) < self.max_batch:
                key = next(iter(self._partials))
                batch.append(self._partials.pop(key))
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            live = [(req, fut) for req, fut in batch if fut.set_running_or_notify_cancel()]
            if not live:
                continue
            start = time.perf_counter()
            try:
                results = self.engine.transcribe_batch([req for req, _ in live])
            except BaseException as exc:
                for _, fut in live:
                    fut.set_exception(exc)
                continue
            if self.on_batch is not None:
                audio_s = sum(len(req.audio) for req, _ in live) / SAMPLE_RATE
                self.on_batch(len(live), audio_s, time.perf_counter() - start)
            for (_, fut), result in zip(live, results):
                fut.set_result(result)
