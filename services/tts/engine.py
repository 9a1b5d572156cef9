"""Text-to-speech engine: XTTS-v2 (coqui-tts) voice cloning with streamed output.

Everything here is synchronous and CPU/GPU-bound; the async service runs it through
``asyncio.to_thread``. A ``Voice`` is XTTS's conditioning for one reference recording (GPT
conditioning latents and a speaker embedding); computing it costs far more than a chunk of
speech, so it is done once per distinct recording and kept in memory and, optionally, on
disk for the next worker. ``stream`` yields 24 kHz int16 PCM chunks as XTTS decodes them.

Published models (``tts_models/...`` names) and local checkpoint folders load through the
same ``Xtts.load_checkpoint`` call; tests use random-weight folders built by
``tools.testmodels.xtts``. On CPU-only machines install coqui-tts with
``scripts/install-tts-cpu.sh``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import queue
import re
import tempfile
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soxr
import torch

from services.common.audio import AudioError, read_audio

from .normalise import normalise

log = logging.getLogger(__name__)

DEFAULT_MODEL = "tts_models/multilingual/multi-dataset/xtts_v2"

GPT_RATE = 22050
"""XTTS computes GPT conditioning latents from 22.05 kHz audio."""
SPEAKER_RATE = 16000
"""...and its speaker embedding from 16 kHz audio."""
MIN_REFERENCE_S = 0.5
"""XTTS drops conditioning chunks under 0.33 s; below this there is no voice to clone."""

_LATENT_FORMAT = 1


class SynthesisError(ValueError):
    """Text the engine cannot speak (nothing speakable, unsupported language, too long).

    The service reports these to the user as a failed sentence; retrying cannot help.
    """


@dataclass(frozen=True, eq=False)
class Voice:
    """A cloned voice: XTTS's conditioning computed from one reference recording."""

    key: str
    """sha256 of the reference audio bytes; the cache key."""
    gpt_cond_latent: torch.Tensor
    speaker_embedding: torch.Tensor


