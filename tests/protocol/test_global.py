"""global: names, conflicts and locks, driven through the deterministic service simulator.

Every simulated core sees its peers' payloads after a round trip through the real wire
codec. Invariants are checked after every virtual instant (the clock is stepped in
increments smaller than the link latency), not just once the simulation settles.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabric.errors import LocalProtocolError
from fabric.protocol.codec import Codec
from fabric.protocol.effects import Complete, Log, Send, SetTimer
from fabric.protocol.events import GlobalNameConflict
from fabric.protocol.global_ import (
    ConflictInfo,
    GlobalCore,
    Resolution,
    Resolver,
    earliest_name,
    notify_all_name,
    random_exit_name,
    random_notify_name,
)
from fabric.testing import ServiceSim
from fabric.types import Pid

A, B, C = NAMES = ["a@h:1", "b@h:2", "c@h:3"]
SEVEN = [f"n{i}@h:{i + 1}" for i in range(7)]
STEP = 0.0004  # smaller than the 1 ms link latency: one check per virtual instant


class Wire:
    """Wraps a core so that every payload it sends crosses the real codec."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.service = core.service
        self.codec = Codec()

    def _fx(self, effects: Any) -> Any:
        if not isinstance(effects, list):
            return effects
        return [
            Send(e.peer, self.codec.decode(self.codec.encode(e.payload)))
            if isinstance(e, Send)
            else e
            for e in effects
        ]

    def register_name_with(self, name: Any, pid: Pid, token: Any, method: str, now: float) -> Any:
        """register_name with a resolver method (the simulator passes positionals only)."""
        return self._fx(self.core.register_name(name, pid, token, now, method=method))

    def register_name_early(self, name: Any, pid: Pid, token: Any, now: float) -> Any:
        """register_name answering at the commit (wait_all=False)."""
        return self._fx(self.core.register_name(name, pid, token, now, wait_all=False))

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self.core, attr)
        if not callable(value):
            return value
        return lambda *a, **k: self._fx(value(*a, **k))


def make_sim(
    names: Iterable[str] = NAMES, seed: int = 1, resolver: Resolver = earliest_name, **kw: Any
) -> ServiceSim:
    def factory(name: str, creation: int) -> Any:
        return Wire(GlobalCore(name, creation, resolver, seed=creation, **kw))

    return ServiceSim(factory, names, seed=seed)


def up(sim: ServiceSim) -> list[str]:
    return sim.live_nodes()


def where(sim: ServiceSim, name: Any) -> dict[str, Pid | None]:
    return {n: sim.core(n).whereis_name(name) for n in up(sim)}


GRACE = 0.005  # one sync round after a link comes up: sync, report, retract (+ slack)


@dataclass
class _LinkHistory:
    """What :func:`assert_agree` saw of a simulation's links at its previous check."""

    links: set[frozenset[str]] = field(default_factory=set)
    last_link_up: float = -1.0  # when a link last came up


_LINKS_SEEN: weakref.WeakKeyDictionary[ServiceSim, _LinkHistory] = weakref.WeakKeyDictionary()


def undetected_dead_session(sim: ServiceSim, node: str, pid: Pid | None) -> bool:
    """``node`` shows a pid of a node whose session with it died (a cut, or a crash while
    cut) without ``node`` being told yet: its nodedown waits for failure detection.

    Such a claim may be stale: only its owner retracts it (D12), and the owner's retract
    (its process exited, it lost a conflict, or it restarted) is lost with the session.
    No message can tell ``node`` sooner (no third node relays claims, so that a stale
    claim never comes back), so the claim goes only at the nodedown, ``detect_delay`` at
    most after the cut. :func:`assert_agree` ignores such views, and only those.
    """
    if pid is None or pid.node == node:
        return False
    return sim.nodedown_pending(node, pid.node)


def has_chordless_chain(nodes: list[str], links: set[frozenset[str]]) -> bool:
    """Two nodes of one connected group are 3 or more hops apart (a-b-c-d with no
    shortcut): their lock sets do not meet, so both may register one name (DECISIONS.md
    D12 documents this limit; the claims meet and are resolved when a shortcut heals)."""
    neighbours = {n: {m for m in nodes if frozenset((n, m)) in links} for n in nodes}
    for start in nodes:
        depth = {start: 0}
        frontier = [start]
        while frontier:
            nxt = []
            for n in frontier:
                for m in neighbours[n]:
                    if m not in depth:
                        depth[m] = depth[n] + 1
                        nxt.append(m)
            frontier = nxt
        if max(depth.values()) >= 3:
            return True
    return False


def test_chordless_chain_detection() -> None:
    a, b, c, d = "abcd"
    chain = {frozenset(p) for p in [(a, b), (b, c), (c, d)]}
    assert has_chordless_chain([a, b, c, d], chain)
    assert not has_chordless_chain([a, b, c, d], chain | {frozenset((a, c))})
    assert not has_chordless_chain([a, b, c], {frozenset(p) for p in [(a, b), (b, c)]})
    assert not has_chordless_chain([a, b, c, d], set())


