"""pg: process groups driven through the deterministic service simulator.

Scenario tests are named after OTP's pg_SUITE; unit tests pin exact payloads, effects and
notifications. Views are compared as multisets (a pid appears once per join).
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fabric.errors import LocalProtocolError
from fabric.protocol.codec import Codec
from fabric.protocol.effects import (
    Deliver,
    DeliverMany,
    Log,
    Publish,
    Reply,
    Send,
    Subscribe,
    Unsubscribe,
)
from fabric.protocol.events import PgJoin, PgLeave
from fabric.protocol.pg import DEFAULT_SCOPE, PgCore, group_topic
from fabric.testing import ServiceSim
from fabric.types import Pid

A, B, C = NAMES = ["a@h:1", "b@h:2", "c@h:3"]
S = DEFAULT_SCOPE


class _WireCore:
    """Wraps a PgCore so every payload it receives went through the real wire codec."""

    def __init__(self, core: PgCore) -> None:
        self.core = core
        self.service = core.service
        self.codec = Codec()

    def _wire(self, payload: Any) -> Any:
        return self.codec.decode(self.codec.encode(payload))

    def on_message(self, peer: str, payload: Any, now: float) -> Any:
        return self.core.on_message(peer, self._wire(payload), now)

    def on_publish(self, payload: Any, now: float) -> Any:
        return self.core.on_publish(self._wire(payload), now)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core, name)


def assert_caches(core: PgCore) -> None:
    """Each view's cached broadcast fields equal what they stand for, recomputed."""
    for scope in core.scopes():
        groups = core.which_groups(scope)
        assert groups
        for group in groups:
            members = core.get_members(scope, group)
            local = core.get_local_members(scope, group)
            assert members
            assert local == [p for p in members if p.node == core.node]
            fan_out = core.fan_out(scope, group)
            assert fan_out.recipients == tuple(dict.fromkeys(local))
            assert fan_out.nodes == Counter(p.node for p in members if p.node != core.node)


