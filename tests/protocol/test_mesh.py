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


def test_duplicate_name_refused() -> None:
    a, b, dup = N5[0], N5[1], "n2@127.0.0.1:9200"
    sim = MeshSim([a, b, dup])
    sim.connect(a, b)
    sim.run_for(0.1)
    sim.connect(dup, a)
    sim.run_for(0.1)
    assert ("connect", a, False, "name_in_use") in sim.events[dup]
    assert sim.core(a).nodes() == [b]


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
    sim._exec(b, sim.core(b).stop(sim.now))
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
    sim._exec(a, sim.core(a).ping(b, 42))
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
        sim._after(sim.rng.random() * 0.05, lambda n=name: sim.connect(n, names[0]))
    took = sim.run_until(lambda: sim.full_mesh(), timeout=20)
    assert took < 1.5