def assert_agree(sim: ServiceSim, names: Iterable[Any]) -> None:
    """No two connected nodes show different pids for a name (None is not a pid), except
    during the first sync round after some link came up (a heal: the claims of the two
    sides meet, are reported to their owners, and the losers retract), and except a view
    that failure detection has not caught up with (:func:`undetected_dead_session`)."""
    names = list(names)
    history = _LINKS_SEEN.setdefault(sim, _LinkHistory())
    links = {frozenset(pair) for pair in itertools.combinations(up(sim), 2) if sim.connected(*pair)}
    if links - history.links and sim.now > 0.01:
        history.last_link_up = sim.now
    history.links = links
    if sim.now - history.last_link_up <= GRACE:
        return
    if has_chordless_chain(up(sim), links):
        return  # D12: lock sets of nodes 3 hops apart need not meet; the heal resolves it
    for pair in links:
        a, b = sorted(pair)
        for name in names:
            pa, pb = sim.core(a).whereis_name(name), sim.core(b).whereis_name(name)
            if undetected_dead_session(sim, a, pa) or undetected_dead_session(sim, b, pb):
                continue
            assert pa is None or pb is None or pa == pb, (sim.now, name, a, pa, b, pb)


def run_checked(
    sim: ServiceSim,
    names: Iterable[Any],
    seconds: float = 3.0,
    check: Callable[[], None] | None = None,
    drain: bool = True,
    step: float = STEP,
) -> None:
    """Advance in sub-latency steps, checking agreement (and ``check``) at every step;
    then (``drain``) run until nothing is left and check that all requests ended."""
    names = list(names)
    end = sim.now + seconds
    while sim.now < end:
        sim.run(until=min(end, sim.now + step))
        assert_agree(sim, names)
        if check is not None:
            check()
    if drain:
        settle(sim)


def settle(sim: ServiceSim) -> None:
    sim.run()
    assert not [log for log in sim.logs if log.event == "global_bad_message"]
    assert not [log for log in sim.logs if log.event == "global_resolver_failed"]
    for n in up(sim):
        assert sim.core(n).pending() == 0, n


def answer_of(sim: ServiceSim, token: Any) -> Any:
    """Step the simulation (sub-latency steps) until ``token`` is answered; the answer."""
    for _ in range(10_000):
        if token in sim.completed:
            return sim.completed[token]
        sim.run(until=sim.now + STEP)
    raise AssertionError(f"{token!r} was never answered")


def register_everywhere(sim: ServiceSim, name: Any, nodes: Iterable[str]) -> dict[str, Pid]:
    pids = {n: sim.spawn(n) for n in nodes}
    for n, pid in pids.items():
        sim.call(n, "register_name", name, pid, (name, n))
    return pids


# -- registration ---------------------------------------------------------------------------


@pytest.mark.parametrize("names", [NAMES, SEVEN], ids=["3-nodes", "7-nodes"])
def test_concurrent_register_same_instant_one_yes(names: list[str]) -> None:
    sim = make_sim(names)
    pids = register_everywhere(sim, "x", names)
    run_checked(sim, ["x"])
    answers = {n: sim.completed[("x", n)] for n in names}
    winners = [n for n, r in answers.items() if r == "yes"]
    assert len(winners) == 1 and set(answers.values()) == {"yes", "no"}
    assert set(where(sim, "x").values()) == {pids[winners[0]]}


def test_two_local_pids_race_on_one_node() -> None:
    sim = make_sim()
    p1, p2 = sim.spawn(A), sim.spawn(A)
    sim.call(A, "register_name", "x", p1, 1)
    sim.call(A, "register_name", "x", p2, 2)
    run_checked(sim, ["x"])
    assert sorted([sim.completed[1], sim.completed[2]]) == ["no", "yes"]


def test_yes_means_visible_on_every_node() -> None:
    sim = make_sim()
    pid = sim.spawn(B)
    sim.call(B, "register_name", "x", pid, "t")
    assert answer_of(sim, "t") == "yes"
    assert set(where(sim, "x").values()) == {pid}


def test_taken_name_is_refused_and_registered_names_lists_it() -> None:
    sim = make_sim()
    p1, p2 = sim.spawn(A), sim.spawn(C)
    sim.call(A, "register_name", ("svc", 1), p1, 1)
    settle(sim)
    sim.call(C, "register_name", ("svc", 1), p2, 2)
    settle(sim)
    assert (sim.completed[1], sim.completed[2]) == ("yes", "no")
    assert sim.core(B).registered_names() == [("svc", 1)]


def register_timed(sim: ServiceSim, method: str) -> tuple[Pid, float, dict[str, Pid | None]]:
    """Register "x" on A with ``method`` and step the simulation until the answer: the
    pid, how long the answer took, and what each node showed when it came."""
    pid = sim.spawn(A)
    start = sim.now
    sim.call(A, method, "x", pid, "t")
    for _ in range(1000):
        if "t" in sim.completed:
            return pid, sim.now - start, where(sim, "x")
        sim.run(until=sim.now + STEP)
    raise AssertionError("the registration never completed")


def test_yes_comes_when_every_node_shows_the_name() -> None:
    sim = make_sim()
    pid, took, shown = register_timed(sim, "register_name")
    assert sim.completed["t"] == "yes"
    assert shown == {A: pid, B: pid, C: pid}
    assert took >= 4 * sim.latency  # req, grant, claim, ack


