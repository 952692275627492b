"""A deterministic simulator for cluster singletons: N nodes' :class:`SingletonCore` on a
virtual clock.

Theory of operation
-------------------
:class:`SingletonSim` plays the runtime's part for one
:class:`~fabric.protocol.singleton.SingletonCore` per simulated node (all candidates,
aged in the order given). Instances run no code: :class:`StartInstance` makes one after
``start_delay`` (a fake pid, whose *state* is the number it was handed plus the calls the
test counts on it with :meth:`SingletonSim.work`), :class:`StopInstance` ends it after
``stop_delay`` and hands its state over when asked. Every instance's start and end time
is logged in :attr:`SingletonSim.intervals`, which is what the "never two at once"
checks read (:meth:`SingletonSim.max_concurrent`).

The network keeps the mesh's contract: ``SendPeer`` arrives after ``latency`` seconds
if the two nodes are connected when it is sent and when it arrives; :meth:`partition`
cuts the given groups apart and each side sees the others' ``nodedown``
(``heartbeat_timeout``) after ``detect`` seconds (per node if a dict is given: detection
is not simultaneous); :meth:`cut` cuts one pair only; :meth:`heal` reconnects them
(``nodeup`` after ``latency``);
:meth:`kill` ends a node at once (its instance with it) and the others see
``connection_closed`` after ``detect_kill``; :meth:`drain` runs a graceful stop (the
core's hand-over, then ``shutdown`` for the others). Name conflicts after a heal are
settled as ``global``'s default resolver does: the earlier registration (start) keeps
the name, the other instance's node gets :meth:`SingletonCore.name_lost` when the two
nodes are connected again (after ``latency``), unless ``resolve_names`` is False.
Events sit in one priority queue ordered by ``(time, sequence)``: a run is a pure
function of the script.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fabric.protocol.singleton import (
    HostChanged,
    SendPeer,
    SingletonCore,
    SplitBrainPolicy,
    StartInstance,
    StopInstance,
)
from fabric.types import Pid

__all__ = ["Interval", "SingletonSim"]

_MAX_EVENTS = 1_000_000  # a bound on any one run: a livelock fails loudly
TICK = 0.05


@dataclass
class Interval:
    """One instance's life: where, its pid, when it started and ended (None: runs)."""

    node: str
    pid: Pid
    started: float
    ended: float | None = None
    state: int = 0


