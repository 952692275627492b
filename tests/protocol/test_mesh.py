"""Mesh scenarios on the simulator: handshake, transitive mesh, failures, partitions."""

from __future__ import annotations

import pytest

from fabric.protocol import mesh as m
from fabric.testing.meshsim import MeshSim

N5 = [f"n{i}@127.0.0.1:{9100 + i}" for i in range(1, 6)]


def downs(sim: MeshSim, node: str, peer: str) -> list[str]:
    return [e[2] for e in sim.events[node] if e[0] == "down" and e[1] == peer]


def connects(sim: MeshSim, node: str) -> list[tuple[object, ...]]:
    return [e for e in sim.events[node] if e[0] == "connect"]


def test_two_nodes_handshake_and_nodeup_on_both_sides() -> None:
    a, b = N5[:2]
    sim = MeshSim([a, b])
    sim.connect(a, b)
    sim.run_for(0.1)
    assert sim.core(a).nodes() == [b]
    assert sim.core(b).nodes() == [a]
    assert ("connect", b, True, "ok") in sim.events[a]
    assert ("up", a) in sim.events[b]


def test_five_node_transitive_mesh_from_one_seed_each() -> None:
    sim = MeshSim(N5, seed=3)
    # a chain: each node knows only its predecessor
    for prev, node in zip(N5, N5[1:], strict=False):
        sim.connect(node, prev)
    took = sim.run_until(lambda: sim.full_mesh())
    assert took < 1.0
    for n in N5:
        assert len([e for e in sim.events[n] if e[0] == "up"]) == 4


def test_wrong_cookie_refused_on_both_sides() -> None:
    a, b = N5[:2]
    sim = MeshSim([a, b], cookies={b: b"other"})
    sim.connect(a, b)
    sim.run_for(0.5)
    assert sim.core(a).nodes() == [] and sim.core(b).nodes() == []
    assert ("connect", b, False, "bad_cookie") in sim.events[a]
    assert sim.core(a).stats.refused.get("bad_cookie") == 1
    assert sim.core(b).stats.refused.get("bad_cookie") == 1
    assert not sim.core(b).peers and not sim.core(a).peers


def test_self_name_refused() -> None:
    a, clone = N5[0], "n1@127.0.0.1:9300"
    sim = MeshSim([a, clone])
    sim.connect(clone, a)
    sim.run_for(0.1)
    assert ("connect", a, False, "name_in_use") in sim.events[clone]


@pytest.mark.parametrize("seed", range(5))
def test_simultaneous_connect_ends_in_one_session(seed: int) -> None:
    a, b = N5[:2]
    sim = MeshSim([a, b], seed=seed)
    sim.connect(a, b)
    sim.connect(b, a)
    sim.run_for(0.5)
    assert sim.core(a).nodes() == [b] and sim.core(b).nodes() == [a]
    assert [e for e in sim.events[a] if e[0] == "up"] == [("up", b)]
    assert [e for e in sim.events[b] if e[0] == "up"] == [("up", a)]
    assert ("connect", b, True, "ok") in sim.events[a]
    assert ("connect", a, True, "ok") in sim.events[b]
    assert not [e for e in sim.events[a] + sim.events[b] if e[0] == "down"]
    sim.run_for(3.0)  # and it stays up
    assert sim.core(a).nodes() == [b]


def test_kill_gives_connection_closed_at_once() -> None:
    sim = MeshSim(N5[:3])
    sim.connect(N5[1], N5[0])
    sim.connect(N5[2], N5[0])
    sim.run_until(lambda: sim.full_mesh())
    sim.kill(N5[2])
    sim.run_for(0.01)
    assert downs(sim, N5[0], N5[2]) == ["connection_closed"]
    assert downs(sim, N5[1], N5[2]) == ["connection_closed"]


