"""The distributed supervisor's placement (fabric.protocol.dsupervision), purely: a few
PlacementCores wired by a tiny in-test network (publishes and hand-offs delivered in
order, starts succeeding at once), with a fake clock. Placement by the ring, failover by
exactly one survivor, convergence after a partition, moves on join and on leave,
tombstones; and with a split-brain policy (D37): the side that loses it stops its
children at once, the other takes them over after the margin, never two copies at once."""

from __future__ import annotations

import random
from typing import Any

import pytest

from fabric.protocol.dsupervision import (
    Entry,
    MoveTo,
    PlacementCore,
    PlacementEffect,
    Publish,
    StartHere,
    StopHere,
)
from fabric.protocol.effects import Log
from fabric.protocol.split_brain import STATIC_QUORUM, SplitBrainPolicy


class Net:
    """Cores by node name; runs plans, delivering publishes and hand-offs to the members
    this core's view includes (a partition is two disjoint views)."""

    def __init__(self, *nodes: str, policy: SplitBrainPolicy | None = None,
                 margin: float = 0.0) -> None:
        self.cores = {n: PlacementCore(n, tombstone_ttl=10, policy=policy, margin=margin)
                      for n in nodes}
        self.now = 0.0
        self.exclusive = False  # assert after every start that no key runs twice
        self.copies: dict[str, set[str]] = {}  # key -> nodes whose StartHere ran, not stopped
        self.runs = dict.fromkeys(nodes, 0)  # each node's member, as its pid tells it
        self.starts: list[tuple[str, str, Any]] = []  # (node, key, hand-off state)
        self.stops: list[tuple[str, str]] = []
        self.fail_starts: set[tuple[str, str]] = set()
        self.pids = 0

    def view(self, *nodes: str) -> None:
        # A joining member sees the group before the group sees it join.
        runs = {n: self.runs[n] for n in nodes}
        for n in sorted(nodes, key=lambda n: bool(self.cores[n].members)):
            self.run(n, self.cores[n].set_members(set(nodes), self.now, runs))

    def run(self, node: str, plan: list[PlacementEffect]) -> None:
        core = self.cores[node]
        for effect in plan:
            if type(effect) is Publish:
                for other in sorted(core.members - {node}):
                    self.run(other, self.cores[other].merge(effect.entries, self.now))
            elif type(effect) is StartHere:
                self.starts.append((node, effect.key, effect.state))
                self.copies.setdefault(effect.key, set()).add(node)
                assert not self.exclusive or len(self.copies[effect.key]) == 1, \
                    (effect.key, self.copies[effect.key], self.now)
                if (node, effect.key) in self.fail_starts:
                    self.run(node, core.start_failed(effect.key, "boom", self.now))
                else:
                    self.pids += 1
                    self.run(node, core.started(effect.key, f"{node}.{self.pids}", self.now))
            elif type(effect) is StopHere:
                self.stops.append((node, effect.key))
                self.copies.get(effect.key, set()).discard(node)
                core.stopped(effect.key)
            elif type(effect) is MoveTo:
                self.stops.append((node, effect.key))
                self.copies.get(effect.key, set()).discard(node)
                self.run(effect.node, self.cores[effect.node].handed_over(
                    effect.key, effect.entry, f"state-of-{effect.key}", self.now))
            else:
                assert type(effect) is Log

    def nodedown(self, dead: str, reason: str, *at: str) -> None:
        """The nodes ``at`` learn that ``dead``'s node went down with ``reason``."""
        for n in at:
            self.run(n, self.cores[n].nodedown(dead, reason, self.now))

    def tick_until(self, end: float, step: float = 0.25) -> None:
        """Advance the clock to ``end``, ticking every core at every step."""
        while self.now < end:
            self.now = min(end, self.now + step)
            for n in sorted(self.cores):
                self.run(n, self.cores[n].tick(self.now))

    def exchange_tables(self, tell_known: bool = True) -> None:
        """Every member sends the nodes it knows and its whole table to every other
        (what members send one that joins their group: a heal's joins)."""
        for n in sorted(self.cores):
            known, snapshot = sorted(self.cores[n].known), self.cores[n].snapshot()
            for other in sorted(self.cores[n].members - {n}):
                if tell_known:
                    self.run(other, self.cores[other].heard_of(known, self.now))
                self.run(other, self.cores[other].merge(snapshot, self.now))

    def start_child(self, key: str, movable: bool = False) -> str:
        """Place ``key`` as a member's request would: on the ring's owner."""
        owner = next(iter(self.cores.values())).owner(key)
        assert owner is not None
        self.run(owner, self.cores[owner].add(key, ("spec", key), movable, self.now))
        return owner

    def running(self) -> dict[str, list[str]]:
        """key -> the nodes running it."""
        out: dict[str, list[str]] = {}
        for n, core in self.cores.items():
            for key in core.running:
                out.setdefault(key, []).append(n)
        return {k: sorted(v) for k, v in out.items()}


