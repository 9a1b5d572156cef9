# TTS worker (XTTS-v2) for NVIDIA GPUs. Build from the repository root:
#   docker build -f deploy/docker/tts.Dockerfile -t parley-tts .
# Run with a GPU (`--gpus all`, or the compose/k8s GPU request) and COQUI_TOS_AGREED=1 once
# the operator has accepted the Coqui Public Model License of the published XTTS-v2 weights;
# without it a published model is refused with a clear error instead of a licence prompt.
ARG CUDA_BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04
FROM ${CUDA_BASE}
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv libsndfile1 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
WORKDIR /app
# The heavy layer first, so code changes do not reinstall torch.
COPY requirements/tts-gpu.txt requirements/tts-cpu.txt requirements/
RUN pip install --no-cache-dir -r requirements/tts-gpu.txt
COPY pyproject.toml README.md ./
COPY services ./services
COPY ops ./ops
COPY tools ./tools
RUN pip install --no-cache-dir ".[tts]"
RUN useradd --create-home --uid 10001 parley
USER parley
ENV PARLEY_HTTP_PORT=8004 PARLEY_TTS_DEVICE=auto PARLEY_TTS_LATENT_CACHE_DIR=/home/parley/.cache/parley/latents
EXPOSE 8004
HEALTHCHECK --interval=10s --timeout=3s --start-period=300s \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8004/readyz').status != 200)"
CMD ["python", "-m", "services.tts"]