def test_yes_at_commit_with_wait_all_false_one_round_trip_sooner() -> None:
    sim = make_sim()
    pid, took, shown = register_timed(sim, "register_name_early")
    assert sim.completed["t"] == "yes"
    assert 2 * sim.latency <= took < 3 * sim.latency  # req, grant: the claim is sent
    assert shown == {A: pid, B: None, C: None}  # the claims are on their way
    settle(sim)  # the acks still arrive and end the transaction (pending() == 0)
    assert where(sim, "x") == {A: pid, B: pid, C: pid}
    assert list(sim.completed) == ["t"]  # answered once


@pytest.mark.parametrize("early", [(True, True), (True, False), (False, True)],
                         ids=["both-at-commit", "at-commit-vs-default", "default-vs-at-commit"])
def test_at_commit_race_of_one_name_from_two_nodes_has_one_yes(early: tuple[bool, bool]) -> None:
    # Answering at the commit gives up only when third nodes see the claim: two nodes
    # racing for a name still get exactly one "yes", whatever mode each asked for.
    sim = make_sim()
    pids = {B: sim.spawn(B), C: sim.spawn(C)}
    for node, at_commit in zip((B, C), early, strict=True):
        sim.call(node, "register_name_early" if at_commit else "register_name", "x",
                 pids[node], node)
    run_checked(sim, ["x"])
    answers = {node: sim.completed[node] for node in (B, C)}
    assert sorted(answers.values()) == ["no", "yes"]
    winner = next(node for node, answer in answers.items() if answer == "yes")
    assert set(where(sim, "x").values()) == {pids[winner]}


def test_at_commit_owner_node_dies_right_after_the_yes() -> None:
    # The answer came before the peers applied the claim; the owner's node then dies.
    # Whatever the peers applied goes with the nodedown: nobody shows a dead pid, and
    # the name is free again.
    sim = make_sim()
    pid = sim.spawn(A)
    sim.call(A, "register_name_early", "x", pid, "t")
    assert answer_of(sim, "t") == "yes"
    sim.kill(A)
    run_checked(sim, ["x"], 0.01)
    assert set(where(sim, "x").values()) == {None}
    new = sim.spawn(C)
    sim.call(C, "register_name", "x", new, "again")
    settle(sim)
    assert sim.completed["again"] == "yes" and set(where(sim, "x").values()) == {new}


@pytest.mark.parametrize("method", ["register_name", "register_name_early"])
@pytest.mark.parametrize("dies_after", [0.5, 1.5, 2.5], ids=["before-grant", "after-grant",
                                                            "after-claim-sent"])
def test_peer_dies_mid_registration_the_answer_still_comes(method: str,
                                                           dies_after: float) -> None:
    # A granter dies while the request is in flight (before its grant left, after it, or
    # once the claim is on its way): the requester stops waiting for it at its nodedown
    # and answers "yes" (the name was free), which the surviving nodes show.
    sim = make_sim()
    pid = sim.spawn(A)
    sim.call(A, method, "x", pid, "t")
    sim.run(until=sim.now + dies_after * sim.latency)
    sim.kill(C)
    run_checked(sim, ["x"])
    assert sim.completed["t"] == "yes"
    assert where(sim, "x") == {A: pid, B: pid}


def test_register_refuses_remote_or_stale_pids() -> None:
    sim = make_sim()
    with pytest.raises(LocalProtocolError):
        sim.call(A, "register_name", "x", sim.spawn(B), 1)
    with pytest.raises(LocalProtocolError):
        sim.call(A, "register_name", "x", Pid(A, 99, 12345), 1)
    with pytest.raises(LocalProtocolError):
        sim.call(A, "register_name", ["unhashable"], sim.spawn(A), 1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(2, 5),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["reg", "reg", "reg", "reg_early", "exit", "unreg"]),
            st.integers(0, 4),  # node index
            st.integers(0, 2),  # name index
            st.sampled_from([0.0, 0.0, 0.0005, 0.001, 0.003, 0.02]),  # pause before
        ),
        min_size=1,
        max_size=25,
    ),
)
def test_property_uniqueness_under_any_schedule(
    seed: int, n: int, ops: list[tuple[str, int, int, float]]
) -> None:
    names = [f"n{i}@h:{i + 1}" for i in range(n)]
    sim = make_sim(names, seed=seed)
    keys = ["k0", "k1", "k2"]
    live: dict[str, Pid] = {}  # name -> pid that got "yes" and has not exited / unregistered
    tokens: dict[Any, tuple[str, Pid]] = {}
    seen: set[Any] = set()
    released: set[Pid] = set()  # pids whose name was unregistered

    def account() -> None:
        for token, (key, pid) in tokens.items():
            if token in sim.completed and token not in seen:
                seen.add(token)
                if sim.completed[token] == "yes" and pid not in released:
                    assert key not in live, f"two owners of {key}: {live[key]} and {pid}"
                    live[key] = pid

    for i, (op, node_i, key_i, pause) in enumerate(ops):
        if pause:
            run_checked(sim, keys, pause, account, drain=False)
        node, key = names[node_i % n], keys[key_i]
        if op in ("reg", "reg_early"):
            pid = sim.spawn(node)
            tokens[i] = (key, pid)
            sim.call(node, "register_name" if op == "reg" else "register_name_early", key, pid, i)
        elif op == "exit" and key in live and live[key] in sim.mailboxes:
            sim.exit(live.pop(key))
        elif op == "unreg":
            # Unregistering removes what this node shows, possibly a registration whose
            # "yes" is still on its way: that one must not count as an owner later.
            shown = sim.core(node).whereis_name(key)
            if shown is not None:
                released.add(shown)
                if live.get(key) == shown:
                    del live[key]
            sim.call(node, "unregister_name", key, ("u", i))
    run_checked(sim, keys, 0.5, account)
    account()
    assert set(tokens) <= set(sim.completed)
    for key in keys:
        shown = set(where(sim, key).values())
        assert len(shown) == 1
        (pid,) = shown
        assert pid is None or pid in sim.mailboxes