KEYS = sorted(f"k{i}" for i in range(30))


def test_children_go_to_the_rings_owner_and_every_member_learns_where() -> None:
    net = Net("a", "b", "c")
    net.view("a", "b", "c")
    for key in KEYS:
        net.start_child(key)
    running = net.running()
    assert sorted(running) == KEYS
    assert {n for nodes in running.values() for n in nodes} == {"a", "b", "c"}
    for core in net.cores.values():
        assert {k: e.node for k, e in core.live().items()} == \
            {k: nodes[0] for k, nodes in running.items()}
        assert all(e.pid is not None for e in core.live().values())
    with pytest.raises(ValueError):
        net.cores["a"].add("k0", ("spec", "k0"), False, 0)


def test_a_dead_members_children_are_started_once_each_on_the_survivors() -> None:
    net = Net("a", "b", "c")
    net.view("a", "b", "c")
    for key in KEYS:
        net.start_child(key)
    on_c = sorted(k for k, nodes in net.running().items() if nodes == ["c"])
    assert on_c
    net.starts.clear()
    del net.cores["c"]
    net.view("a", "b")  # both survivors see c leave: no message needed before starting
    assert sorted(k for _, k, _ in net.starts) == on_c  # each exactly once
    for node, key, _ in net.starts:
        assert net.cores["a"].owner(key) == node
    assert sorted(net.running()) == KEYS
    assert all(len(nodes) == 1 for nodes in net.running().values())
    for core in net.cores.values():  # the takeover was published
        assert {e.node for e in core.live().values()} == {"a", "b"}


def test_two_sides_of_a_partition_each_run_the_others_children_then_one_copy_stays() -> None:
    net = Net("a", "b", "c")
    net.view("a", "b", "c")
    for key in KEYS:
        net.start_child(key)
    net.view("a")  # a alone
    net.view("b", "c")
    assert sorted(net.running()) == KEYS
    assert any(len(nodes) == 2 for nodes in net.running().values())  # availability
    net.view("a", "b", "c")  # healed: the members exchange their tables
    for n in ("a", "b", "c"):
        snapshot = net.cores[n].snapshot()
        for other in ("a", "b", "c"):
            if other != n:
                net.run(other, net.cores[other].merge(snapshot, net.now))
    assert sorted(net.running()) == KEYS
    assert all(len(nodes) == 1 for nodes in net.running().values()), net.running()
    tables = [{k: e.node for k, e in c.live().items()} for c in net.cores.values()]
    assert tables[0] == tables[1] == tables[2]


def test_movable_children_move_to_a_joining_node_with_their_state() -> None:
    net = Net("a", "b", "c")
    net.view("a", "b")
    for key in KEYS:
        net.start_child(key, movable=key < "k2")  # k0, k1, k10..k19 move
    before = net.running()
    net.view("a", "b", "c")
    # c got the whole table first (as a joining member does), then took its keys.
    after = net.running()
    gained = sorted(k for k, nodes in after.items() if nodes == ["c"])
    assert gained and all(k < "k2" for k in gained)
    assert all(after[k] == before[k] for k in KEYS if not k < "k2")
    for key in gained:
        assert ("c", key, f"state-of-{key}") in net.starts
        assert net.cores["a"].live()[key].node == "c"
    assert all(len(nodes) == 1 for nodes in after.values())