def test_frozen_peer_times_out_and_returns_after_thaw() -> None:
    a, b = N5[:2]
    sim = MeshSim([a, b], heartbeat_interval=0.2, heartbeat_timeout=1.0)
    sim.connect(a, b)
    sim.run_for(0.5)
    sim.freeze(b)
    detected = sim.run_until(lambda: bool(downs(sim, a, b)), timeout=5)
    assert downs(sim, a, b) == ["heartbeat_timeout"]
    # last heartbeat up to one interval before the freeze; ticks every 50 ms
    assert 1.0 - 0.2 <= detected <= 1.0 + 0.1
    sim.run_for(2.0)
    sim.thaw(b)
    sim.run_until(lambda: sim.full_mesh([a, b]), timeout=5)
    sim.run_for(3.0)
    assert sim.full_mesh([a, b])
    # b learns on waking that a dropped it: a REFUSE from a live a, not a death.
    assert downs(sim, b, a) == ["peer_reset"]


def test_a_live_peer_that_redials_ends_the_old_session_as_reset() -> None:
    # a is frozen and cut off: b times a out and its REFUSE is lost, then b's redial
    # reaches a, still holding the old session, when it wakes. Same creation: b lives.
    a, b = N5[:2]
    sim = MeshSim([a, b], heartbeat_interval=0.2, heartbeat_timeout=1.0)
    sim.connect(a, b)
    sim.run_until(lambda: sim.full_mesh())
    sim.freeze(a)
    sim.cut(a, b)
    sim.run_for(2.0)
    assert downs(sim, b, a) == ["heartbeat_timeout"]
    sim.heal()
    sim.run_for(1.5)  # b's next attempt waits in a's backlog
    sim.thaw(a)
    sim.run_until(lambda: sim.full_mesh(), timeout=5)
    assert downs(sim, a, b) == ["peer_reset"]


def test_a_peer_back_as_a_new_run_ends_the_old_session_as_closed() -> None:
    # b's machine loses power (no connection closes) and b starts again at once: a still
    # holds the old session when the new one authenticates, and the old run is dead.
    a, b = N5[:2]
    sim = MeshSim([a, b])
    sim.connect(b, a)
    sim.run_until(lambda: sim.full_mesh())
    sim.kill(b, closes=False)
    sim.run_for(0.05)
    sim.restart(b)
    sim.connect(b, a)
    sim.run_until(lambda: sim.core(a).creation_of(b) == sim.core(b).creation, timeout=0.5)
    assert downs(sim, a, b) == ["connection_closed"]


def test_a_handshake_that_progresses_near_its_deadline_completes_without_a_flap() -> None:
    # An attempt's HELLO can sit in a DEALER while the network is cut and reach the peer
    # only at the heal, late in the attempt's time. Each step that arrives is progress:
    # the CHALLENGE gives the dialler a fresh deadline, so the BIND that follows is
    # taken, instead of the peer's new session being refused as a stranger's (its side
    # would see the session flap: up, then peer_reset).
    a, b = N5[:2]
    sim = MeshSim([a, b], latency=0.3, handshake_timeout=1.0)
    sim.connect(a, b)  # HELLO at 0.3, CHALLENGE back at 0.6, BIND back at 1.2 > 1.0
    sim.run_for(3.0)
    assert sim.full_mesh()
    assert downs(sim, a, b) == [] and downs(sim, b, a) == []
    assert ("connect", b, True, "ok") in sim.events[a]


def test_split_halves_then_heal() -> None:
    sim = MeshSim(N5, seed=7)
    for node in N5[1:]:
        sim.connect(node, N5[0])
    sim.run_until(lambda: sim.full_mesh())
    left, right = N5[:2], N5[2:]
    sim.partition(left, right)
    sim.run_until(lambda: sim.full_mesh(left) and sim.full_mesh(right)
                  and all(sim.core(n).nodes() == sorted(set(left) - {n}) for n in left))
    for n in left:
        for p in right:
            assert downs(sim, n, p) == ["heartbeat_timeout"]
    sim.heal()
    took = sim.run_until(lambda: sim.full_mesh())
    assert took < 2.0  # reconnect backoff is capped at 1 s