class SingletonSim:
    """See the module docstring. ``nodes`` are named oldest first; ``policy``,
    ``margin`` and ``min_members`` are given to every core."""

    def __init__(self, nodes: list[str], *, policy: SplitBrainPolicy | None = None,
                 margin: float = 1.2, min_members: int = 1, latency: float = 0.001,
                 start_delay: float = 0.002, stop_delay: float = 0.002,
                 detect_kill: float = 0.005, resolve_names: bool = True) -> None:
        self.now = 0.0
        self.latency = latency
        self.start_delay = start_delay
        self.stop_delay = stop_delay
        self.detect_kill = detect_kill
        self.resolve_names = resolve_names
        self.cores: dict[str, SingletonCore] = {
            n: SingletonCore(n, (float(i), n), 0.0, policy=policy, margin=margin,
                             min_members=min_members) for i, n in enumerate(nodes)}
        self.alive = set(nodes)
        self._links = {frozenset((a, b)) for a in nodes for b in nodes if a < b}
        self.intervals: list[Interval] = []
        self.hosts_seen: dict[str, list[Pid | None]] = {n: [] for n in nodes}
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._pids = itertools.count(1)
        for a in nodes:
            self._every_tick(a)
            for b in nodes:
                if a != b:
                    self._nodeup_later(a, b)

    # -- the script ---------------------------------------------------------------------

    def run(self, for_seconds: float) -> None:
        """Process events until ``for_seconds`` of virtual time have passed."""
        until = self.now + for_seconds
        for _ in range(_MAX_EVENTS):
            if not self._queue or self._queue[0][0] > until:
                self.now = until
                return
            when, _, action = heapq.heappop(self._queue)
            self.now = when
            action()
        raise AssertionError("the simulation did not settle")

    def connected(self, a: str, b: str) -> bool:
        return a in self.alive and b in self.alive and frozenset((a, b)) in self._links

    def partition(self, *groups: list[str], detect: float | dict[str, float] = 1.0) -> None:
        """Cut the groups apart; each node sees the lost ones after its ``detect``."""
        for g1, g2 in itertools.combinations(groups, 2):
            for a in g1:
                for b in g2:
                    self._links.discard(frozenset((a, b)))
                    for me, peer in ((a, b), (b, a)):
                        delay = detect[me] if isinstance(detect, dict) else detect
                        self._nodedown_later(delay, me, peer, "heartbeat_timeout")

    def cut(self, a: str, b: str, reasons: tuple[str, str], detect: float = 0.005) -> None:
        """Cut only ``a``-``b`` (others stay connected to both, a non-transitive
        partition); ``a`` and ``b`` see each other down with ``reasons`` (a one-way cut
        makes one side see ``peer_reset`` while the other times out; a test may also
        give a live peer ``connection_closed``, the worst case)."""
        self._links.discard(frozenset((a, b)))
        self._nodedown_later(detect, a, b, reasons[0])
        self._nodedown_later(detect, b, a, reasons[1])

    def heal(self) -> None:
        """Reconnect every pair of live nodes."""
        nodes = sorted(self.alive)
        for a, b in itertools.combinations(nodes, 2):
            if frozenset((a, b)) not in self._links:
                self._links.add(frozenset((a, b)))
                for me, peer in ((a, b), (b, a)):
                    self._nodeup_later(me, peer)

    def kill(self, node: str) -> None:
        """kill -9: the node and its instance vanish; peers see ``connection_closed``."""
        self.alive.discard(node)
        self._end_instance(node)
        for peer in self.alive:
            if frozenset((node, peer)) in self._links:
                self._links.discard(frozenset((node, peer)))  # what it sent is lost
                self._nodedown_later(self.detect_kill, peer, node, "connection_closed")

    def drain(self, node: str) -> None:
        """A graceful stop: the core hands over; once drained the node says goodbye."""
        self._input(node, lambda core: core.drain(self.now))
        self._at(0.0, lambda: self._goodbye_when_drained(node))

    def crash_instance(self, node: str) -> None:
        """The instance on ``node`` ends by itself (its node stays up)."""
        if self._end_instance(node) is not None:
            self._input(node, lambda core: core.instance_ended(self.now))

    def work(self, node: str, calls: int = 1) -> bool:
        """Count ``calls`` on the instance running on ``node``; False if none runs there."""
        interval = self._running(node)
        if interval is None:
            return False
        interval.state += calls
        return True

    # -- reads ---------------------------------------------------------------------------

    def running(self) -> list[Interval]:
        """The instances running now."""
        return [i for i in self.intervals if i.ended is None]

    def max_concurrent(self) -> int:
        """The most instances that ever ran at the same instant."""
        edges = sorted([(i.started, 1) for i in self.intervals]
                       + [(i.ended, -1) for i in self.intervals if i.ended is not None],
                       key=lambda e: (e[0], e[1]))  # an end before a start at one time
        most = level = 0
        for _, step in edges:
            level += step
            most = max(most, level)
        return most

    # -- the runtime's part --------------------------------------------------------------

    def _at(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (self.now + delay, next(self._seq), action))

    def _nodeup_later(self, me: str, peer: str) -> None:
        def up() -> None:
            if self.connected(me, peer):  # not if cut again meanwhile
                self._input(me, lambda core: core.nodeup(peer, self.now))

        self._at(self.latency, up)

    def _nodedown_later(self, delay: float, me: str, peer: str, reason: str) -> None:
        self._at(delay, lambda: self._input(
            me, lambda core: core.nodedown(peer, reason, self.now)))

    def _every_tick(self, node: str) -> None:
        def tick() -> None:
            if node in self.alive:
                self._input(node, lambda core: core.tick(self.now))
                self._at(TICK, tick)

        self._at(TICK, tick)

    def _input(self, node: str, fn: Callable[[SingletonCore], list[Any]]) -> None:
        if node not in self.alive:
            return
        for effect in fn(self.cores[node]):
            self._execute(node, effect)

    def _execute(self, node: str, effect: Any) -> None:
        if type(effect) is SendPeer:
            if self.connected(node, effect.node):
                self._at(self.latency, lambda: self._deliver(node, effect.node, effect.message))
        elif type(effect) is StartInstance:
            self._at(self.start_delay, lambda: self._start(node, effect.state))
        elif type(effect) is StopInstance:
            self._at(self.stop_delay, lambda: self._stop(node, effect.handover_to))
        elif type(effect) is HostChanged:
            self.hosts_seen[node].append(effect.pid)
        else:
            raise AssertionError(f"unknown effect {effect!r}")

    def _deliver(self, sender: str, node: str, message: tuple[Any, ...]) -> None:
        # A node that said goodbye is no longer alive, yet what it sent before arrives.
        if node in self.alive and frozenset((sender, node)) in self._links:
            self._input(node, lambda core: core.on_message(sender, message, self.now))

    def _start(self, node: str, state: Any) -> None:
        if node not in self.alive:
            return
        pid = Pid(node, next(self._pids), 1)
        self.intervals.append(Interval(node, pid, self.now, state=state or 0))
        self._input(node, lambda core: core.instance_started(pid, self.now))
        if self.resolve_names:
            self._watch_name(node, pid)

    def _stop(self, node: str, handover_to: str | None) -> None:
        interval = self._end_instance(node)
        state = interval.state if interval is not None else 0
        if handover_to is not None:
            self._input(node, lambda core: core.handed_off(handover_to, state, self.now))
        else:
            self._input(node, lambda core: core.instance_ended(self.now))

    def _end_instance(self, node: str) -> Interval | None:
        interval = self._running(node)
        if interval is not None:
            interval.ended = self.now
        return interval

    def _running(self, node: str) -> Interval | None:
        for interval in self.intervals:
            if interval.node == node and interval.ended is None:
                return interval
        return None

    def _watch_name(self, node: str, pid: Pid) -> None:
        """global's default resolver: the earlier registration keeps the name; the other
        instance's node learns it once the two are connected."""
        def check() -> None:
            mine = self._running(node)
            if mine is None or mine.pid != pid or node not in self.alive:
                return
            for other in self.running():
                if (other.pid != pid and other.started < mine.started
                        and self.connected(node, other.node)):
                    self._input(node, lambda core: core.name_lost(self.now))
                    return
            self._at(TICK, check)

        self._at(TICK, check)

    def _goodbye_when_drained(self, node: str) -> None:
        if node not in self.alive:
            return
        if not self.cores[node].drained:
            self._at(TICK / 5, lambda: self._goodbye_when_drained(node))
            return
        self.alive.discard(node)
        for peer in self.alive:
            if frozenset((node, peer)) in self._links:
                self._nodedown_later(self.latency, peer, node, "shutdown")
