"""Children of the distributed supervisor tests, started by name (``"_dsup_children:..."``).

pytest puts ``tests/`` on ``sys.path``, so every in-process node imports this same module;
the OS-process test's nodes import it from ``tests/`` on their PYTHONPATH.
"""

from __future__ import annotations

from typing import Any

import fabric
from fabric.dsupervisor import HANDOFF


@fabric.export
class KeyedCounter(fabric.GenServer):
    """A counter that hands its count over when it moves (``init(key, state)``).

    Calls: ``"where"`` -> ``(node name, count)``; ``"incr"`` -> the new count;
    ``"crash"`` raises; :data:`~fabric.dsupervisor.HANDOFF` -> the count."""

    async def init(self, key: str, state: Any = None) -> None:
        self.key = key
        self.count = 0 if state is None else state

    async def handle_call(self, request: Any, from_: fabric.From) -> Any:
        if request == HANDOFF:
            return self.count
        if request == "where":
            return (self.node.name, self.count)
        if request == "incr":
            self.count += 1
            return self.count
        raise RuntimeError(f"told to {request!r}")


@fabric.export
async def idle(proc: fabric.Process) -> None:
    """Runs until told "quit" (ends normally) or "crash" (raises)."""
    while True:
        msg = await proc.receive()
        if msg == "quit":
            return
        if msg == "crash":
            raise RuntimeError("told to crash")


@fabric.export
class FailsInInit(fabric.GenServer):
    async def init(self, *args: Any) -> None:
        raise ValueError("cannot start")


def application(node: fabric.Node) -> list[fabric.ChildSpec]:
    """``fabric node --app _dsup_children:application``: a member of "sessions"."""
    from fabric.dsupervisor import DistributedSupervisor

    return [DistributedSupervisor.child_spec("sessions")]


@fabric.export
async def start_counters(proc: fabric.Process, reply_to: fabric.Pid, keys: list[str],
                         handoff: bool = False) -> None:
    """Start a :class:`KeyedCounter` per key under "sessions" (global name = key) from
    this node's member; send ``("started", [(key, node), ...])`` or ``("failed", why)``."""
    from fabric.dsupervisor import DistributedChildSpec, DistributedSupervisor

    sup = DistributedSupervisor(proc.node, "sessions")
    placed = []
    try:
        for key in keys:
            spec = DistributedChildSpec(key, "_dsup_children:KeyedCounter", args=(key,),
                                        name=fabric.GlobalName(key), handoff=handoff)
            node_name, _ = await sup.start_child(spec)
            placed.append((key, node_name))
    except Exception as exc:  # reported to the test, which fails with the reason
        proc.send(reply_to, ("failed", repr(exc)))
        return
    proc.send(reply_to, ("started", placed))
