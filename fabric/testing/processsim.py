"""A deterministic simulator for process signals: N nodes' :class:`ProcessCore` on a
virtual clock.

Theory of operation
-------------------
:class:`ProcessSim` plays the runtime's part for one :class:`~fabric.protocol.processes.
ProcessCore` per simulated node. Its processes do not run code: each is a pid with a
mailbox (a list), which the test drives (``link``, ``monitor``, ``call``, ``finish``...).
Effects are executed as the runtime executes them: ``Deliver`` appends to a mailbox (a
message for an ended process is counted in ``undeliverable``), ``Kill`` ends the process
in a later event with the first reason it was given (as a cancelled task ends),
``Control`` (``K_CTRL``), ``K_CALL`` and ``K_REPLY`` messages travel through the real codec (so a
``(name, node)`` target arrives as a plain tuple, as it does on the wire), and remote
spawns start a process unless their spec starts with ``"refused:"``.

Events sit in one priority queue ordered by ``(time, sequence)``, so a run is a pure
function of the script. The network keeps the mesh's contract: messages between two
connected nodes arrive in order after ``latency`` seconds; :meth:`partition` drops what
is in flight and everything sent across the cut, and delivers ``nodedown`` to both sides
after ``detect_delay``; :meth:`heal` delivers ``nodeup`` to both sides after
``reconnect_delay`` (once both saw the nodedown); nothing sent in one session arrives in
a later one. :meth:`crash` ends a node at once (its processes vanish without signals, as
a dead host's do) and its peers see ``nodedown``; :meth:`restart` brings it back with a
new creation.

Every ``Down`` delivered is also logged in ``downs`` (the monitor-fires-once checks).
"""

from __future__ import annotations

import functools
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fabric.protocol.codec import Codec
from fabric.protocol.effects import Deliver
from fabric.protocol.mesh_effects import Control
from fabric.protocol.messages import K_CALL, K_REPLY, REPLY_TAG
from fabric.protocol.processes import (
    Down,
    Kill,
    ProcessCore,
    ServeSpawn,
    SignalEffect,
    SpawnLost,
    SpawnReplied,
)
from fabric.types import Pid, Ref

__all__ = ["ProcessSim"]

_MAX_EVENTS = 1_000_000  # a bound on any one run: a livelock fails loudly


@dataclass
class _SimNode:
    core: ProcessCore
    creation: int
    next_id: int = 1
    mailboxes: dict[Pid, list[Any]] = field(default_factory=dict)  # live processes
    dying: dict[Pid, Any] = field(default_factory=dict)  # killed, ending in a later event