# -- removal ----------------------------------------------------------------------------


def test_owner_exit_removes_name_everywhere_then_another_takes_it() -> None:
    sim = make_sim()
    pids = register_everywhere(sim, "x", NAMES)
    settle(sim)
    owner = next(p for p in pids.values() if sim.completed[("x", p.node)] == "yes")
    sim.exit(owner)
    run_checked(sim, ["x"], 0.01)
    assert set(where(sim, "x").values()) == {None}
    other = sim.spawn(C if owner.node != C else A)
    sim.call(other.node, "register_name", "x", other, "again")
    settle(sim)
    assert sim.completed["again"] == "yes"
    assert set(where(sim, "x").values()) == {other}


def test_owner_node_killed_removes_name_then_another_takes_it() -> None:
    sim = make_sim()
    pid = sim.spawn(A)
    sim.call(A, "register_name", "x", pid, 1)
    settle(sim)
    sim.kill(A)
    run_checked(sim, ["x"], 0.01)
    assert set(where(sim, "x").values()) == {None}
    new = sim.spawn(B)
    sim.call(B, "register_name", "x", new, 2)
    settle(sim)
    assert sim.completed[2] == "yes" and set(where(sim, "x").values()) == {new}


def test_restarted_node_forgets_old_names_and_learns_current_ones() -> None:
    sim = make_sim()
    old, kept = sim.spawn(A), sim.spawn(B)
    sim.call(A, "register_name", "mine", old, 1)
    sim.call(B, "register_name", "theirs", kept, 2)
    settle(sim)
    sim.restart(A)
    settle(sim)
    for n in NAMES:
        assert sim.core(n).whereis_name("mine") is None
        assert sim.core(n).whereis_name("theirs") == kept


@pytest.mark.parametrize("at", [A, B], ids=["at-owner", "forwarded"])
def test_unregister_completes_once_gone_everywhere(at: str) -> None:
    sim = make_sim()
    pid = sim.spawn(A)
    sim.call(A, "register_name", "x", pid, 1)
    settle(sim)
    sim.call(at, "unregister_name", "x", "u")
    while "u" not in sim.completed:
        sim.run(until=sim.now + STEP)
    assert sim.completed["u"] == "ok"
    assert set(where(sim, "x").values()) == {None}
    sim.call(B, "unregister_name", "never-registered", "u2")
    assert sim.completed["u2"] == "ok"


def test_re_register_replaces_the_owner_everywhere_without_notification() -> None:
    sim = make_sim()
    first, second = sim.spawn(A), sim.spawn(C)
    sim.call(A, "register_name", "x", first, 1)
    settle(sim)
    sim.call(C, "re_register_name", "x", second, 2)
    run_checked(sim, ["x"], 0.05)
    assert sim.completed[2] == "yes"
    assert set(where(sim, "x").values()) == {second}
    assert sim.mailboxes[first] == []
    sim.exit(first)  # the old owner's exit must not remove the new registration
    settle(sim)
    assert set(where(sim, "x").values()) == {second}


# -- partitions -------------------------------------------------------------------------


def split_brain(resolver: Resolver = earliest_name, **kw: Any) -> tuple[ServiceSim, Pid, Pid]:
    """Register "x" on both sides of a [A] / [B, C] split (A first), then heal."""
    sim = make_sim(resolver=resolver, **kw)
    sim.partition([A], [B, C])
    settle(sim)
    pa, pb = sim.spawn(A), sim.spawn(B)
    sim.call(A, "register_name", "x", pa, "a")
    sim.advance(0.1)
    sim.call(B, "register_name", "x", pb, "b")
    settle(sim)
    assert (sim.completed["a"], sim.completed["b"]) == ("yes", "yes")
    sim.heal()
    return sim, pa, pb


def test_split_brain_heal_keeps_earlier_registration_and_notifies_loser() -> None:
    sim, pa, pb = split_brain()
    stamp_a = sim.core(A).name_info("x").stamp
    stamp_b = sim.core(B).name_info("x").stamp
    winner, loser = (pa, pb) if stamp_a < stamp_b else (pb, pa)
    run_checked(sim, ["x"], 3.0)
    assert set(where(sim, "x").values()) == {winner}
    assert sim.mailboxes[loser] == [GlobalNameConflict("x", winner)]
    assert sim.mailboxes[winner] == []
    assert sim.exited == []


def test_split_brain_random_exit_kills_the_pid_on_the_higher_node() -> None:
    sim, pa, pb = split_brain(random_exit_name)
    settle(sim)
    assert sim.exited == [(pb, "kill")] and pb not in sim.mailboxes
    assert set(where(sim, "x").values()) == {pa}
    assert sim.mailboxes[pa] == []


def test_split_brain_random_notify_keeps_lower_node() -> None:
    sim, pa, pb = split_brain(random_notify_name)
    settle(sim)
    assert set(where(sim, "x").values()) == {pa}
    assert sim.mailboxes[pb] == [GlobalNameConflict("x", pa)]


