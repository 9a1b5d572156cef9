"""Prometheus metrics. Labels stay low-cardinality: stage and service names, never conversation ids."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Sub-millisecond to several seconds: bus hops and whole voice-to-voice turns on one scale.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.65,
    0.8,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
    30.0,
)

STAGE_SECONDS = Histogram(
    "parley_stage_seconds",
    "Latency of one pipeline stage",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
VOICE_TO_VOICE_SECONDS = Histogram(
    "parley_voice_to_voice_seconds",
    "End of the user's speech to the first reply audio sent to the client",
    buckets=LATENCY_BUCKETS,
)
CLIENT_VOICE_TO_VOICE_SECONDS = Histogram(
    "parley_client_voice_to_voice_seconds",
    "As clients report it: last speech sample sent to the reply's first audio frame received",
    buckets=LATENCY_BUCKETS,
)
BUS_HOP_SECONDS = Histogram(
    "parley_bus_hop_seconds",
    "Publish-to-receive time of a bus message",
    ["hop"],
    buckets=LATENCY_BUCKETS,
)
LLM_TOKENS_PER_SECOND = Histogram(
    "parley_llm_tokens_per_second",
    "Streamed tokens per second of a reply after its first token",
    buckets=(5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000),
)
STT_BATCH_SIZE = Histogram(
    "parley_stt_batch_size",
    "Utterances and partials decoded in one Whisper call",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
)
STT_PENDING_DECODES = Gauge("parley_stt_pending_decodes", "Decodes waiting for the model")
STT_REAL_TIME_FACTOR = Histogram(
    "parley_stt_real_time_factor",
    "Whisper call time over the seconds of audio it read",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
TURN_MODEL_SECONDS = Histogram(
    "parley_stt_turn_model_seconds",
    "One call of the end-of-turn sound model (Smart Turn), all the turns it scored",
    buckets=LATENCY_BUCKETS,
)
TURN_MODEL_BATCH = Histogram(
    "parley_stt_turn_model_batch_size", "Turns scored in one sound-model call", buckets=(1, 2, 3, 4, 6, 8, 12, 16)
)
TURN_MODEL_AVAILABLE = Gauge(
    "parley_stt_turn_model_available",
    "1 when the end-of-turn sound model loaded; 0: the sound signal is off (a policy that needs it runs as vad)",
)
TOOL_CALLS = Counter(
    "parley_tool_calls_total",
    "Tool calls by kind and outcome (reused: an earlier attempt's result)",
    ["kind", "outcome"],
)
TOOL_SECONDS = Histogram("parley_tool_seconds", "Time a tool call took, by kind", ["kind"], buckets=LATENCY_BUCKETS)
HANDLER_ERRORS = Counter("parley_handler_errors_total", "Work-queue handler failures", ["service", "queue"])
EVENTS = Counter("parley_events_total", "Things that happened", ["service", "event"])
ACTIVE_SESSIONS = Gauge("parley_active_sessions", "Live sessions held by this process", ["service"])
IN_FLIGHT = Gauge("parley_in_flight_jobs", "Work-queue messages being handled", ["service"])


def stage(name: str, seconds: float) -> None:
    if seconds >= 0:
        STAGE_SECONDS.labels(name).observe(seconds)
