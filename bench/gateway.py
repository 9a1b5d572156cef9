"""How many real-time sessions one gateway process relays on one core, with p99 relay delay.

    python -m bench.gateway [--sessions 25,50,100,200,300,500] [--seconds 20] [--frame-ms 20]
                            [--chunk-ms 40] [--generators 2] [--no-deflate] [--server-deflate]
                            [--bound-ms 10]

A real nats-server and Postgres (or a fresh database on DATABASE_URL), and the real gateway
(`python -m services.gateway`) as its own process pinned to one core (`--gateway-cpu`);
everything else (nats-server, Postgres, a stand-in STT worker and the load generators) is
pinned to the other cores (`--other-cpus`), so the gateway's core is its own.

The stand-in STT worker answers `parley.stt.open` and beats its heartbeat, so sessions stay
attached without a speech model. Each of N client sessions (one user each) streams PCM16
16 kHz mic audio in real time (low-level noise, `--frame-ms` frames) and, all the while,
hears an endless reply: the bench publishes `reply.started` and then 24 kHz reply audio in
`--chunk-ms` chunks at real-time pace on the conversation's live audio subject, as a TTS
worker does. Both directions at once, all the time: the gateway's heaviest steady load.
Sessions start at phases spread evenly over a frame, as independent clients would.

Relay delay, per direction, from the send time written into the first 8 bytes of the PCM:
mic frames from the client's socket write to their arrival on `parley.audio.<conv>` (core
NATS, a `--mic-sample` share of the sessions subscribed), and reply chunks from their NATS
publish to the client's socket read. Both ends use the host's monotonic clock. Samples
count from `--warmup` seconds after the start, for `--seconds`.

The clients are a minimal WebSocket client written on asyncio's protocol API: with a
client library the generator's own per-frame costs would share the other core with
nats-server and be the limit long before the gateway. It offers permessage-deflate as
browsers do; the gateway declines it unless PARLEY_WS_DEFLATE is set (`--server-deflate`
sets it, to show what compressing every frame both ways costs). How late the generators sent (against each frame's due
time) and how busy the cores were are reported beside each step, so a figure limited by
the generator, not the gateway, shows as such.

Prints a table, writes JSON (bench/results/gateway.json).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import json
import multiprocessing as mp
import os
import struct
import tempfile
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
import numpy as np
import uvloop

from bench.common import ROOT, pct, write_result
from ops import devstack
from services.common import db, ids, schemas, subjects
from services.common.schemas import AudioMeta
from services.gateway.auth import mint_token
from services.gateway.protocol import AUDIO_HEADER

STAMP = struct.Struct("<d")
"""Send time (monotonic seconds) at the start of every PCM payload the bench sends."""
SECRET = "parley-bench-secret-not-for-production-use"
STT_HEARTBEAT_S = 0.5


@dataclass
class Config:
    host: str
    port: int
    nats_url: str
    total: int
    frame_ms: int
    chunk_ms: int
    sentence_s: float
    sentences: int
    mic_sample: float
    deflate: bool
    warmup_s: float
    seconds: float
    open_concurrency: int
    tag: str


# --- a minimal WebSocket client ------------------------------------------------------------


def deflate_alone(data: bytes, bits: int) -> bytes:
    """`data` as a permessage-deflate message body that refers to no earlier message: valid
    whether or not the peer keeps its window across messages."""
    c = zlib.compressobj(6, zlib.DEFLATED, -bits)
    return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


def stored_block(data: bytes) -> bytes:
    """A raw deflate block holding `data` as it is (BFINAL 0, BTYPE 00, LEN, NLEN)."""
    return b"\x00" + struct.pack("<HH", len(data), len(data) ^ 0xFFFF) + data


class WsClient(asyncio.Protocol):
    """RFC 6455 client side, just what the bench needs: frames written with a zero mask key
    (the server unmasks as usual and cannot tell), permessage-deflate as a browser negotiates it, and
    reply audio handed to `on_audio` with the time its bytes were read.

    A compressed mic frame is the send time in a stored block followed by the rest of the
    frame compressed beforehand (`deflate_alone`): the gateway inflates a frame as costly as
    a browser's, while the generator spends no per-frame compression of its own."""

    def __init__(self, host: str, port: int, deflate: bool, on_audio, on_text):
        self.host, self.port = host, port
        self.offer_deflate = deflate
        self.on_audio, self.on_text = on_audio, on_text
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.deflate = False
        self.client_bits = 15
        self._inflate = None
        self._inflate_reset = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        ext = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if self.offer_deflate else ""
        transport.write(
            f"GET /v1/ws HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n".encode()
        )

    def connection_lost(self, exc) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _handshake(self) -> bool:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = self.buf[:end].decode("latin-1").split("\r\n")
        del self.buf[: end + 4]
        if " 101 " not in head[0] + " ":
            self.upgraded.set_exception(ConnectionError(head[0]))
            return False
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-extensions" and "permessage-deflate" in value:
                self._negotiated(value)
        self.upgraded.set_result(None)
        return True

    def _negotiated(self, value: str) -> None:
        self.deflate = True
        for param in value.split(";")[1:]:
            name, _, arg = param.strip().partition("=")
            if name == "client_max_window_bits" and arg:
                self.client_bits = int(arg)
            elif name == "server_no_context_takeover":
                self._inflate_reset = True
        self._inflate = zlib.decompressobj(-15)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buf = self.buf
        buf += data
        if not self.upgraded.done() and not self._handshake():
            return
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            size, pos = b1 & 0x7F, 2
            if size == 126:
                if len(buf) < 4:
                    return
                size, pos = int.from_bytes(buf[2:4], "big"), 4
            elif size == 127:
                if len(buf) < 10:
                    return
                size, pos = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < pos + size:
                return
            payload = bytes(buf[pos : pos + size])
            del buf[: pos + size]
            opcode = b0 & 0x0F
            if b0 & 0x40:
                if self._inflate_reset:
                    self._inflate = zlib.decompressobj(-15)
                payload = self._inflate.decompress(payload + b"\x00\x00\xff\xff")
            if opcode == 2:
                self.on_audio(payload, now)
            elif opcode == 1:
                self.on_text(payload)
            elif opcode == 9:
                self._write(10, payload)
            elif opcode == 8:
                self.transport.close()

    def _write(self, opcode: int, payload: bytes, compressed: bool = False) -> None:
        first = 0x80 | opcode | (0x40 if compressed else 0)
        n = len(payload)
        if n < 126:
            head = bytes((first, 0x80 | n))
        elif n < 65536:
            head = bytes((first, 0xFE)) + n.to_bytes(2, "big")
        else:
            head = bytes((first, 0xFF)) + n.to_bytes(8, "big")
        self.transport.write(head + b"\x00\x00\x00\x00" + payload)

    def send_text(self, text: str) -> None:
        data = text.encode()
        if self.deflate:
            self._write(1, deflate_alone(data, self.client_bits), compressed=True)
        else:
            self._write(1, data)

    def send_audio(self, payload: bytes, compressed: bool) -> None:
        if not self.transport.is_closing():
            self._write(2, payload, compressed)

    async def close(self) -> None:
        if self.transport.is_closing():
            return
        self._write(8, (1000).to_bytes(2, "big"))
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), 5)
        except TimeoutError:
            self.transport.close()


