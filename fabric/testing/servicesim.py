"""A deterministic simulator for service cores (pg, global, CRDT replication, ...).

Theory of operation
-------------------
:class:`ServiceSim` hosts one service core per simulated node and plays the runtime's part:
it executes the effects the cores return against a virtual clock and a scripted network.
Events (message arrivals, timers, node up/down notifications) sit in one priority queue
ordered by ``(time, sequence)``, so a run is a pure function of the script and the seed.

The network keeps the mesh's contract: messages between two connected nodes arrive in
order after ``latency`` seconds; a partition drops whatever is in flight across it and
delivers ``on_nodedown`` on both sides after ``detect_delay``; a heal delivers
``on_nodeup`` on both sides after ``reconnect_delay``. A one-way cut ends in a symmetric
nodedown, because the real mesh tears a session down as soon as either side stops
hearing the other. A pair reconnects only after both sides saw the old session's nodedown,
and nothing sent in one session arrives in a later one.

``Publish`` effects model PUB/SUB: each connected peer whose subscriptions prefix-match the
topic, and whose core declared a ``topic_prefix`` the topic starts with, gets the payload
once through its core's ``on_publish(payload, now)`` (best effort: nothing is delivered
across a cut). Every publication is also recorded in ``published``.

The simulator drives a core through :class:`~fabric.protocol.service.ServiceCore` only
and executes the effects of :mod:`fabric.protocol.effects`, like the node does; a
``Reply`` is returned to whoever called the core (:meth:`ServiceSim.call`).
"""

from __future__ import annotations

import functools
import heapq
import itertools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fabric.protocol.effects import (
    CancelTimer,
    Complete,
    Deliver,
    DeliverMany,
    Effect,
    ExitProcess,
    Log,
    Publish,
    Reply,
    Send,
    SetTimer,
    Subscribe,
    Unsubscribe,
)
from fabric.protocol.service import ServiceCore, reply_of
from fabric.types import Pid

__all__ = ["ServiceSim"]


@dataclass
class _SimNode:
    name: str
    core: ServiceCore
    creation: int
    up: bool = True
    timers: dict[Any, float] = field(default_factory=dict)
    subscriptions: set[bytes] = field(default_factory=set)
    next_pid: int = 1


