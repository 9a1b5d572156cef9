# STT worker (faster-whisper on CTranslate2) for NVIDIA GPUs; on a machine without one the
# same image runs on the CPU (PARLEY_STT_DEVICE=auto). Build from the repository root:
#   docker build -f deploy/docker/stt.Dockerfile -t parley-stt .
# CTranslate2's wheels use CUDA 12 with cuDNN 9, which this base image provides.
ARG CUDA_BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04
FROM ${CUDA_BASE}
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv libsndfile1 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY services ./services
COPY ops ./ops
COPY tools ./tools
RUN pip install --no-cache-dir ".[stt]"
# Smart Turn v3.2 (the end-of-turn sound model), out of the pipecat-ai wheel into the image.
RUN python -c "from pathlib import Path; from ops.localmodels import smart_turn_path; print(smart_turn_path(Path('/opt/models')))"
RUN useradd --create-home --uid 10001 parley
USER parley
ENV PARLEY_HTTP_PORT=8002 PARLEY_STT_DEVICE=auto \
    PARLEY_STT_TURN_MODEL=/opt/models/smart-turn/smart-turn-v3.2-cpu.onnx
EXPOSE 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=300s \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8002/readyz').status != 200)"
CMD ["python", "-m", "services.stt"]
