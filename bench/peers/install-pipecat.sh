#!/usr/bin/env bash
# Pipecat's turn stack (PyPI `pipecat-ai`), the peer of bench/peer_turns.py, in a virtualenv of its own.
#
#   bench/peers/install-pipecat.sh [VENV]     (default: .cache/peers/pipecat-venv)
#
# Never part of Parley's install or pyproject.toml. The peer runs SileroVADAnalyzer and
# LocalSmartTurnAnalyzerV3, both on onnxruntime, which are in pipecat-ai's core requirements
# (the `silero` extra adds nothing in 1.14.0; Smart Turn v3 computes its Whisper features with
# numpy, no transformers or torch). onnxruntime and numpy are pinned to what Parley's STT worker
# runs, so the two sides run the same ONNX file on the same runtime.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${1:-$ROOT/.cache/peers/pipecat-venv}"
PIPECAT_VERSION=1.14.0
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3

if [ -f "$VENV/.installed-$PIPECAT_VERSION" ]; then
  echo "$VENV: pipecat-ai $PIPECAT_VERSION already installed"
  exit 0
fi
mkdir -p "$(dirname "$VENV")"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet "pipecat-ai==$PIPECAT_VERSION" "onnxruntime==1.31.1" "numpy==2.4.6"
"$VENV/bin/python" -c "import pipecat, onnxruntime; from pipecat.audio.vad.silero import SileroVADAnalyzer; from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3; from pipecat.processors.aggregators.llm_response_universal import LLMUserAggregator; print('pipecat-ai', '$PIPECAT_VERSION', 'onnxruntime', onnxruntime.__version__)"
touch "$VENV/.installed-$PIPECAT_VERSION"
