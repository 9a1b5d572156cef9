"""One Pipecat session's turn taking, fed as its transport feeds it (run by bench/peer_turns.py).

    .cache/peers/pipecat-venv/bin/python bench/peers/pipecat_turns.py AUDIO.npy --smart-turn ONNX

Runs in Pipecat's own virtualenv (bench/peers/install-pipecat.sh), never Parley's: one process
per session, as Pipecat's runner starts a bot per call. The pipeline is Pipecat 1.14's user
side as its quickstart builds it: an `LLMUserAggregator` with `SileroVADAnalyzer()` at its
defaults and the default stop strategy, `TurnAnalyzerUserTurnStopStrategy` over
`LocalSmartTurnAnalyzerV3`, here given the same ONNX file Parley's worker runs. There is no
STT or LLM in the pipeline, so the strategy is told not to wait for a transcript (what Pipecat
does itself with a speech-to-speech LLM): the moment it ends the turn is the turn stack's alone.

Prints `ready` once the models are loaded, waits for `go` on stdin, then queues the audio as
InputAudioRawFrames of 20 ms at real-time pace (a transport's input task pushes each frame as
it arrives) and prints one JSON line: where in the stream (in samples, from the sample clock of
the pacing) each turn started and stopped, the process's CPU seconds while streaming and its peak memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time

import numpy as np
from loguru import logger
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames.frames import EndFrame, InputAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMUserAggregator, LLMUserAggregatorParams
from pipecat.turns.user_stop.turn_analyzer_user_turn_stop_strategy import TurnAnalyzerUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.workers.runner import WorkerRunner

SR = 16000
FRAME = 320


async def run(audio: np.ndarray, smart_turn: str) -> dict:
    stop = TurnAnalyzerUserTurnStopStrategy(
        turn_analyzer=LocalSmartTurnAnalyzerV3(smart_turn_model_path=smart_turn), wait_for_transcript=False
    )
    user = LLMUserAggregator(
        LLMContext(),
        params=LLMUserAggregatorParams(
            vad_analyzer=SileroVADAnalyzer(),
            user_turn_strategies=UserTurnStrategies(stop=[stop]),
            empty_user_turn=None,
        ),
    )
    worker = PipelineWorker(
        Pipeline([user]), params=PipelineParams(audio_in_sample_rate=SR), idle_timeout_secs=None, enable_rtvi=False
    )
    clock = {"t0": 0.0}
    starts: list[int] = []
    stops: list[int] = []

    def at() -> int:
        return int((time.monotonic() - clock["t0"]) * SR)

    @user.event_handler("on_user_turn_started")
    async def started(*_):
        starts.append(at())

    @user.event_handler("on_user_turn_stopped")
    async def stopped(*_):
        stops.append(at())

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    await asyncio.sleep(0.5)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    cpu0 = time.process_time()
    clock["t0"] = t0 = time.monotonic()
    late = 0.0
    for k, at_sample in enumerate(range(0, len(audio) - FRAME + 1, FRAME)):
        due = t0 + (k + 1) * FRAME / SR
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        late = max(late, time.monotonic() - due)
        frame = audio[at_sample : at_sample + FRAME].tobytes()
        await worker.queue_frame(InputAudioRawFrame(audio=frame, sample_rate=SR, num_channels=1))
    cpu = time.process_time() - cpu0
    await worker.queue_frame(EndFrame())
    await running
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"starts": starts, "stops": stops, "cpu_s": cpu, "rss_mib": rss_mib, "late_ms": late * 1000}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("audio")
    ap.add_argument("--smart-turn", required=True)
    args = ap.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    print(json.dumps(asyncio.run(run(np.load(args.audio), args.smart_turn))), flush=True)


if __name__ == "__main__":
    main()