def test_one_way_cut_ends_symmetric_then_heals() -> None:
    a, b, c = N5[:3]
    sim = MeshSim([a, b, c])
    sim.connect(b, a)
    sim.connect(c, a)
    sim.run_until(lambda: sim.full_mesh())
    sim.cut_oneway(a, b)
    sim.run_until(lambda: b not in sim.core(a).nodes() and a not in sim.core(b).nodes())
    sim.run_for(2.0)
    assert b not in sim.core(a).nodes() and a not in sim.core(b).nodes()
    assert sim.core(c).nodes() == [a, b]
    sim.heal()
    sim.run_until(lambda: sim.full_mesh(), timeout=5)


def test_flapping_link_converges() -> None:
    a, b, c = N5[:3]
    sim = MeshSim([a, b, c], seed=11)
    sim.connect(b, a)
    sim.connect(c, b)
    sim.run_until(lambda: sim.full_mesh())
    for _ in range(6):
        sim.cut(a, b)
        sim.run_for(0.7)
        sim.heal()
        sim.run_for(0.3)
    sim.run_until(lambda: sim.full_mesh(), timeout=5)
    sim.run_for(3.0)
    assert sim.full_mesh()


def test_a_failed_transitive_connect_is_retried() -> None:
    a, b, c = N5[:3]
    sim = MeshSim([a, b, c])
    sim.cut(a, c)  # a and c learn of each other through b but cannot talk yet
    sim.connect(b, a)
    sim.connect(c, b)
    sim.run_for(5.0)  # longer than the handshake timeout: the first attempts failed
    assert c not in sim.core(a).nodes() and a not in sim.core(c).nodes()
    sim.heal()
    sim.run_until(lambda: sim.full_mesh(), timeout=3)


def test_restarted_node_rejoins_with_new_creation() -> None:
    a, b = N5[:2]
    sim = MeshSim([a, b])
    sim.connect(b, a)
    sim.run_for(0.2)
    old = sim.core(b).creation
    sim.kill(b)
    sim.run_for(0.05)
    sim.restart(b)
    sim.run_until(lambda: sim.full_mesh(), timeout=5)  # a retries the lost peer
    assert sim.core(b).creation != old
    assert sim.core(a).peers[b].creation == sim.core(b).creation


def test_graceful_stop_says_goodbye() -> None:
    a, b = N5[:2]
    sim = MeshSim([a, b])
    sim.connect(b, a)
    sim.run_for(0.2)
    sim.execute(b, sim.core(b).stop(sim.now))
    sim.run_for(0.1)
    assert downs(sim, a, b) == ["shutdown"]
    assert sim.core(b).all_acked()
    sim.run_for(3.0)
    assert sim.core(a).nodes() == []  # no reconnect after a goodbye


def test_hidden_node_connects_only_where_told() -> None:
    a, b, h = N5[:3]
    sim = MeshSim([a, b, h], hidden=frozenset({h}))
    sim.connect(b, a)
    sim.connect(h, a)
    sim.run_for(1.0)
    assert sim.core(a).nodes() == [b]
    assert sim.core(a).hidden_nodes() == [h]
    assert sim.core(b).nodes() == [a] and sim.core(b).hidden_nodes() == []
    assert sim.core(h).nodes() == [a]


def test_ping_pong() -> None:
    a, b = N5[:2]
    sim = MeshSim([a, b])
    sim.connect(a, b)
    sim.run_for(0.1)
    sim.execute(a, sim.core(a).ping(b, 42))
    sim.run_for(0.1)
    assert ("pong", b, 42) in sim.events[a]


def test_connect_to_nothing_is_refused_fast() -> None:
    a = N5[0]
    sim = MeshSim([a])
    sim.connect(a, "ghost@127.0.0.1:9999")
    sim.run_for(0.1)
    assert connects(sim, a) == [("connect", "ghost@127.0.0.1:9999", False, "connection_refused")]


def test_stranger_batch_gets_not_connected() -> None:
    sim = MeshSim([N5[0]])
    effects = sim.core(N5[0]).router_frame(b"x", [[1, "junk"]], 0.0)
    assert effects == [m.RouterSend(b"x", ["refuse", "not_connected", ""])]