def test_split_brain_notify_all_unregisters_and_tells_both() -> None:
    sim, pa, pb = split_brain(notify_all_name)
    settle(sim)
    assert set(where(sim, "x").values()) == {None}
    assert sim.mailboxes[pa] == [GlobalNameConflict("x", pb)]
    assert sim.mailboxes[pb] == [GlobalNameConflict("x", pa)]


def test_custom_resolver_gets_canonical_arguments_and_may_return_a_pid() -> None:
    calls: list[tuple[Any, Pid, Pid, ConflictInfo]] = []

    def later_wins(name: Any, pid1: Pid, pid2: Pid, info: ConflictInfo) -> Pid:
        calls.append((name, pid1, pid2, info))
        return pid2

    sim, pa, pb = split_brain(later_wins)
    settle(sim)
    assert {(c[1], c[2]) for c in calls} == {(pa, pb)}  # earlier registration first
    assert all(c[3].stamp1 < c[3].stamp2 for c in calls)
    assert set(where(sim, "x").values()) == {pb}
    assert sim.mailboxes[pa] == [GlobalNameConflict("x", pb)]


def test_failing_resolver_falls_back_to_earliest_and_logs() -> None:
    def broken(name: Any, pid1: Pid, pid2: Pid, info: ConflictInfo) -> Pid:
        raise RuntimeError("boom")

    sim, pa, pb = split_brain(broken)
    sim.run()
    assert any(log.event == "global_resolver_failed" for log in sim.logs)
    assert set(where(sim, "x").values()) == {pa}


@pytest.mark.parametrize("earlier_has_method", [True, False])
def test_per_registration_method_of_the_earlier_claim_decides(earlier_has_method: bool) -> None:
    def kill_both(name: Any, pid1: Pid, pid2: Pid, info: ConflictInfo) -> Resolution:
        return Resolution(None, exit=(pid1, pid2))

    sim = make_sim(resolvers={"kill_both": kill_both})
    sim.partition([A], [B, C])
    settle(sim)
    pa, pb = sim.spawn(A), sim.spawn(B)
    first, second = ("register_name_with", "register_name")[:: 1 if earlier_has_method else -1]
    sim.call(A, first, "x", pa, 1, *(["kill_both"] if first == "register_name_with" else []))
    sim.advance(0.1)
    sim.call(B, second, "x", pb, 2, *(["kill_both"] if second == "register_name_with" else []))
    settle(sim)
    sim.heal()
    settle(sim)
    if earlier_has_method:
        assert set(where(sim, "x").values()) == {None}
        assert sorted(sim.exited) == sorted([(pa, "kill"), (pb, "kill")])
    else:
        assert set(where(sim, "x").values()) == {pa} and sim.exited == []


def test_overlapping_partition_one_yes_and_connected_nodes_agree() -> None:
    sim = make_sim()
    sim.cut(A, C)  # A-B and B-C stay up
    run_checked(sim, ["x"], 1.5)
    pa, pc = sim.spawn(A), sim.spawn(C)
    sim.call(A, "register_name", "x", pa, "a")
    sim.call(C, "register_name", "x", pc, "c")
    run_checked(sim, ["x"], 0.5)
    assert sorted([sim.completed["a"], sim.completed["c"]]) == ["no", "yes"]
    winner = pa if sim.completed["a"] == "yes" else pc
    assert sim.core(B).whereis_name("x") == winner
    assert sim.core(winner.node).whereis_name("x") == winner
    # The other side cannot reach the owner, so it shows nothing (never another pid).
    assert sim.core(C if winner is pa else A).whereis_name("x") is None
    sim.heal()
    run_checked(sim, ["x"], 1.0)
    assert set(where(sim, "x").values()) == {winner}


def test_overlapping_partition_hides_unreachable_owner_but_blocks_its_name() -> None:
    sim = make_sim()
    pa = sim.spawn(A)
    sim.call(A, "register_name", "x", pa, 1)
    settle(sim)
    sim.cut(A, C)
    run_checked(sim, ["x"], 1.5)
    assert where(sim, "x") == {A: pa, B: pa, C: None}
    pc = sim.spawn(C)
    sim.call(C, "register_name", "x", pc, 2)
    run_checked(sim, ["x"], 0.1)
    assert sim.completed[2] == "no"  # B, a common neighbour, still sees A's claim
    sim.exit(pa)
    run_checked(sim, ["x"], 0.1)
    sim.call(C, "register_name", "x", pc, 3)
    run_checked(sim, ["x"], 0.1)
    assert sim.completed[3] == "yes"
    assert where(sim, "x") == {A: None, B: pc, C: pc}


def test_partial_heal_relay_resolves_conflict_it_alone_sees() -> None:
    """A and C both own "x" after a three-way split; only the A-B and B-C links heal.

    B is the only node that sees both claims: it must report them to both owners so that
    no two connected nodes keep showing different pids.
    """
    sim = make_sim()
    sim.partition([A], [B], [C])
    settle(sim)
    pa, pc = sim.spawn(A), sim.spawn(C)
    sim.call(A, "register_name", "x", pa, "a")
    sim.advance(0.1)
    sim.call(C, "register_name", "x", pc, "c")
    settle(sim)
    sim.heal()
    sim.cut(A, C)  # A-C stays blocked
    sim.run(until=sim.now + sim.reconnect_delay)
    # One conflict round: sync, report, retract (a few link latencies).
    sim.advance(0.01)
    run_checked(sim, ["x"], 1.0)
    assert where(sim, "x") == {A: pa, B: pa, C: None}
    assert sim.mailboxes[pc] == [GlobalNameConflict("x", pa)]


