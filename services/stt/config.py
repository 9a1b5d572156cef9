"""STT worker settings (environment, prefix PARLEY_STT_ for engine knobs)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.common.settings import ServiceSettings


class SttSettings(ServiceSettings):
    http_port: int = 8002
    stt_model: str = Field("large-v3-turbo", description="faster-whisper model name or local path")
    stt_device: str = "auto"
    stt_compute_type: str = "default"
    stt_beam_size: int = 1
    stt_language: str | None = None
    stt_max_new_tokens: int | None = None
    stt_cpu_threads: int = 0
    stt_num_workers: int = 1
    stt_download_root: str | None = None
    stt_capacity: int = 32
    stt_heartbeat_s: float = 0.5
    stt_handover_wait_s: float = 3.0
    """On SIGTERM, how long sessions wait to be taken over before they are finished here."""
    stt_max_batch: int = 16
    stt_partial_interval_ms: int | None = None
    """Audio time between partial transcripts while a person speaks; 0 turns partials off.
    Unset: 500 on a GPU, off on a CPU, where each partial costs as much as a final and
    delays it (docs/benchmarks.md)."""
    stt_prompt: str | None = None
    """Words to bias recognition towards for every session (a session's own prompt wins)."""
    vad_threshold: float = 0.5
    vad_end_of_turn_ms: int = 300
    vad_min_speech_ms: int = 250
    vad_pad_ms: int = 200
    """Silence that ends a turn under the `vad` policy."""
    stt_turn_policy: Literal["vad", "smart"] = "smart"
    """`smart`: after `stt_turn_short_ms` of silence the worker asks whether the person is done;
    the turn ends then, or after `stt_turn_long_ms` (docs/benchmarks.md, "Turn taking"). With
    the signals `stt_turn_signals` names not available, smart sessions are `vad` sessions."""
    stt_turn_short_ms: int = 200
    stt_turn_long_ms: int = 1600
    stt_turn_signals: Literal["words", "sound", "all", "any"] = "all"
    """Which verdict ends a smart turn early: the words', the sound's, both agreeing (`all`,
    the benchmark's choice), or either."""
    stt_turn_threshold: float = 0.5
    """The sound model's probability of done that counts as done."""
    stt_turn_words_threshold: float = 0.02
    stt_turn_model: str | None = None
    """Smart Turn v3.2's ONNX file (`parley models` puts it in the model cache); loaded when
    the signals use the sound. Missing or unreadable: said at start, counted in a metric."""
    stt_turn_lm_url: str | None = None
    """An OpenAI-compatible server (with `logprobs` on /v1/completions) that scores the words
    so far (`parley dev` starts one on the embedded SmolLM2)."""
    stt_turn_lm_model: str = ""
    stt_turn_max_batch: int = 16
    stt_over_reply_min_confidence: float = 0.4
    """Speech over a playing reply read with less confidence than this holds no words (a
    grunt, a door, the room): the reply resumes and no turn is made. Whisper writes words
    for any sound the VAD lets through, so a false interruption is told by how unsure it
    was (docs/benchmarks.md, "Barge-in")."""