def test_a_transport_refusal_fails_that_attempt_with_its_reason() -> None:
    a, b = N5[:2]
    core = MeshSim([a]).core(a)
    core.connect(b, 0.0)
    effects = core.transport_refused(b, "key_refused", 0.1)
    assert m.ConnectDone(b, False, "key_refused") in effects
    assert not core.knows(b) and core.stats.refused["key_refused"] == 1


def test_a_refused_dial_back_ends_the_session_and_tells_that_peer_why() -> None:
    # We accepted b's session; our DEALER's dial-back (BIND) is refused by b's ZAP: the
    # session ends without a retry, and b hears the reason on its own channel.
    a, b = N5[:2]
    sim = MeshSim([a, b])
    sim.connect(b, a)
    sim.run_for(0.1)
    core = sim.core(a)
    identity = core.identity_of(b)
    effects = core.transport_refused(b, "security_mismatch", sim.now)
    assert effects[0] == m.RouterSend(identity, ["refuse", "security_mismatch", ""])
    assert m.PeerDown(b, "disconnect", False) in effects
    assert not core.knows(b) and b not in core.reconnecting()
    assert core.transport_refused(b, "key_refused", sim.now) == []  # nothing left


def test_one_source_cannot_take_every_handshake_slot() -> None:
    # Peers whose transport key is admitted reach the handshake: one host's flood of
    # HELLOs (fresh identities and names) is bounded, so another host still gets in.
    from fabric.protocol import handshake as hs

    core = MeshSim([N5[0]]).core(N5[0])

    def hello(name: str, identity: bytes, source: str) -> list[object]:
        frame = hs.Hello(hs.PROTOCOL_VERSION, name, 1, 0, 9000, bytes(hs.CHALLENGE_SIZE))
        return core.router_frame(identity, frame.frame(), 0.0, source)

    def challenged(effects: list[object]) -> bool:
        return any(isinstance(e, m.RouterSend) and e.frame[0] == "challenge"
                   for e in effects)

    flood = [challenged(hello(f"s{i}@10.0.0.66:{10000 + i}", b"s%d" % i, "10.0.0.66"))
             for i in range(m.MAX_PENDING_ACCEPTS + 10)]
    assert sum(flood) == m.MAX_ACCEPTS_PER_SOURCE < m.MAX_PENDING_ACCEPTS
    assert core.stats.refused["busy"] == len(flood) - m.MAX_ACCEPTS_PER_SOURCE
    assert challenged(hello("real@10.0.0.5:9100", b"real", "10.0.0.5"))


@pytest.mark.parametrize("junk", [None, 1, "hello", ["hello"], ["hello", 1, 2, 3, 4, 5, 6],
                                  ["bind", "x", 1], ["answer", b"x"], [b"\x00"], {}])
def test_garbage_handshake_frames_are_counted_not_fatal(junk: object) -> None:
    core = MeshSim([N5[0]]).core(N5[0])
    core.router_frame(b"id", junk, 0.0)
    assert not core.peers and not core.authenticated
    assert core.stats.bad_frames >= 1


@pytest.mark.parametrize("seed", range(8))
def test_everyone_connects_to_everyone_at_once(seed: int) -> None:
    # Crossing HELLOs in every pair at once (and transitive connects on top) must end in
    # one session per pair without waiting out a handshake timeout.
    names = [f"m{i}@127.0.0.1:{9300 + i}" for i in range(8)]
    sim = MeshSim(names, seed=seed, jitter=0.01)
    order = [(a, b) for a in names for b in names if a != b]
    sim.rng.shuffle(order)
    for a, b in order:
        sim.connect(a, b)
    took = sim.run_until(lambda: sim.full_mesh(), timeout=10)
    assert took < 1.0
    for n in names:
        assert len([e for e in sim.events[n] if e[0] == "up"]) == 7


@pytest.mark.parametrize("seed", range(12))
def test_many_nodes_joining_one_seed_form_the_mesh_quickly(seed: int) -> None:
    # Each newcomer learns the others from the seed's peer list while they learn of it:
    # connects cross, and some arrive while a handshake from the same peer is pending.
    names = [f"j{i}@127.0.0.1:{9400 + i}" for i in range(12)]
    sim = MeshSim(names, seed=seed, jitter=0.02)
    for name in names[1:]:
        sim.schedule(sim.rng.random() * 0.05, lambda n=name: sim.connect(n, names[0]))
    took = sim.run_until(lambda: sim.full_mesh(), timeout=20)
    assert took < 1.5