def test_leave_moves_every_local_child_before_the_member_goes() -> None:
    net = Net("a", "b", "c")
    net.view("a", "b", "c")
    for key in KEYS:
        net.start_child(key)
    on_b = sorted(k for k, nodes in net.running().items() if nodes == ["b"])
    net.run("b", net.cores["b"].leave(net.now))
    assert net.cores["b"].running == set()
    assert sorted(net.running()) == KEYS
    assert sorted(k for n, k, s in net.starts if s == f"state-of-{k}") == on_b
    net.starts.clear()
    del net.cores["b"]
    net.view("a", "c")  # its member leaves the group: nothing left to take over
    assert net.starts == []


def test_a_deleted_child_stays_deleted_until_its_tombstone_expires() -> None:
    net = Net("a", "b")
    net.view("a", "b")
    owner = net.start_child("job")
    old = net.cores["b" if owner == "a" else "a"].snapshot()["job"]
    net.run(owner, net.cores[owner].delete("job", net.now))
    assert net.running() == {} and (owner, "job") in net.stops
    # A late copy of the live entry does not bring it back.
    net.run(owner, net.cores[owner].merge({"job": old}, net.now))
    assert net.running() == {}
    net.now = 11.0
    net.view("a", "b")  # any input expires tombstones older than the ttl
    assert all("job" not in c.snapshot() for c in net.cores.values())
    net.start_child("job")  # the key can be used again
    assert list(net.running()) == ["job"]


def test_a_child_that_cannot_start_on_takeover_is_deleted_not_retried() -> None:
    net = Net("a", "b")
    net.view("a", "b")
    owner = net.start_child("job")
    survivor = "b" if owner == "a" else "a"
    net.fail_starts.add((survivor, "job"))
    del net.cores[owner]
    net.view(survivor)
    assert net.running() == {}
    assert net.cores[survivor].snapshot()["job"].deleted
    net.view(survivor)
    assert [s for s in net.starts if s[0] == survivor] == [(survivor, "job", None)]


def test_entries_round_trip_and_malformed_ones_are_refused() -> None:
    entry = Entry(("spec",), "a", (3, "b"), True, "pid", False)
    assert Entry.from_wire(entry.to_wire("k")) == ("k", entry)
    for bad in [None, ("k",), (1, None, "a", 3, "b", True, None, False),
                ("k", None, "a", "3", "b", True, None, False)]:
        with pytest.raises(ValueError):
            Entry.from_wire(bad)


def test_a_child_taken_elsewhere_while_it_started_is_stopped_once_it_runs() -> None:
    core = PlacementCore("a")
    core.set_members({"a", "b"}, 0)
    assert core.add("job", ("spec",), False, 0) == [StartHere("job", ("spec",))]
    newer = Entry(("spec",), "b", (99, "b"), pid="b.1")
    assert core.merge({"job": newer}, 0) == []  # not running here yet: nothing to stop
    assert core.started("job", "a.1", 0) == [StopHere("job")]
    assert core.running == set() and core.live()["job"] == newer


def test_children_on_a_node_never_seen_as_a_member_are_not_taken_over() -> None:
    core = PlacementCore("a")
    core.set_members({"a"}, 0)
    # A publish from "b" overtook b's join (or a joiner got the table first): b's child
    # is not an orphan, though the ring of {a} would give it to a.
    assert core.merge({"job": Entry(("spec",), "b", (1, "b"), pid="b.1")}, 0) == []
    assert not core.orphaned("b")
    core.set_members({"a", "b"}, 0)
    plan = core.set_members({"a"}, 1)  # now b was seen, and left: a takes over
    assert [e for e in plan if type(e) is StartHere] == [StartHere("job", ("spec",))]


def test_a_takeover_refused_because_another_copy_runs_records_that_copy() -> None:
    net = Net("a", "b", "c")
    net.view("a", "b", "c")
    owner = net.start_child("job")
    survivor = next(n for n in ("a", "b", "c") if n not in (owner,))
    other = next(n for n in ("a", "b", "c") if n not in (owner, survivor))
    core = net.cores[survivor]
    plan = core.yield_to("job", other, 0)  # its start found the name held on `other`
    assert [type(e) for e in plan] == [Log, Publish]
    assert core.live()["job"].node == other  # kept, not deleted
    assert type(core.yield_to("job", survivor, 0)[-1]) is Publish  # held here: deleted
    assert core.snapshot()["job"].deleted


# -- split-brain policy (D37) ---------------------------------------------------------------

FIVE = ("a", "b", "c", "d", "e")
MARGIN = 2.0