def test_claim_synced_to_a_granter_after_its_grant_makes_the_answer_no() -> None:
    """B granted A's request for "x" while A still waited for C's grant. C died unseen by A
    (A-C was cut first), and C's next run registered "x" alone and synced it to B when
    they met: B's grant ("x" is free) went stale, so B tells A ("taken"). A answers "no"
    instead of committing, at its nodedown of C, a claim that A would show next to B
    showing C's (until a conflict round decided, against the pid that had a "yes" first)."""
    sim = make_sim()
    pa = sim.spawn(A)
    sim.call(A, "register_name", "x", pa, "a")  # asks A, B and C
    sim.cut(A, C)  # the request to C is lost; A learns that C is gone after detect_delay
    sim.restart(C)  # B sees C go down at once, A does not
    sim.advance(0.01)
    pc = sim.spawn(C)
    sim.call(C, "register_name", "x", pc, "c")
    assert sim.completed["c"] == "yes"  # C is alone
    run_checked(sim, ["x"], 1.5, drain=False)  # B-C up at 0.5 (sync), A sees C down at 1.0
    assert sim.completed["a"] == "no"
    assert where(sim, "x") == {A: None, B: pc, C: pc}
    sim.heal()
    run_checked(sim, ["x"], 1.0)
    assert where(sim, "x") == dict.fromkeys(NAMES, pc)
    assert sim.mailboxes[pa] == sim.mailboxes[pc] == []  # no conflict was ever needed


def test_stale_claim_of_a_silently_dead_session_lasts_until_nodedown() -> None:
    """The limit of owner authority (D12): A's retract cannot reach a node whose session
    with A died unnoticed, and no third node relays it, so that node shows the stale claim
    until its failure detector reports A down (``detect_delay``), even while a connected
    node shows A's new claim. Then it shows nothing, and after the heal all agree."""
    sim = make_sim()
    pa = sim.spawn(A)
    sim.call(A, "register_name", "x", pa, 1)
    settle(sim)
    cut_at = sim.now
    sim.cut(A, C)
    sim.restart(A)  # B sees A go down at once, C does not
    sim.advance(0.01)
    pa2 = sim.spawn(A)
    sim.call(A, "register_name", "x", pa2, 2)
    assert sim.completed[2] == "yes"  # A is alone
    run_checked(sim, ["x"], 0.6, drain=False)  # A-B up again at 0.5
    assert where(sim, "x") == {A: pa2, B: pa2, C: pa}  # C's view is stale...
    assert sim.connected(B, C) and undetected_dead_session(sim, C, pa)  # ...and known so
    run_checked(sim, ["x"], cut_at + sim.detect_delay + 0.002 - sim.now, drain=False)
    assert where(sim, "x") == {A: pa2, B: pa2, C: None}
    sim.heal()
    run_checked(sim, ["x"], 1.0)
    assert where(sim, "x") == dict.fromkeys(NAMES, pa2)


def test_heal_merges_disjoint_names_without_conflict() -> None:
    sim = make_sim()
    sim.partition([A, B], [C])
    settle(sim)
    p1, p2 = sim.spawn(A), sim.spawn(C)
    sim.call(A, "register_name", "left", p1, 1)
    sim.call(C, "register_name", "right", p2, 2)
    settle(sim)
    sim.heal()
    run_checked(sim, ["left", "right"], 1.0)
    assert set(where(sim, "left").values()) == {p1}
    assert set(where(sim, "right").values()) == {p2}
    assert sim.mailboxes[p1] == sim.mailboxes[p2] == []


def test_late_joiner_learns_names_and_requests_in_flight_extend_to_it() -> None:
    sim = ServiceSim(lambda n, c: Wire(GlobalCore(n, c, seed=c)), NAMES, seed=3, connected=False)
    sim.connect(A, B)
    settle(sim)
    p1 = sim.spawn(A)
    sim.call(A, "register_name", "x", p1, "x")
    settle(sim)
    pc = sim.spawn(C)
    sim.call(C, "register_name", "y", pc, "c")
    assert sim.completed["c"] == "yes"  # C is alone: it only asks itself
    pa = sim.spawn(A)
    sim.call(A, "register_name", "y", pa, "a")  # waits for B's grant...
    sim.connect(A, C)  # ...when C comes up: the request must now include C
    settle(sim)
    assert sim.completed["a"] == "no"
    assert sim.mailboxes[pa] == sim.mailboxes[pc] == []  # no conflict was ever needed
    sim.connect(B, C)
    settle(sim)
    assert where(sim, "x") == dict.fromkeys(NAMES, p1)
    assert where(sim, "y") == dict.fromkeys(NAMES, pc)


def test_thundering_herd_needs_no_backoff() -> None:
    """Wait-die decides every conflict deterministically: with a huge backoff, the oldest
    request still wins within a few link latencies (no retry timer, no randomness)."""
    sim = make_sim(SEVEN, retry_base=100.0)
    pids = register_everywhere(sim, "x", SEVEN)
    sim.run(until=sim.now + 0.02)
    assert list(sim.completed.values()).count("yes") == 1
    (winner,) = [n for n in SEVEN if sim.completed.get(("x", n)) == "yes"]
    assert set(where(sim, "x").values()) == {pids[winner]}


