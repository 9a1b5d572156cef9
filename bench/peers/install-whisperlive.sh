#!/usr/bin/env bash
# WhisperLive (PyPI `whisper-live`), the peer of bench/peer_stt.py, in a virtualenv of its own.
#
#   bench/peers/install-whisperlive.sh [VENV]     (default: .cache/peers/whisperlive-venv)
#
# Never part of Parley's install or pyproject.toml. whisper-live 0.10.0 declares every backend's
# requirements at once (openvino, optimum, openai-whisper, librosa, numba, PyAudio,
# nvidia-cublas-cu12, nvidia-cudnn-cu12, ...): gigabytes, and PyAudio needs PortAudio headers.
# Its faster_whisper server path needs only these, so the package goes in with --no-deps and
# they are named here, pinned:
#   faster-whisper 1.2.0   WhisperLive's own pin (its transcriber subclasses faster-whisper's
#                          pieces); ctranslate2 4.8.5 is pinned to what Parley's worker runs
#   torch 2.13.0 (CPU)     backend/faster_whisper_backend.py calls torch.cuda.is_available()
#                          and server.py imports torch; pip finds the CPU wheel in the local
#                          wheel folder; on a GPU host the matching CUDA torch is used instead
#   websockets, fastapi, uvicorn, python-multipart   server.py imports them at module level
#   prometheus-client      whisper_live/metrics.py (optional there, cheap)
#   requests               faster_whisper 1.2.0 utils.py imports it; the huggingface_hub it
#                          gets today no longer pulls it in
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${1:-$ROOT/.cache/peers/whisperlive-venv}"
WHISPER_LIVE_VERSION=0.10.0
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3

if [ -f "$VENV/.installed-$WHISPER_LIVE_VERSION" ]; then
  echo "$VENV: whisper-live $WHISPER_LIVE_VERSION already installed"
  exit 0
fi
mkdir -p "$(dirname "$VENV")"
"$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet)
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" \
  "faster-whisper==1.2.0" "ctranslate2==4.8.5" \
  "websockets>=13" "fastapi" "uvicorn" "python-multipart" "prometheus-client" "requests" "numpy<2.5"
"${PIP[@]}" --no-deps "whisper-live==$WHISPER_LIVE_VERSION"
"$VENV/bin/python" -c "import whisper_live.server, whisper_live.backend.faster_whisper_backend, torch, ctranslate2, faster_whisper; print('whisper-live', '$WHISPER_LIVE_VERSION', 'torch', torch.__version__, 'ctranslate2', ctranslate2.__version__, 'faster-whisper', faster_whisper.__version__)"
touch "$VENV/.installed-$WHISPER_LIVE_VERSION"
