"""The seams of the composed global core: its handler table and its plug-in slot.

The algorithm itself is tested in test_global.py and test_leader.py; these check what a
layer built on names may rely on, with a plug-in that only records what it is told.
"""

from __future__ import annotations

from typing import Any

import pytest

from fabric.errors import LocalProtocolError
from fabric.protocol.effects import Log
from fabric.protocol.global_ import GlobalCore
from fabric.protocol.global_plugin import NamePlugin, NamesPort
from fabric.protocol.global_resolve import Entry
from fabric.protocol.leader import LeaderElection
from fabric.testing import ServiceSim
from fabric.types import Pid

A, B, C = NAMES = ["a@h:1", "b@h:2", "c@h:3"]


class Recorder(NamePlugin):
    """Records the hooks; every grant carries this node's name, the meta becomes them."""

    def __init__(self) -> None:
        self.port: NamesPort | None = None
        self.shown: list[tuple[Any, Pid | None]] = []
        self.exits: list[Pid] = []
        self.synced: list[tuple[str, Any]] = []

    def attach(self, port: NamesPort) -> None:
        self.port = port

    def view_changed(self, name: Any, old: Entry | None, new: Entry | None) -> None:
        self.shown.append((name, new.pid if new is not None else None))

    def local_exit(self, pid: Pid) -> None:
        self.exits.append(pid)

    def grant_extra(self, name: Any) -> Any:
        assert self.port is not None
        return self.port.node

    def finalize_meta(self, name: Any, meta: Any, extras: list[Any]) -> Any:
        return tuple(sorted(extras))

    def sync_extra(self) -> Any:
        assert self.port is not None
        return ["from", self.port.node]

    def on_sync_extra(self, peer: str, extra: Any) -> None:
        self.synced.append((peer, extra))


RECORDERS: dict[str, Recorder] = {}


def make_sim() -> ServiceSim:
    def build(node: str, creation: int) -> GlobalCore:
        RECORDERS[node] = Recorder()
        return GlobalCore(node, creation, seed=creation, plugin=RECORDERS[node])

    return ServiceSim(build, NAMES)


def plugin(sim: ServiceSim, node: str) -> Recorder:
    """The recorder of ``node``'s current core."""
    return RECORDERS[node]


def test_plugin_sees_every_node_sync_extra() -> None:
    sim = make_sim()
    assert sorted(plugin(sim, A).synced) == [(B, ["from", B]), (C, ["from", C])]


def test_plugin_observes_names_and_commits_the_meta_from_every_grant() -> None:
    sim = make_sim()
    pid = sim.spawn(A)
    sim.call(A, "register_name", "x", pid, "t")
    sim.run()
    assert sim.completed["t"] == "yes"
    # Every node granted the lock (A included) and each grant carried its node's name.
    assert sim.core(C).name_info("x").meta == (A, B, C)
    for node in NAMES:
        assert plugin(sim, node).shown == [("x", pid)]
    sim.exit(pid)
    sim.run()
    assert plugin(sim, A).exits == [pid]
    for node in NAMES:
        assert plugin(sim, node).shown == [("x", pid), ("x", None)]


def test_method_names_of_the_parts_are_not_reachable_from_the_wire() -> None:
    core = GlobalCore(A, 1, seed=0)
    core.on_nodeup(B, 0.0)
    for tag in ["on_claim", "put", "_dispatch", "register_name", "h_claim", "_h_claim"]:
        effects = core.on_message(B, (tag, "x"), 0.0)
        assert [e.event for e in effects if isinstance(e, Log)] == ["global_bad_message"]


def test_an_election_serves_one_core_and_needs_one() -> None:
    election = LeaderElection()
    with pytest.raises(LocalProtocolError):
        election.leader("g")  # not attached yet
    GlobalCore(A, 1, plugin=election)
    with pytest.raises(LocalProtocolError):
        GlobalCore(B, 1, plugin=election)
