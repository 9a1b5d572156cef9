"""Gateway settings."""

from __future__ import annotations

from services.common.ids import DEMO_AVATAR_ID
from services.common.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    http_port: int = 8000
    default_avatar_id: str = DEMO_AVATAR_ID
    # 1 s of 16 kHz PCM16; clients send 20-100 ms frames.
    max_audio_frame_bytes: int = 32000
    max_text_chars: int = 4000
    start_timeout_s: float = 10.0
    stt_open_timeout_s: float = 2.0
    stt_open_attempts: int = 3
    stt_takeover_after_s: float = 2.0
    """A session's STT worker silent this long is taken to be dead; another takes the session over."""
