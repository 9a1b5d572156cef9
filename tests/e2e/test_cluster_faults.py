"""Faults of a three-node JetStream cluster under live spoken and typed conversations.

The module runs its own stack (tests/faultkit.py) on three nats-servers in one cluster, every
stream and bucket at three replicas and every write synced to disk before it is acknowledged,
as deploy/ runs them. Every route and every client connection passes through a TCP proxy on
loopback (tests/netproxy.py): node i reaches node j's routes through a proxy of that pair, the
services reach each node through one of its own, so cutting a node's proxies cuts it off
without closing anything, as a partition does. Each test ends once every accepted turn has
ended in a reply with its audio (or a failure event the client saw) and the ledger balances,
and prints the recovery time; timings are printed, never asserted.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from ops import devstack
from services.common import subjects
from tests.client import Client
from tests.faultkit import WHOLE_DEADLINE_S, answered, connect, own_stack, typed, whole
from tests.netproxy import TcpProxy

pytestmark = [pytest.mark.e2e, pytest.mark.engine]

UNREACHABLE = "127.0.0.1:1"
"""What each node tells its peers its route address is: nothing listens there, so a node never
dials a peer it heard of from gossip directly, past that pair's proxy; the routes configured,
through the proxies, are the whole mesh."""
BUCKETS = [subjects.CANCEL_BUCKET, subjects.TURNS_BUCKET, subjects.TOOL_RESULTS_BUCKET]


@pytest.fixture(scope="module")
def clustered(tmp_path_factory, model_env):
    root = tmp_path_factory.mktemp("cluster-faults")
    cluster = devstack.NatsCluster(root / "nats")
    n = len(cluster.nodes)
    routes = {(i, j): TcpProxy(cluster.nodes[j].cluster.port).start() for i in range(n) for j in range(n) if i != j}
    doors = [TcpProxy(node.port).start() for node in cluster.nodes]
    try:
        cluster.start(route_port=lambda i, j: routes[i, j].port, advertise=UNREACHABLE)
        _wait(lambda: _meta_leader(cluster), 30, "a meta leader")
        url = cluster.url([door.port for door in doors])
        with own_stack(root, "cluster-faults", url, model_env, {"PARLEY_NATS_REPLICAS": "3"}) as stack:
            yield {**stack, "cluster": cluster, "routes": routes, "doors": doors}
    finally:
        cluster.stop()
        for proxy in [*routes.values(), *doors]:
            proxy.stop()


# --- reading the cluster ------------------------------------------------------------------------


def _jsz(cluster: devstack.NatsCluster) -> dict[str, dict]:
    """Each running node's JetStream page, by node name."""
    pages = {}
    for node in cluster.nodes:
        if node.proc is not None and node.proc.poll() is None:
            try:
                pages[node.cluster.name] = node.monitor("/jsz?accounts=true&streams=true")
            except Exception:
                pass  # starting or stopping
    return pages


def _meta_leader(cluster: devstack.NatsCluster) -> str | None:
    """The meta leader every running node names (None while they disagree: a node that has
    just rejoined may still name the one before)."""
    named = {page.get("meta_cluster", {}).get("leader") for page in _jsz(cluster).values()}
    return named.pop() if len(named) == 1 else None


def _streams(cluster: devstack.NatsCluster) -> dict[str, dict]:
    """Each stream's cluster info (leader and followers) as its leader tells it: only the
    leader knows whether its followers are current."""
    found: dict[str, dict] = {}
    for name, page in _jsz(cluster).items():
        for account in page.get("account_details", []):
            for stream in account.get("stream_detail", []):
                if stream.get("cluster", {}).get("leader") == name:
                    found[stream["name"]] = stream["cluster"]
    return found


def _node(cluster: devstack.NatsCluster, name: str) -> devstack.NatsServer:
    return next(node for node in cluster.nodes if node.cluster.name == name)


def _settled(cluster: devstack.NatsCluster) -> bool:
    """Every node up, a meta leader, and every stream led with all its replicas current."""
    streams = _streams(cluster)
    return (
        len(_jsz(cluster)) == len(cluster.nodes)
        and _meta_leader(cluster) is not None
        and len(streams) == len(subjects.STREAMS) + len(BUCKETS)
        and all(_current(s, len(cluster.nodes) - 1) for s in streams.values())
    )


def _current(stream: dict, followers: int) -> bool:
    replicas = stream.get("replicas", [])
    return len(replicas) == followers and all(r.get("current") for r in replicas)


def _wait(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.2)
    return value


async def _settle(cluster: devstack.NatsCluster, timeout: float = 60) -> float:
    """Until the cluster is whole again; a node an earlier test left down is started."""
    for node in cluster.nodes:
        if node.proc is None or node.proc.poll() is not None:
            await asyncio.to_thread(node.start)
    started = time.monotonic()
    await asyncio.to_thread(_wait, lambda: _settled(cluster), timeout, "settled cluster")
    return time.monotonic() - started