class ServiceSim:
    """N service cores on a virtual clock and a scripted network.

    Args:
        factory: ``factory(node_name, creation) -> core``.
        names: the node names; all start connected to each other (full mesh).
        seed: seeds the simulator's randomness (creations, drops).
        latency: one-way delivery delay between connected nodes, seconds.
    """

    def __init__(
        self,
        factory: Callable[[str, int], ServiceCore],
        names: Iterable[str],
        *,
        seed: int = 0,
        latency: float = 0.001,
        detect_delay: float = 1.0,
        reconnect_delay: float = 0.5,
        connected: bool = True,
    ) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.latency = latency
        self.detect_delay = detect_delay
        self.reconnect_delay = reconnect_delay
        self.factory = factory
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.nodes: dict[str, _SimNode] = {}
        # Which pairs are connected at the session level (both sides agree).
        self._links: set[frozenset[str]] = set()
        # Pairs the network currently blocks (symmetric).
        self._blocked: set[frozenset[str]] = set()
        # Pairs whose session ended but whose nodedown is not delivered yet: they may not
        # reconnect before it is, or a core would see nodeup, nodeup, nodedown.
        self._closing: set[frozenset[str]] = set()
        # Session number per pair, bumped on every link-up: a message or publication sent
        # in one session never arrives in a later one.
        self._session: dict[frozenset[str], int] = {}
        self.mailboxes: dict[Pid, list[Any]] = {}
        self.completed: dict[Any, Any] = {}
        self.logs: list[Log] = []
        self.published: list[tuple[str, bytes, Any]] = []
        # ExitProcess effects (pid, reason), in order; the process is then exited.
        self.exited: list[tuple[Pid, Any]] = []
        for name in names:
            creation = self._creation()
            self.nodes[name] = _SimNode(name, factory(name, creation), creation)
        if connected:
            names_list = list(self.nodes)
            for a, b in itertools.combinations(names_list, 2):
                self._link_up(a, b)
            self.run()

    # -- observing ------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every node's name, running or not, in the order given."""
        return list(self.nodes)

    def is_up(self, name: str) -> bool:
        """Node ``name`` runs (not killed, or restarted since)."""
        return self.nodes[name].up

    def live_nodes(self) -> list[str]:
        """The names of the nodes that run, in the order given."""
        return [n for n, node in self.nodes.items() if node.up]

    def creation(self, name: str) -> int:
        """The creation of node ``name``'s current run."""
        return self.nodes[name].creation

    def subscriptions(self, name: str) -> frozenset[bytes]:
        """The topics node ``name``'s core is subscribed to."""
        return frozenset(self.nodes[name].subscriptions)

    def nodedown_pending(self, a: str, b: str) -> bool:
        """The session of ``a`` and ``b`` ended but its nodedown is not delivered yet."""
        return frozenset((a, b)) in self._closing

    # -- scripting ------------------------------------------------------------------------

    def core(self, name: str) -> Any:
        """The core hosted on node ``name`` (typed ``Any`` so tests can call its API)."""
        return self.nodes[name].core

    def spawn(self, name: str) -> Pid:
        """Mint a pid for a fresh simulated process on node ``name``."""
        node = self.nodes[name]
        pid: Pid = Pid(name, node.next_pid, node.creation)
        node.next_pid += 1
        self.mailboxes[pid] = []
        return pid

    def call(self, name: str, method: str, *args: Any) -> Any:
        """Scripting shorthand: call ``core.method(*args, now)`` on node ``name`` (an API
        method of the core, such as ``register_name``) and :meth:`execute` its effects.

        Returns:
            The value of the effects' ``Reply``, or None.
        """
        effects: list[Effect] = getattr(self.nodes[name].core, method)(*args, self.now)
        return self.execute(name, effects)

    def execute(self, name: str, effects: list[Effect]) -> Any:
        """Execute effects that a test got by calling node ``name``'s core directly;
        returns the value of their ``Reply``, or None."""
        self._execute(name, effects)
        return reply_of(effects)

    def exit(self, pid: Pid, reason: Any = "normal") -> None:
        """Simulate the exit of process ``pid``."""
        self.mailboxes.pop(pid, None)
        self._execute(pid.node, self.nodes[pid.node].core.on_process_exit(pid, reason, self.now))

    def partition(self, *groups: Iterable[str]) -> None:
        """Split the listed groups from each other (nodes not listed keep their links)."""
        sets = [set(g) for g in groups]
        for i, a_set in enumerate(sets):
            for b_set in sets[i + 1 :]:
                for a in a_set:
                    for b in b_set:
                        self.cut(a, b)

    def cut(self, a: str, b: str) -> None:
        """Block traffic between ``a`` and ``b``; both sides see nodedown after detection."""
        pair = frozenset((a, b))
        if pair in self._blocked:
            return
        self._blocked.add(pair)
        if pair in self._links:
            self._close(a, b, self.detect_delay, "heartbeat_timeout")

    cut_oneway = cut  # the mesh turns a one-way cut into a symmetric nodedown

    def heal(self) -> None:
        """Remove every partition; blocked pairs of live nodes reconnect."""
        blocked, self._blocked = self._blocked, set()
        for pair in blocked:
            a, b = sorted(pair)
            if self.nodes[a].up and self.nodes[b].up:
                self._after(self.reconnect_delay, functools.partial(self._link_up, a, b))

    def kill(self, name: str) -> None:
        """Stop node ``name`` abruptly: peers see ``connection_closed`` at once."""
        node = self.nodes[name]
        node.up = False
        node.timers.clear()
        for pid in [p for p in self.mailboxes if p.node == name]:
            del self.mailboxes[pid]
        for pair in [p for p in self._links if name in p]:
            (other,) = pair - {name}
            self._close(name, other, 0.0, "connection_closed")

    def restart(self, name: str) -> None:
        """Start node ``name`` again with a new core and a new creation; it reconnects."""
        if self.nodes[name].up:
            self.kill(name)  # a restart of a live node is a crash and a start
        node = self.nodes[name]
        creation = self._creation()
        self.nodes[name] = _SimNode(name, self.factory(name, creation), creation)
        for other, peer in self.nodes.items():
            if other != name and peer.up and frozenset((name, other)) not in self._blocked:
                self._after(self.reconnect_delay, functools.partial(self._link_up, name, other))
        del node

    def connect(self, a: str, b: str) -> None:
        """Bring up a session between two nodes that were never connected."""
        self._after(0.0, lambda: self._link_up(a, b))

    def connected(self, a: str, b: str) -> bool:
        return frozenset((a, b)) in self._links

    # -- running --------------------------------------------------------------------------

    def run(self, until: float | None = None, max_events: int = 1_000_000) -> None:
        """Process events until the queue is empty (or virtual time passes ``until``)."""
        for _ in range(max_events):
            if not self._queue:
                break
            at, _, action = self._queue[0]
            if until is not None and at > until:
                break
            heapq.heappop(self._queue)
            self.now = max(self.now, at)
            action()
        else:
            raise RuntimeError(f"simulation did not settle within {max_events} events")
        if until is not None:
            self.now = max(self.now, until)

    def advance(self, seconds: float) -> None:
        """Run for ``seconds`` of virtual time."""
        self.run(until=self.now + seconds)

    # -- internals ------------------------------------------------------------------------

    def _creation(self) -> int:
        return self.rng.getrandbits(32)

    def _after(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (self.now + delay, next(self._seq), action))

    def _link_up(self, a: str, b: str) -> None:
        pair = frozenset((a, b))
        if pair in self._links or pair in self._blocked:
            return
        if not (self.nodes[a].up and self.nodes[b].up):
            return
        if pair in self._closing:  # the old session's nodedown comes first: retry later
            self._after(self.reconnect_delay, lambda: self._link_up(a, b))
            return
        self._links.add(pair)
        self._session[pair] = self._session.get(pair, 0) + 1
        self._execute(a, self.nodes[a].core.on_nodeup(b, self.now))
        self._execute(b, self.nodes[b].core.on_nodeup(a, self.now))

    def _close(self, a: str, b: str, delay: float, reason: str) -> None:
        """End the a-b session now; both sides see nodedown after ``delay``."""
        pair = frozenset((a, b))
        self._links.discard(pair)
        self._closing.add(pair)
        creations = {a: self.nodes[a].creation, b: self.nodes[b].creation}

        def down() -> None:
            self._closing.discard(pair)
            for at, peer in ((a, b), (b, a)):
                node = self.nodes[at]
                # A node that died (or died and restarted) never saw this session end.
                if node.up and node.creation == creations[at]:
                    self._execute(at, node.core.on_nodedown(peer, reason, self.now))

        self._after(delay, down)

    def _execute(self, name: str, effects: list[Effect]) -> None:
        node = self.nodes[name]
        creation = node.creation
        for eff in effects:
            if isinstance(eff, Send):
                self._send(name, creation, eff.peer, eff.payload)
            elif isinstance(eff, Deliver):
                box = self.mailboxes.get(eff.pid)
                if box is not None:
                    box.append(eff.message)
            elif isinstance(eff, DeliverMany):
                for pid in eff.pids:
                    box = self.mailboxes.get(pid)
                    if box is not None:
                        box.append(eff.message)
            elif isinstance(eff, SetTimer):
                node.timers[eff.key] = eff.at
                self._arm(name, creation, eff.key, eff.at)
            elif isinstance(eff, CancelTimer):
                node.timers.pop(eff.key, None)
            elif isinstance(eff, Complete):
                self.completed[eff.token] = eff.result
            elif isinstance(eff, Log):
                self.logs.append(eff)
            elif isinstance(eff, Subscribe):
                node.subscriptions.add(eff.topic)
            elif isinstance(eff, Unsubscribe):
                node.subscriptions.discard(eff.topic)
            elif isinstance(eff, Publish):
                self.published.append((name, eff.topic, eff.payload))
                self._publish(name, eff.topic, eff.payload)
            elif isinstance(eff, ExitProcess):
                self.exited.append((eff.pid, eff.reason))
                # Like the runtime: kill the (live) process, which reports its exit.
                self._after(0.0, functools.partial(self._kill_process, eff.pid, eff.reason))
            elif isinstance(eff, Reply):
                pass  # the caller's answer: call and execute return it
            else:  # pragma: no cover - a new effect type must be taught here
                raise TypeError(f"simulator cannot execute {eff!r}")

    def _kill_process(self, pid: Pid, reason: Any) -> None:
        if pid in self.mailboxes and self.nodes[pid.node].up:
            self.exit(pid, reason)

    def _send(self, src: str, creation: int, dst: str, payload: Any) -> None:
        pair = frozenset((src, dst))
        if pair not in self._links:
            return  # no session: the runtime drops sends to a node that is not up
        session = self._session[pair]

        def arrive() -> None:
            node = self.nodes.get(dst)
            sender = self.nodes[src]
            # Dropped if the link broke meanwhile (even if it is up again) or a side restarted.
            if pair not in self._links or self._session[pair] != session:
                return
            if node is None or not node.up:
                return
            if sender.creation != creation:
                return
            self._execute(dst, node.core.on_message(src, payload, self.now))

        self._after(self.latency, arrive)

    def _publish(self, src: str, topic: bytes, payload: Any) -> None:
        """PUB/SUB: connected peers whose subscriptions prefix-match ``topic`` get the
        payload once, through their core's ``on_publish(payload, now)`` if the topic is
        under the core's declared ``topic_prefix``. Subscriptions are checked on arrival
        (the SUB side filters)."""
        for dst in self.nodes:
            pair = frozenset((src, dst))
            if dst == src or pair not in self._links:
                continue
            session = self._session[pair]

            def arrive(dst: str = dst, pair: frozenset[str] = pair, session: int = session) -> None:
                node = self.nodes[dst]
                if pair not in self._links or self._session[pair] != session or not node.up:
                    return
                prefix = node.core.topic_prefix
                if prefix is None or not topic.startswith(prefix):
                    return
                if any(topic.startswith(s) for s in node.subscriptions):
                    self._execute(dst, node.core.on_publish(payload, self.now))

            self._after(self.latency, arrive)

    def _arm(self, name: str, creation: int, key: Any, at: float) -> None:
        def fire() -> None:
            node = self.nodes[name]
            if node.creation != creation or not node.up or node.timers.get(key) != at:
                return
            del node.timers[key]
            self._execute(name, node.core.on_timer(key, self.now))

        heapq.heappush(self._queue, (at, next(self._seq), fire))
