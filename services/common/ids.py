"""Derived ids: anything a retry must reproduce is computed from what it belongs to.

A redelivered turn, reply or TTS job gets the same id as the first attempt, so Postgres
writes (`ON CONFLICT DO NOTHING`) and JetStream de-duplication (`Nats-Msg-Id`) absorb retries.
"""

from __future__ import annotations

import uuid

NAMESPACE = uuid.UUID("6f1c2a52-7d0e-4c5e-9a51-3b1f0c7e2d10")


def _derive(*parts: object) -> str:
    return str(uuid.uuid5(NAMESPACE, "/".join(str(p) for p in parts)))


def user_message_id(conversation_id: str, session_id: str, source: str, turn_seq: int) -> str:
    """A user turn: (conversation, live session, voice|text, utterance or text sequence)."""
    return _derive("user", conversation_id, session_id, source, turn_seq)


def reply_id(user_message_id: str, avatar_id: str) -> str:
    """One reply per answering character of a user message."""
    return _derive("reply", user_message_id, avatar_id)


def tool_call_id(reply_message_id: str, round_: int, index: int) -> str:
    """A reply's tool call: its place in the reply (the LLM round, the call's index in it).
    A redelivered turn finds its stored result by this id; a webhook sees it as the
    idempotency key."""
    return _derive("tool-call", reply_message_id, round_, index)


def tts_job_id(reply_message_id: str, sentence_index: int) -> str:
    return f"{reply_message_id}.{sentence_index}"


def user_id_for(external_id: str) -> str:
    return _derive("user-account", external_id)


DEMO_AVATAR_ID = _derive("avatar", "demo")


def new_id() -> str:
    """For things no retry must reproduce (a live session, a new conversation)."""
    return str(uuid.uuid4())