async def _live(clustered, users: list[str], speech_wav) -> tuple[Client, list[Client], asyncio.Task]:
    """A person speaking and typists whose replies are streaming: a conversation mid-turn."""
    speaker, *typists = await connect(clustered, users)
    assert speaker.received.events("session.started")[0]["speech_input"]
    speaking = asyncio.create_task(speaker.stream_wav(speech_wav))
    for n, c in enumerate(typists):
        await typed(c, f"Tell me something about clusters, part {n}")
    await typists[0].wait_for(lambda r: r.audio(), 60)
    return speaker, typists, speaking


async def _answer_time(client: Client, text: str, since: float) -> float:
    """Seconds from `since` until a turn typed now is answered with its audio stored: what
    the fault cost a person talking through it."""
    turn = await typed(client, text)
    assert (await answered(client, turn))["status"] == "complete"
    return time.monotonic() - since


async def _sent(client: Client, text: str, client_seq: int) -> tuple[str, int]:
    """A typed turn sent as a client following the protocol sends it: again under the same
    `client_seq` after a retryable `bus_unavailable`. Its user message id, and how many times
    it was sent again."""
    resent = 0
    while True:
        errors = len(client.received.events("error"))
        await client.send_json({"type": "text", "text": text, "client_seq": client_seq})
        outcome = await client.wait_for(
            lambda r, seen=errors: [e for e in r.events("user.message") if e["text"] == text]
            or [e for e in r.events("error")[seen:] if e["code"] == "bus_unavailable"],
            60,
        )
        if outcome[0]["type"] == "user.message":
            return outcome[0]["message_id"], resent
        resent += 1


async def _answered_after(clustered, clients: list[Client], speech_wav, label: str) -> Client:
    """New turns go the whole way: typed on every conversation, spoken on a new session."""
    after = [await typed(c, f"Still there after the {label}, part {n}?") for n, c in enumerate(clients)]
    newcomer = (await connect(clustered, [f"cluster-{label}-newcomer"]))[0]
    assert newcomer.received.events("session.started")[0]["speech_input"]
    await newcomer.stream_wav(speech_wav)
    spoken = await newcomer.wait_for(lambda r: r.events("transcript.final"), WHOLE_DEADLINE_S)
    for c, turn in zip([*clients, newcomer], [*after, spoken[0]["message_id"]], strict=True):
        assert (await answered(c, turn))["status"] == "complete"
    return newcomer


# --- the faults ---------------------------------------------------------------------------------


async def test_the_stream_leader_killed_mid_turn(clustered, speech_wav):
    """kill -9 of the node leading PARLEY_TTS while replies stream and a person speaks: the two
    nodes left elect new leaders for its streams, every service on it moves to another, and
    every accepted turn ends whole; the node restarted catches up."""
    cluster: devstack.NatsCluster = clustered["cluster"]
    await _settle(cluster)
    speaker, typists, speaking = await _live(clustered, ["cl-leader-speaker", "cl-leader-a", "cl-leader-b"], speech_wav)
    victim = _streams(cluster)["PARLEY_TTS"]["leader"]
    led = sorted(name for name, s in _streams(cluster).items() if s["leader"] == victim)
    _node(cluster, victim).kill()
    killed_at = time.monotonic()
    answered_s = await _answer_time(typists[1], "And now, right after the kill?", killed_at)
    await speaking
    newcomer = await _answered_after(clustered, typists, speech_wav, "leader-kill")
    clients = [speaker, *typists, newcomer]
    whole_s = await whole(clustered, clients, killed_at)
    _node(cluster, victim).start()
    caught_up_s = await _settle(cluster)
    print(
        f"killed {victim} (leading {led}); a turn typed at the kill answered {answered_s:.1f} s after it; "
        f"whole {whole_s:.1f} s after; restarted, caught up in {caught_up_s:.1f} s"
    )
    for c in clients:
        await c.close()