# --- the load generator (one process, a share of the sessions) -----------------------------


def _noise(n_samples: int, seed: int) -> bytes:
    """Low-level noise: like a mic's or a voice's PCM it hardly compresses, unlike silence."""
    rng = np.random.default_rng(seed)
    return rng.normal(0, 900, n_samples).clip(-32768, 32767).astype("<i2").tobytes()


class Samples:
    def __init__(self) -> None:
        self.mic_ms = array.array("d")
        self.reply_ms = array.array("d")
        self.mic_late_ms = array.array("d")
        self.reply_late_ms = array.array("d")
        self.mic_sent = 0
        self.mic_seen = 0
        self.reply_sent = 0
        self.reply_seen = 0
        self.errors: dict[str, int] = {}


class Session:
    def __init__(self, index: int, cfg: Config, stats: Samples, window: list[float]):
        self.index = index
        self.cfg = cfg
        self.stats = stats
        self.window = window
        self.conv = ""
        self.started = asyncio.get_running_loop().create_future()
        self.ws: WsClient | None = None
        self.sampled = False
        self.mic_phase = cfg.frame_ms / 1000 * index / cfg.total
        self.reply_phase = cfg.chunk_ms / 1000 * ((index * 7919) % cfg.total) / cfg.total
        self.message_id = ""
        self.reply_headers: dict[str, str] = {}

    def on_audio(self, frame: bytes, now: float) -> None:
        sent = STAMP.unpack_from(frame, AUDIO_HEADER.size)[0]
        lo, hi = self.window
        if lo <= sent < hi:
            self.stats.reply_seen += 1
            self.stats.reply_ms.append((now - sent) * 1000)

    def on_text(self, payload: bytes) -> None:
        ev = json.loads(payload)
        kind = ev.get("type")
        if kind == "session.started":
            self.conv = ev["conversation_id"]
            if not self.started.done():
                self.started.set_result(None)
        elif kind == "error":
            self.stats.errors[ev["code"]] = self.stats.errors.get(ev["code"], 0) + 1

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        _, self.ws = await loop.create_connection(
            lambda: WsClient(cfg.host, cfg.port, cfg.deflate, self.on_audio, self.on_text), cfg.host, cfg.port
        )
        await asyncio.wait_for(self.ws.upgraded, 30)
        token = mint_token(SECRET, f"bench-{cfg.tag}-{self.index}")
        self.ws.send_text(json.dumps({"type": "session.start", "token": token}))
        await asyncio.wait_for(asyncio.shield(self.started), 60)