def formed(*nodes: str, policy: SplitBrainPolicy | None = None) -> Net:
    """A cluster of ``nodes`` running every key of KEYS once, checked for two copies."""
    net = Net(*nodes, policy=policy or SplitBrainPolicy(), margin=MARGIN)
    net.view(*nodes)
    for key in KEYS:
        net.start_child(key)
    net.exclusive = True
    return net


def on(net: Net, *nodes: str) -> list[str]:
    """The keys running on ``nodes``."""
    return sorted(k for k, where in net.copies.items() if where & set(nodes))


def assert_each_key_runs_once(net: Net) -> None:
    assert sorted(k for k, where in net.copies.items() if where) == KEYS
    assert all(len(where) <= 1 for where in net.copies.values()), net.copies
    assert {k: sorted(w) for k, w in net.copies.items()} == net.running()


def test_keep_majority_the_minority_stops_at_once_the_majority_takes_over_after_the_margin(
        ) -> None:
    net = formed(*FIVE)
    minority = on(net, "a", "b")
    assert minority
    net.now = 10.0
    table_at_split = net.cores["a"].snapshot()
    net.view("a", "b")  # a pg loss with no reason (yet): may be a partition
    assert on(net, "a", "b") == []  # stopped at once
    assert not net.cores["a"].allowed() and net.cores["a"].unreachable() == {"c", "d", "e"}
    net.view("c", "d", "e")
    assert net.cores["c"].allowed()
    assert on(net, "c", "d", "e") == sorted(set(KEYS) - set(minority))  # nothing taken yet
    assert net.cores["c"].wake_at(net.now) == 10.0 + MARGIN
    net.tick_until(10.0 + MARGIN - 0.25)
    assert on(net) == [] and not set(on(net, "c", "d", "e")) & set(minority)
    net.tick_until(10.0 + MARGIN)  # the margin has passed: the majority takes over
    assert_each_key_runs_once(net)
    assert on(net, "c", "d", "e") == KEYS
    net.tick_until(20.0)
    assert on(net, "a", "b") == []  # the minority took nothing over meanwhile
    assert net.cores["a"].snapshot() == table_at_split  # and wrote nothing
    # Healed: the members see each other and exchange their tables; one copy each.
    net.view(*FIVE)
    net.exchange_tables()
    net.tick_until(20.0 + 2 * MARGIN)
    assert_each_key_runs_once(net)
    tables = [{k: e.node for k, e in c.live().items()} for c in net.cores.values()]
    assert all(t == tables[0] for t in tables)


def test_a_heal_before_the_margin_gives_the_minority_its_children_back() -> None:
    net = formed(*FIVE)
    minority = on(net, "a", "b")
    net.view("a", "b")
    net.view("c", "d", "e")
    net.tick_until(MARGIN / 2)
    assert on(net, "a", "b") == []
    net.view(*FIVE)  # back before anybody took them over
    net.exchange_tables()
    assert on(net, "a", "b") == []  # not yet: the tables of the heal may say otherwise
    assert net.cores["a"].wake_at(net.now) == MARGIN / 2 + MARGIN  # when to look again
    net.tick_until(MARGIN / 2 + MARGIN)
    assert on(net, "a", "b") == minority
    assert_each_key_runs_once(net)


def test_a_side_that_just_gained_the_policy_waits_the_margin_before_taking_over() -> None:
    net = formed(*FIVE)
    net.view("c")
    net.view("a", "b", "d", "e")
    net.tick_until(10.0)  # c has been alone (and stable) for long
    assert on(net, "a", "b", "d", "e") == KEYS
    net.view("a", "c", "d")  # a re-split: c's side gains the majority...
    net.view("b", "e")  # ...as b's and e's loses it (in the Net: a moment later)
    net.exchange_tables()
    assert on(net, "b", "e") == []
    assert not set(on(net, "a", "c", "d")) & set(on(net, "b", "e"))
    net.tick_until(10.0 + MARGIN)
    assert_each_key_runs_once(net)
    assert on(net, "a", "c", "d") == KEYS


