"""The orchestrator's turn flow without a server: an in-memory bus, a scripted LLM, the rows in
memory. Each named character answers in order and sees the ones before it; a cancelled turn
is closed unanswered without asking the LLM; a redelivered turn announces again what an
earlier attempt finished instead of answering twice; a superseded turn is kept unanswered;
a cancel reaches the turn a replica holds and one that has not arrived yet; a turn its client
answers itself is stored and announced unanswered, and its answer finds it in the history."""

from __future__ import annotations

import msgspec

from services.common import db, ids, schemas, subjects
from services.llm.config import LlmSettings
from services.llm.handlers import Orchestrator
from services.llm.memory import Memory
from services.llm.record import Records
from services.llm.turn import CANCELLED_BEFORE, SUPERSEDED, ActiveTurn, Answering, Turn
from tests.fakes.bus import MemoryBus
from tests.fakes.llm import ScriptedLLM, memory_cancels
from tests.fakes.repo import MemoryDatabase

CONV = ids.new_id()
ADA = db.Avatar(ids.new_id(), "Ada", "a tester", "You are Ada.", "en", "voices/ada.wav", None)
BO = db.Avatar(ids.new_id(), "Bo", "a second", "You are Bo.", "en", "voices/bo.wav", None)


def _user_turn(text: str) -> schemas.UserTurn:
    return schemas.UserTurn(
        conversation_id=CONV, message_id=ids.new_id(), session_id="s", turn_seq=0, source="text", text=text
    )


class World:
    def __init__(self, deltas: list[str], cast: list[db.Avatar] = (ADA,)):
        self.bus, self.llm = MemoryBus(), ScriptedLLM(deltas)
        self.db = MemoryDatabase(casts={CONV: list(cast)})
        self.repo = self.db.messages
        settings = LlmSettings()
        records = Records(self.db)
        self.cancels = memory_cancels()
        self.deps = Answering(self.bus, self.llm, settings, records, Memory(records, settings), self.cancels)

    def turn(self, turn: schemas.UserTurn) -> Turn:
        return Turn(self.deps, turn, ActiveTurn(CONV, turn.message_id))

    def done(self) -> list[schemas.ReplyDone]:
        return [p.decode(schemas.ReplyDone) for p in self.bus.on(subjects.reply_done(CONV))]


async def test_each_named_character_answers_in_order_and_sees_the_one_before_it():
    w = World(["Hello there. ", "Nice day."], cast=[ADA, BO])
    turn = _user_turn("Ada and Bo, hello")
    await w.turn(turn).answer(version=0, finished=set())

    ada, bo = ids.reply_id(turn.message_id, ADA.id), ids.reply_id(turn.message_id, BO.id)
    assert w.repo.writes[0] == ("user", turn.message_id)  # before any reply row refers to it
    assert [(d.message_id, d.status, d.text, d.sentence_count) for d in w.done()] == [
        (ada, "complete", "Hello there. Nice day.", 2),
        (bo, "complete", "Hello there. Nice day.", 2),
    ]
    assert (w.repo.rows[ada].status, w.repo.rows[bo].text) == ("complete", "Hello there. Nice day.")
    bo_prompt = " ".join(m["content"] for m in w.llm.prompts[1])
    assert "Hello there. Nice day." in bo_prompt  # Bo's prompt holds Ada's answer
    completed = [p.decode(schemas.ReplyCompleted) for p in w.bus.on(subjects.event(CONV, "reply_done"))]
    assert [c.message_id for c in completed] == [ada, bo]


async def test_a_turn_cancelled_before_it_began_is_closed_unanswered_without_the_llm():
    w = World(["Never said."])
    turn = _user_turn("Hi")
    flow = w.turn(turn)
    flow.active.cancel.set()
    await flow.answer(version=0, finished=set())

    reply = ids.reply_id(turn.message_id, ADA.id)
    assert w.llm.prompts == []
    assert not w.bus.on(subjects.tts_job(CONV))
    (done,) = w.done()
    assert (done.message_id, done.status, done.text, done.error) == (reply, "interrupted", "", CANCELLED_BEFORE)
    assert (w.repo.rows[reply].status, w.repo.rows[turn.message_id].text) == ("interrupted", "Hi")