def test_bad_messages_are_logged_not_raised() -> None:
    core = GlobalCore(A, 1, seed=0)
    core.on_nodeup(B, 0.0)
    for junk in [("nonsense",), ("claim", "not-an-entry", None, False, False), 42, ("req",)]:
        effects = core.on_message(B, junk, 0.0)
        assert [e.event for e in effects if hasattr(e, "event")] == ["global_bad_message"]
    # A claim for a pid of another node than the sender is ignored.
    forged = ("x", Pid(C, 1, 1), (1, C, 1), None, None)
    core.on_message(B, ("claim", forged, None, False, False), 0.0)
    assert core.whereis_name("x") is None


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    ops=st.lists(
        st.tuples(
            st.sampled_from(
                ["reg", "reg", "reg", "reg_early", "exit", "split", "cut", "heal", "restart"]
            ),
            st.integers(0, 3),
            st.integers(0, 1),
            st.sampled_from([0.0, 0.001, 0.01, 0.6, 1.2]),
        ),
        min_size=1,
        max_size=15,
    ),
)
def test_property_chaos_converges_to_one_owner(
    seed: int, ops: list[tuple[str, int, int, float]]
) -> None:
    """Registrations, exits, splits, cuts and restarts in any order: connected nodes never
    show two pids for a name beyond a sync round, and after the final heal every node
    shows the same live owner (or nobody) for every name."""
    run_chaos(seed, ops)


@pytest.mark.parametrize(
    ("seed", "ops"),
    [
        # A stale claim of a silently dead session (see test_stale_claim_of_a_silently_...):
        # n1 lost a conflict to n2's restarted run and retracted, but n1-n3 was cut and not
        # yet detected, so n3 kept n1's claim next to n0 (restarted), which shows n2's.
        (
            44504,
            [
                ("split", 0, 1, 0.001), ("heal", 0, 0, 0.6), ("reg", 1, 1, 0.01),
                ("reg", 2, 1, 0.01), ("heal", 3, 1, 0.6), ("exit", 0, 0, 0.6),
                ("cut", 3, 1, 0.0), ("cut", 2, 0, 0.001), ("restart", 2, 1, 0.01),
                ("reg", 2, 1, 0.001), ("restart", 0, 0, 0.001), ("restart", 2, 1, 0.6),
            ],
        ),
        # Its minimal form: n2 registers, n2-n3 is cut, n2 restarts and registers again.
        (
            0,
            [
                ("reg", 2, 1, 0.0), ("exit", 0, 0, 0.01), ("cut", 2, 0, 0.0),
                ("restart", 2, 1, 0.0), ("reg", 2, 1, 0.0),
            ],
        ),
        # A claim synced to granters after their grant (see test_claim_synced_to_a_...).
        (0, [("reg", 1, 1, 0.0), ("cut", 1, 1, 0.0), ("restart", 3, 0, 0.0), ("reg", 3, 1, 0.01)]),
    ],
)  # fmt: skip
def test_chaos_counterexamples_found_by_hypothesis(
    seed: int, ops: list[tuple[str, int, int, float]]
) -> None:
    run_chaos(seed, ops)


def run_chaos(seed: int, ops: list[tuple[str, int, int, float]]) -> None:
    """The body of test_property_chaos_converges_to_one_owner."""
    names = [f"n{i}@h:{i + 1}" for i in range(4)]
    sim = make_sim(names, seed=seed)
    keys = ["k0", "k1"]
    for i, (op, node_i, key_i, pause) in enumerate(ops):
        if pause:
            run_checked(sim, keys, pause, drain=False, step=0.002)
        node, key = names[node_i], keys[key_i]
        if not sim.is_up(node):
            continue
        if op in ("reg", "reg_early"):
            register = "register_name" if op == "reg" else "register_name_early"
            sim.call(node, register, key, sim.spawn(node), i)
        elif op == "exit":
            owner = sim.core(node).whereis_name(key)
            if owner is not None and owner in sim.mailboxes:
                sim.exit(owner)
        elif op == "split":
            sim.partition(names[: node_i + 1], names[node_i + 1 :])
        elif op == "cut":
            sim.cut(node, names[(node_i + 1 + key_i) % 4])
        elif op == "heal":
            sim.heal()
        else:
            sim.restart(node)
    sim.heal()
    run_checked(sim, keys, 2.0, step=0.002)
    for key in keys:
        shown = set(where(sim, key).values())
        assert len(shown) == 1, (key, where(sim, key))
        (pid,) = shown
        assert pid is None or pid in sim.mailboxes


def test_request_denied_forever_gives_up_instead_of_spinning() -> None:
    """Driven by hand: a peer that always answers "younger" (a stuck grant)."""
    core = GlobalCore(A, 7, seed=0)
    core.on_nodeup(B, 0.0)
    pid = Pid(A, 1, 7)
    effects = core.register_name("x", pid, "t", 0.0)
    for attempt in range(1, 1000):
        (req,) = [e.payload for e in effects if isinstance(e, Send) and e.payload[0] == "req"]
        assert req[1] == (A, 1, attempt) and req[2] == ("n", "x") and req[4] == pid
        effects = core.on_message(B, ("deny", req[1], "younger"), 0.0)
        done = [e for e in effects if isinstance(e, Complete)]
        if done:
            assert done == [Complete("t", "no")] and attempt == 200
            assert [e.event for e in effects if isinstance(e, Log)] == ["global_gave_up"]
            assert core.pending() == 0
            return
        (timer,) = [e for e in effects if isinstance(e, SetTimer)]
        effects = core.on_timer(timer.key, timer.at)
    raise AssertionError("never gave up")


