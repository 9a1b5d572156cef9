"""Gateway settings: identity, browser origins, and the limits every session and upload is held to."""

from __future__ import annotations

from pydantic import Field, SecretStr

from services.common.ids import DEMO_AVATAR_ID
from services.common.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    http_port: int = 8000
    ops_port: int | None = None
    """When set, `/metrics` and the API's docs (`/docs`, `/redoc`, `/openapi.json`) are served on
    this port and not on the client port (`/healthz` and `/readyz` on both). The deploy files set it."""
    default_avatar_id: str = DEMO_AVATAR_ID

    auth_jwt_secret: SecretStr | None = None
    """HS256 shared secret for user tokens; or set auth_jwks_url for asymmetric keys."""
    auth_jwks_url: str | None = None
    auth_jwt_algorithms: list[str] = []
    """Default: HS256 with a secret, RS256 and ES256 with JWKS."""
    auth_jwt_audience: str = "parley"
    auth_jwt_issuer: str | None = None
    auth_max_token_lifetime_s: int = 86400
    """User tokens are short-lived: one whose exp is further than this from its iat is refused."""
    auth_clock_skew_s: float = 30.0
    allowed_origins: list[str] = []
    """Browser origins besides the gateway's own that may open sockets and call REST; `*` for any."""

    ws_deflate: bool = False
    """Offer permessage-deflate to WebSocket clients. Off: PCM audio, nearly all of the
    traffic, does not compress, and deflating it cost a third of the gateway's CPU
    (docs/benchmarks.md)."""

    # 1 s of 16 kHz PCM16; clients send 20-100 ms frames.
    max_audio_frame_bytes: int = 32000
    max_audio_rate: float = 1.2
    """Mic audio may arrive at most this much faster than real time, after a burst allowance."""
    audio_burst_s: float = 5.0
    """Jitter allowance: frames bunched by the network (or a stalled client) up to this much audio pass."""
    mic_outage_hold_s: float = Field(default=5.0, ge=0)
    """Mic audio a session holds while the bus is down, passed on in order once it is back
    (a blip loses no word); past it, frames are dropped and the client is told
    (`audio_not_heard`), since speech that late would be answered out of its moment."""
    max_text_chars: int = 4000
    max_tool_result_bytes: int = 65536
    """The most a client tool's answer may hold (the orchestrator's own limit is the same)."""
    start_timeout_s: float = 10.0
    max_unstarted_per_address: int = 32
    """Sockets from one client address that have not yet started a session (sent
    `session.start`, or a call's `start`), at most; one more is closed with 4429."""
    idle_timeout_s: float = 300.0
    """A session whose client sends nothing (no audio, no message) this long is closed."""
    max_session_s: float = 4 * 3600.0
    max_sessions_per_user: int = 5
    resume_grace_s: float = 120.0
    """A dropped session may be resumed this long after its last sign of life."""
    session_lease_s: float = 30.0
    """A live session's record is renewed this often; one not renewed in twice this is dead."""
    audio_fill_after_s: float = 1.0
    """A stored reply whose live audio has not all arrived this long after `audio.stored`
    is filled from the stored sentences (live chunks lost in a bus outage)."""
    stt_open_timeout_s: float = 2.0
    stt_open_attempts: int = 3
    stt_takeover_after_s: float = 2.0
    """A session's STT worker silent this long is taken to be dead; another takes the session over."""

    max_voice_upload_bytes: int = 10 * 1024 * 1024
    """An avatar's reference voice file may be at most this large (larger: 413)."""
    voice_min_s: float = 6.0
    """A reference voice shorter than this is refused: too little to clone a voice from."""
    voice_max_s: float = 20.0
    """Only this much of a reference voice is kept. At 22050 Hz PCM16 20 s is 882 kB, inside
    NATS's default 1 MB message, which carries it to the storage service."""
    voice_store_timeout_s: float = 15.0
    """How long an upload waits for the storage service to store a voice (then 503)."""

    public_url: str | None = None
    """The gateway's address as callers reach it (`https://parley.example.com`): what Twilio
    signs, and where the TwiML endpoint points a call's stream. Unset: the request's own address."""
    twilio_auth_token: SecretStr | None = None
    """The Twilio account's auth token: calls signed with it (X-Twilio-Signature) are taken."""
    twilio_account_sid: str | None = None
    """When set, a signed call must come from this account (its `start` message's accountSid)."""
    twilio_user: str = "twilio"
    """The Parley user a Twilio-signed call acts as: its avatars and its conversations."""
    phone_idle_timeout_s: float = 15.0
    """Twilio sends audio all through a call: a phone stream silent this long is dead."""