async def test_a_redelivered_turn_announces_what_its_first_attempt_finished_and_answers_the_rest():
    w = World(["Bo speaks."], cast=[ADA, BO])
    turn = _user_turn("Ada and Bo?")
    ada = ids.reply_id(turn.message_id, ADA.id)
    await w.repo.add_user(turn.message_id, CONV, "text", "s", 0, turn.text, {})
    await w.repo.start_reply(ada, CONV, turn.message_id, ADA.id)
    await w.repo.finish_reply(ada, "Ada spoke.", "complete", None, {}, 1)

    await w.turn(turn).answer(version=0, finished={ADA.id})

    assert len(w.llm.prompts) == 1  # Bo only
    assert [(d.avatar_id, d.text) for d in w.done()] == [(ADA.id, "Ada spoke."), (BO.id, "Bo speaks.")]


async def test_a_cut_stored_by_an_interruption_is_what_the_reply_announces():
    w = World(["One. ", "Two. ", "Three."])
    turn = _user_turn("Count")
    reply = ids.reply_id(turn.message_id, ADA.id)
    real_finish = w.repo.finish_reply

    async def cut_first(reply_id, *args):
        w.repo.rows[reply_id].status, w.repo.rows[reply_id].text = "interrupted", "One."
        return await real_finish(reply_id, *args)

    w.repo.finish_reply = cut_first
    await w.turn(turn).answer(version=0, finished=set())
    (done,) = w.done()
    assert (done.message_id, done.status, done.text, done.sentence_count) == (reply, "interrupted", "One.", 3)


async def test_a_superseded_turn_is_kept_and_each_character_closed_unanswered():
    w = World(["Never said."], cast=[ADA, BO])
    turn = _user_turn("Ada and Bo")
    await w.turn(turn).supersede()
    assert w.llm.prompts == []
    assert {(d.avatar_id, d.status, d.error) for d in w.done()} == {
        (ADA.id, "interrupted", SUPERSEDED),
        (BO.id, "interrupted", SUPERSEDED),
    }
    assert w.repo.rows[turn.message_id].text == "Ada and Bo"


async def test_a_turn_held_for_its_client_is_stored_unanswered_and_its_answer_sees_it_once():
    w = World(["Sunny."])
    held = schemas.UserTurn(
        conversation_id=CONV, message_id=ids.new_id(), session_id="s", turn_seq=0, source="voice", text="Weather?",
        hold=True,
    )
    await w.turn(held).hold(version=0)
    await w.turn(held).announce_held()
    assert w.llm.prompts == [] and w.done() == []
    assert (w.repo.rows[held.message_id].role, w.repo.rows[held.message_id].text) == ("user", "Weather?")
    (announced,) = [p.decode(schemas.TurnHeld) for p in w.bus.on(subjects.event(CONV, "turn_held"))]
    assert (announced.message_id, announced.text) == (held.message_id, "Weather?")

    answer = msgspec.structs.replace(held, hold=False, answer_held=True, instructions="Be brief.")
    for version in (0, 1):  # the cached history, then one read again from the rows
        reply = ids.reply_id(held.message_id, ADA.id)
        w.repo.rows.pop(reply, None)
        await w.turn(answer).answer(version=version, finished=set())
        users = [m["content"] for m in w.llm.prompts[-1] if m["role"] == "user"]
        assert users == ["Weather?"]
        assert w.repo.rows[reply].text == "Sunny." and w.repo.rows[reply].reply_to == held.message_id


async def test_a_cancel_stops_the_held_turn_and_waits_for_one_not_arrived_yet():
    orch = Orchestrator(LlmSettings())
    orch.cancels = memory_cancels()
    held = ActiveTurn(CONV, ids.new_id(), reply_id=ids.new_id())
    orch._turns[held.turn_message_id] = held
    other = ActiveTurn(ids.new_id(), ids.new_id(), reply_id=ids.new_id())
    orch._turns[other.turn_message_id] = other

    await orch._on_cancel(schemas.ReplyCancel(conversation_id=CONV, message_id=held.reply_id, reason="barge-in"))
    assert held.cancel.is_set() and not other.cancel.is_set()
    assert await orch.cancels.confirmed(held.reply_id)  # TTS learns it from the bucket

    early = ids.new_id()
    await orch._on_cancel(schemas.ReplyCancel(conversation_id=CONV, message_id=early, reason="client"))
    assert early in orch.cancels  # the turn starts cancelled when it comes

    await orch._on_cancel(schemas.ReplyCancel(conversation_id=other.conversation_id))
    assert other.cancel.is_set()  # no id: whatever of that conversation is streaming

