"""TTS worker settings. The default model is the published XTTS-v2 (Coqui Public Model License)."""

from __future__ import annotations

from services.common.settings import ServiceSettings


class TtsSettings(ServiceSettings):
    http_port: int = 8004
    tts_model: str = "tts_models/multilingual/multi-dataset/xtts_v2"
    tts_device: str = "auto"
    tts_temperature: float = 0.75
    tts_speed: float = 1.0
    tts_stream_chunk_size: int = 20
    # Sentences synthesised at once per worker: one engine lane each, all sharing the weights.
    tts_capacity: int = 2
    tts_latent_cache_dir: str | None = None