class XttsEngine:
    """One XTTS model, a cache of cloned voices, and streamed synthesis in several lanes.

    XTTS keeps the current prompt on its GPT wrapper between generation steps, so two
    streams through one wrapper would corrupt each other. Each of the ``lanes`` is a view of
    the same model with its own wrapper (the weights are shared, not copied; on a GPU each
    lane also has its own CUDA stream), so up to ``lanes`` sentences are synthesised at once.
    A stream holds a lane from its first ``next`` until it is exhausted or closed; callers
    that stop early must close it (or drop it), which a ``for`` loop left with
    ``break``/``return`` does. Computing voices takes no lane and may run beside streams.
    """

    sample_rate = 24000
    voice_cache_size = 64
    """Voices kept in memory (LRU); each is a few KB."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        device: str = "cpu",
        temperature: float = 0.75,
        speed: float = 1.0,
        stream_chunk_size: int = 20,
        latent_cache_dir: str | None = None,
        lanes: int = 1,
    ):
        if lanes < 1:
            raise ValueError("an engine needs at least one lane")
        self.model_name = model
        self.device = torch.device(device)
        self.temperature = temperature
        self.speed = speed
        self.stream_chunk_size = stream_chunk_size
        self.latent_cache_dir = Path(latent_cache_dir) if latent_cache_dir else None
        self.latents_computed = 0
        """How many times voice conditioning was computed rather than found in a cache."""
        self._model: Any = None
        self._fingerprint = ""
        self._voices: OrderedDict[str, Voice] = OrderedDict()
        self._voices_lock = threading.Lock()
        self.lanes = lanes
        self._free: queue.SimpleQueue[_Lane] = queue.SimpleQueue()
        self._load_lock = threading.Lock()
        self._segmenters: dict[str, Any] = {}

    # -- loading -----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Load the model (downloading a published one if needed); idempotent.

        Separate from ``__init__`` so the service can start, report that it is loading,
        and report ready once this returns.
        """
        with self._load_lock:
            if self._model is not None:
                return
            start = time.perf_counter()
            checkpoint_dir = resolve_model_dir(self.model_name)
            from TTS.tts.configs.xtts_config import XttsConfig
            from TTS.tts.models.xtts import Xtts

            config = XttsConfig()
            config.load_json(str(checkpoint_dir / "config.json"))
            model = Xtts(config)
            model.load_checkpoint(config, checkpoint_dir=str(checkpoint_dir), eval=True)
            model.to(self.device)
            self._fingerprint = _model_fingerprint(checkpoint_dir)
            for i in range(self.lanes):
                self._free.put(_Lane(model if i == 0 else _own_prompt_state(model), self.device))
            self._model = model
            log.info("XTTS loaded from %s on %s in %.1f s", checkpoint_dir, self.device, time.perf_counter() - start)

    def _require_model(self) -> Any:
        if self._model is None:
            raise RuntimeError("XttsEngine.load() has not been called")
        return self._model

    # -- voices ------------------------------------------------------------------------

    def voice(self, reference_audio: bytes) -> Voice:
        """The cloned voice for a reference recording (any format soundfile reads).

        Computed once per distinct recording: looked up by content hash in memory, then in
        ``latent_cache_dir``, and only then computed (and written there). Raises
        ``AudioError`` for audio that cannot be decoded or is too short to clone.
        """
        model = self._require_model()
        key = hashlib.sha256(reference_audio).hexdigest()
        with self._voices_lock:
            voice = self._voices.get(key)
            if voice is not None:
                self._voices.move_to_end(key)
                return voice
        voice = self._load_voice(key)
        if voice is None:
            voice = self._compute_voice(model, key, reference_audio)
            self._save_voice(voice)
        with self._voices_lock:
            self._voices[key] = voice
            self._voices.move_to_end(key)
            while len(self._voices) > self.voice_cache_size:
                self._voices.popitem(last=False)
        return voice

    def _compute_voice(self, model: Any, key: str, reference_audio: bytes) -> Voice:
        """What ``Xtts.get_conditioning_latents`` does, from bytes instead of a file path
        (``torchaudio.load`` is not usable everywhere) and resampling with soxr."""
        config = model.config
        audio, rate = read_audio(reference_audio)
        audio = audio[: int(rate * config.max_ref_len)]
        if len(audio) < rate * MIN_REFERENCE_S:
            raise AudioError(f"reference audio is too short to clone a voice (under {MIN_REFERENCE_S} s)")
        if config.sound_norm_refs:
            audio = audio / max(float(np.abs(audio).max()), 1e-6) * 0.75
        audio = np.clip(audio, -1.0, 1.0)
        gpt_audio = _tensor(soxr.resample(audio, rate, GPT_RATE), self.device)
        speaker_audio = _tensor(soxr.resample(audio, rate, SPEAKER_RATE), self.device)
        speaker_embedding = model.get_speaker_embedding(speaker_audio, SPEAKER_RATE)
        gpt_cond_latent = model.get_gpt_cond_latents(
            gpt_audio, GPT_RATE, length=config.gpt_cond_len, chunk_length=config.gpt_cond_chunk_len
        )
        with self._voices_lock:
            self.latents_computed += 1
        return Voice(key, gpt_cond_latent.detach(), speaker_embedding.detach())

    def _voice_path(self, key: str) -> Path | None:
        return self.latent_cache_dir / f"{key}.pt" if self.latent_cache_dir else None

    def _load_voice(self, key: str) -> Voice | None:
        path = self._voice_path(key)
        if path is None or not path.is_file():
            return None
        try:
            saved = torch.load(path, map_location=self.device, weights_only=True)
            if saved.get("format") != _LATENT_FORMAT or saved.get("model") != self._fingerprint:
                return None  # another model's conditioning: recompute and overwrite
            return Voice(key, saved["gpt_cond_latent"], saved["speaker_embedding"])
        except Exception:
            log.warning("unreadable voice cache file %s; recomputing", path, exc_info=True)
            return None

    def _save_voice(self, voice: Voice) -> None:
        """Write atomically, so a concurrent reader never sees half a file."""
        path = self._voice_path(voice.key)
        if path is None:
            return
        payload = {
            "format": _LATENT_FORMAT,
            "model": self._fingerprint,
            "gpt_cond_latent": voice.gpt_cond_latent.cpu().contiguous(),
            "speaker_embedding": voice.speaker_embedding.cpu().contiguous(),
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{voice.key[:16]}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    torch.save(payload, f)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError:
            log.warning("could not write voice cache file %s", path, exc_info=True)

    # -- synthesis ---------------------------------------------------------------------

    def stream(self, text: str, language: str, voice: Voice) -> Iterator[np.ndarray]:
        """Speak ``text`` in ``voice``: int16 mono PCM chunks at 24 kHz, as XTTS yields them.

        The text is first made speakable in the language (``normalise``: times, dates,
        money, units, abbreviations, symbols, addresses; XTTS's own cleaner then expands
        the plain numbers), and checked before anything is generated (``SynthesisError``
        is raised here, not on the first ``next``). Text longer than XTTS's per-language limit is
        spoken in several parts, split at sentence and then clause boundaries.
        """
        model = self._require_model()
        code = self._language(model, language)
        base = code.split("-")[0]
        text = normalise(" ".join(unicodedata.normalize("NFC", text).split()), code)
        if not any(ch.isalnum() for ch in text):
            raise SynthesisError("nothing to speak: the text has no letters or digits")
        limit = model.tokenizer.char_limits.get(base, 250)
        parts = split_text(text, limit, self._segmenter(base))
        max_tokens = model.args.gpt_max_text_tokens
        for part in parts:
            try:
                n_tokens = len(model.tokenizer.encode(part.lower(), lang=base))
            except (ImportError, NotImplementedError) as exc:
                raise SynthesisError(f"cannot prepare {language!r} text: {exc}") from exc
            if n_tokens >= max_tokens:
                raise SynthesisError(f"a sentence is too long to speak ({n_tokens} tokens, max {max_tokens - 1})")
        return self._generate(model, parts, code, voice)

    def _generate(self, model: Any, parts: list[str], language: str, voice: Voice) -> Iterator[np.ndarray]:
        config = model.config
        lane = self._free.get()
        try:
            with lane.context():
                for part in parts:
                    for chunk in lane.model.inference_stream(
                        part,
                        language,
                        voice.gpt_cond_latent,
                        voice.speaker_embedding,
                        stream_chunk_size=self.stream_chunk_size,
                        temperature=self.temperature,
                        speed=self.speed,
                        length_penalty=config.length_penalty,
                        repetition_penalty=config.repetition_penalty,
                        top_k=config.top_k,
                        top_p=config.top_p,
                        enable_text_splitting=False,
                    ):
                        pcm = _to_pcm16(chunk)
                        if pcm.size:
                            yield pcm
        finally:
            self._free.put(lane)

    @staticmethod
    def _language(model: Any, language: str) -> str:
        """XTTS's code for a language tag: "en-US" -> "en", "zh" -> "zh-cn"."""
        tag = language.strip().lower().replace("_", "-")
        base = tag.split("-")[0]
        code = "zh-cn" if base == "zh" else base
        if code not in model.config.languages:
            raise SynthesisError(
                f"language {language!r} is not supported; XTTS speaks {', '.join(model.config.languages)}"
            )
        return code

    def _segmenter(self, language: str) -> Any:
        """pysbd's sentence splitter for the language (English rules where it has none)."""
        import pysbd
        from pysbd.languages import LANGUAGE_CODES

        lang = language if language in LANGUAGE_CODES else "en"
        if lang not in self._segmenters:
            self._segmenters[lang] = pysbd.Segmenter(language=lang, clean=False)
        return self._segmenters[lang]


_CLAUSE = re.compile(r".+?(?:[,;:\u2013\u2014]\s+|[\u3001\uff0c\uff1b\uff1a]\s*|$)", re.S)
"""A clause with its closing punctuation and following space (CJK commas need no space)."""
_WORD = re.compile(r"\S+\s*")


def split_text(text: str, limit: int, segmenter: Any) -> list[str]:
    """Split text into parts of at most ``limit`` characters, preferring to cut between
    sentences, then between clauses, then between words; parts are packed as full as the
    limit allows so that prosody carries across short sentences."""
    if len(text) <= limit:
        return [text]
    parts: list[str] = []
    current = ""
    for piece in _pieces(text, limit, segmenter):
        if current and len(current) + len(piece.rstrip()) > limit:
            parts.append(current.strip())
            current = ""
        current += piece
    if current.strip():
        parts.append(current.strip())
    return parts


def _pieces(text: str, limit: int, segmenter: Any) -> Iterator[str]:
    """Sentences, or clauses, words or hard cuts of those too long; whitespace kept."""
    for sentence in segmenter.segment(text):
        if len(sentence.rstrip()) <= limit:
            yield sentence
            continue
        for clause in _CLAUSE.findall(sentence):
            if len(clause.rstrip()) <= limit:
                yield clause
                continue
            for word in _WORD.findall(clause):
                for i in range(0, len(word), limit):
                    yield word[i : i + limit]


class _Lane:
    """A model view that one stream at a time synthesises through, with its CUDA stream."""

    def __init__(self, model: Any, device: torch.device):
        self.model = model
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def context(self) -> contextlib.AbstractContextManager:
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()


def _own_prompt_state(model: Any) -> Any:
    """A shallow view of an XTTS model whose GPT inference wrapper is its own object.

    The wrapper's only per-stream state is the prompt embedding it keeps between steps
    (``cached_prefix_emb``); its transformer, heads and embeddings stay the original
    modules, so a lane costs no weight memory. ``nn.Module`` keeps submodules in its
    ``_modules`` dict, which a shallow copy would share, so each level gets its own dict.
    """

    def view(module: Any, **replace: Any) -> Any:
        clone = copy.copy(module)
        clone._modules = {**module._modules, **replace}
        return clone

    gpt = view(model.gpt, gpt_inference=view(model.gpt.gpt_inference))
    return view(model, gpt=gpt)


def _tensor(audio: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).unsqueeze(0).to(device)


def _to_pcm16(chunk: torch.Tensor) -> np.ndarray:
    audio = chunk.detach().float().cpu().numpy().reshape(-1)
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)


