"""The ledger: what "nothing lost" means, checked over the database, the bucket and the events.

After any fault, within a deadline:
- every user message has exactly one reply per answering character, or a failure event, or
  was held for its client to ask the response for (`turn.held`) and has none yet;
- no reply is still `streaming`;
- every finished reply with spoken text has its audio object, or a failure event for it;
- every audio key on a message names an object that exists, and every reply object under
  `tts/` belongs to a message (no orphans);
- every closed utterance a client saw has exactly one user message, or a failure event;
- every tool call has exactly one outcome, a result or an error (none still `running`), under
  its derived id, and every `tool.call` event has its `tool.done`.

`parley ledger [CONVERSATION_ID ...]` prints each problem precisely and exits 1 if any.
Failure events are read back from the PARLEY_EVENTS stream (kept for its retention window).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec
from nats.js.api import DeliverPolicy

from services.common import bus as busmod
from services.common import db, ids, objectstore, schemas, subjects
from services.common.settings import ServiceSettings
from services.llm.prompt import answering

# Events that account for a missing reply, or for a reply without audio.
REPLY_FAILURES = {"turn_failed", "no_avatar"}
AUDIO_FAILURES = {"audio_store_failed"}
UTTERANCE_FAILURES = {"no_speech_recognized", "transcription_failed"}


@dataclass
class Evidence:
    """What clients were told: failure events by message id, closed utterances, and those that
    were only a backchannel over a reply (no turn is made of one)."""

    errors: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    sentence_failures: set[str] = field(default_factory=set)
    closed_utterances: set[tuple[str, str, int]] = field(default_factory=set)
    backchannels: set[tuple[str, str, int]] = field(default_factory=set)
    tool_calls: set[str] = field(default_factory=set)
    tools_done: set[str] = field(default_factory=set)
    held: set[str] = field(default_factory=set)
    """User messages stored unanswered, as their session asked: no reply is owed until asked for."""

    def add(self, ev: schemas.Event) -> None:
        if isinstance(ev, schemas.ErrorEvent) and ev.message_id:
            self.errors[ev.message_id].add(ev.code)
        elif isinstance(ev, schemas.SentenceFailed):
            self.sentence_failures.add(ev.message_id)
        elif isinstance(ev, schemas.SpeechStopped):
            self.closed_utterances.add((ev.conversation_id, ev.session_id, ev.utterance_seq))
        elif isinstance(ev, schemas.Backchannel):
            self.backchannels.add((ev.conversation_id, ev.session_id, ev.utterance_seq))
        elif isinstance(ev, schemas.ToolCalled):
            self.tool_calls.add(ev.call_id)
        elif isinstance(ev, schemas.ToolDone):
            self.tools_done.add(ev.call_id)
        elif isinstance(ev, schemas.TurnHeld):
            self.held.add(ev.message_id)

    def add_client_events(self, events: list[dict]) -> None:
        """Events as a client received them (JSON objects); unknown kinds are skipped."""
        for body in events:
            try:
                self.add(msgspec.convert(body, schemas.ClientEvent))
            except msgspec.ValidationError:
                continue


async def read_events(bus: busmod.Bus, conversations: list[str] | None) -> Evidence:
    """Every client event still in PARLEY_EVENTS (for the given conversations, or all)."""
    evidence = Evidence()
    wanted = set(conversations or [])
    sub = await bus.js.subscribe(subjects.EVENTS_ALL, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    try:
        info = await bus.js.stream_info(subjects.EVENTS_STREAM)
        last = info.state.last_seq
        while last:
            msg = await sub.next_msg(timeout=5)
            try:
                ev = schemas.decode_event(msg.data)
            except Exception:
                ev = None
            if ev is not None and (not wanted or ev.conversation_id in wanted):
                evidence.add(ev)
            if msg.metadata.sequence.stream >= last:
                break
    finally:
        await sub.unsubscribe()
    return evidence


async def check(
    database: db.Database,
    store: objectstore.ObjectStore,
    evidence: Evidence,
    conversations: list[str] | None = None,
) -> list[str]:
    """Every way the ledger does not balance, as readable lines (empty: it balances)."""
    problems: list[str] = []
    rows = await database.pool.fetch(
        """SELECT m.id, m.conversation_id, m.role, m.avatar_id, m.reply_to, m.text, m.status, m.audio_key,
                  m.audio_expired_at
           FROM messages m
           WHERE $1::uuid[] IS NULL OR m.conversation_id = ANY($1::uuid[])""",
        conversations,
    )
    by_conv: dict[str, list] = defaultdict(list)
    for r in rows:
        by_conv[r["conversation_id"]].append(r)
    keys = {r["audio_key"] for r in rows if r["audio_key"]}

    for conv, messages in by_conv.items():
        avatars = await database.avatars.of_conversation(conv)
        replies = {(r["reply_to"], r["avatar_id"]): r for r in messages if r["role"] == "avatar"}
        for user in (r for r in messages if r["role"] == "user"):
            for avatar in answering(avatars, user["text"]):
                reply = replies.get((user["id"], avatar.id))
                failed = evidence.errors.get(user["id"], set()) & REPLY_FAILURES
                if reply is None and not failed and user["id"] not in evidence.held:
                    problems.append(
                        f"conversation {conv}: user message {user['id']} has no reply from {avatar.name} "
                        f"({avatar.id}) and no failure event"
                    )
                elif reply is not None and reply["id"] != ids.reply_id(user["id"], avatar.id):
                    problems.append(f"reply {reply['id']} does not carry its derived id")
        for reply in (r for r in messages if r["role"] == "avatar"):
            rid = reply["id"]
            if reply["status"] == "streaming":
                problems.append(f"conversation {conv}: reply {rid} is still streaming")
                continue
            spoken = reply["status"] in ("complete", "interrupted") and reply["text"]
            accounted = (
                reply["audio_expired_at"] is not None  # stored, then deleted after its retention
                or rid in evidence.sentence_failures
                or evidence.errors.get(rid, set()) & AUDIO_FAILURES
            )
            if spoken and reply["status"] == "complete" and not reply["audio_key"] and not accounted:
                problems.append(f"conversation {conv}: complete reply {rid} has no audio and no failure event")
            if reply["audio_key"] and not await store.exists(reply["audio_key"]):
                problems.append(f"conversation {conv}: reply {rid} names {reply['audio_key']}, which does not exist")

    for conv in by_conv:
        async for key in _objects(store, f"tts/{conv}/"):
            if key not in keys:
                problems.append(f"conversation {conv}: orphan object {key}")

    user_ids = {r["id"] for r in rows if r["role"] == "user"}
    problems += await _tool_calls(database, evidence, conversations)
    return problems + _unheard_utterances(evidence, user_ids, conversations)


async def _tool_calls(database: db.Database, evidence: Evidence, conversations: list[str] | None) -> list[str]:
    problems = []
    rows = await database.pool.fetch(
        """SELECT id, conversation_id, reply_id, round, call_index, status FROM tool_calls
           WHERE $1::uuid[] IS NULL OR conversation_id = ANY($1::uuid[])""",
        conversations,
    )
    for c in rows:
        where = f"conversation {c['conversation_id']}: tool call {c['id']} of reply {c['reply_id']}"
        if c["status"] == "running":
            problems.append(f"{where} has no result and no error")
        if c["id"] != ids.tool_call_id(c["reply_id"], c["round"], c["call_index"]):
            problems.append(f"{where} does not carry its derived id")
    for call_id in sorted(evidence.tool_calls - evidence.tools_done):
        problems.append(f"tool call {call_id}: a tool.call event and no tool.done")
    return problems


def _unheard_utterances(evidence: Evidence, user_ids: set, conversations: list[str] | None) -> list[str]:
    """Utterances the STT workers closed that became no user message, no failure event and no
    backchannel."""
    problems = []
    for conv, session, seq in sorted(evidence.closed_utterances - evidence.backchannels):
        if conversations and conv not in conversations:
            continue
        message_id = ids.user_message_id(conv, session, "voice", seq)
        if message_id not in user_ids and not evidence.errors.get(message_id, set()) & UTTERANCE_FAILURES:
            problems.append(
                f"conversation {conv}: utterance {seq} of session {session} was closed but has no user message "
                f"({message_id}) and no failure event"
            )
    return problems


async def _objects(store: objectstore.ObjectStore, prefix: str):
    paginator = store.client.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=store.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield obj["Key"]


async def run(
    settings: ServiceSettings, conversations: list[str] | None = None, client_events: Iterable[list[dict]] = ()
) -> list[str]:
    """The check over a deployment; `client_events` (each client's event log) adds what clients
    saw, so their closed utterances are checked too."""
    bus = await busmod.connect(settings, "ledger")
    pool = await db.create_pool(settings.database_url)
    try:
        evidence = await read_events(bus, conversations)
        for events in client_events:
            evidence.add_client_events(events)
        async with objectstore.ObjectStore(settings) as store:
            return await check(db.Database(pool), store, evidence, conversations)
    finally:
        await pool.close()
        await bus.close()


def main(conversations: list[str]) -> int:
    problems = asyncio.run(run(ServiceSettings(), conversations or None))
    for line in problems:
        print(line)
    print("ledger balances" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0
