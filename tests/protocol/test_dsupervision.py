"""The distributed supervisor's placement (fabric.protocol.dsupervision), purely: a few
PlacementCores wired by a tiny in-test network (publishes and hand-offs delivered in
order, starts succeeding at once), with a fake clock. Placement by the ring, failover by
exactly one survivor, convergence after a partition, moves on join and on leave,
tombstones."""

from __future__ import annotations

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


class Net:
    """Cores by node name; runs plans, delivering publishes and hand-offs to the members
    this core's view includes (a partition is two disjoint views)."""

    def __init__(self, *nodes: str) -> None:
        self.cores = {n: PlacementCore(n, tombstone_ttl=10) for n in nodes}
        self.now = 0.0
        self.starts: list[tuple[str, str, Any]] = []  # (node, key, hand-off state)
        self.stops: list[tuple[str, str]] = []
        self.fail_starts: set[tuple[str, str]] = set()
        self.pids = 0

    def view(self, *nodes: str) -> None:
        # A joining member sees the group before the group sees it join.
        for n in sorted(nodes, key=lambda n: bool(self.cores[n].members)):
            self.run(n, self.cores[n].set_members(set(nodes), self.now))

    def run(self, node: str, plan: list[PlacementEffect]) -> None:
        core = self.cores[node]
        for effect in plan:
            if type(effect) is Publish:
                for other in sorted(core.members - {node}):
                    self.run(other, self.cores[other].merge(effect.entries, self.now))
            elif type(effect) is StartHere:
                self.starts.append((node, effect.key, effect.state))
                if (node, effect.key) in self.fail_starts:
                    self.run(node, core.start_failed(effect.key, "boom", self.now))
                else:
                    self.pids += 1
                    self.run(node, core.started(effect.key, f"{node}.{self.pids}", self.now))
            elif type(effect) is StopHere:
                self.stops.append((node, effect.key))
                core.stopped(effect.key)
            elif type(effect) is MoveTo:
                self.stops.append((node, effect.key))
                self.run(effect.node, self.cores[effect.node].handed_over(
                    effect.key, effect.entry, f"state-of-{effect.key}", self.now))
            else:
                assert type(effect) is Log

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