# -- unique names: both sides refuse a second holder of a base name ---------------------------

P_A, P_B = "p@127.0.0.1:9501", "p@127.0.0.1:9502"


def p_holders(sim: MeshSim, node: str) -> list[str]:
    """The ``p@127.0.0.1`` nodes that ``node`` lists."""
    return [n for n in sim.core(node).nodes() if n.startswith("p@127.0.0.1:")]


def test_dialling_a_second_holder_of_a_name_is_refused_before_dialling() -> None:
    a = N5[0]
    sim = MeshSim([a, P_A, P_B])
    sim.connect(a, P_A)
    sim.run_for(0.1)
    sim.connect(a, P_B)
    sim.run_for(0.5)
    assert ("connect", P_B, False, "name_in_use") in sim.events[a]
    assert sim.core(a).nodes() == [P_A]
    assert sim.core(a).name_holder(P_B) == P_A  # the table still names the first holder
    assert sim.core(a).stats.refused.get("name_in_use") == 1
    assert not [e for e in sim.events[P_B] if e[0] == "up"]  # B never saw a HELLO
    # and B dialling a gets the same answer from the accepting side
    sim.connect(P_B, a)
    sim.run_for(0.5)
    assert ("connect", a, False, "name_in_use") in sim.events[P_B]
    assert sim.core(a).nodes() == [P_A]
    assert sim.core(a).stats.refused.get("name_in_use") == 2


def test_a_node_does_not_dial_its_own_base_name() -> None:
    sim = MeshSim([P_A, P_B])
    sim.connect(P_A, P_B)
    sim.run_for(0.1)
    assert ("connect", P_B, False, "name_in_use") in sim.events[P_A]
    assert not sim.core(P_B).peers  # nothing reached it


@pytest.mark.parametrize("seed", range(6))
def test_two_holders_dialling_one_node_at_once_admit_one(seed: int) -> None:
    z = N5[0]
    sim = MeshSim([z, P_A, P_B], seed=seed, jitter=0.002)
    sim.connect(P_A, z)
    sim.connect(P_B, z)
    sim.connect(z, P_A if seed % 2 else P_B)  # and z dials one of them meanwhile
    sim.run_for(1.0)
    assert len(p_holders(sim, z)) == 1
    holder = p_holders(sim, z)[0]
    loser = P_B if holder == P_A else P_A
    assert sim.core(z).name_holder(loser) == holder
    assert sim.core(loser).nodes() == []
    assert ("connect", z, False, "name_in_use") in sim.events[loser]


@pytest.mark.parametrize("seed", range(6))
def test_merging_two_clusters_that_both_hold_a_name_keeps_each_holder(seed: int) -> None:
    # Cluster 1: x and p@..:9501; cluster 2: y, w and p@..:9502. x dials y: the peer
    # lists that cross carry the other p, which every node refuses to dial.
    x, y, w = N5[0], N5[1], N5[2]
    sim = MeshSim([x, y, w, P_A, P_B], seed=seed, jitter=0.002)
    sim.connect(P_A, x)
    sim.connect(w, y)
    sim.connect(P_B, y)
    sim.run_until(lambda: sim.full_mesh([x, P_A]) and sim.full_mesh([y, w, P_B]))
    sim.connect(x, y)

    def merged() -> bool:
        return all(set(sim.core(n).nodes()) >= {x, y, w} - {n} for n in (x, y, w))

    sim.run_until(merged)
    sim.run_for(3.0)  # retries and late peer lists have had every chance
    assert merged()
    for node in (x, y, w, P_A, P_B):
        assert len(p_holders(sim, node)) <= 1, (node, sim.core(node).nodes())
    assert p_holders(sim, x) == [P_A] and sim.core(x).name_holder(P_B) == P_A
    for node in (y, w):
        assert p_holders(sim, node) == [P_B] and sim.core(node).name_holder(P_A) == P_B
    assert not sim.core(P_A).is_up(P_B) and not sim.core(P_B).is_up(P_A)
    for node in (x, y, w):
        assert sim.core(node).stats.refused.get("name_in_use", 0) >= 1
        assert not sim.core(node).reconnecting()  # nothing retries the other holder


