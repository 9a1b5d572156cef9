"""Settings shared by every service, read from the environment (prefix PARLEY_)."""

from __future__ import annotations

import os
import socket

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PARLEY_", env_file=".env", extra="ignore")

    nats_url: str = "nats://127.0.0.1:4222"
    """One server, or a cluster's servers separated by commas (a client moves to another on
    losing its own)."""
    nats_replicas: int = Field(default=1, ge=1, le=5)
    """Copies of every stream and bucket: 3 on a three-node cluster (the deploy files), so a
    lost node loses no fact and stops no stream; 1 on a single server."""
    nats_ping_interval_s: float = Field(default=2.0, gt=0)
    """How often a client pings its server. Two unanswered pings mark the connection stale and
    the client moves to another server, so a server cut off behind an open connection (a
    partition, not a crash) is left within about three intervals (well within
    `nats_publish_patience_s`), not nats.py's six minutes."""
    nats_heartbeat_s: float = Field(default=1.0, gt=0)
    """Idle heartbeat of the consumers that follow a stream live: a consumer lost with its
    server is made again within two to four of them (nats.py's default, 5 s, took 10-20 s)."""
    nats_publish_patience_s: float = Field(default=15.0, ge=0)
    """How long a JetStream publish is tried again while its stream has no leader (an election
    after a lost node takes a few seconds) before it fails as an outage."""
    nats_user: str | None = None
    nats_password: str | None = None
    database_url: str = "postgresql://postgres@127.0.0.1:5432/parley"
    db_pool_min: int = 1
    db_pool_max: int = 10
    http_host: str = "0.0.0.0"
    http_port: int = 8000
    log_level: str = "INFO"
    log_json: bool = False
    instance_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    """Names this process on the bus (heartbeats, connection names): unique per process, so
    several replicas on one host are told apart."""
    tools_allow_private_urls: bool = False
    """Let tool URLs (webhooks, MCP servers) reach loopback, private and link-local addresses
    and plain http: tools inside the deployment, and tests. Off: https to public addresses."""
    drain_timeout_s: float = 20.0
    gc_young_threshold: int = 100_000
    """Allocations between young-generation collections once started (CPython's default: 700).
    At hundreds of live sessions a young collection took 4-10 ms and ran many times a second,
    most of the gateway's relay tail (docs/benchmarks.md)."""

    s3_endpoint_url: str | None = None
    s3_region: str = "auto"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_bucket: str = "parley"
    s3_public_base_url: str | None = None
    s3_url_expiry_s: int = 3600
