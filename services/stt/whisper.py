"""The Whisper engine: faster-whisper's CTranslate2 model, decoding many sessions' audio in one call.

Synchronous and CPU/GPU-bound; the async service runs it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .vad import SAMPLE_RATE, WINDOW


@dataclass
class Transcript:
    """One utterance's final text. confidence is exp(mean token log-probability), 0..1."""

    text: str
    language: str
    confidence: float
    duration_s: float


def join_transcripts(parts: list[Transcript]) -> Transcript:
    """One utterance read in several windows: texts in order, confidence weighted by length."""
    spoken = [p for p in parts if p.text]
    total = sum(p.duration_s for p in parts)
    weight = sum(p.duration_s for p in spoken)
    return Transcript(
        text=" ".join(p.text for p in spoken),
        language=spoken[0].language if spoken else (parts[0].language if parts else ""),
        confidence=sum(p.confidence * p.duration_s for p in spoken) / weight if weight else 0.0,
        duration_s=total,
    )


def natural_token_limit(seconds: float) -> int:
    """The most tokens a real model may write for this much audio: over twice what the fastest
    speech needs (about 5 tokens a second), so a model caught repeating itself on noise stops
    there instead of at Whisper's 448, holding up every session's decodes behind it."""
    return 16 + math.ceil(12 * seconds)


def is_local_model(model: str | os.PathLike) -> bool:
    """A folder, not a hub name: what exists, or reads as a path (absolute, ./, ../, ~)."""
    text = os.fspath(model)
    return os.path.exists(text) or text.startswith(("/", "./", "../", "~"))


def check_model_folder(path: str | os.PathLike) -> Path:
    """A CTranslate2 Whisper conversion that faster-whisper can load with no hub, or a
    ValueError saying what is wrong (a missing folder or file, another kind of model)."""
    folder = Path(os.path.expanduser(os.fspath(path)))
    if not folder.is_dir():
        raise ValueError(f"Whisper model folder {folder} does not exist")
    missing = [n for n in ("model.bin", "config.json", "tokenizer.json") if not (folder / n).is_file()]
    if missing:
        raise ValueError(f"{folder} is not a faster-whisper model folder: no {', '.join(missing)}")
    try:
        config = json.loads((folder / "config.json").read_text())
    except ValueError as exc:
        raise ValueError(f"{folder}/config.json is not JSON: {exc}") from None
    if not isinstance(config, dict) or not {"lang_ids", "suppress_ids"} <= config.keys():
        raise ValueError(f"{folder} holds a CTranslate2 model that is not Whisper (config.json has no lang_ids)")
    return folder


@dataclass(frozen=True)
class DecodeRequest:
    """One piece of audio to transcribe: at most 30 s of float32 mono 16 kHz."""

    audio: np.ndarray
    language: str | None = None
    """None: detect it."""
    prompt: str | None = None
    """Words to bias towards (an avatar's names and terms), given to Whisper as hotwords."""
    prefix: str | None = None
    """Words the transcript must begin with: the ones partials already showed as stable."""


