"""The subject map and the JetStream streams behind it.

Subjects carry the conversation id as their third token so that a gateway can subscribe to
one conversation and a future partitioner can route by it. See docs/architecture.md for each
subject's delivery guarantee.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType


def audio_in(conv: str) -> str:
    """Client microphone PCM16 (JetStream AUDIO_IN, short-lived, for takeover replay)."""
    return f"parley.audio.{conv}"


def live(conv: str, kind: str) -> str:
    """Latency-critical, superseded media and tokens (core NATS, at most once)."""
    return f"parley.live.{conv}.{kind}"


def live_all(conv: str) -> str:
    return f"parley.live.{conv}.>"


def event(conv: str, kind: str) -> str:
    """Final-form client events (JetStream EVENTS: kept for resume)."""
    return f"parley.event.{conv}.{kind}"


def event_all(conv: str) -> str:
    return f"parley.event.{conv}.>"


def turn(conv: str) -> str:
    return f"parley.turn.{conv}"


def tts_job(conv: str) -> str:
    return f"parley.tts.{conv}"


def speech(conv: str, message_id: str, sentence_index: int) -> str:
    """A whole synthesised sentence (or its failure marker) for storage to assemble."""
    return f"parley.speech.{conv}.{message_id}.{sentence_index}"


def speech_all(conv: str) -> str:
    return f"parley.speech.{conv}.>"


def is_speech(subject: str) -> bool:
    """A stored sentence's subject (relayed live to a gateway beside the reply's chunks)."""
    return subject.startswith("parley.speech.")


def reply_done(conv: str) -> str:
    return f"parley.reply.{conv}"


def interrupt(conv: str) -> str:
    """What the person heard of an interrupted reply (JetStream, for the stored history)."""
    return f"parley.interrupt.{conv}"


def control(conv: str, kind: str) -> str:
    """One kind of control of a conversation (`schemas.Control.KIND`): core NATS, overtakes
    queued work."""
    return f"parley.ctl.{conv}.{kind}"


STT_OPEN = "parley.stt.open"


def stt_alive(worker_id: str) -> str:
    """An STT worker's heartbeat (core): gateways watch their sessions' owners on it."""
    return f"parley.stt.alive.{worker_id}"


STORAGE_SIGN = "parley.storage.sign"
STORAGE_VOICE_PUT = "parley.storage.voice.put"
"""Gateway asks storage to keep an avatar's reference voice (request/reply, queue group "storage")."""
CANCEL_BUCKET = "parley_cancelled"
TURNS_BUCKET = "parley_turns"
TOOL_RESULTS_BUCKET = "parley_tool_results"
"""A client tool's answer, put by the gateway under `tool_result_key`, read by the orchestrator."""


def tool_result_key(conv: str, call_id: str) -> str:
    return f"{conv}.{call_id}"


# Streams, and the filter of each stream's subjects (a work queue's consumer reads all of them).
AUDIO_IN_STREAM, AUDIO_IN_ALL = "PARLEY_AUDIO_IN", "parley.audio.*"
TURNS_STREAM, TURNS_ALL = "PARLEY_TURNS", "parley.turn.*"
TTS_STREAM, TTS_ALL = "PARLEY_TTS", "parley.tts.*"
SPEECH_STREAM, SPEECH_ALL = "PARLEY_SPEECH", "parley.speech.*.*.*"
REPLIES_STREAM, REPLIES_ALL = "PARLEY_REPLIES", "parley.reply.*"
INTERRUPTS_STREAM, INTERRUPTS_ALL = "PARLEY_INTERRUPTS", "parley.interrupt.*"
EVENTS_STREAM, EVENTS_ALL = "PARLEY_EVENTS", "parley.event.*.*"
EXHAUSTED_STREAM = "PARLEY_EXHAUSTED"
WORK_QUEUES = [TURNS_STREAM, TTS_STREAM, REPLIES_STREAM, INTERRUPTS_STREAM]


def max_deliveries(stream: str, durable: str = "*") -> str:
    """JetStream's advisory that a consumer's message ran out of deliveries unacknowledged
    (the process handling its last delivery died): nothing else would ever say so."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{durable}"


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: list[str]
    retention: RetentionPolicy = RetentionPolicy.LIMITS
    storage: StorageType = StorageType.FILE
    max_age_s: float = 0
    max_msgs_per_subject: int = -1
    duplicate_window_s: float = 120
    max_msg_size: int = -1
    discard: DiscardPolicy = DiscardPolicy.OLD
    description: str = ""


STREAMS: list[StreamSpec] = [
    StreamSpec(
        AUDIO_IN_STREAM,
        [AUDIO_IN_ALL],
        storage=StorageType.MEMORY,
        max_age_s=120,
        duplicate_window_s=0,
        description="live mic audio, kept briefly so another STT worker can replay an utterance",
    ),
    StreamSpec(
        TURNS_STREAM,
        [TURNS_ALL],
        retention=RetentionPolicy.WORK_QUEUE,
        # A turn published again within the hour (a resumed client, an STT takeover) is dropped
        # here rather than answered twice.
        duplicate_window_s=3600,
        description="closed user turns (final transcripts and typed text) for the orchestrator",
    ),
    StreamSpec(
        TTS_STREAM,
        [TTS_ALL],
        retention=RetentionPolicy.WORK_QUEUE,
        description="one job per reply sentence for any TTS worker",
    ),
    StreamSpec(
        SPEECH_STREAM,
        [SPEECH_ALL],
        max_age_s=3600,
        max_msgs_per_subject=1,
        description="each synthesised sentence's audio, read back by subject when a reply is stored",
    ),
    StreamSpec(
        REPLIES_STREAM,
        [REPLIES_ALL],
        retention=RetentionPolicy.WORK_QUEUE,
        description="replies that stopped streaming, for storage to assemble and upload",
    ),
    StreamSpec(
        INTERRUPTS_STREAM,
        [INTERRUPTS_ALL],
        retention=RetentionPolicy.WORK_QUEUE,
        description="interrupted replies with the playback position, for the orchestrator to store",
    ),
    StreamSpec(
        EXHAUSTED_STREAM,
        [max_deliveries(stream) for stream in WORK_QUEUES],
        retention=RetentionPolicy.WORK_QUEUE,
        max_age_s=7 * 24 * 3600,
        description="work-queue messages that ran out of deliveries, for their service to fail visibly",
    ),
    StreamSpec(
        EVENTS_STREAM,
        [EVENTS_ALL],
        max_age_s=900,
        description="final-form client events, kept for the resume window",
    ),
]