# -- partitions of any length heal ---------------------------------------------------------------

WINDOW, FAST_CAP, IDLE_CAP = 1.0, 0.5, 2.0
# The documented bound from the heal to a full mesh (ARCHITECTURE.md §6): one capped pause
# (at least the 1 s a retry's handshake may wait), a tick, and the handshakes themselves.
HEAL_BOUND = max(IDLE_CAP, m.RETRY_HANDSHAKE_TIMEOUT) + 0.05 + 0.1
RETRYING = {"reconnect_window": WINDOW, "reconnect_max_backoff": FAST_CAP,
            "reconnect_idle_backoff": IDLE_CAP}


def test_partition_ten_times_the_window_heals_within_the_bound() -> None:
    sim = MeshSim(N5, seed=5, **RETRYING)
    for node in N5[1:]:
        sim.connect(node, N5[0])
    sim.run_until(lambda: sim.full_mesh())
    left, right = N5[:2], N5[2:]
    sim.partition(left, right)
    start = sim.now
    pauses: list[float] = []
    for _ in range(int(10 * WINDOW / 0.05)):  # 10 windows, watching every retry plan
        sim.run_for(0.05)
        for n in N5:
            for _peer, at in sim.core(n).reconnecting().items():
                pauses.append(at - sim.now)
    assert sim.now - start >= 10 * WINDOW
    assert sim.full_mesh(left) and sim.full_mesh(right)
    # every node still retries every peer across the cut, and never waits longer than the cap
    for n in left:
        assert sorted(sim.core(n).reconnecting()) == right
    for n in right:
        assert sorted(sim.core(n).reconnecting()) == left
    assert pauses and max(pauses) <= IDLE_CAP
    # the pauses grew past the fast cap once the window was over
    assert max(pauses) > FAST_CAP
    sim.heal()
    took = sim.run_until(lambda: sim.full_mesh(), timeout=10)
    assert took <= HEAL_BOUND
    for n in N5:
        assert not sim.core(n).reconnecting()


@pytest.mark.parametrize("seed", range(4))
def test_a_long_clean_split_heals_whatever_the_seed(seed: int) -> None:
    names = [f"s{i}@127.0.0.1:{9600 + i}" for i in range(6)]
    sim = MeshSim(names, seed=seed, jitter=0.005, **RETRYING)
    for node in names[1:]:
        sim.connect(node, names[0])
    sim.run_until(lambda: sim.full_mesh())
    sim.partition(names[:3], names[3:])
    sim.run_for(25 * WINDOW)
    sim.heal()
    assert sim.run_until(lambda: sim.full_mesh(), timeout=10) <= HEAL_BOUND


def test_retries_of_one_island_are_spread_by_jitter() -> None:
    sim = MeshSim(N5, seed=2, **RETRYING)
    for node in N5[1:]:
        sim.connect(node, N5[0])
    sim.run_until(lambda: sim.full_mesh())
    sim.partition(N5[:2], N5[2:])
    sim.run_for(5 * WINDOW)
    plans = {at for n in N5 for at in sim.core(n).reconnecting().values()}
    assert len(plans) == 12  # 2 x 3 peers on each side, each planned at its own time


def test_give_up_forgets_a_lost_peer_when_configured() -> None:
    a, b = N5[:2]
    sim = MeshSim([a, b], reconnect_give_up=3.0, **RETRYING)
    sim.connect(a, b)
    sim.run_for(0.2)
    sim.cut(a, b)
    sim.run_for(2.0)
    assert list(sim.core(a).reconnecting()) == [b]
    sim.run_for(3.0)
    assert not sim.core(a).reconnecting() and not sim.core(b).reconnecting()
    assert any(log.event == "reconnect_given_up" for log in sim.logs[a])
    sim.heal()
    sim.run_for(5.0)
    assert sim.core(a).nodes() == [] and sim.core(b).nodes() == []


