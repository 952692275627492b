"""Leader election on global names: races, failover, fencing terms, split brain.

Driven through the deterministic service simulator with payloads crossing the real codec.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabric.errors import LocalProtocolError
from fabric.protocol.codec import Codec
from fabric.protocol.effects import Send
from fabric.protocol.events import LeaderElected, LeaderLost
from fabric.protocol.global_ import GlobalCore
from fabric.protocol.leader import LeaderElection, leader_name
from fabric.testing import ServiceSim
from fabric.types import Pid

A, B, C = NAMES = ["a@h:1", "b@h:2", "c@h:3"]
G = "jobs"


# What the election plug-in answers; everything else is the global core's.
ELECTION_API = {"stand", "resign", "leader", "max_term", "candidates"}


class Wire:
    """A global core with the election plug-in, as the node hosts them, seen as one
    object by the simulator; every payload the core sends crosses the real codec."""

    def __init__(self, core: GlobalCore, election: LeaderElection) -> None:
        self.core = core
        self.election = election
        self.service = core.service
        self.codec = Codec()

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self.election if attr in ELECTION_API else self.core, attr)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            result = value(*args, **kwargs)
            if not isinstance(result, list):
                return result
            return [
                Send(e.peer, self.codec.decode(self.codec.encode(e.payload)))
                if isinstance(e, Send)
                else e
                for e in result
            ]

        return call


def make_sim(names: Iterable[str] = NAMES, seed: int = 1) -> ServiceSim:
    def factory(name: str, creation: int) -> Wire:
        election = LeaderElection()
        return Wire(GlobalCore(name, creation, seed=creation, plugin=election), election)

    return ServiceSim(factory, names, seed=seed)


def up(sim: ServiceSim) -> list[str]:
    return sim.live_nodes()


def leaders(sim: ServiceSim, group: Any = G) -> set[tuple[Pid, int] | None]:
    return {sim.core(n).leader(group) for n in up(sim)}


def the_leader(sim: ServiceSim, group: Any = G) -> tuple[Pid, int]:
    """The one (leader, term) every up node agrees on."""
    (only,) = leaders(sim, group)
    assert only is not None
    return only


def elected(sim: ServiceSim, pid: Pid) -> list[tuple[Pid, int]]:
    """The (leader, term) announcements a candidate received, in order."""
    return [(m.leader, m.term) for m in sim.mailboxes.get(pid, []) if type(m) is LeaderElected]


def stand_all(sim: ServiceSim, nodes: Iterable[str], group: Any = G) -> dict[str, Pid]:
    cands = {n: sim.spawn(n) for n in nodes}
    for n, pid in cands.items():
        sim.call(n, "stand", group, pid)
    return cands


def settle(sim: ServiceSim) -> None:
    sim.run()
    assert not [log for log in sim.logs if log.event == "global_bad_message"]
    for n in up(sim):
        assert sim.core(n).pending() == 0


def test_racing_candidates_elect_exactly_one_leader_with_term_1() -> None:
    sim = make_sim()
    cands = stand_all(sim, NAMES)
    for _ in range(2500):  # one check per virtual instant for a second
        sim.run(until=sim.now + 0.0004)
        shown = {sim.core(n).whereis_name(leader_name(G)) for n in NAMES} - {None}
        assert len(shown) <= 1
    settle(sim)
    leader, term = the_leader(sim)
    assert term == 1 and leader in cands.values()
    for pid in cands.values():
        assert elected(sim, pid) == [(leader, 1)]


def test_late_candidate_is_told_the_current_leader_at_once() -> None:
    sim = make_sim()
    first = stand_all(sim, [A])[A]
    settle(sim)
    late = sim.spawn(C)
    sim.call(C, "stand", G, late)
    assert elected(sim, late) == [(first, 1)]
    settle(sim)
    assert leaders(sim) == {(first, 1)}


@pytest.mark.parametrize("how", ["exit", "kill_node", "resign"])
def test_leader_gone_new_leader_with_higher_term(how: str) -> None:
    sim = make_sim()
    cands = stand_all(sim, NAMES)
    settle(sim)
    old, old_term = the_leader(sim)
    if how == "exit":
        sim.exit(old)
    elif how == "kill_node":
        sim.kill(old.node)
    else:
        sim.call(old.node, "resign", G, old)
    settle(sim)
    new, new_term = the_leader(sim)
    assert new != old and new_term > old_term
    for pid in cands.values():
        if pid != old and pid in sim.mailboxes:
            assert elected(sim, pid)[-1] == (new, new_term)
    assert all(sim.core(n).max_term(G) == new_term for n in up(sim))


def test_second_local_candidate_takes_over_when_first_exits() -> None:
    sim = make_sim()
    p1, p2 = sim.spawn(A), sim.spawn(A)
    sim.call(A, "stand", G, p1)
    sim.call(A, "stand", G, p2)
    settle(sim)
    assert leaders(sim) == {(p1, 1)}
    assert sim.core(A).candidates(G) == [p1, p2]
    sim.exit(p1)
    settle(sim)
    assert leaders(sim) == {(p2, 2)}
    assert sim.core(A).candidates(G) == [p2]


def test_candidate_exiting_while_standing_does_not_block_election() -> None:
    sim = make_sim()
    p1, p2 = sim.spawn(A), sim.spawn(B)
    sim.call(A, "stand", G, p1)
    sim.exit(p1)  # its registration is in flight
    sim.call(B, "stand", G, p2)
    settle(sim)
    assert leaders(sim) == {(p2, 1)}
    assert elected(sim, p2) == [(p2, 1)]


def test_term_exceeds_terms_peers_saw_even_when_standing_before_their_sync() -> None:
    sim = make_sim()
    sim.partition([A], [B, C])
    settle(sim)
    stand_all(sim, [B, C])
    settle(sim)
    for _ in range(2):  # failovers on the B/C side: terms 2 and 3
        leader, _ = sim.core(B).leader(G) or (None, 0)
        assert leader is not None
        sim.exit(leader)
        sim.call(leader.node, "stand", G, sim.spawn(leader.node))
        settle(sim)
    leader, term = sim.core(B).leader(G) or (None, 0)
    assert leader is not None
    assert term == 3
    sim.call(leader.node, "resign", G, leader)
    for n in (B, C):
        for pid in sim.core(n).candidates(G):
            sim.call(n, "resign", G, pid)
    settle(sim)
    assert sim.core(A).max_term(G) == 0
    sim.heal()
    sim.run(until=sim.now + sim.reconnect_delay)  # links are up, syncs still in flight
    newcomer = sim.spawn(A)
    sim.call(A, "stand", G, newcomer)
    settle(sim)
    assert leaders(sim) == {(newcomer, 4)}


def test_terms_survive_a_restart_of_the_leaders_node() -> None:
    sim = make_sim()
    stand_all(sim, [A, B])
    settle(sim)
    for _ in range(3):  # a few failovers
        leader, _term = the_leader(sim)
        sim.exit(leader)
        sim.call(leader.node, "stand", G, sim.spawn(leader.node))
        settle(sim)
    leader, term = the_leader(sim)
    assert term == 4
    sim.kill(leader.node)
    sim.restart(leader.node)  # comes back knowing nothing
    settle(sim)
    sim.call(leader.node, "stand", G, sim.spawn(leader.node))
    settle(sim)
    _, new_term = the_leader(sim)
    assert new_term == 5
    assert all(sim.core(n).max_term(G) == 5 for n in NAMES)


def test_leader_elected_alone_after_restart_outbids_the_gone_leader() -> None:
    sim = make_sim()
    first = stand_all(sim, [A])[A]
    settle(sim)
    sim.partition([A], [B, C])
    settle(sim)  # B and C saw the leader (term 1) go
    sim.restart(A)  # a new run of A, still cut off, remembers nothing
    settle(sim)
    again = sim.spawn(A)
    sim.call(A, "stand", G, again)
    settle(sim)
    assert sim.core(A).leader(G) == (again, 1)  # alone, it could not know better
    sim.heal()
    settle(sim)
    assert leaders(sim) == {(again, 2)}  # > the term of `first`, which B and C saw
    assert elected(sim, again)[-1] == (again, 2)
    assert first not in sim.mailboxes


def split_and_elect(pre_elect: bool) -> tuple[ServiceSim, dict[str, Pid]]:
    sim = make_sim()
    cands = {n: sim.spawn(n) for n in NAMES}
    if pre_elect:
        sim.call(A, "stand", G, cands[A])
        settle(sim)
    sim.partition([A], [B, C])
    settle(sim)
    for n in NAMES:
        sim.call(n, "stand", G, cands[n])
    settle(sim)
    return sim, cands


@pytest.mark.parametrize("pre_elect", [False, True], ids=["equal-terms", "higher-term-wins"])
def test_split_brain_heal_keeps_one_leader_with_the_highest_term(pre_elect: bool) -> None:
    sim, cands = split_and_elect(pre_elect)
    left = sim.core(A).leader(G)
    right = sim.core(B).leader(G)
    assert left is not None and right is not None and left[0] != right[0]
    assert left[1] == 1 and right[1] == (2 if pre_elect else 1)
    sim.heal()
    settle(sim)
    leader, term = the_leader(sim)
    deposed = left if leader != left[0] else right
    assert term == 2 and term > deposed[1]  # equal terms: the winner took a fresh one
    assert LeaderLost(G, deposed[1]) in sim.mailboxes[deposed[0]]
    assert [m for m in sim.mailboxes[leader] if type(m) is LeaderLost] == []
    for pid in cands.values():
        assert elected(sim, pid)[-1] == (leader, term)
    if pre_elect:
        assert (leader, term) == (right[0], 2)  # the higher term wins, no bump needed


def test_stand_rejects_remote_pid() -> None:
    sim = make_sim()
    with pytest.raises(LocalProtocolError):
        sim.call(A, "stand", G, sim.spawn(B))


def test_groups_are_independent() -> None:
    sim = make_sim()
    p1, p2 = sim.spawn(A), sim.spawn(B)
    sim.call(A, "stand", "g1", p1)
    sim.call(B, "stand", "g2", p2)
    settle(sim)
    assert leaders(sim, "g1") == {(p1, 1)} and leaders(sim, "g2") == {(p2, 1)}
    assert elected(sim, p1) == [(p1, 1)] and elected(sim, p2) == [(p2, 1)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    kills=st.lists(st.sampled_from(["exit", "node"]), min_size=1, max_size=5),
)
def test_property_terms_strictly_increase_across_failovers(seed: int, kills: list[str]) -> None:
    names = [f"n{i}@h:{i + 1}" for i in range(4)]
    sim = make_sim(names, seed=seed)
    stand_all(sim, names)
    settle(sim)
    history = [the_leader(sim)]
    for how in kills:
        leader, _ = history[-1]
        if how == "node" and len(up(sim)) > 2:
            sim.kill(leader.node)
            sim.restart(leader.node)
        else:
            sim.exit(leader)
        settle(sim)
        sim.call(leader.node, "stand", G, sim.spawn(leader.node))
        settle(sim)
        history.append(the_leader(sim))
    terms = [t for _, t in history]
    assert terms == sorted(set(terms)), terms


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["exit", "split", "heal", "restart", "stand"]),
            st.integers(0, 3),
            st.sampled_from([0.0, 0.01, 0.6, 1.6]),
        ),
        min_size=1,
        max_size=10,
    ),
)
def test_property_chaos_ends_with_one_leader_fencing_all_others(
    seed: int, ops: list[tuple[str, int, float]]
) -> None:
    """Exits, splits, heals and restarts in any order; after the final heal there is one
    leader, and its term is greater than that of every other leader ever announced to a
    process that is still alive (what the cluster remembers: a node that restarts
    forgets, and so do the processes it had)."""
    names = [f"n{i}@h:{i + 1}" for i in range(4)]
    sim = make_sim(names, seed=seed)
    stand_all(sim, names)
    for how, node_i, pause in ops:
        sim.run(until=sim.now + pause)
        node = names[node_i]
        if not sim.is_up(node):
            continue
        if how == "exit":
            current = sim.core(node).leader(G)
            if current is not None and current[0] in sim.mailboxes:
                sim.exit(current[0])
        elif how == "split":
            sim.partition(names[: node_i + 1], names[node_i + 1 :])
        elif how == "heal":
            sim.heal()
        elif how == "restart":
            sim.restart(node)
        else:
            sim.call(node, "stand", G, sim.spawn(node))
    sim.heal()
    for node in names:  # make sure every node has a live candidate
        sim.call(node, "stand", G, sim.spawn(node))
    settle(sim)
    leader, term = the_leader(sim)
    assert leader in sim.mailboxes
    announced: dict[Pid, int] = {}  # leader -> highest term announced to a live process
    for box in sim.mailboxes.values():
        for m in box:
            if type(m) is LeaderElected:
                announced[m.leader] = max(announced.get(m.leader, 0), m.term)
    assert announced[leader] == term
    assert all(t < term for pid, t in announced.items() if pid != leader), (announced, term)