# -- locks ------------------------------------------------------------------------------


def test_concurrent_set_lock_mutual_exclusion_and_handover() -> None:
    sim = make_sim(lock_retries=50)
    pids = {n: sim.spawn(n) for n in NAMES}
    for n, pid in pids.items():
        sim.call(n, "set_lock", "r", pid, n)
    holders: list[Pid] = []  # in the order they got the lock; all but the last released

    def check() -> None:
        for n in NAMES:
            if sim.completed.get(n) is True and pids[n] not in holders:
                holders.append(pids[n])
        assert len([n for n in NAMES if sim.completed.get(n) is True]) == len(holders)

    run_checked(sim, [], 0.05, check, drain=False)
    assert len(holders) == 1
    for count in (2, 3):
        sim.call(holders[-1].node, "del_lock", "r", holders[-1])
        run_checked(sim, [], 3.0, check, drain=False)
        assert len(holders) == count  # exactly one more got it
    settle(sim)
    assert sorted(holders) == sorted(pids.values())
    assert all(sim.core(n).lock_holders("r") == {holders[-1]} for n in NAMES)


def test_lock_refused_after_retries_and_reentrant_for_holder() -> None:
    sim = make_sim()
    p1, p2 = sim.spawn(A), sim.spawn(B)
    sim.call(A, "set_lock", "r", p1, 1)
    settle(sim)
    sim.call(B, "set_lock", "r", p2, 2)
    sim.call(A, "set_lock", "r", p1, 3)
    settle(sim)
    assert (sim.completed[1], sim.completed[2], sim.completed[3]) == (True, False, True)
    assert {n: sim.core(n).lock_holders("r") for n in NAMES} == dict.fromkeys(NAMES, {p1})


@pytest.mark.parametrize("how", ["exit", "kill", "del_lock"])
def test_lock_released_when_holder_exits_or_node_dies(how: str) -> None:
    sim = make_sim()
    p1, p2 = sim.spawn(A), sim.spawn(C)
    sim.call(A, "set_lock", "r", p1, 1)
    settle(sim)
    if how == "exit":
        sim.exit(p1)
    elif how == "kill":
        sim.kill(A)
    else:
        sim.call(A, "del_lock", "r", p1)
    settle(sim)
    assert all(sim.core(n).lock_holders("r") == frozenset() for n in up(sim))
    sim.call(C, "set_lock", "r", p2, 2)
    settle(sim)
    assert sim.completed[2] is True


def test_lock_request_of_exiting_pid_completes_false() -> None:
    sim = make_sim()
    p1, p2 = sim.spawn(A), sim.spawn(B)
    sim.call(A, "set_lock", "r", p1, 1)
    settle(sim)
    sim.call(B, "set_lock", "r", p2, 2)
    sim.advance(0.01)  # p2 is backing off
    sim.exit(p2)
    settle(sim)
    assert sim.completed[2] is False


def test_held_locks_sync_to_a_node_that_connects_later() -> None:
    sim = make_sim()
    sim.partition([A, B], [C])
    settle(sim)
    p1, p3 = sim.spawn(A), sim.spawn(C)
    sim.call(A, "set_lock", "r", p1, 1)
    settle(sim)
    sim.heal()
    settle(sim)
    assert sim.core(C).lock_holders("r") == {p1}
    sim.call(C, "set_lock", "r", p3, 2)
    settle(sim)
    assert sim.completed[2] is False


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["lock", "lock", "unlock", "exit"]),
            st.integers(0, 2),
            st.integers(0, 1),
            st.sampled_from([0.0, 0.0, 0.0005, 0.002, 0.05]),
        ),
        min_size=1,
        max_size=20,
    ),
)
def test_property_locks_never_have_two_holders(
    seed: int, ops: list[tuple[str, int, int, float]]
) -> None:
    sim = make_sim(seed=seed, lock_retries=3)
    resources = ["r0", "r1"]
    owner: dict[str, Pid] = {}  # resource -> holder per completed set_lock, until released
    asked: dict[Any, tuple[str, Pid]] = {}
    seen: set[Any] = set()

    def check() -> None:
        for token, (res, pid) in asked.items():
            if token in sim.completed and token not in seen:
                seen.add(token)
                if sim.completed[token] is True:
                    assert owner.get(res, pid) == pid, f"{res}: {owner[res]} and {pid}"
                    owner[res] = pid

    for i, (op, node_i, res_i, pause) in enumerate(ops):
        if pause:
            run_checked(sim, [], pause, check, drain=False)
        node, res = NAMES[node_i], resources[res_i]
        if op == "lock":
            pid = sim.spawn(node)
            asked[i] = (res, pid)
            sim.call(node, "set_lock", res, pid, i)
        elif res in owner:
            pid = owner.pop(res)
            if op == "unlock":
                sim.call(pid.node, "del_lock", res, pid)
            elif pid in sim.mailboxes:
                sim.exit(pid)
    run_checked(sim, [], 1.0, check)
    assert set(asked) <= set(sim.completed)