def test_disconnect_forgets_a_peer_being_retried() -> None:
    a, b = N5[:2]
    sim = MeshSim([a, b], **RETRYING)
    sim.connect(a, b)
    sim.run_for(0.2)
    sim.cut(a, b)
    sim.run_until(lambda: b in sim.core(a).reconnecting())
    sim.execute(a, sim.core(a).disconnect(b, sim.now))
    assert b not in sim.core(a).reconnecting()


def test_disconnect_during_a_learned_attempt_plans_no_retry() -> None:
    a = N5[0]
    core = MeshSim([a]).core(a)
    core.learn("ghost@127.0.0.1:9999", 0.0)  # an automatic attempt, in flight
    assert core.knows("ghost@127.0.0.1:9999")
    core.disconnect("ghost@127.0.0.1:9999", 0.01)
    assert core.reconnecting() == {} and not core.knows("ghost@127.0.0.1:9999")


def test_a_learned_name_is_retried_until_its_node_starts() -> None:
    # Discovery's path: a name that does not answer yet is kept and tried again.
    a, b = N5[:2]
    sim = MeshSim([a, b], **RETRYING)
    sim.kill(b)
    sim.learn(a, b)
    sim.run_for(10 * WINDOW)
    assert ("connect", b, False, "connection_refused") in sim.events[a]
    assert list(sim.core(a).reconnecting()) == [b]
    sim.restart(b)
    assert sim.run_until(lambda: sim.full_mesh(), timeout=10) <= HEAL_BOUND


def test_a_lost_peer_whose_name_was_taken_is_not_retried() -> None:
    a = N5[0]
    sim = MeshSim([a, P_A, P_B], **RETRYING)
    sim.connect(a, P_A)
    sim.run_for(0.2)
    sim.kill(P_A)
    sim.run_for(0.1)
    assert list(sim.core(a).reconnecting()) == [P_A]
    sim.connect(P_B, a)  # a new node with the same base name, on another port
    sim.run_for(3.0)
    assert sim.core(a).nodes() == [P_B]
    assert not sim.core(a).reconnecting()
    assert any(log.event == "reconnect_abandoned" for log in sim.logs[a])


def test_block_cuts_a_node_off_until_the_block_ends() -> None:
    a, b, c = N5[:3]
    sim = MeshSim([a, b, c], seed=3, **RETRYING)
    sim.connect(b, a)
    sim.connect(c, a)
    sim.run_until(lambda: sim.full_mesh())
    start, mark = sim.now, len(sim.events[a])
    sim.block(a, b, 5.0)
    sim.block(a, c, 5.0)
    sim.run_for(0.1)
    assert ("down", b, "blocked") in [e[:3] for e in sim.events[a]]
    assert ("down", a, "peer_reset") in [e[:3] for e in sim.events[b]]
    # b and c keep retrying a and tell each other about it; a refuses them all.
    sim.run_for(4.5)
    assert sim.core(a).nodes() == [] and sim.core(b).nodes() == [c]
    assert sim.core(c).nodes() == [b]
    assert sorted(sim.core(a).blocked(sim.now)) == [b, c]
    assert sim.core(b).stats.refused.get("blocked", 0) > 0
    assert not [e for e in sim.events[a][mark:] if e[0] == "up"]
    sim.run_until(lambda: sim.full_mesh(), timeout=10)
    assert start + 5.0 <= sim.now <= start + 5.0 + HEAL_BOUND
    assert sim.core(a).blocked(sim.now) == {}


def test_unblock_heals_at_once() -> None:
    a, b = N5[:2]
    sim = MeshSim([a, b], seed=4, **RETRYING)
    sim.connect(a, b)
    sim.run_until(lambda: sim.full_mesh())
    sim.block(a, b, 3600.0)
    sim.run_for(2.0)
    assert sim.core(a).nodes() == []
    sim.unblock(a, b)
    assert sim.run_until(lambda: sim.full_mesh(), timeout=10) <= HEAL_BOUND
