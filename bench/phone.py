"""Phone quality: what the telephone line costs recognition, and voice to voice through the phone wire.

    python -m bench.phone wer [--models tiny.en,base]
    python -m bench.phone v2v [--turns 8] [--whisper base] [--llm standin|local]

`wer`: the real small Whisper models read the same speech as it reached them at 16 kHz, and as
a phone call brings it: band-limited to the telephone channel (300-3400 Hz, ITU-T G.712), at
8 kHz, through G.711 µ-law, then up to 16 kHz the way the phone wire does it (soxr's quick cubic)
and, to check that choice, with soxr's HQ filter. Human speech (pocketsphinx's LibriVox
readings, tools/speech.py) and espeak-ng sentences; corpus WER with Whisper's normaliser.

`v2v`: the five services as processes (bench/turn_latency.py's stack); the same spoken turn
through the native WebSocket and through a Twilio Media Stream (tests/fakes/twilio.py: Twilio's
side of a call, µ-law in real time, marks echoed as played), alternating, each turn waiting for
the previous reply to end. Seconds from the end of speech to the reply's first audio frame.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import soxr

from bench.common import ROOT, pct, write_result
from services.common import g711

PHONE_BAND = (300.0, 3400.0)
SENTENCES = [
    "The river runs past the old mill at the corner of the village.",
    "Please book a table for four people at seven tonight.",
    "My account number is four five nine two and I cannot log in.",
    "The train to the city leaves from platform two every hour.",
    "Could you tell me when the pharmacy on Main Street closes?",
    "We painted the fence white before the storm came.",
]


def telephone(pcm16k: np.ndarray, upsample: str = "QQ") -> np.ndarray:
    """The speech as a phone call delivers it to the STT worker: the channel's band, 8 kHz,
    µ-law both ways, then 16 kHz again (`upsample`: soxr's quality)."""
    narrow = soxr.resample(pcm16k.astype(np.float32), 16000, 8000, quality="HQ")
    spectrum = np.fft.rfft(narrow)
    freqs = np.fft.rfftfreq(len(narrow), 1 / 8000)
    spectrum[(freqs < PHONE_BAND[0]) | (freqs > PHONE_BAND[1])] = 0
    line = np.clip(np.fft.irfft(spectrum, len(narrow)), -32768, 32767).astype("<i2")
    heard = np.frombuffer(g711.decode(g711.encode(line.tobytes(), "ulaw"), "ulaw"), "<i2")
    return soxr.resample(heard, 8000, 16000, quality=upsample).astype("<i2")


def _float(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) / 32768.0


def wer_rows(models: list[str]) -> list[dict]:
    from ops.localmodels import whisper_path
    from services.stt.whisper import WhisperEngine
    from tools.speech import CACHE, espeak, human_recordings
    from tools.wer import corpus_wer

    cache = Path(__file__).resolve().parent.parent / ".cache" / "models"
    work = Path(tempfile.mkdtemp(prefix="parley-phone-"))
    sets = {
        "human (LibriVox)": [(r.text, r.pcm()) for r in human_recordings(CACHE)],
        "espeak-ng": [(t, espeak(t, work / f"{n}.wav")) for n, t in enumerate(SENTENCES)],
    }
    paths = {
        "16 kHz": lambda pcm: pcm,
        "phone: µ-law 8 kHz, cubic up (the wire)": telephone,
        "phone: µ-law 8 kHz, HQ up": lambda pcm: telephone(pcm, "HQ"),
    }
    rows = []
    for model in models:
        engine = WhisperEngine(str(whisper_path(model, cache)), language="en", cpu_threads=2)
        for set_name, clips in sets.items():
            for path_name, path in paths.items():
                heard = [(text, engine.transcribe(_float(path(pcm))).text) for text, pcm in clips]
                words = sum(len(text.split()) for text, _ in clips)
                rows.append(
                    {"model": model, "speech": set_name, "path": path_name, "words": words, "wer": corpus_wer(heard)}
                )
                print(f"{model:8} {set_name:18} {path_name:42} WER {rows[-1]['wer']:.3f} ({words} words)", flush=True)
    return rows


async def v2v_turns(procs: dict, speech: Path, speech_s: float, turns: int) -> dict:
    from bench.turn_latency import _turn
    from tests.client import Client
    from tests.fakes.twilio import TwilioCall

    native = Client(f"ws://127.0.0.1:{procs['gateway'].port}/v1/ws")
    await native.connect(user="bench")
    call = TwilioCall(procs["gateway"].base_url, PUBLIC_URL, AUTH_TOKEN)
    status, stream = await call.dial("/v1/phone/twilio/voice")
    assert status == 200, stream
    await call.connect(stream)
    await call.stream_microphone()
    with wave.open(str(speech)) as w:
        pcm16k = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    mulaw = g711.encode(soxr.resample(pcm16k, 16000, 8000).astype("<i2").tobytes(), "ulaw")
    native_s: list[float] = []
    phone_s: list[float] = []
    for n in range(turns):
        native_s.append((await _turn(native, speech, speech_s, ""))["first_audio_s"])
        phone_s.append(await _phone_turn(call, mulaw, speech_s))
        print(f"turn {n + 1}: native {native_s[-1]:.3f} s, phone {phone_s[-1]:.3f} s", flush=True)
    await native.close()
    await call.stop()
    return {"native WebSocket": native_s, "phone (Twilio Media Streams)": phone_s}


async def _phone_turn(call, mulaw: bytes, speech_s: float) -> float:
    """From the end of speech to the first reply audio on the line; then the reply plays out."""
    before = len(call.phone.received_at)
    started = time.monotonic()
    call.say(mulaw)
    end_of_speech = started + speech_s
    await call.wait_for(lambda phone: len(phone.received_at) > before, 120)
    first = call.phone.received_at[before] - end_of_speech
    quiet_since = time.monotonic()
    count = len(call.phone.received_at)
    while time.monotonic() - quiet_since < 1.5 or len(call.phone.played) < len(call.phone.received):
        await asyncio.sleep(0.1)
        if len(call.phone.received_at) != count:
            count, quiet_since = len(call.phone.received_at), time.monotonic()
    return first


PUBLIC_URL = "https://parley-phone.bench"
AUTH_TOKEN = "bench-twilio-auth-token"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", choices=("wer", "v2v"))
    ap.add_argument("--models", default="tiny.en,base")
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--whisper", choices=("base", "tiny.en"), default="base")
    ap.add_argument("--llm", choices=("local", "standin"), default="standin")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = args.out or str(ROOT / "bench" / "results" / f"phone_{args.part}.json")
    if args.part == "wer":
        write_result(out, {"rows": wer_rows(args.models.split(","))})
        return
    from bench.turn_latency import open_stack
    from tests.conftest import SPOKEN, make_speech

    work = Path(tempfile.mkdtemp(prefix="parley-phone-"))
    with contextlib.ExitStack() as stack:
        extra = {"PARLEY_PUBLIC_URL": PUBLIC_URL, "PARLEY_TWILIO_AUTH_TOKEN": AUTH_TOKEN}
        _, procs = open_stack(stack, work, "local", args.whisper, args.llm, **extra)
        # 3 s of silence after the speech: the native client sends what its file holds and stops,
        # the phone line goes on with silence; both carry more than the smart policy's 1.6 s wait.
        speech = make_speech(SPOKEN, work / "speech.wav", trailing_silence_s=3.0)
        with wave.open(str(speech.with_suffix(".raw.wav"))) as w:
            speech_s = 0.3 + w.getnframes() / w.getframerate()
        rows = asyncio.run(v2v_turns(procs, speech, speech_s, args.turns))
    write_result(out, {"first_audio_s": rows, "whisper": args.whisper, "llm": args.llm})
    print(f"{'path':32} {'p50':>7} {'p95':>7} {'max':>7}")
    for name, values in rows.items():
        print(f"{name:32} {statistics.median(values):7.3f} {pct(values, 0.95):7.3f} {max(values):7.3f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