def restart_a_on_the_minority_side(net: Net, tell_known: bool) -> None:
    """Split a, b | c, d, e until the majority runs every child; then a's member
    restarts (a fresh core), sees only b, and b sends it its table (and, if
    ``tell_known``, the nodes it knows). a must find itself in the minority."""
    net.exclusive = True
    net.view("a", "b")
    net.view("c", "d", "e")
    net.tick_until(net.now + MARGIN)
    assert on(net, "c", "d", "e") == KEYS
    net.cores["a"] = PlacementCore("a", tombstone_ttl=10, policy=SplitBrainPolicy(),
                                   margin=MARGIN)
    net.view("a", "b")
    net.exchange_tables(tell_known)
    assert not net.cores["a"].allowed()
    net.tick_until(net.now + 3 * MARGIN)
    assert on(net, "a", "b") == []
    assert_each_key_runs_once(net)


def test_a_member_restarted_on_the_minority_side_learns_it_from_the_table() -> None:
    # b's table places children on c, d and e: they count as known.
    restart_a_on_the_minority_side(formed(*FIVE), tell_known=False)


def test_a_member_restarted_behind_a_partition_hears_of_childless_nodes() -> None:
    net = Net(*FIVE, policy=SplitBrainPolicy(), margin=MARGIN)
    net.view("a", "b")
    for key in KEYS:
        net.start_child(key)  # every child on a or b (none moves: not movable)
    net.view(*FIVE)
    net.exchange_tables()
    # b's table names only a and b; b says it knows c, d and e too.
    restart_a_on_the_minority_side(net, tell_known=True)


def test_a_node_that_joins_during_a_partition_is_not_counted_until_it_converges() -> None:
    net = formed(*FIVE)
    net.nodedown("c", "connection_closed", "a", "b", "d", "e")
    del net.cores["c"]
    net.copies = {k: where - {"c"} for k, where in net.copies.items()}
    net.view("a", "b", "d", "e")
    net.view("a", "b")  # 2 of the 4 known, with the oldest: allowed
    net.view("d", "e")
    net.tick_until(MARGIN)
    assert on(net, "a", "b") == KEYS
    # c comes back (a new run) and joins d and e: counted, they would have 3 of 5.
    net.cores["c"] = PlacementCore("c", tombstone_ttl=10, policy=SplitBrainPolicy(),
                                   margin=MARGIN)
    net.view("c", "d", "e")
    net.exchange_tables()
    assert not any(net.cores[n].allowed() for n in ("c", "d", "e"))
    net.tick_until(4 * MARGIN)
    assert on(net, "c", "d", "e") == []
    net.view(*FIVE)  # converged: c counts now
    net.exchange_tables()
    net.tick_until(7 * MARGIN)
    assert_each_key_runs_once(net)
    assert all(net.cores[n].allowed() for n in FIVE)


def kill(net: Net, victim: str, *witnesses: str) -> None:
    """``victim`` dies; ``witnesses`` (its side) see connection_closed, then its leave."""
    net.nodedown(victim, "connection_closed", *witnesses)
    del net.cores[victim]
    net.copies = {k: where - {victim} for k, where in net.copies.items()}
    net.view(*witnesses)


def test_a_new_run_of_a_node_one_side_saw_die_joins_the_other_side_afresh() -> None:
    net = formed(*FIVE)
    kill(net, "b", "a", "c", "d", "e")
    net.view("a", "c", "e")  # 3 of the 4 known
    net.view("d")
    net.tick_until(MARGIN)
    kill(net, "a", "c", "e")  # c and e see a die: 2 of the 3 they know
    assert net.cores["c"].allowed() and net.cores["d"].unreachable() == {"a", "c", "e"}
    net.tick_until(2 * MARGIN)
    assert on(net, "c", "e") == KEYS
    # a restarts (another member pid) and joins d, which only lost the old a: with the
    # old one counted, d would reach 2 of its 4 known, the oldest among them.
    net.cores["a"] = PlacementCore("a", tombstone_ttl=10, policy=SplitBrainPolicy(),
                                   margin=MARGIN)
    net.runs["a"] += 1
    net.view("a", "d")
    net.exchange_tables()
    assert not net.cores["d"].allowed() and not net.cores["a"].allowed()
    net.tick_until(5 * MARGIN)
    assert on(net, "a", "d") == [] and on(net, "c", "e") == KEYS


