"""A deterministic simulator for the mesh core: handshakes, heartbeats, partitions.

Theory of operation
-------------------
:class:`MeshSim` runs one :class:`~fabric.protocol.mesh.MeshCore` per simulated node and
plays the transport: DEALER channels to a peer's ROUTER (frames delivered in order after
``latency``), ROUTER replies back to a channel's owner, and the PUB/SUB heartbeat plane.
Every node ticks each ``tick`` seconds of virtual time. The network can be cut both ways or
one way between any two nodes, nodes can be killed (their TCP connections close: peers see
it at once), frozen (SIGSTOP: nothing in or out, sockets stay open) and restarted with a
new creation. Runs are pure functions of the script and the seed.

What each node saw is recorded in :attr:`MeshSim.events` as tuples: ``("up", peer)``,
``("down", peer, reason)``, ``("connect", peer, ok, reason)``, ``("pong", peer, token)``.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from fabric.protocol import mesh as m
from fabric.protocol.effects import Log
from fabric.protocol.messages import MESH_KINDS

__all__ = ["MeshSim"]


@dataclass
class _Node:
    name: str
    core: m.MeshCore
    cookie: bytes
    up: bool = True
    frozen: bool = False
    # peer -> routing identity of our DEALER to it
    channels: dict[str, bytes] = field(default_factory=dict)
    # peers whose PUB our SUB is connected to
    subs: set[str] = field(default_factory=set)
    # actions that arrived while frozen, replayed on thaw
    backlog: list[Callable[[], None]] = field(default_factory=list)


class MeshSim:
    """N mesh cores on a virtual clock and a scriptable network.

    Args:
        names: full node names (``name@host:port``).
        seed: seeds creations and routing identities.
        cookies: per-node cookie overrides (default: one shared cookie).
    """

    def __init__(
        self,
        names: list[str],
        *,
        seed: int = 0,
        latency: float = 0.0005,
        jitter: float = 0.0,
        tick: float = 0.05,
        cookies: dict[str, bytes] | None = None,
        hidden: frozenset[str] = frozenset(),
        **core_options: Any,
    ) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.latency = latency
        self.jitter = jitter  # extra random delay per frame; each link stays FIFO
        self._last_arrival: dict[tuple[str, str], float] = {}
        self.tick_interval = tick
        self.core_options = core_options
        self.hidden = hidden
        self.cookies = cookies or {}
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.nodes: dict[str, _Node] = {}
        self.events: dict[str, list[tuple[Any, ...]]] = {}
        self.logs: dict[str, list[Log]] = {}
        # (src, dst) pairs whose traffic the network drops
        self._blocked: set[tuple[str, str]] = set()
        # routing identity -> (owner node, peer it points at), for ROUTER replies
        self._identities: dict[bytes, tuple[str, str]] = {}
        for name in names:
            self._boot(name)

    # -- scripting ------------------------------------------------------------------------

    def execute(self, name: str, effects: list[Any]) -> None:
        """Carry out ``effects`` that node ``name``'s core returned for an input a test
        gave it directly (``sim.execute(a, sim.core(a).ping(b, 1))``)."""
        self._exec(name, effects)

    def schedule(self, delay: float, action: Callable[[], None]) -> None:
        """Run ``action`` after ``delay`` seconds of virtual time."""
        self._after(delay, action)

    def core(self, name: str) -> m.MeshCore:
        return self.nodes[name].core

    def connect(self, a: str, b: str) -> None:
        """Node ``a`` connects to ``b`` now (like ``node.connect``)."""
        self._exec(a, self.nodes[a].core.connect(b, self.now))

    def learn(self, a: str, b: str) -> None:
        """Node ``a`` learns of ``b`` now (like ``node.learn``: discovery, retried)."""
        self._exec(a, self.nodes[a].core.learn(b, self.now))

    def block(self, a: str, b: str, duration: float) -> None:
        """Node ``a`` blocks ``b`` for ``duration`` seconds (``node.block``: fault
        injection in the mesh itself, unlike :meth:`cut`, which drops traffic)."""
        self._exec(a, self.nodes[a].core.block(b, self.now + duration, self.now))

    def unblock(self, a: str, b: str) -> None:
        """Node ``a`` ends its block of ``b`` (``node.unblock``)."""
        self._exec(a, self.nodes[a].core.unblock(b, self.now))

    def cut(self, a: str, b: str) -> None:
        """Drop traffic both ways between ``a`` and ``b``."""
        self._blocked |= {(a, b), (b, a)}

    def cut_oneway(self, a: str, b: str) -> None:
        """Drop traffic from ``a`` to ``b`` only."""
        self._blocked.add((a, b))

    def partition(self, *groups: list[str]) -> None:
        for i, ga in enumerate(groups):
            for gb in groups[i + 1 :]:
                for a in ga:
                    for b in gb:
                        self.cut(a, b)

    def heal(self) -> None:
        self._blocked.clear()

    def kill(self, name: str, *, closes: bool = True) -> None:
        """kill -9: the process vanishes; peers' TCP connections to it close at once.
        ``closes=False``: the machine lost power, so no peer hears of it but by silence."""
        node = self.nodes[name]
        node.up = False
        for ident in node.channels.values():
            self._identities.pop(ident, None)
        node.channels.clear()
        for other in self.nodes.values():
            if closes and other.up and (name in other.channels or name in other.subs):
                self._after(self.latency, partial(self._closed, other.name, name))

    def freeze(self, name: str) -> None:
        """SIGSTOP: no ticks, nothing processed; sockets stay connected."""
        self.nodes[name].frozen = True

    def thaw(self, name: str) -> None:
        node = self.nodes[name]
        node.frozen = False
        backlog, node.backlog = node.backlog, []
        for action in backlog:
            action()

    def restart(self, name: str) -> None:
        """Start a killed node again, with a new creation."""
        self._boot(name)

    def run_for(self, seconds: float) -> None:
        """Advance virtual time by ``seconds``, processing every event due."""
        end = self.now + seconds
        for _ in range(10_000_000):
            if not self._queue or self._queue[0][0] > end:
                break
            at, _, action = heapq.heappop(self._queue)
            self.now = at
            action()
        self.now = end

    def run_until(self, cond: Callable[[], bool], timeout: float = 30.0) -> float:
        """Advance until ``cond()`` holds; returns the virtual time it took.

        Raises:
            AssertionError: ``cond`` still false after ``timeout`` virtual seconds.
        """
        start = self.now
        while not cond():
            if self.now - start > timeout:
                raise AssertionError(f"condition not met within {timeout} virtual seconds")
            self.run_for(0.01)
        return self.now - start

    def full_mesh(self, names: list[str] | None = None) -> bool:
        """Every listed live node sees every other as up."""
        names = names or [n for n, node in self.nodes.items() if node.up]
        return all(
            sorted(set(names) - {n}) == [p for p in self.nodes[n].core.nodes() if p in names]
            and len(self.nodes[n].core.nodes()) == len(names) - 1
            for n in names
        )

    # -- internals ------------------------------------------------------------------------

    def _boot(self, name: str) -> None:
        rng = random.Random(self.rng.getrandbits(64))
        cookie = self.cookies.get(name, b"sim-cookie")
        core = m.MeshCore(
            name, rng.getrandbits(32), cookie, 10000 + len(self.nodes),
            lambda n: rng.randbytes(n), hidden=name in self.hidden, **self.core_options,
        )
        self.nodes[name] = _Node(name, core, cookie)
        self.events.setdefault(name, [])
        self.logs.setdefault(name, [])
        self._schedule_tick(name, core)

    def _schedule_tick(self, name: str, core: m.MeshCore) -> None:
        def tick() -> None:
            node = self.nodes[name]
            if node.core is not core or not node.up:
                return
            if not node.frozen:
                self._exec(name, core.tick(self.now))
            self._after(self.tick_interval, tick)

        self._after(self.tick_interval * self.rng.random(), tick)

    def _after(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (self.now + delay, next(self._seq), action))

    def _deliver(self, src: str, dst: str, action: Callable[[], None]) -> None:
        """Carry ``action`` over the network from ``src`` to ``dst``."""
        if (src, dst) in self._blocked:
            return
        src_core = self.nodes[src].core

        def arrive() -> None:
            node = self.nodes.get(dst)
            if node is None or not node.up:
                return
            if self.nodes[src].core is not src_core and not self.nodes[src].up:
                return
            if node.frozen:
                node.backlog.append(action)
            else:
                action()

        delay = self.latency + (self.rng.random() * self.jitter if self.jitter else 0.0)
        at = max(self.now + delay, self._last_arrival.get((src, dst), 0.0))
        self._last_arrival[(src, dst)] = at
        self._after(at - self.now, arrive)

    def _closed(self, owner: str, peer: str) -> None:
        node = self.nodes[owner]
        if not node.up:
            return
        ident = node.channels.pop(peer, None)
        if ident is not None:
            self._identities.pop(ident, None)
        node.subs.discard(peer)
        self._exec(owner, node.core.channel_closed(peer, self.now))

    def _exec(self, name: str, effects: list[Any]) -> None:
        node = self.nodes[name]
        core = node.core
        for eff in effects:
            if isinstance(eff, m.OpenChannel):
                node.channels[eff.peer] = eff.identity
                self._identities[eff.identity] = (name, eff.peer)
                target = self.nodes.get(eff.peer)
                if target is None or not target.up:
                    self._after(self.latency, partial(self._refused, name, core, eff.peer))
            elif isinstance(eff, m.CloseChannel):
                ident = node.channels.pop(eff.peer, None)
                if ident is not None:
                    self._identities.pop(ident, None)
            elif isinstance(eff, (m.ChannelSend, m.Control)):
                ident = node.channels.get(eff.peer)
                if ident is None:
                    continue
                frame = eff.frame if isinstance(eff, m.ChannelSend) else [eff.message]
                self._deliver(name, eff.peer, partial(self._at_router, eff.peer, ident, frame))
            elif isinstance(eff, m.RouterSend):
                owner_peer = self._identities.get(eff.identity)
                if owner_peer is None:
                    continue
                owner, _ = owner_peer
                self._deliver(name, owner,
                              partial(self._at_channel, owner, eff.identity, name, eff.frame))
            elif isinstance(eff, m.SubConnect):
                node.subs.add(eff.peer)
            elif isinstance(eff, m.SubDisconnect):
                node.subs.discard(eff.peer)
            elif isinstance(eff, m.PublishHeartbeat):
                for other in self.nodes.values():
                    if other.up and name in other.subs:
                        self._deliver(name, other.name,
                                      partial(self._heartbeat, other.name, name, core.creation))
            elif isinstance(eff, m.PeerUp):
                self.events[name].append(("up", eff.peer))
            elif isinstance(eff, m.PeerDown):
                self.events[name].append(("down", eff.peer, eff.reason))
            elif isinstance(eff, m.ConnectDone):
                self.events[name].append(("connect", eff.peer, eff.ok, eff.reason))
            elif isinstance(eff, m.Pong):
                self.events[name].append(("pong", eff.peer, eff.token))
            elif isinstance(eff, Log):
                self.logs[name].append(eff)
            else:  # pragma: no cover
                raise TypeError(f"simulator cannot execute {eff!r}")

    def _heartbeat(self, at: str, sender: str, creation: int) -> None:
        self.nodes[at].core.heartbeat(sender, creation, self.now)

    def _refused(self, owner: str, core: m.MeshCore, peer: str) -> None:
        node = self.nodes[owner]
        if node.core is core and node.up and peer in node.channels:
            self._exec(owner, core.channel_refused(peer, self.now))

    def _at_router(self, dst: str, identity: bytes, frame: list[Any]) -> None:
        node = self.nodes[dst]
        core = node.core
        peer = core.peer_of(identity)
        if peer is None:
            self._exec(dst, core.router_frame(identity, frame, self.now))
            return
        core.heard(peer, self.now)
        for msg in frame:
            if type(msg) is list and msg and msg[0] in MESH_KINDS:
                self._exec(dst, core.control(peer, msg, self.now))

    def _at_channel(self, owner: str, identity: bytes, src: str, frame: list[Any]) -> None:
        node = self.nodes[owner]
        if node.channels.get(src) != identity:
            return  # the channel was closed meanwhile
        self._exec(owner, node.core.channel_frame(src, frame, self.now))