def resolve_model_dir(model: str) -> Path:
    """A local checkpoint folder as given, or a published coqui model name downloaded (or
    found in the cache) through coqui's ModelManager, as ``tts --model_name`` does.

    XTTS-v2 is under the Coqui Public Model License; coqui asks for agreement on stdin,
    which a worker cannot answer. The operator answers it with COQUI_TOS_AGREED=1; without
    it a published model is refused with a clear error instead of hanging on the prompt.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: not an XTTS checkpoint folder")
        return path
    if model.count("/") != 3 or path.exists():
        raise FileNotFoundError(f"{model!r} is neither a checkpoint folder nor a coqui model name")
    if os.environ.get("COQUI_TOS_AGREED") != "1":
        raise PermissionError(f"{model!r} is under the Coqui Public Model License: set COQUI_TOS_AGREED=1 to accept it")
    from TTS.utils.manage import ModelManager

    _, config_path, _ = ModelManager().download_model(model)
    if config_path is None:
        raise FileNotFoundError(f"coqui model {model!r} came without a config.json")
    return Path(config_path).parent


def _model_fingerprint(checkpoint_dir: Path) -> str:
    """Identifies the loaded weights cheaply, so cached voices of another model (or of a
    rebuilt one) are not reused: config and vocab contents, model file size and mtime."""
    digest = hashlib.sha256()
    for name in ("config.json", "vocab.json"):
        path = checkpoint_dir / name
        if path.is_file():
            digest.update(path.read_bytes())
    stat = (checkpoint_dir / "model.pth").stat()
    digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()