def test_a_killed_member_is_taken_over_at_once_whichever_comes_first() -> None:
    # connection_closed before its member leaves the group:
    net = formed(*FIVE)
    on_e = on(net, "e")
    net.nodedown("e", "connection_closed", "a", "b", "c", "d")
    del net.cores["e"]
    net.copies = {k: w - {"e"} for k, w in net.copies.items()}
    net.view("a", "b", "c", "d")
    assert set(on(net, "a", "b", "c", "d")) >= set(on_e)  # no margin waited
    assert_each_key_runs_once(net)
    assert net.cores["a"].known == {"a", "b", "c", "d"}
    # ...and after it (the group's PgLeave first: a possible partition, then the reason):
    net = formed(*FIVE)
    on_e = on(net, "e")
    del net.cores["e"]
    net.copies = {k: w - {"e"} for k, w in net.copies.items()}
    net.view("a", "b", "c", "d")
    assert not set(on(net, "a", "b", "c", "d")) & set(on_e)  # waiting for the margin
    assert net.cores["a"].unreachable() == {"e"}
    net.nodedown("e", "peer_reset", "a", "b", "c", "d")  # proof it lives: still waiting
    assert not set(on(net, "a", "b", "c", "d")) & set(on_e)
    net.nodedown("e", "connection_closed", "a", "b", "c", "d")
    assert_each_key_runs_once(net)  # taken over at once (still at time 0)
    assert net.cores["a"].unreachable() == set()


def test_a_member_that_announced_its_leaving_is_taken_over_at_once() -> None:
    net = formed(*FIVE)
    on_e = on(net, "e")
    for n in ("a", "b", "c", "d"):
        net.run(n, net.cores[n].member_leaving("e", net.now))
    del net.cores["e"]
    net.copies = {k: w - {"e"} for k, w in net.copies.items()}
    net.view("a", "b", "c", "d")
    assert set(on(net, "a", "b", "c", "d")) >= set(on_e)
    assert_each_key_runs_once(net)


def test_the_minority_writes_nothing_and_the_majority_may_write() -> None:
    net = formed(*FIVE)
    net.view("a", "b")
    net.view("c", "d", "e")
    core = net.cores["a"]
    assert not core.allowed()  # what makes the runtime refuse start_child here
    before = core.snapshot()
    key = next(k for k, e in core.live().items() if e.node == "a")
    assert core.delete(key, net.now) == []  # nothing was running: nothing written
    assert core.yield_to(key, "b", net.now) == []
    assert core.snapshot() == before
    assert net.cores["c"].allowed()
    net.run("c", net.cores["c"].delete(key, net.now))
    assert net.cores["d"].snapshot()[key].deleted


def test_keep_oldest_the_side_with_the_smallest_node_name_keeps_running() -> None:
    net = formed("a", "b", "c", policy=SplitBrainPolicy("keep_oldest"))
    on_a = on(net, "a")
    net.view("b", "c")  # the majority, without the oldest: stops
    assert on(net, "b", "c") == []
    net.view("a")
    net.tick_until(MARGIN)
    assert on(net, "a") == KEYS
    assert_each_key_runs_once(net)
    assert on_a


def test_static_quorum_needs_that_many_reachable_members() -> None:
    net = formed(*FIVE, policy=SplitBrainPolicy("static_quorum", quorum=3))
    net.view("a", "b", "c", "d")
    net.view("e")
    assert on(net, "e") == []
    net.tick_until(MARGIN)
    assert on(net, "a", "b", "c", "d") == KEYS
    net.view("a", "b")  # now only two of them: below the quorum
    net.view("c", "d")
    assert on(net) == [] and not net.cores["a"].allowed()


def test_exact_half_keep_majority_goes_to_the_half_with_the_oldest() -> None:
    net = formed("a", "b", "c", "d")
    net.view("c", "d")
    assert on(net, "c", "d") == []
    net.view("a", "b")
    net.tick_until(MARGIN)
    assert on(net, "a", "b") == KEYS