async def test_the_meta_leader_killed_while_sessions_start(clustered, speech_wav):
    """kill -9 of the meta leader (the node that creates streams and consumers), then a new
    session at once, whose STT worker and gateway need new consumers. The turns under way go
    on while the others elect a meta leader. The session started during the election gets
    speech input, or (when its STT worker could not make its consumer within the gateway's
    open attempts) a retryable `stt_unavailable` and typed text; a session started after the
    election hears its person."""
    cluster: devstack.NatsCluster = clustered["cluster"]
    await _settle(cluster)
    speaker, typists, speaking = await _live(clustered, ["cl-meta-speaker", "cl-meta-a"], speech_wav)
    victim = await asyncio.to_thread(_wait, lambda: _meta_leader(cluster), 30, "agreed meta leader")
    _node(cluster, victim).kill()
    killed_at = time.monotonic()
    during = (await connect(clustered, ["cl-meta-during"]))[0]
    started_s = time.monotonic() - killed_at
    if during.received.events("session.started")[0]["speech_input"]:
        await during.stream_wav(speech_wav)
        heard = await during.wait_for(lambda r: r.events("transcript.final"), WHOLE_DEADLINE_S)
        turn = heard[0]["message_id"]
        outcome = "with speech input"
    else:
        (error,) = [e for e in during.received.events("error") if e["code"] == "stt_unavailable"]
        assert error["retryable"]
        turn = await typed(during, "Typed, since speech input is unavailable")
        outcome = "without speech input (stt_unavailable)"
    assert (await answered(during, turn))["status"] == "complete"
    answered_s = time.monotonic() - killed_at
    await speaking
    later = await _answered_after(clustered, typists, speech_wav, "meta-kill")
    elected = _meta_leader(cluster)
    clients = [speaker, *typists, during, later]
    whole_s = await whole(clustered, clients, killed_at)
    _node(cluster, victim).start()
    caught_up_s = await _settle(cluster)
    print(
        f"killed meta leader {victim} ({elected} elected); a session started {started_s:.1f} s after the kill "
        f"{outcome}, its turn answered {answered_s:.1f} s after the kill; whole {whole_s:.1f} s after; "
        f"restarted, caught up in {caught_up_s:.1f} s"
    )
    for c in clients:
        await c.close()


async def test_a_node_cut_off_for_ten_seconds(clustered, speech_wav):
    """The node leading PARLEY_TURNS cut off for 10 s, its routes and its client port alike,
    every connection held open: its clients hear nothing until their pings go unanswered and
    they move, the two nodes left elect leaders, and when it comes back it rejoins as a
    follower. Nothing accepted is lost on either side of the cut."""
    cluster: devstack.NatsCluster = clustered["cluster"]
    await _settle(cluster)
    speaker, typists, speaking = await _live(clustered, ["cl-cut-speaker", "cl-cut-a", "cl-cut-b"], speech_wav)
    victim = _streams(cluster)["PARLEY_TURNS"]["leader"]
    k = [node.cluster.name for node in cluster.nodes].index(victim)
    cut = [p for (i, j), p in clustered["routes"].items() if k in (i, j)] + [clustered["doors"][k]]
    for proxy in cut:
        proxy.cut()
    cut_at = time.monotonic()
    try:
        sending = asyncio.create_task(_sent(typists[1], "Are you there while a node is cut off?", 7))
        await asyncio.sleep(10)
    finally:
        for proxy in cut:
            proxy.mend()
    mended_at = time.monotonic()
    during, resent = await sending
    await speaking
    assert (await answered(typists[1], during))["status"] == "complete"
    answered_s = time.monotonic() - cut_at
    newcomer = await _answered_after(clustered, typists, speech_wav, "cut")
    clients = [speaker, *typists, newcomer]
    whole_s = await whole(clustered, clients, mended_at)
    caught_up_s = await _settle(cluster)
    print(
        f"cut off {victim} for {mended_at - cut_at:.1f} s; a turn typed at the cut answered {answered_s:.1f} s "
        f"after it ({resent} resent after bus_unavailable); whole {whole_s:.1f} s after it was mended; "
        f"caught up {caught_up_s:.1f} s"
    )
    for c in clients:
        await c.close()


async def test_a_rolling_restart_of_every_node_under_load(clustered, speech_wav):
    """Each node in turn stopped (SIGTERM) and started again once the cluster has settled, as
    a StatefulSet rolls, while typists keep sending turns and a person keeps speaking; every
    accepted turn ends whole."""
    cluster: devstack.NatsCluster = clustered["cluster"]
    await _settle(cluster)
    speaker, *typists = await connect(clustered, ["cl-roll-speaker", "cl-roll-a", "cl-roll-b"])
    rolling = asyncio.Event()

    async def type_on(c: Client, n: int) -> None:
        turn = 0
        while not rolling.is_set():
            await typed(c, f"Rolling turn {turn} of typist {n}")
            turn += 1
            await asyncio.sleep(3)  # about what this CPU's TTS keeps up with beside the rest

    async def speak_on() -> None:
        while not rolling.is_set():
            await speaker.stream_wav(speech_wav)

    load = [asyncio.create_task(type_on(c, n)) for n, c in enumerate(typists)] + [asyncio.create_task(speak_on())]
    started = time.monotonic()
    steps = []
    for node in cluster.nodes:
        await asyncio.to_thread(node.stop)
        await asyncio.sleep(2)
        await asyncio.to_thread(node.start)
        steps.append(f"{node.cluster.name} settled {await _settle(cluster):.1f} s after its start")
    rolling.set()
    await asyncio.gather(*load)
    ended_at = time.monotonic()
    clients = [speaker, *typists]
    whole_s = await whole(clustered, clients, ended_at)
    turns = sum(len(c.received.events("user.message")) + len(c.received.events("transcript.final")) for c in clients)
    print(
        f"rolled 3 nodes in {ended_at - started:.1f} s ({'; '.join(steps)}); {turns} turns accepted; "
        f"whole {whole_s:.1f} s after the last node settled"
    )
    for c in clients:
        await c.close()