class _CheckedCore:
    """Checks the views' caches (``assert_caches``) after every call into the core."""

    def __init__(self, outer: Any, core: PgCore) -> None:
        self.outer = outer  # what the simulator talks to (the core, or its wire wrapper)
        self.core = core
        self.service = core.service

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.outer, name)
        if name.startswith("_") or not callable(attr):
            return attr

        def checked(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            assert_caches(self.core)
            return result

        return checked


def make_sim(names: list[str] = NAMES, *, wire: bool = False, **kw: Any) -> ServiceSim:
    """A simulated cluster of PgCores whose caches are checked after every input."""

    def build(name: str, creation: int) -> Any:
        core = PgCore(name, creation)
        return _CheckedCore(_WireCore(core) if wire else core, core)

    return ServiceSim(build, names, **kw)


def view(sim: ServiceSim, node: str, scope: str = S) -> dict[Any, Counter[Pid]]:
    core = sim.core(node)
    return {g: Counter(core.get_members(scope, g)) for g in core.which_groups(scope)}


def assert_views(sim: ServiceSim, expected: dict[Any, Counter[Pid]], scope: str = S) -> None:
    """Every live node's view of ``scope`` equals ``expected``, local members included."""
    expected = {g: c for g, c in expected.items() if c}
    for name in sim.live_nodes():
        assert view(sim, name, scope) == expected, name
        for g, members in expected.items():
            local = Counter({p: n for p, n in members.items() if p.node == name})
            assert Counter(sim.core(name).get_local_members(scope, g)) == local, (name, g)


def only(expected: dict[Any, Counter[Pid]], nodes: set[str]) -> dict[Any, Counter[Pid]]:
    """The part of ``expected`` whose members run on ``nodes``."""
    out = {g: Counter({p: n for p, n in c.items() if p.node in nodes}) for g, c in expected.items()}
    return {g: c for g, c in out.items() if c}


def join(sim: ServiceSim, pid: Pid, group: Any, exp: dict[Any, Counter[Pid]]) -> None:
    sim.call(pid.node, "join", S, group, pid)
    exp.setdefault(group, Counter())[pid] += 1


# -- local API: joins, leaves, errors ---------------------------------------------------


def test_join_reaches_every_node_with_exact_payload() -> None:
    sim = make_sim()
    p = sim.spawn(A)
    effects = sim.core(A).join(S, "g", p, sim.now)
    assert Send(B, ("join", S, "g", [p])) in effects
    assert Send(C, ("join", S, "g", [p])) in effects
    assert sum(isinstance(e, Send) for e in effects) == 2
    sim.execute(A, effects)
    sim.call(A, "join", S, "g", p)
    sim.run()
    assert_views(sim, {"g": Counter({p: 2})})
    assert sim.core(B).get_local_members(S, "g") == []
    assert sim.core(A).which_local_groups(S) == ["g"]
    assert sim.core(B).which_local_groups(S) == []


def test_multiple_joins_of_one_pid() -> None:
    sim = make_sim()
    p, q = sim.spawn(A), sim.spawn(A)
    sim.call(A, "join", S, "g", p)
    sim.call(A, "join", S, "g", [p, q, p])
    sim.run()
    assert_views(sim, {"g": Counter({p: 3, q: 1})})
    assert sim.call(A, "leave", S, "g", p) is True
    sim.run()
    assert_views(sim, {"g": Counter({p: 2, q: 1})})
    sim.exit(p)
    sim.run()
    assert_views(sim, {"g": Counter({q: 1})})


def test_leave_of_a_non_member_is_not_joined() -> None:
    sim = make_sim()
    p, q = sim.spawn(A), sim.spawn(A)
    core = sim.core(A)
    assert core.leave(S, "g", p, sim.now) == [Reply(False)]
    sim.call(A, "join", S, "other", p)
    assert core.leave(S, "g", p, sim.now) == [Reply(False)]
    sim.call(A, "join", S, "g", p)
    effects = core.leave(S, "g", [q, p], sim.now)  # q never joined: skipped
    assert effects[0] == Reply(True)
    assert Send(B, ("leave", S, "g", [p])) in effects
    sim.execute(A, effects)
    sim.run()
    assert_views(sim, {"other": Counter({p: 1})})


def test_remote_pid_join_raises() -> None:
    sim = make_sim()
    remote, local = sim.spawn(B), sim.spawn(A)
    core = sim.core(A)
    stale = Pid(A, local.id, local.creation + 1)
    for bad in (remote, [local, remote], stale, "not a pid"):
        with pytest.raises(LocalProtocolError):
            core.join(S, "g", bad, sim.now)
        with pytest.raises(LocalProtocolError):
            core.leave(S, "g", bad, sim.now)
    with pytest.raises(LocalProtocolError):
        core.monitor(S, "g", remote, sim.now)
    with pytest.raises(LocalProtocolError):
        core.join(S, ["unhashable"], local, sim.now)
    with pytest.raises(LocalProtocolError):
        core.join(b"scope", "g", local, sim.now)
    assert core.get_members(S, "g") == []  # nothing half-applied


def test_scopes_are_independent() -> None:
    sim = make_sim()
    p = sim.spawn(A)
    sim.call(A, "join", "s1", "g", p)
    sim.run()
    assert sim.core(B).get_members("s1", "g") == [p]
    assert sim.core(B).get_members("s2", "g") == []
    assert sim.core(B).which_groups("s2") == []
    sim.call(A, "join", "s2", "g", p)
    sim.exit(p)
    sim.run()
    for name in NAMES:
        assert sim.core(name).which_groups("s1") == sim.core(name).which_groups("s2") == []


def test_members_vanish_on_exit() -> None:
    sim = make_sim()
    p, q = sim.spawn(B), sim.spawn(B)
    sim.call(B, "join", S, "g", [p, p, q])
    sim.call(B, "join", S, "h", p)
    sim.call(B, "join", "other", "g", p)
    sim.run()
    sim.exit(p)
    sim.run()
    assert_views(sim, {"g": Counter({q: 1})})
    assert_views(sim, {}, scope="other")
    sim.exit(p)  # a second exit report is harmless
    assert sim.core(A).on_process_exit(p, "normal", sim.now) == []


def test_members_vanish_on_nodedown() -> None:
    sim = make_sim()
    a, b = sim.spawn(A), sim.spawn(B)
    sim.call(A, "join", S, "g", a)
    sim.call(B, "join", S, "g", b)
    sim.call(B, "join", S, "only_b", b)
    sim.run()
    sim.kill(B)
    sim.run()
    assert_views(sim, {"g": Counter({a: 1})})
    # A nodedown for a peer we never saw (or twice) changes nothing.
    assert sim.core(A).on_nodedown("z@h:9", "connection_closed", sim.now) == []


def test_restart_with_new_creation_drops_stale_members() -> None:
    sim = make_sim()
    old = sim.spawn(B)
    sim.call(B, "join", S, "g", old)
    sim.run()
    sim.restart(B)
    sim.run()
    assert_views(sim, {})
    new = sim.spawn(B)
    assert new.creation != old.creation
    sim.call(B, "join", S, "g", new)
    sim.run()
    assert_views(sim, {"g": Counter({new: 1})})
    with pytest.raises(LocalProtocolError):  # the old run's pid cannot rejoin
        sim.call(B, "join", S, "g", old)


# -- peers' messages ---------------------------------------------------------------------


def test_late_and_odd_peer_messages_are_tolerated() -> None:
    sim = make_sim()
    core: PgCore = sim.core(A)
    b, c = sim.spawn(B), sim.spawn(C)
    # Race: a join sent just before the session broke arrives after our nodedown.
    assert core.on_message("z@h:9", ("join", S, "g", [Pid("z@h:9", 1, 1)]), sim.now) == []
    # A peer may only speak for its own pids.
    assert core.on_message(B, ("join", S, "g", [c]), sim.now) == []
    assert core.on_message(B, ("leave", S, "g", [b]), sim.now) == []  # not a member: ignored
    for junk in ("x", ("join", S), ("what", 1), ("sync", [("s", [(["g"], [b])])]), None):
        effects = core.on_message(B, junk, sim.now)
        assert len(effects) == 1 and isinstance(effects[0], Log), junk
        assert effects[0].event == "pg_bad_message"
    assert core.which_groups(S) == []
    assert isinstance(core.on_publish("junk", sim.now)[0], Log)
    assert core.on_timer("any", sim.now) == []


def test_sync_replaces_what_we_knew() -> None:
    sim = make_sim()
    core: PgCore = sim.core(A)
    b1, b2 = sim.spawn(B), sim.spawn(B)
    core.on_message(B, ("join", S, "g", [b1, b1]), sim.now)
    core.on_message(B, ("join", "s2", "x", [b1]), sim.now)
    c = sim.spawn(C)  # B cannot speak for C's pids, even in a sync
    core.on_message(B, ("sync", [(S, [("g", [b1, b2, c]), ("h", [b2]), ("i", [c])])]), sim.now)
    assert Counter(core.get_members(S, "g")) == Counter({b1: 1, b2: 1})
    assert core.get_members(S, "h") == [b2]
    assert core.get_members(S, "i") == []
    assert core.which_groups("s2") == []  # a scope the sync does not list is empty


def test_payloads_survive_the_wire_codec() -> None:
    sim = make_sim(wire=True)
    a, b = sim.spawn(A), sim.spawn(B)
    group = ("tuple", 1, b"\x00")
    sim.call(A, "join", S, group, [a, a])
    sim.call(B, "join", S, group, b)
    sim.run()
    sim.partition([A], [B, C])
    sim.run()
    sim.heal()
    sim.run()
    assert_views(sim, {group: Counter({a: 2, b: 1})})
    sim.call(A, "broadcast_reliable", S, group, ("hi", [1]))
    sim.call(A, "broadcast", S, group, ("pub", a))
    sim.run()
    assert sim.mailboxes[b] == [("hi", [1]), ("pub", a)]
    assert not sim.logs


# -- monitors ----------------------------------------------------------------------------


def test_monitors_deliver_exact_join_leave_notifications() -> None:
    sim = make_sim()
    w, p = sim.spawn(A), sim.spawn(A)
    q, r = sim.spawn(B), sim.spawn(C)
    sim.call(C, "join", S, "g", r)
    sim.run()
    token, members = sim.call(A, "monitor", S, "g", w)
    assert members == [r]
    sim.call(B, "join", S, "g", [q, q])
    sim.call(A, "join", S, "g", p)
    sim.call(A, "join", S, "other", p)  # another group: no message
    sim.run()
    sim.call(B, "leave", S, "g", q)
    sim.exit(p)
    sim.run()
    sim.kill(C)
    sim.run()
    assert sim.mailboxes[w] == [
        PgJoin(token, S, "g", [p]),  # local: at once
        PgJoin(token, S, "g", [q, q]),  # remote: after the latency
        PgLeave(token, S, "g", [p]),
        PgLeave(token, S, "g", [q]),
        PgLeave(token, S, "g", [r]),
    ]
    assert sim.call(A, "demonitor", token) is True
    assert sim.call(A, "demonitor", token) is False
    sim.call(B, "leave", S, "g", q)
    sim.run()
    assert len(sim.mailboxes[w]) == 5


def test_scope_monitor_and_watcher_exit() -> None:
    sim = make_sim()
    w, p, q = sim.spawn(A), sim.spawn(A), sim.spawn(B)
    sim.call(B, "join", S, "g", q)
    sim.run()
    token, groups = sim.call(A, "monitor_scope", S, w)
    assert groups == {"g": [q]}
    sim.call(A, "join", S, "h", p)
    sim.call(A, "join", "elsewhere", "h", p)
    sim.call(A, "leave", S, "h", p)
    assert sim.mailboxes[w] == [PgJoin(token, S, "h", [p]), PgLeave(token, S, "h", [p])]
    sim.exit(w)
    assert sim.call(A, "demonitor", token) is False  # demonitored when the watcher exited
    effects = sim.core(A).join(S, "g", p, sim.now)
    assert not [e for e in effects if isinstance(e, Deliver)]


# -- topics and broadcast ----------------------------------------------------------------


def test_subscribe_on_first_local_join_unsubscribe_on_last_leave() -> None:
    sim = make_sim()
    p, q, b = sim.spawn(A), sim.spawn(A), sim.spawn(B)
    topic = group_topic(S, "g")
    effects = sim.core(A).join(S, "g", p, sim.now)
    assert effects.count(Subscribe(topic)) == 1
    sim.execute(A, effects)
    effects = sim.core(A).join(S, "g", q, sim.now)
    assert not any(isinstance(e, Subscribe) for e in effects)
    sim.execute(A, effects)
    sim.call(B, "join", S, "g", b)
    sim.run()
    assert sim.subscriptions(A) == {topic}
    assert sim.subscriptions(B) == {topic}
    assert sim.subscriptions(C) == set()  # remote members do not subscribe
    assert sim.call(A, "leave", S, "g", p) is True
    assert sim.subscriptions(A) == {topic}
    sim.exit(q)
    assert sim.subscriptions(A) == set()
    assert sim.core(B).leave(S, "g", b, sim.now)[:2] == [Reply(True), Unsubscribe(topic)]


def test_topic_prefix_safety() -> None:
    t = group_topic
    assert t(S, "a").startswith(b"g\x00")
    pairs: list[tuple[str, Any]] = [
        (S, "a"),
        (S, "ab"),
        ("a", "b"),
        ("ab", ""),
        ("a\x00", "b"),
        ("a", "\x00b"),
        (S, b"a"),
    ]
    pairs += [(S, ("a",)), (S, ("a", "b")), (S, 1), (S, 12), ("", "a\x00b")]
    topics = [t(s, g) for s, g in pairs]
    assert len(set(topics)) == len(topics)
    for x in topics:
        for y in topics:
            assert x == y or not y.startswith(x), (x, y)
    with pytest.raises(LocalProtocolError):
        t(S, 2**64)  # msgpack has no such int


_NAMES = st.tuples(st.text(), st.one_of(st.text(), st.binary(), st.integers(-(2**63), 2**64 - 1)))


@given(_NAMES, _NAMES)
def test_topics_are_prefix_free(x: tuple[str, Any], y: tuple[str, Any]) -> None:
    tx, ty = group_topic(*x), group_topic(*y)
    if (x, type(x[1])) != (y, type(y[1])):
        assert not tx.startswith(ty) and not ty.startswith(tx)
    else:
        assert tx == ty


def test_broadcast_delivers_to_local_members_and_publishes_once() -> None:
    sim = make_sim()
    a1, a2, b, c = sim.spawn(A), sim.spawn(A), sim.spawn(B), sim.spawn(C)
    sim.call(A, "join", S, "g", [a1, a1, a2])
    sim.call(B, "join", S, "g", b)
    sim.call(C, "join", S, "not_g", c)
    sim.run()
    effects = sim.core(A).broadcast(S, "g", "m", sim.now)
    assert effects == [
        Publish(group_topic(S, "g"), (S, "g", "m")),
        DeliverMany((a1, a2), "m"),  # once per distinct member, in one effect
    ]
    sim.call(A, "broadcast", S, "g", "hello")
    assert sim.published == [(A, group_topic(S, "g"), (S, "g", "hello"))]
    sim.run()
    assert sim.mailboxes[a1] == sim.mailboxes[a2] == sim.mailboxes[b] == ["hello"]
    assert sim.mailboxes[c] == []
    # A group without members still publishes (subscribers may know better) and
    # delivers nothing locally.
    assert sim.core(C).broadcast(S, "empty", 1, sim.now) == [
        Publish(group_topic(S, "empty"), (S, "empty", 1))
    ]


def test_reliable_broadcast_reaches_every_member_exactly_once() -> None:
    sim = make_sim(["a@h:1", "b@h:2", "c@h:3", "d@h:4"])
    pids = [sim.spawn(n) for n in (A, A, B, C)]
    d = sim.spawn("d@h:4")
    for p in pids:
        sim.call(p.node, "join", S, "g", [p, p])
    sim.run()
    effects = sim.core(A).broadcast_reliable(S, "g", "m", sim.now)
    sends = [e for e in effects if isinstance(e, Send)]
    assert sends == [Send(B, ("bcast", S, "g", "m")), Send(C, ("bcast", S, "g", "m"))]
    sim.call(A, "broadcast_reliable", S, "g", ("m", 1))
    sim.run()
    for p in pids:
        assert sim.mailboxes[p] == [("m", 1)], p
    assert sim.mailboxes[d] == []


def test_broadcast_recipients_and_nodes_follow_joins_leaves_exits_and_nodedowns() -> None:
    # The view keeps the distinct local members and the member nodes for the broadcasts;
    # every way a member goes must update them.
    sim = make_sim()
    a1, a2, b1, b2, c1 = (sim.spawn(n) for n in (A, A, B, B, C))
    sim.call(A, "join", S, "g", [a1, a2, a1])
    sim.call(B, "join", S, "g", [b1, b2])
    sim.call(C, "join", S, "g", c1)
    sim.run()

    def fan_out() -> tuple[list[Any], list[str]]:
        effects = sim.core(A).broadcast_reliable(S, "g", "m", sim.now)
        many = [e.pids for e in effects if isinstance(e, DeliverMany)]
        assert all(len(set(pids)) == len(pids) for pids in many)  # each member once
        return [set(pids) for pids in many], sorted(e.peer for e in effects
                                                    if isinstance(e, Send))

    assert fan_out() == ([{a1, a2}], [B, C])
    sim.call(A, "leave", S, "g", a1)  # a1 joined twice: still a member
    sim.call(B, "leave", S, "g", b1)  # b2 is still there: B stays
    sim.run()
    assert fan_out() == ([{a1, a2}], [B, C])
    sim.call(A, "leave", S, "g", a1)
    sim.exit(b2)
    sim.run()
    assert fan_out() == ([{a2}], [C])
    sim.cut(A, C)  # nodedown: C's member goes
    sim.run()
    assert fan_out() == ([{a2}], [])
    sim.heal()  # nodeup: C's sync brings it back
    sim.run()
    assert fan_out() == ([{a2}], [C])
    sim.exit(a2)  # no local member left; C's still is
    sim.run()
    assert fan_out() == ([], [C])


# -- scenarios (after OTP's pg_SUITE) ----------------------------------------------------


def test_netsplit_heals() -> None:
    sim = make_sim()
    exp: dict[Any, Counter[Pid]] = {}
    for name in NAMES:
        join(sim, sim.spawn(name), "g", exp)
    sim.run()
    assert_views(sim, exp)
    sim.partition([A], [B, C])
    sim.run()
    assert view(sim, A) == only(exp, {A})
    assert view(sim, B) == view(sim, C) == only(exp, {B, C})
    # Changes on both sides during the split.
    join(sim, sim.spawn(A), "during", exp)
    leaver = next(p for p in exp["g"] if p.node == B)
    sim.call(B, "leave", S, "g", leaver)
    exp["g"][leaver] -= 1
    join(sim, sim.spawn(C), "g", exp)
    sim.run()
    assert view(sim, A) == only(exp, {A})
    assert view(sim, B) == only(exp, {B, C})
    sim.heal()
    sim.run()
    assert_views(sim, exp)


def test_trisplit() -> None:
    sim = make_sim()
    exp: dict[Any, Counter[Pid]] = {}
    for name in NAMES:
        join(sim, sim.spawn(name), "g", exp)
    sim.run()
    sim.partition([A], [B], [C])
    for name in NAMES:
        join(sim, sim.spawn(name), ("split", name), exp)
    sim.run()
    for name in NAMES:
        assert view(sim, name) == only(exp, {name})
    sim.heal()
    sim.run()
    assert_views(sim, exp)
    assert len(exp) == 4


def test_thundering_herd() -> None:
    names = [f"n{i}@h:{i + 1}" for i in range(5)]
    sim = make_sim(names)
    exp: dict[Any, Counter[Pid]] = {}
    rng = random.Random(7)
    pids = [sim.spawn(names[i % 5]) for i in range(500)]
    for p in pids:  # all at once: nothing is delivered until run()
        join(sim, p, f"g{rng.randrange(10)}", exp)
    for p in pids[::7]:
        sim.exit(p)
        for c in exp.values():
            c.pop(p, None)
    sim.run()
    assert_views(sim, exp)
    assert sum(sum(c.values()) for c in exp.values()) == 500 - len(pids[::7])


def test_leave_exit_race() -> None:
    sim = make_sim()
    p, q = sim.spawn(A), sim.spawn(A)
    sim.call(A, "join", S, "g", [p, q])
    sim.run()
    # Leave and exit in the same instant: the exit finds nothing left to remove.
    assert sim.call(A, "leave", S, "g", p) is True
    sim.exit(p)
    # Exit first, then a late leave for the dead pid.
    sim.exit(q)
    assert sim.call(A, "leave", S, "g", q) is False
    sim.run()
    assert_views(sim, {})
    # A leave that is in flight when the session breaks is dropped with it; the
    # nodedown and the sync after the heal settle the views anyway.
    r = sim.spawn(A)
    sim.call(A, "join", S, "g", r)
    sim.run()
    sim.call(A, "leave", S, "g", r)
    sim.partition([A], [B, C])
    sim.heal()
    sim.run()
    assert_views(sim, {})


def test_disconnected_start() -> None:
    sim = make_sim(connected=False)
    exp: dict[Any, Counter[Pid]] = {}
    for name in NAMES:
        join(sim, sim.spawn(name), "g", exp)
    sim.run()
    for name in NAMES:
        assert view(sim, name) == only(exp, {name})
    sim.connect(A, B)
    sim.run()
    assert view(sim, A) == view(sim, B) == only(exp, {A, B})
    assert view(sim, C) == only(exp, {C})
    sim.connect(B, C)
    sim.connect(A, C)
    sim.run()
    assert_views(sim, exp)


@pytest.mark.parametrize("seed", [3, 11, 42])
def test_flickering_peer(seed: int) -> None:
    sim = make_sim(seed=seed)
    rng = random.Random(seed)
    exp: dict[Any, Counter[Pid]] = {}
    for cycle in range(20):
        sim.cut(A, B)
        # Heal before, around and after failure detection (detect_delay is 1 s).
        sim.advance(rng.choice([0.0, 0.3, 0.9, 1.2, 2.0]))
        join(sim, sim.spawn(rng.choice([A, B])), f"g{cycle % 3}", exp)
        live = [p for c in exp.values() for p in c if p in sim.mailboxes]
        if live and rng.random() < 0.5:
            victim = rng.choice(live)
            sim.exit(victim)
            for c in exp.values():
                c.pop(victim, None)
        sim.heal()
        sim.advance(rng.choice([0.0, 0.2, 0.6, 1.5]))
    sim.run()
    assert sim.connected(A, B)
    assert_views(sim, exp)
    assert sum(sum(c.values()) for c in exp.values()) > 0


def _truth(sim: ServiceSim, scope: str = S) -> dict[Any, Counter[Pid]]:
    """The union of every live node's local members: what converged views must show."""
    out: dict[Any, Counter[Pid]] = {}
    for name in sim.live_nodes():
        core = sim.core(name)
        for g in core.which_local_groups(scope):
            out.setdefault(g, Counter()).update(core.get_local_members(scope, g))
    return out


@pytest.mark.parametrize("seed", range(8))
def test_random_chaos_converges(seed: int) -> None:
    """Random joins, leaves, exits, partitions, kills and restarts; then heal: views agree."""
    names = [f"n{i}@h:{i + 1}" for i in range(4)]
    sim = make_sim(names, seed=seed)
    rng = random.Random(seed)
    for _ in range(60):
        live = [n for n in names if sim.is_up(n)]
        roll = rng.random()
        if roll < 0.45:
            node = rng.choice(live)
            sim.call(node, "join", rng.choice([S, "s2"]), rng.randrange(4), sim.spawn(node))
        elif roll < 0.65:
            pids = [p for p in sim.mailboxes if sim.is_up(p.node)]
            if pids:
                pid = rng.choice(pids)
                if rng.random() < 0.5:
                    sim.exit(pid)
                else:
                    sim.call(pid.node, "leave", rng.choice([S, "s2"]), rng.randrange(4), pid)
        elif roll < 0.85:
            shuffled = rng.sample(names, len(names))
            cut = rng.randrange(1, len(names))
            sim.partition(shuffled[:cut], shuffled[cut:])
        elif roll < 0.93:
            sim.heal()
        elif len(live) > 1:
            victim = rng.choice(live)
            sim.kill(victim)
            sim.advance(rng.choice([0.0, 0.7]))
            sim.restart(victim)
        sim.advance(rng.choice([0.0, 0.001, 0.4, 1.1]))
    sim.heal()
    sim.run()
    for scope in (S, "s2"):
        assert_views(sim, _truth(sim, scope), scope)


class _Recorder:
    """A core that only records the session events it sees."""

    service = "rec"

    def __init__(self, name: str, creation: int) -> None:
        self.events: list[tuple[str, str]] = []

    def on_nodeup(self, peer: str, now: float) -> list[Any]:
        self.events.append(("up", peer))
        return []

    def on_nodedown(self, peer: str, reason: str, now: float) -> list[Any]:
        self.events.append(("down", peer))
        return []

    def on_message(self, peer: str, payload: Any, now: float) -> list[Any]:
        return []

    def on_timer(self, key: Any, now: float) -> list[Any]:
        return []

    def on_process_exit(self, pid: Pid, reason: Any, now: float) -> list[Any]:
        return []


@pytest.mark.parametrize("gap", [0.0, 0.2, 0.6, 0.99, 1.0, 1.5])
def test_sim_alternates_nodeup_and_nodedown_under_flicker(gap: float) -> None:
    """The simulator contract pg relies on: a quick cut/heal never yields up, up, down."""
    sim = ServiceSim(_Recorder, [A, B])
    for _ in range(3):
        sim.cut(A, B)
        sim.advance(gap)
        sim.heal()
        sim.advance(gap)
    sim.run()
    for name, peer in ((A, B), (B, A)):
        events = sim.core(name).events
        # Strictly alternating, starting and ending connected (a cut while the session is
        # still down ends nothing, so short gaps give fewer cycles).
        assert events == [("up", peer), ("down", peer)] * (len(events) // 2) + [("up", peer)]
        assert len(events) >= 3
    assert sim.connected(A, B)