async def _pace(items: list, period: float, start: float, end: float, fire) -> None:
    """Call `fire(item, k, due)` for every item at start + item phase + k * period, in time order;
    items due within half a millisecond go out together (the event loop's timers are that coarse)."""
    k = 0
    while (base := start + k * period) < end:
        for item in items:
            due = base + item[0]
            delay = due - time.monotonic()
            if delay > 0.0005:
                await asyncio.sleep(delay)
            await fire(item[1], k, due)
        k += 1


async def _generate(cfg: Config, indices: list[int], conn) -> None:
    loop = asyncio.get_running_loop()
    stats = Samples()
    window = [float("inf"), float("inf")]
    nc = await nats.connect(cfg.nats_url, name=f"bench-gen-{os.getpid()}")
    sessions = [Session(i, cfg, stats, window) for i in indices]
    gate = asyncio.Semaphore(cfg.open_concurrency)

    async def open_one(s: Session) -> None:
        async with gate:
            await s.open()

    t_open = time.monotonic()
    outcomes = await asyncio.gather(*(open_one(s) for s in sessions), return_exceptions=True)
    failed = [f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)]
    live = [s for s, o in zip(sessions, outcomes) if not isinstance(o, BaseException)]
    open_s = time.monotonic() - t_open

    async def on_mic(msg) -> None:
        now = time.monotonic()
        sent = STAMP.unpack_from(msg.data)[0]
        if window[0] <= sent < window[1]:
            stats.mic_seen += 1
            stats.mic_ms.append((now - sent) * 1000)

    frame_s = cfg.frame_ms / 1000
    mic_bytes = 16000 * 2 * cfg.frame_ms // 1000
    mic_noise = _noise(16000 * 4, 1)
    rests = [mic_noise[o + STAMP.size : o + mic_bytes] for o in range(0, len(mic_noise) - mic_bytes + 1, mic_bytes)]
    packed = {
        bits: [deflate_alone(r, bits) for r in rests] for bits in {s.ws.client_bits for s in live if s.ws.deflate}
    }

    step = max(1, round(1 / cfg.mic_sample)) if cfg.mic_sample > 0 else 0
    for s in live:
        if step and s.index % step == 0:
            s.sampled = True
            await nc.subscribe(subjects.audio_in(s.conv), cb=on_mic)
    await nc.flush()
    conn.send(("ready", len(live), failed[:5], len(failed), open_s, sum(s.ws.deflate for s in live)))
    t0 = await loop.run_in_executor(None, conn.recv)
    window[0] = t0 + cfg.warmup_s
    window[1] = window[0] + cfg.seconds
    end = window[1] + 0.05
    cpu0 = time.process_time()

    async def send_mic(s: Session, k: int, due: float) -> None:
        n = (k + s.index) % len(rests)
        now = time.monotonic()
        if s.ws.deflate:
            s.ws.send_audio(stored_block(STAMP.pack(now)) + packed[s.ws.client_bits][n], True)
        else:
            s.ws.send_audio(STAMP.pack(now) + rests[n], False)
        if window[0] <= now < window[1]:
            stats.mic_late_ms.append((now - due) * 1000)
            stats.mic_sent += s.sampled

    chunk_s = cfg.chunk_ms / 1000
    chunk_bytes = 24000 * 2 * cfg.chunk_ms // 1000
    reply_noise = _noise(24000 * 4, 2)
    reply_chunks = len(reply_noise) // chunk_bytes
    per_sentence = max(1, round(cfg.sentence_s / chunk_s))
    per_reply = per_sentence * cfg.sentences

    async def send_reply(s: Session, k: int, due: float) -> None:
        j = k % per_reply
        if j == 0:
            s.message_id = ids.new_id()
            started = schemas.ReplyStarted(
                conversation_id=s.conv,
                message_id=s.message_id,
                user_message_id=ids.new_id(),
                avatar_id=ids.DEMO_AVATAR_ID,
            )
            await nc.publish(subjects.live(s.conv, "reply_started"), schemas.encode(started))
            s.reply_headers = AudioMeta(conversation_id=s.conv, message_id=s.message_id, sample_rate=24000).headers()
        seq = j % per_sentence
        headers = dict(s.reply_headers)
        headers["Parley-Sentence"] = str(j // per_sentence)
        headers["Parley-Chunk"] = str(seq)
        headers["Parley-Last"] = "1" if seq == per_sentence - 1 else "0"
        off = ((k + s.index) % reply_chunks) * chunk_bytes
        chunk = bytearray(reply_noise[off : off + chunk_bytes])
        now = time.monotonic()
        STAMP.pack_into(chunk, 0, now)
        await nc.publish(subjects.live(s.conv, "audio"), bytes(chunk), headers=headers)
        if window[0] <= now < window[1]:
            stats.reply_late_ms.append((now - due) * 1000)
            stats.reply_sent += 1

    mic_items = [(s.mic_phase, s) for s in sorted(live, key=lambda s: s.mic_phase)]
    reply_items = [(s.reply_phase, s) for s in sorted(live, key=lambda s: s.reply_phase)]
    await asyncio.gather(
        _pace(mic_items, frame_s, t0, end, send_mic),
        _pace(reply_items, chunk_s, t0, end, send_reply),
    )
    await asyncio.sleep(0.5)  # what is still in flight arrives
    cpu_s = time.process_time() - cpu0
    dropped = sum(s.ws.closed.done() for s in live)
    await asyncio.gather(*(s.ws.close() for s in live), return_exceptions=True)
    await nc.drain()
    conn.send(
        (
            "done",
            {
                "mic_ms": stats.mic_ms,
                "reply_ms": stats.reply_ms,
                "mic_late_ms": stats.mic_late_ms,
                "reply_late_ms": stats.reply_late_ms,
                "mic_sent": stats.mic_sent,
                "mic_seen": stats.mic_seen,
                "reply_sent": stats.reply_sent,
                "reply_seen": stats.reply_seen,
                "errors": stats.errors,
                "dropped": dropped,
                "cpu_s": cpu_s,
                "busy_s": end - t0,
            },
        )
    )


def generator_main(cfg: Config, indices: list[int], conn) -> None:
    uvloop.run(_generate(cfg, indices, conn))


# --- the stand-in STT worker ---------------------------------------------------------------


async def _stt_standin(nats_url: str, workers: int) -> None:
    """Takes every session (round robin over `workers` ids) and beats for each id, so the
    gateway keeps its sessions attached; it does nothing with their audio."""
    nc = await nats.connect(nats_url, name="bench-stt-standin")
    names = [f"bench-stt-{n}" for n in range(workers)]
    turn = 0

    async def on_open(msg) -> None:
        nonlocal turn
        schemas.decode(msg.data, schemas.SttOpen)
        turn += 1
        await msg.respond(schemas.encode(schemas.SttOpened(ok=True, worker_id=names[turn % workers])))

    await nc.subscribe(subjects.STT_OPEN, queue="stt", cb=on_open)
    while True:
        for name in names:
            await nc.publish(subjects.stt_alive(name), schemas.encode(schemas.SttAlive(worker_id=name, capacity=64)))
        await asyncio.sleep(STT_HEARTBEAT_S)


def stt_standin_main(nats_url: str, workers: int) -> None:
    uvloop.run(_stt_standin(nats_url, workers))


# --- the bench -------------------------------------------------------------------------------


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cores() -> dict[int, list[int]]:
    """Per core: user, nice, system, idle, iowait, irq, softirq, steal ticks since boot."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            name, *vals = line.split()
            out[int(name[3:])] = [int(x) for x in vals[:8]]
    return out


def _snapshot(pids: dict[str, int]) -> dict:
    return {"t": time.monotonic(), "cores": _cores(), "cpu": {k: _proc_cpu_s(p) for k, p in pids.items()}}


def _core_speed_ms(cpus: set[int]) -> float:
    """A fixed pure-Python workload on the gateway's core, best of 7: on a shared virtual
    machine (CPU steal) the same core is not always the same speed; this tells runs apart."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        best = float("inf")
        for _ in range(7):
            t = time.perf_counter()
            sum(range(200_000))
            best = min(best, time.perf_counter() - t)
        return best * 1000
    finally:
        os.sched_setaffinity(0, before)


def _gateway_events(base_url: str) -> dict[str, float]:
    """The gateway's own event counters (STT takeovers, mic frames dropped as too fast)."""
    out = {}
    for line in httpx.get(f"{base_url}/metrics", timeout=5).text.splitlines():
        if line.startswith('parley_events_total{service="gateway"'):
            out[line.split('event="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    return out


def _gateway_sessions(base_url: str) -> int:
    return httpx.get(f"{base_url}/readyz", timeout=5).json().get("sessions", -1)


def _summary(values) -> dict:
    if not len(values):
        return {"n": 0}
    vals = list(values)
    return {"n": len(vals), "p50": pct(vals, 0.5), "p95": pct(vals, 0.95), "p99": pct(vals, 0.99), "max": max(vals)}


def run_step(n: int, args, gw: devstack.ServiceProcess, pids: dict[str, int], ctx) -> dict:
    cfg = Config(
        host="127.0.0.1",
        port=gw.port,
        nats_url=args.nats_url,
        total=n,
        frame_ms=args.frame_ms,
        chunk_ms=args.chunk_ms,
        sentence_s=args.sentence_s,
        sentences=args.sentences,
        mic_sample=args.mic_sample,
        deflate=args.deflate,
        warmup_s=args.warmup,
        seconds=args.seconds,
        open_concurrency=args.open_concurrency,
        tag=f"{n}-{uuid.uuid4().hex[:6]}",
    )
    speed = _core_speed_ms(args.gateway_cpus)
    gens = []
    for g in range(min(args.generators, n)):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=generator_main, args=(cfg, list(range(g, n, args.generators)), child), daemon=True)
        p.start()
        gens.append((p, parent))
    try:
        ready = [conn.recv() for _, conn in gens]
        opened = sum(r[1] for r in ready)
        failures = [f for r in ready for f in r[2]]
        if opened < n:
            print(f"  {n - opened} sessions failed to open, e.g. {failures[:3]}")
        live = _gateway_sessions(gw.base_url)
        events0 = _gateway_events(gw.base_url)
        t0 = time.monotonic() + 0.3
        for _, conn in gens:
            conn.send(t0)
        watched = {**pids, **{f"gen{i}": p.pid for i, (p, _) in enumerate(gens)}}
        time.sleep(max(0.0, t0 + args.warmup - time.monotonic()))
        a = _snapshot(watched)
        time.sleep(max(0.0, t0 + args.warmup + args.seconds - time.monotonic()))
        b = _snapshot(watched)
        rss = _proc_rss_mib(pids["gateway"])
        load = os.getloadavg()[0]
        done = [conn.recv()[1] for _, conn in gens]
        events1 = _gateway_events(gw.base_url)
    finally:
        for p, _ in gens:
            p.join(30)
            if p.is_alive():
                p.terminate()
    wall = b["t"] - a["t"]
    cpu = {k: (b["cpu"][k] - a["cpu"][k]) / wall for k in a["cpu"]}
    busy, steal = {}, {}
    for c in a["cores"]:
        d = [y - x for x, y in zip(a["cores"][c], b["cores"][c])]
        total = sum(d) or 1
        busy[str(c)] = (total - d[3] - d[4] - d[7]) / total
        steal[str(c)] = d[7] / total
    merged = {key: [x for d in done for x in d[key]] for key in ("mic_ms", "reply_ms", "mic_late_ms", "reply_late_ms")}
    keys = ("mic_sent", "mic_seen", "reply_sent", "reply_seen", "dropped")
    counts = {key: sum(d[key] for d in done) for key in keys}
    errors: dict[str, int] = {}
    for d in done:
        for code, c in d["errors"].items():
            errors[code] = errors.get(code, 0) + c
    gen_cpu = sum(d["cpu_s"] for d in done) / wall
    deadline = time.monotonic() + 60
    while _gateway_sessions(gw.base_url) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    return {
        "sessions": n,
        "opened": opened,
        "gateway_sessions_seen": live,
        "open_s": max(r[4] for r in ready),
        "deflate_negotiated": sum(r[5] for r in ready),
        "mic_relay_ms": _summary(merged["mic_ms"]),
        "reply_relay_ms": _summary(merged["reply_ms"]),
        "mic_send_late_ms": _summary(merged["mic_late_ms"]),
        "reply_publish_late_ms": _summary(merged["reply_late_ms"]),
        **counts,
        "errors": errors,
        "gateway_events": {k: v - events0.get(k, 0) for k, v in events1.items() if v > events0.get(k, 0)},
        "gateway_cpu": cpu["gateway"],
        "gateway_rss_mib": rss,
        "nats_cpu": cpu["nats"],
        "generators_cpu": gen_cpu,
        "core_busy": busy,
        "core_steal": steal,
        "gateway_core_busy": float(np.mean([busy[str(c)] for c in args.gateway_cpus])),
        "gateway_core_steal": float(np.mean([steal[str(c)] for c in args.gateway_cpus])),
        "gateway_core_others": max(
            0.0, float(np.mean([busy[str(c)] for c in args.gateway_cpus])) - cpu["gateway"] / len(args.gateway_cpus)
        ),
        "other_cores_busy": float(np.mean([busy[str(c)] for c in args.other_cpus])),
        "other_cores_steal": float(np.mean([steal[str(c)] for c in args.other_cpus])),
        "load_avg_1m": load,
        "core_speed_ms": speed,
    }


async def _seed(url: str) -> None:
    """The demo avatar, the gateway's default (no voice: no reply here is synthesised)."""
    pool = await db.create_pool(url)
    try:
        await db.Database(pool).avatars.upsert(
            db.Avatar(ids.DEMO_AVATAR_ID, "Ada", None, "You are {name}.", "en", None, None)
        )
    finally:
        await pool.close()


def _cpus(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _within(r: dict, bound: float) -> bool:
    """Every session opened and stayed, and both directions' p99 is under the bound."""
    return (
        r["opened"] == r["sessions"]
        and r["dropped"] == 0
        and r["mic_relay_ms"].get("p99", 1e9) < bound
        and r["reply_relay_ms"].get("p99", 1e9) < bound
    )


def _row(r: dict, bound: float) -> str:
    nan = {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan")}
    m, p = {**nan, **r["mic_relay_ms"]}, {**nan, **r["reply_relay_ms"]}
    late = max(r["mic_send_late_ms"].get("p99", 0), r["reply_publish_late_ms"].get("p99", 0))
    return (
        f"{r['sessions']:5d} {r['opened']:5d} "
        f"{m['p50']:6.2f} {m['p95']:6.2f} {m['p99']:6.2f} {m['max']:7.1f}   "
        f"{p['p50']:6.2f} {p['p95']:6.2f} {p['p99']:6.2f} {p['max']:7.1f}   "
        f"{r['gateway_cpu'] * 100:4.0f} {r['gateway_core_others'] * 100:6.0f} {r['gateway_core_steal'] * 100:5.0f} "
        f"{r['gateway_rss_mib']:5.0f}   "
        f"{r['generators_cpu'] * 100:4.0f} {r['nats_cpu'] * 100:4.0f} {r['other_cores_busy'] * 100:4.0f} "
        f"{r['other_cores_steal'] * 100:5.0f}  {late:6.2f} {r['load_avg_1m']:5.1f} {r['core_speed_ms']:5.1f}  "
        f"{'yes' if _within(r, bound) else 'no'}"
    )


HEADER = (
    "             mic -> bus relay (ms)           bus -> client relay (ms)       gateway core (%, MiB)"
    "     other cores (%)"
    "\nsess  open    p50    p95    p99     max      p50    p95    p99     max    gw others steal   RSS"
    "    gen nats busy steal  late99 load1 speed  ok"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", default="25,50,100,200,300,500", help="comma-separated N, one step each")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per step")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    ap.add_argument("--frame-ms", type=int, default=20, help="mic frame length")
    ap.add_argument("--chunk-ms", type=int, default=40, help="reply audio chunk length")
    ap.add_argument("--sentence-s", type=float, default=2.0)
    ap.add_argument("--sentences", type=int, default=3, help="sentences per reply; a new reply follows at once")
    ap.add_argument("--generators", type=int, default=2, help="load-generator processes")
    ap.add_argument("--mic-sample", type=float, default=0.2, help="share of sessions whose mic frames are timed")
    ap.add_argument("--deflate", action=argparse.BooleanOptionalAction, default=True, help="offer permessage-deflate")
    ap.add_argument("--server-deflate", action="store_true", help="the gateway accepts permessage-deflate")
    ap.add_argument("--stt-workers", type=int, default=16, help="worker ids the stand-in STT answers as")
    ap.add_argument("--open-concurrency", type=int, default=8, help="session starts in flight per generator")
    ap.add_argument("--gateway-cpu", default="0")
    ap.add_argument("--other-cpus", default="1")
    ap.add_argument("--bound-ms", type=float, default=10.0)
    ap.add_argument("--keep-going", action="store_true", help="run every step even after one collapsed")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gateway.json"))
    args = ap.parse_args()
    steps = [int(x) for x in args.sessions.split(",")]

    gateway_cpus, other_cpus = args.gateway_cpus, args.other_cpus = _cpus(args.gateway_cpu), _cpus(args.other_cpus)
    os.sched_setaffinity(0, other_cpus)  # everything started from here inherits it
    work = Path(tempfile.mkdtemp(prefix="parley-bench-"))
    nats_server = devstack.NatsServer(work / "nats").start()
    args.nats_url = nats_server.url
    pg = None
    if os.environ.get("DATABASE_URL"):
        url = devstack.fresh_database(os.environ["DATABASE_URL"], "parley_bench")
    else:
        pg = devstack.PostgresCluster().start()
        url = pg.url
    ctx = mp.get_context("spawn")
    stt = gw = None
    results = []
    try:
        db.migrate(url)
        asyncio.run(_seed(url))
        stt = ctx.Process(target=stt_standin_main, args=(nats_server.url, args.stt_workers), daemon=True)
        stt.start()
        env = {
            "PARLEY_NATS_URL": nats_server.url,
            "PARLEY_DATABASE_URL": url,
            "PARLEY_AUTH_JWT_SECRET": SECRET,
            "PARLEY_MAX_SESSIONS_PER_USER": "100000",
            "PARLEY_MAX_UNSTARTED_PER_ADDRESS": "100000",  # every generator connects from loopback
            "PARLEY_LOG_LEVEL": "WARNING",
            "PARLEY_WS_DEFLATE": "true" if args.server_deflate else "false",
        }
        os.sched_setaffinity(0, gateway_cpus)
        try:
            gw = devstack.ServiceProcess("gateway", env, work / "gateway.log").start()
        finally:
            os.sched_setaffinity(0, other_cpus)
        gw.wait_ready()
        pinned = sorted(os.sched_getaffinity(gw.proc.pid))
        print(f"gateway pid {gw.proc.pid} on cores {pinned}; the rest on {sorted(other_cpus)}; log {gw.log_path}")
        pids = {"gateway": gw.proc.pid, "nats": nats_server.proc.pid, "stt": stt.pid}
        a = _snapshot(pids)
        time.sleep(3)
        b = _snapshot(pids)
        idle_cpu = (b["cpu"]["gateway"] - a["cpu"]["gateway"]) / (b["t"] - a["t"])
        print(
            f"gateway CPU with no sessions: {idle_cpu * 100:.1f} %; load average {os.getloadavg()[0]:.1f}; "
            f"speed: sum(range(200000)) takes {_core_speed_ms(gateway_cpus):.1f} ms on the gateway's core"
        )
        print(HEADER)
        for n in steps:
            r = run_step(n, args, gw, pids, ctx)
            results.append(r)
            print(_row(r, args.bound_ms), flush=True)
            lost = r["mic_sent"] - r["mic_seen"] + r["reply_sent"] - r["reply_seen"]
            if lost:
                print(
                    f"      frames lost: mic {r['mic_sent'] - r['mic_seen']}, reply {r['reply_sent'] - r['reply_seen']}"
                )
            if r["errors"] or r["dropped"] or r["gateway_events"]:
                print(
                    f"      errors sent: {r['errors']}; sessions closed by the gateway: {r['dropped']}; "
                    f"gateway events: {r['gateway_events']}"
                )
            worst = max(r["mic_relay_ms"].get("p99", 1e9), r["reply_relay_ms"].get("p99", 1e9))
            if not args.keep_going and (r["dropped"] or worst > 10 * args.bound_ms):
                print("      far past the bound: the larger steps are skipped (--keep-going runs them)")
                break
        peak_rss = _proc_rss_mib(gw.proc.pid, "VmHWM")
    finally:
        if gw:
            gw.stop()
        if stt:
            stt.terminate()
        if pg:
            pg.stop()
        nats_server.stop()

    best = max((r["sessions"] for r in results if _within(r, args.bound_ms)), default=0)
    settings = {k: v for k, v in vars(args).items() if k not in ("nats_url", "gateway_cpus", "other_cpus")}
    out = write_result(
        args.out,
        {
            "args": settings,
            "steps": results,
            "max_sessions_within_bound": best,
            "gateway_idle_cpu": idle_cpu,
            "gateway_peak_rss_mib": peak_rss,
        },
        gateway_cpus=sorted(gateway_cpus),
        other_cpus=sorted(other_cpus),
    )
    print(
        f"\nmost sessions with p99 < {args.bound_ms:g} ms both ways: {best or 'none'} "
        f"({args.frame_ms} ms mic frames, {args.chunk_ms} ms reply chunks, "
        f"deflate {'on' if args.deflate and args.server_deflate else 'off'})"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
