"""Start WhisperLive's own server (`whisper_live.server.TranscriptionServer`) for bench/peer_stt.py.

Runs in WhisperLive's virtualenv (bench/peers/install-whisperlive.sh), never in Parley's:

    .cache/peers/whisperlive-venv/bin/python bench/peers/whisperlive_server.py \
        --port 9090 --model .cache/models/whisper-tiny --tokens 12 --cpu-threads 2

This is what WhisperLive's run_server.py does for `--backend faster_whisper
--faster_whisper_custom_model_path DIR` (one model shared by every connection), with two
changes so that both systems decode alike, stated here and in bench/peer_stt.py:

- Decoding is pinned as Parley's worker pins it: greedy (beam 1), one temperature (no
  fallback re-decodes), at most ``--tokens`` generated tokens, no timestamps. WhisperLive calls its
  transcriber with faster-whisper's defaults (beam 5, temperatures 0.0-1.0 with fallback, no
  token limit); on a random-weight model that never emits end-of-text those take tens of
  seconds per call, and they would measure the model, not the server. The random model's
  timestamp tokens are noise: with them WhisperLive would commit a "segment" about every
  second, mid-word, where a real model cuts at pauses. Everything else
  (its VAD filter, segment logic, repetition threshold) is WhisperLive's own.
- CTranslate2 gets ``--cpu-threads`` intra-op threads (OMP_NUM_THREADS too), the number Parley's
  worker is given (PARLEY_STT_CPU_THREADS); WhisperLive's run_server.py sets OMP_NUM_THREADS=1
  unless told otherwise.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", required=True, help="CTranslate2 Whisper folder")
    ap.add_argument("--tokens", type=int, default=12, help="most tokens generated per decode (0: no limit)")
    ap.add_argument("--timestamps", action="store_true", help="let Whisper place segments (a real model)")
    ap.add_argument("--cpu-threads", type=int, default=0, help="CTranslate2 intra-op threads (0: its default)")
    ap.add_argument("--max-clients", type=int, default=64)
    ap.add_argument("--log-level", default="WARNING")
    args = ap.parse_args()

    if args.cpu_threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(args.cpu_threads)

    from whisper_live.server import TranscriptionServer
    from whisper_live.transcriber import transcriber_faster_whisper as tfw

    model_cls = tfw.WhisperModel
    init, transcribe = model_cls.__init__, model_cls.transcribe

    @functools.wraps(init)
    def patched_init(self, *a, **kw):
        if args.cpu_threads > 0:
            kw.setdefault("cpu_threads", args.cpu_threads)
        init(self, *a, **kw)

    @functools.wraps(transcribe)
    def patched_transcribe(self, audio, *a, **kw):
        kw.setdefault("beam_size", 1)
        kw.setdefault("best_of", 1)
        kw.setdefault("temperature", 0.0)
        if args.tokens > 0:
            kw.setdefault("max_new_tokens", args.tokens)
        kw.setdefault("without_timestamps", not args.timestamps)
        return transcribe(self, audio, *a, **kw)

    model_cls.__init__ = patched_init
    model_cls.transcribe = patched_transcribe

    logging.getLogger().setLevel(args.log_level)
    server = TranscriptionServer()
    server.run(
        args.host,
        port=args.port,
        backend="faster_whisper",
        faster_whisper_custom_model_path=args.model,
        single_model=True,
        max_clients=args.max_clients,
        max_connection_time=3600,
    )


if __name__ == "__main__":
    main()
