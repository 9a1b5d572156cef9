"""Storage settings; the S3/R2 endpoint and bucket come from the shared settings (PARLEY_S3_*)."""

from __future__ import annotations

from services.common.settings import ServiceSettings


class StorageSettings(ServiceSettings):
    http_port: int = 8005
    storage_concurrency: int = 16
    # How long a reply may wait for its sentences' audio before it is stored without them.
    storage_sentence_wait_s: float = 60.0
    storage_audio_retention_h: float = 24.0
    """Reply audio older than this is deleted (the message keeps its text); 0 keeps it forever."""
    storage_retention_sweep_s: float = 600.0
    """How often a replica looks for expired audio (replicas share the work through row locks)."""
