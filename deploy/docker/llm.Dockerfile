# The llm service: a slim image without torch or CUDA. Build from the repository root:
#   docker build -f deploy/docker/llm.Dockerfile -t parley-llm .
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 parley
WORKDIR /app
COPY pyproject.toml README.md ./
COPY services ./services
COPY ops ./ops
COPY tools ./tools
RUN pip install --no-cache-dir ".[llm]"
USER parley
ENV PARLEY_HTTP_PORT=8003
EXPOSE 8003
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8003/readyz').status != 200)"
CMD ["python", "-m", "services.llm"]
