"""PROTOCOL.md §6.4's minimal `global` participant, checked against the real cores.

A node of another language that never registers names or takes locks joins `global` by
the table in §6.4. Here such a node (written from the table alone) sits between fabric's
``GlobalCore``s in the simulator: registrations and locks complete; a node that ignores
`global` instead stalls them, which is why the spec makes the table mandatory.
"""

from __future__ import annotations

from typing import Any

from fabric.protocol.codec import Codec
from fabric.protocol.effects import Effect, Send
from fabric.protocol.global_ import GlobalCore, earliest_name
from fabric.testing import ServiceSim
from fabric.types import Pid

A, B, M = "a@h:1", "b@h:2", "m@h:3"
CODEC = Codec()


def wire(payload: Any) -> Any:
    return CODEC.decode(CODEC.encode(payload))


class MinimalGlobal:
    """PROTOCOL.md §6.4, "a minimal participant", and nothing else."""

    service = "global"

    def __init__(self, silent: bool = False) -> None:
        self.silent = silent

    def on_nodeup(self, peer: str, now: float) -> list[Effect]:
        return [] if self.silent else [Send(peer, ("sync", [], [], []))]

    def on_message(self, peer: str, payload: Any, now: float) -> list[Effect]:
        if self.silent:
            return []
        kind = payload[0]
        if kind == "req":
            _, rid, key, _prio, _pid = payload
            return [Send(peer, ("grant", rid, (False, None) if key[0] == "n" else None))]
        if kind == "claim":
            _, _claim, rid, ack, _supersede = payload
            return [Send(peer, ("ack", rid))] if rid is not None and ack else []
        if kind == "retract":
            rid = payload[3]
            return [Send(peer, ("ack", rid))] if rid is not None else []
        if kind == "clear":
            return [Send(peer, ("ack", payload[2]))]
        return []

    def on_nodedown(self, peer: str, reason: str, now: float) -> list[Effect]:
        return []

    def on_timer(self, key: Any, now: float) -> list[Effect]:
        return []

    def on_process_exit(self, pid: Pid, reason: Any, now: float) -> list[Effect]:
        return []


class Wired:
    """A core whose sent payloads cross the real codec (tuples, pids, refs as on the wire)."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.service = core.service

    def __getattr__(self, attr: str) -> Any:
        method = getattr(self.core, attr)

        def call(*args: Any) -> Any:
            result = method(*args)
            effects = result[1] if isinstance(result, tuple) else result
            fixed = [Send(e.peer, wire(e.payload)) if isinstance(e, Send) else e
                     for e in effects]
            return (result[0], fixed) if isinstance(result, tuple) else fixed

        return call


def cluster(silent: bool = False) -> ServiceSim:
    def factory(name: str, creation: int) -> Any:
        if name == M:
            return Wired(MinimalGlobal(silent))
        return Wired(GlobalCore(name, creation, earliest_name, seed=creation))

    return ServiceSim(factory, [A, B, M], seed=7)


def test_names_and_locks_complete_with_a_minimal_participant() -> None:
    sim = cluster()
    pa, pb = sim.spawn(A), sim.spawn(B)
    sim.call(A, "register_name", "x", pa, "reg-a")
    sim.call(B, "register_name", "x", pb, "reg-b")  # the same name: one wins
    sim.advance(2.0)
    assert sorted([sim.completed["reg-a"], sim.completed["reg-b"]]) == ["no", "yes"]
    winner = pa if sim.completed["reg-a"] == "yes" else pb
    assert sim.core(A).core.whereis_name("x") == sim.core(B).core.whereis_name("x") == winner

    loser = pb if winner == pa else pa
    sim.call(loser.node, "re_register_name", "x", loser, "re")  # clear, then claim
    sim.advance(2.0)
    assert sim.completed["re"] == "yes"
    winner = loser

    sim.call(A, "set_lock", "r", pa, "lock-a")
    sim.advance(2.0)
    assert sim.completed["lock-a"] is True
    sim.call(winner.node, "unregister_name", "x", "unreg")
    sim.advance(2.0)
    assert sim.completed["unreg"] == "ok"
    assert sim.core(A).core.whereis_name("x") is None


def test_a_node_that_ignores_global_stalls_registrations() -> None:
    sim = cluster(silent=True)
    sim.call(A, "register_name", "x", sim.spawn(A), "reg")
    sim.advance(10.0)
    assert "reg" not in sim.completed  # waiting for the silent node's grant