class WhisperEngine:
    """faster-whisper's model with pinned, fast decoding, many utterances per model call.

    Greedy, single temperature, no timestamps, no conditioning on earlier text (each piece
    stands alone, and a bad guess cannot snowball). ``transcribe_batch`` runs the encoder
    and the decoder once for a whole batch through CTranslate2's batch API, each item with
    its own language (requests with hotword prompts of different lengths take one call per
    length): the worker's ``DecodeBatcher`` gathers the pending utterances of all its
    sessions into such batches.
    """

    max_audio_s = 30.0

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        compute_type: str = "int8",
        beam_size: int = 1,
        language: str | None = None,
        max_new_tokens: int | None = None,
        cpu_threads: int = 0,
        num_workers: int = 1,
        download_root: str | None = None,
    ) -> None:
        from faster_whisper import WhisperModel

        if is_local_model(model):
            model = check_model_folder(model)
        self.model_name = str(model)
        self.beam_size = beam_size
        self.language = language
        self.max_new_tokens = max_new_tokens
        self.model = WhisperModel(
            os.fspath(model),
            device=device,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=num_workers,
            download_root=download_root,
        )
        self._tokenizers: dict[str, object] = {}
        self.model_calls = 0
        """Batched model calls made so far (tests count them)."""

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    def transcribe(self, audio: np.ndarray, language: str | None = None, prompt: str | None = None) -> Transcript:
        """Transcribe one utterance (float32 mono 16 kHz); language None means detect it.

        Audio over 30 s is read in 30 s pieces (the worker's segmenter cuts long speech at
        pauses before it gets here, so this is a last resort that may split a word)."""
        audio = np.ascontiguousarray(np.asarray(audio, dtype=np.float32).reshape(-1))
        step = int(self.max_audio_s * SAMPLE_RATE)
        pieces = [audio[i : i + step] for i in range(0, len(audio), step)] or [audio]
        results = self.transcribe_batch([DecodeRequest(p, language, prompt) for p in pieces])
        if len(results) == 1:
            return results[0]
        return join_transcripts(results)

    def transcribe_batch(self, requests: list[DecodeRequest]) -> list[Transcript]:
        """Transcribe several pieces of audio (each at most 30 s) in one model call."""
        out: list[Transcript | None] = [None] * len(requests)
        todo: list[int] = []
        for i, req in enumerate(requests):
            n = len(req.audio)
            if n > self.max_audio_s * SAMPLE_RATE + WINDOW:
                raise ValueError(f"a decode request holds {n / SAMPLE_RATE:.1f} s of audio; the most is 30 s")
            if n == 0:
                out[i] = Transcript("", req.language or self.language or "", 0.0, 0.0)
            else:
                todo.append(i)
        # CTranslate2 needs <|startoftranscript|> at one position across a batch, so requests
        # whose hotword prompts differ in length go in separate calls (no prompt: one group);
        # prefixes come after it and may differ in length within a call.
        groups: dict[int, list[int]] = {}
        for i in todo:
            groups.setdefault(self._prefix_length(requests[i].prompt), []).append(i)
        for members in groups.values():
            for i, result in zip(members, self._decode([requests[i] for i in members])):
                out[i] = result
        return [t for t in out if t is not None]

    def _prefix_length(self, prompt: str | None) -> int:
        """Tokens in front of <|startoftranscript|>: the hotwords and their marker."""
        return len(self._hotword_tokens(self._tokenizer("en"), prompt))

    def _hotword_tokens(self, tok, prompt: str | None) -> list[int]:
        """Hotwords as the "previous text" Whisper is conditioned on, which is what
        faster-whisper's `hotwords` is; written out here because faster-whisper drops its
        hotwords whenever a prefix is given, and a request may have both."""
        if not prompt:
            return []
        tokens = tok.encode(" " + prompt.strip())[: self.model.max_length // 2 - 1]
        return [tok.sot_prev, *tokens]

    def _prompt(self, tok, req: DecodeRequest) -> list[int]:
        prompt = [*self._hotword_tokens(tok, req.prompt), *tok.sot_sequence, tok.no_timestamps]
        if req.prefix:
            prompt += tok.encode(" " + req.prefix.strip())[: self.model.max_length // 2 - 1]
        return prompt

    def _decode(self, requests: list[DecodeRequest]) -> list[Transcript]:
        """One encoder and one decoder call for requests whose prompts have one length."""
        from faster_whisper.audio import pad_or_trim

        wm = self.model
        features = np.stack(
            [pad_or_trim(wm.feature_extractor(np.asarray(r.audio, dtype=np.float32))[..., :-1]) for r in requests]
        )
        encoder_output = wm.encode(features)
        languages = [r.language or self.language for r in requests]
        if any(lang is None for lang in languages):
            if wm.model.is_multilingual:
                detected = wm.model.detect_language(encoder_output)
                languages = [lang or det[0][0][2:-2] for lang, det in zip(languages, detected)]
            else:
                languages = [lang or "en" for lang in languages]
        prompts = []
        tokenizers = []
        for req, lang in zip(requests, languages):
            tok = self._tokenizer(lang)
            tokenizers.append(tok)
            prompts.append(self._prompt(tok, req))
        longest = max(len(p) for p in prompts)
        budget = max(natural_token_limit(len(r.audio) / SAMPLE_RATE) for r in requests)
        if self.max_new_tokens is not None:
            budget = min(budget, self.max_new_tokens)
        max_length = min(wm.max_length, longest + budget)
        results = wm.model.generate(
            encoder_output,
            prompts,
            beam_size=self.beam_size,
            max_length=max_length,
            suppress_blank=True,
            suppress_tokens=[-1],
            return_scores=True,
        )
        self.model_calls += 1
        transcripts = []
        for req, lang, tok, result in zip(requests, languages, tokenizers, results):
            tokens = result.sequences_ids[0]
            seq_len = len(tokens)
            avg_logprob = result.scores[0] * seq_len / (seq_len + 1)
            transcripts.append(
                Transcript(
                    text=tok.decode(tokens).strip(),
                    language=lang,
                    confidence=min(max(math.exp(avg_logprob), 0.0), 1.0),
                    duration_s=len(req.audio) / SAMPLE_RATE,
                )
            )
        return transcripts

    def _tokenizer(self, language: str):
        from faster_whisper.tokenizer import Tokenizer

        if language not in self._tokenizers:
            wm = self.model
            self._tokenizers[language] = Tokenizer(
                wm.hf_tokenizer, wm.model.is_multilingual, task="transcribe", language=language
            )
        return self._tokenizers[language]

    def warmup(self) -> None:
        """Run one tiny transcription so the first real utterance pays no lazy set-up."""
        silence = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
        self.transcribe(silence, language=self.language or "en")
