"""A short load soak on the test stack: concurrent conversations, then the ledger.

`bench/soak.py` is the full command (`python -m bench.soak --conversations 20 --minutes 10`);
this runs its `soak()` for SOAK_CONVERSATIONS (4) conversations over SOAK_SECONDS (30 s) on
the session's services, prints the latency table and memory, and asserts behaviour only:
every turn answered and stored, the ledger balanced, no service's memory doubled once warm.
"""

from __future__ import annotations

import os

import pytest

from bench.soak import print_result, soak

pytestmark = [pytest.mark.e2e, pytest.mark.engine]


async def test_concurrent_conversations_for_a_while_lose_nothing(stack, speech_wav):
    conversations = int(os.environ.get("SOAK_CONVERSATIONS", "4"))
    seconds = float(os.environ.get("SOAK_SECONDS", "30"))
    result = await soak(
        stack["ws_url"],
        {name: p.proc.pid for name, p in stack["procs"].items()},
        stack["settings"],
        conversations,
        seconds,
        speech=speech_wav,
        spoken_every=3,
        think_s=0.5,
        user_prefix="soak-ci",
    )
    print()
    print_result(result)
    turns = result["turns"]
    assert len(turns) >= conversations
    assert [t for t in turns if not t["ok"]] == []
    assert result["ledger_problems"] == []
    for name, m in result["memory"].items():
        assert m["growth_after_warm"] < 2.0, (name, m)