def test_forget_after_lets_the_majority_forget_a_lost_member_but_not_the_minority() -> None:
    net = formed("a", "b", "c", policy=SplitBrainPolicy(forget_after=5.0))
    net.view("a", "b")
    net.view("c")
    assert net.cores["a"].wake_at(0.0) == MARGIN
    net.tick_until(MARGIN)
    assert net.cores["a"].wake_at(net.now) == 5.0
    net.tick_until(5.0)
    assert net.cores["a"].known == {"a", "b"}  # c forgotten by the allowed side
    assert net.cores["c"].known == {"a", "b", "c"}  # never by the minority
    # Now b is lost too: a alone is still a majority of what it knows (a, b): the oldest.
    net.view("a")
    net.view("b")
    assert net.cores["a"].allowed() and not net.cores["b"].allowed()
    net.tick_until(5.0 + MARGIN)
    assert on(net, "a") == KEYS


def test_without_a_policy_nothing_changes() -> None:
    net = Net("a", "b", "c")
    net.view("a", "b", "c")
    for key in KEYS:
        net.start_child(key)
    net.view("a")
    assert net.cores["a"].allowed() and net.cores["a"].wake_at(0) is None
    assert on(net, "a") == KEYS  # every key at once, as today
    assert net.cores["a"].nodedown("b", "connection_closed", 0) == []


@pytest.mark.parametrize("kind", ["keep_majority", "keep_oldest", "static_quorum"])
@pytest.mark.parametrize("seed", range(20))
def test_random_splits_and_heals_never_run_a_key_twice(kind: str, seed: int) -> None:
    """Random splits into up to four sides, re-splits and heals, with time passing;
    the tables of a new view are exchanged (as PgJoin makes members do) at once or late
    but within the margin. No key ever runs on two nodes (the Net checks after every
    start), and after the last heal and a margin each key runs once."""
    rng = random.Random(seed)
    net = formed(*FIVE, policy=SplitBrainPolicy(kind, quorum=3 if kind == STATIC_QUORUM
                                                else 0))
    for _ in range(15):
        nodes = list(FIVE)
        rng.shuffle(nodes)
        cuts = sorted(rng.sample(range(1, 5), rng.choice([0, 1, 2, 3])))
        for i, j in zip([0, *cuts], [*cuts, 5], strict=True):
            net.view(*nodes[i:j])
        net.tick_until(net.now + rng.choice([0.0, 0.25, 1.0]))  # tables on their way
        net.exchange_tables()
        net.tick_until(net.now + rng.choice([0.0, 0.5, MARGIN, 2 * MARGIN]))
    net.view(*FIVE)
    net.exchange_tables()
    net.tick_until(net.now + 2 * MARGIN)
    assert_each_key_runs_once(net)


@pytest.mark.parametrize("kind", ["keep_majority", "keep_oldest"])
@pytest.mark.parametrize("seed", range(20))
def test_random_splits_and_kills_never_run_a_key_twice(kind: str, seed: int) -> None:
    """As above, with members killed now and then: the nodes that had the victim in
    their view learn ``connection_closed`` before or after its member leaves their
    group; the others never do (it is behind their partition)."""
    rng = random.Random(seed)
    net = formed(*FIVE, policy=SplitBrainPolicy(kind))
    alive = list(FIVE)
    for _ in range(15):
        nodes = list(alive)
        rng.shuffle(nodes)
        cuts = sorted(rng.sample(range(1, len(nodes)), min(len(nodes) - 1,
                                                           rng.choice([0, 1, 2]))))
        sides = [nodes[i:j] for i, j in zip([0, *cuts], [*cuts, len(nodes)], strict=True)]
        for side in sides:
            net.view(*side)
        net.tick_until(net.now + rng.choice([0.0, 0.25, 1.0]))
        net.exchange_tables()
        if len(alive) > 2 and rng.random() < 0.25:
            victim = rng.choice(alive)
            witnesses = sorted(net.cores[victim].members - {victim})
            alive.remove(victim)
            del net.cores[victim]
            net.copies = {k: where - {victim} for k, where in net.copies.items()}
            reason_first = rng.random() < 0.5
            if reason_first:
                net.nodedown(victim, "connection_closed", *witnesses)
            for side in sides:
                if victim in side and len(side) > 1:
                    net.view(*(n for n in side if n != victim))
            if not reason_first:
                net.nodedown(victim, "connection_closed", *witnesses)
        net.tick_until(net.now + rng.choice([0.0, 0.5, MARGIN, 2 * MARGIN]))
    net.view(*alive)
    net.exchange_tables()
    net.tick_until(net.now + 2 * MARGIN)
    assert all(len(where) <= 1 for where in net.copies.values()), net.copies