class ProcessSim:
    """N process cores on a virtual clock and a scripted network (see the module doc).

    Args:
        names: the node names; all start connected to each other.
        latency: one-way delivery delay between connected nodes, seconds.
        detect_delay: from a partition or crash to the ``nodedown`` it causes.
        reconnect_delay: from a heal (or restart) to ``nodeup``.
    """

    def __init__(self, names: list[str], *, latency: float = 0.001,
                 detect_delay: float = 1.0, reconnect_delay: float = 0.5) -> None:
        self.now = 0.0
        self.latency = latency
        self.detect_delay = detect_delay
        self.reconnect_delay = reconnect_delay
        self.codec = Codec()
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._creations = itertools.count(1)
        self.nodes: dict[str, _SimNode] = {}
        self._up: set[frozenset[str]] = set()  # pairs whose session is up on both sides
        self._cut: set[frozenset[str]] = set()  # pairs the network blocks
        self._down_pending: set[frozenset[str]] = set()  # nodedown scheduled, not yet seen
        self._session: dict[frozenset[str], int] = {}  # bumped per session: stale drops
        self.ended: dict[Pid, Any] = {}  # every process that ended -> its reason
        self.downs: list[tuple[Pid, Down]] = []  # every Down delivered, in order
        self.spawn_results: dict[Ref, SpawnReplied | SpawnLost] = {}
        self.undeliverable = 0
        for name in names:
            self.nodes[name] = self._boot(name)
        for a, b in itertools.combinations(names, 2):
            self._session_up(frozenset((a, b)))

    def _boot(self, name: str) -> _SimNode:
        creation = next(self._creations)
        return _SimNode(ProcessCore(name, creation), creation)

    def core(self, node: str) -> ProcessCore:
        return self.nodes[node].core

    # -- the clock ------------------------------------------------------------------------

    def _at(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (self.now + delay, next(self._order), action))

    def run(self, for_seconds: float | None = None) -> None:
        """Run events until none is left (or until ``for_seconds`` of virtual time)."""
        end = None if for_seconds is None else self.now + for_seconds
        for _ in range(_MAX_EVENTS):
            if not self._events or (end is not None and self._events[0][0] > end):
                if end is not None:
                    self.now = end
                return
            when, _, action = heapq.heappop(self._events)
            self.now = max(self.now, when)
            action()
        raise RuntimeError("the simulation did not settle")

    # -- processes ------------------------------------------------------------------------

    def spawn(self, node: str, *, link_to: Pid | None = None, name: str | None = None,
              trap_exits: bool = False) -> Pid:
        """Start a (passive) process on ``node``."""
        n = self.nodes[node]
        pid = Pid(node, n.next_id, n.creation)
        n.next_id += 1
        n.mailboxes[pid] = []
        n.core.started(pid, link_to)
        n.core.set_trap_exits(pid, trap_exits)
        if name is not None:
            n.core.register(name, pid)
        return pid

    def end(self, pid: Pid, reason: Any = "normal") -> None:
        """``pid`` ends by itself with ``reason`` (returns, raises, or ``proc.exit``)."""
        n = self.nodes.get(pid.node)
        if n is None or pid not in n.mailboxes:
            return
        del n.mailboxes[pid]
        n.dying.pop(pid, None)
        self.ended[pid] = reason
        self._execute(pid.node, n.core.exited(pid, reason))

    def names(self) -> list[str]:
        """The names of the running nodes (a crashed node is gone until its restart)."""
        return list(self.nodes)

    def creation(self, node: str) -> int:
        """The creation of ``node``'s current run."""
        return self.nodes[node].creation

    def processes(self, node: str) -> list[Pid]:
        """The live processes of ``node``, oldest first."""
        return list(self.nodes[node].mailboxes)

    def alive(self, pid: Pid) -> bool:
        n = self.nodes.get(pid.node)
        return n is not None and pid in n.mailboxes

    def mailbox(self, pid: Pid) -> list[Any]:
        """The live process's mailbox (the list itself: take messages out of it freely)."""
        return self.nodes[pid.node].mailboxes[pid]

    def link(self, pid: Pid, other: Pid) -> None:
        self._execute(pid.node, self.core(pid.node).link(pid, other))

    def unlink(self, pid: Pid, other: Pid) -> None:
        self._execute(pid.node, self.core(pid.node).unlink(pid, other))

    def monitor(self, pid: Pid, target: Pid | tuple[str, str]) -> Ref:
        ref, effects = self.core(pid.node).monitor(pid, target)
        self._execute(pid.node, effects)
        return ref

    def demonitor(self, pid: Pid, ref: Ref) -> None:
        """Drop the monitor and flush its ``Down`` from the mailbox, as
        :meth:`fabric.Process.demonitor` does."""
        self._execute(pid.node, self.core(pid.node).demonitor(pid, ref))
        box = self.nodes[pid.node].mailboxes.get(pid, [])
        for i, msg in enumerate(box):
            if type(msg) is Down and msg.ref == ref:
                del box[i]
                break

    def exit(self, node: str, pid: Pid, reason: Any, sender: Pid | None = None) -> None:
        """An explicit exit signal sent from ``node`` (``node.exit(pid, reason)``), by
        the process ``sender`` of that node (None: by no process)."""
        self._execute(node, self.core(node).exit(pid, reason, sender))

    def register(self, name: str, pid: Pid) -> bool:
        return self.core(pid.node).register(name, pid)

    def whereis(self, node: str, name: str) -> Pid | None:
        return self.core(node).names.get(name)

    def unregister(self, node: str, name: str) -> None:
        self.core(node).unregister(name)

    # -- calls, as fabric.calls.call and fabric.genserver do them -------------------------

    def call(self, caller: Pid, server: Pid | tuple[str, str], request: Any) -> Ref:
        """``caller`` sends a GenServer call; :meth:`finish` waits for its outcome."""
        node = caller.node
        core = self.core(node)
        where = server[0] if type(server) is Pid else server[1]
        if where == node:
            ref = self.monitor(caller, server)
            target = server if type(server) is Pid else core.names.get(server[0])
            if target is not None:
                self._deliver(node, target, ("$call", (caller, ref), request))
            return ref
        ref, effects = core.call_sent(caller, server)
        if effects:
            self._execute(node, effects)
            return ref
        to = server if type(server) is Pid else server[0]
        self._transmit(node, where, [K_CALL, to, core.creation, caller[1], ref[1], request],
                       lambda msg: self._call_arrives(node, where, msg))
        return ref

    def _call_arrives(self, src: str, dst: str, msg: list[Any]) -> None:
        peer_creation = self.nodes[src].creation if src in self.nodes else None
        self._execute(dst, self.core(dst).call_received(src, peer_creation, msg))

    def reply(self, server: Pid, from_: tuple[Pid, Ref], value: Any) -> None:
        """``server`` answers the call ``from_`` from its loop (releasing the monitor)."""
        caller, ref = from_
        node = server.node
        released = self.core(node).call_released(server, caller, ref)
        if caller.node == node:
            self._deliver(node, caller, (REPLY_TAG, ref, True, value, released))
            return
        self._transmit(node, caller.node,
                       [K_REPLY, caller[2], caller[1], ref[1], True, value, released],
                       lambda msg: self._reply_arrives(caller.node, msg))

    def _reply_arrives(self, node: str, msg: list[Any]) -> None:
        _, creation, pid_id, ref_id, ok, value, released = msg
        pid = Pid(node, pid_id, creation)
        self._deliver(node, pid, (REPLY_TAG, Ref(node, ref_id, creation), ok, value, released))

    def finish(self, caller: Pid, ref: Ref) -> Any:
        """The outcome of the call ``ref``, as ``fabric.calls.call`` takes it from the
        mailbox: the reply tuple, a ``Down``, or None if neither came yet (the caller
        gives up: a timeout). The monitor is then cleaned up as ``call`` does."""
        box = self.mailbox(caller)
        answer: Any = None
        for i, msg in enumerate(box):
            if ((type(msg) is tuple and len(msg) == 5 and msg[0] == REPLY_TAG
                    and msg[1] == ref) or (type(msg) is Down and msg.ref == ref)):
                answer = box.pop(i)
                break
        if type(answer) is tuple and answer[4]:
            self.core(caller.node).forget_monitor(caller, ref)
        else:
            self.demonitor(caller, ref)
        return answer

    def pending_calls(self, server: Pid) -> list[tuple[Pid, Ref]]:
        """The ``From`` of every call waiting in ``server``'s mailbox."""
        return [m[1] for m in self.mailbox(server)
                if type(m) is tuple and len(m) == 3 and m[0] == "$call"]

    # -- spawns ---------------------------------------------------------------------------

    def spawn_on(self, node: str, peer: str, spec: str, *,
                 link_to: Pid | None = None) -> Ref:
        """Ask ``peer`` to spawn ``spec`` (refused if it starts with ``"refused:"``); the
        outcome lands in ``spawn_results[ref]``."""
        ref, effects = self.core(node).spawn_request(peer, spec, [], link_to)
        self._execute(node, effects)
        return ref

    def abandon_spawn(self, node: str, ref: Ref) -> None:
        self.core(node).spawn_abandoned(ref)

    # -- the network ----------------------------------------------------------------------

    def partition(self, a: str, b: str) -> None:
        """Cut ``a`` from ``b``: in-flight messages are lost; nodedown after a delay."""
        pair = frozenset((a, b))
        self._cut.add(pair)
        self._session_down(pair, "noconnection")

    def heal(self, a: str, b: str) -> None:
        pair = frozenset((a, b))
        self._cut.discard(pair)
        self._at(self.reconnect_delay, lambda: self._try_up(pair))

    def crash(self, node: str) -> None:
        """``node`` dies: its processes vanish without a signal; peers see nodedown."""
        n = self.nodes.pop(node)
        for pid in n.mailboxes:
            self.ended[pid] = "crashed"
        for pair in list(self._up | self._down_pending):
            if node in pair:
                self._session_down(pair, "noconnection")

    def restart(self, node: str) -> None:
        """Bring a crashed ``node`` back with a new creation; it reconnects to peers."""
        self.nodes[node] = self._boot(node)
        for other in list(self.nodes):
            if other != node:
                self._at(self.reconnect_delay,
                         functools.partial(self._try_up, frozenset((node, other))))

    def _try_up(self, pair: frozenset[str]) -> None:
        if (pair in self._up or pair in self._cut or pair in self._down_pending
                or not all(name in self.nodes for name in pair)):
            return
        self._session_up(pair)

    def _session_up(self, pair: frozenset[str]) -> None:
        self._up.add(pair)
        self._session[pair] = self._session.get(pair, 0) + 1
        for name in sorted(pair):
            (other,) = pair - {name}
            self._execute(name, self.core(name).nodeup(other))

    def _session_down(self, pair: frozenset[str], reason: str) -> None:
        if pair not in self._up:
            return
        self._up.discard(pair)
        self._down_pending.add(pair)
        self._session[pair] = self._session.get(pair, 0) + 1

        def deliver() -> None:
            self._down_pending.discard(pair)
            for name in sorted(pair):
                if name in self.nodes:
                    (other,) = pair - {name}
                    self._execute(name, self.core(name).nodedown(other, reason))
            self._try_up(pair)

        self._at(self.detect_delay, deliver)

    def _transmit(self, src: str, dst: str, message: list[Any],
                  arrive: Callable[[list[Any]], None]) -> None:
        pair = frozenset((src, dst))
        if pair not in self._up:
            self.undeliverable += 1  # no session: the runtime drops it too
            return
        session = self._session[pair]
        frame = self.codec.encode(message)

        def land() -> None:
            if self._session.get(pair) == session and pair in self._up:
                arrive(self.codec.decode(frame))

        self._at(self.latency, land)

    # -- effects --------------------------------------------------------------------------

    def _execute(self, node: str, effects: list[SignalEffect]) -> None:
        for eff in effects:
            t = type(eff)
            if t is Deliver:
                assert isinstance(eff, Deliver)
                self._deliver(node, eff.pid, eff.message)
            elif t is Kill:
                assert isinstance(eff, Kill)
                self._kill(node, eff.pid, eff.reason)
            elif t is Control:
                assert isinstance(eff, Control)
                self._transmit(node, eff.peer, eff.message,
                               functools.partial(self._control_arrives, node, eff.peer))
            elif t is ServeSpawn:
                assert isinstance(eff, ServeSpawn)
                self._serve_spawn(node, eff)
            elif isinstance(eff, (SpawnReplied, SpawnLost)):
                self.spawn_results[eff.ref] = eff
            else:
                raise TypeError(f"unknown effect {eff!r}")

    def _control_arrives(self, src: str, dst: str, msg: list[Any]) -> None:
        self._execute(dst, self.core(dst).on_control(src, msg))

    def _deliver(self, node: str, pid: Pid, message: Any) -> None:
        n = self.nodes.get(node)
        box = n.mailboxes.get(pid) if n is not None else None
        if box is None:
            self.undeliverable += 1
            return
        box.append(message)
        if type(message) is Down:
            self.downs.append((pid, message))

    def _kill(self, node: str, pid: Pid, reason: Any) -> None:
        n = self.nodes[node]
        if pid not in n.mailboxes or pid in n.dying:
            return  # ended, or ending with its first reason (as pending_kill)
        n.dying[pid] = reason
        self._at(0.0, functools.partial(self.end, pid, reason))

    def _serve_spawn(self, node: str, eff: ServeSpawn) -> None:
        core = self.core(node)
        if eff.spec.startswith("refused:"):
            error = f"{eff.spec} is not exported"
            self._execute(node, core.spawn_refused(eff.peer, eff.ref, error))
            return
        child = self.spawn(node)
        self._execute(node, core.spawn_served(eff.peer, eff.ref, eff.reply_to, eff.link, child))
