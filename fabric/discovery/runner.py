"""Discovery as a running object: sources' snapshots in, ``node.connect`` calls out.

Theory of operation
-------------------
A :class:`Discovery` holds a reference to a started node and uses only its public API:
``name``, ``creation``, ``nodes()``, ``monitor_nodes()``, ``connect()``,
``last_connect_error()`` and ``disconnect()``. It runs one task per source
(:mod:`fabric.discovery.source`); each snapshot is checked (a name that does not parse as a
full node name is counted under ``bad_name`` and dropped, names are normalised) and fed to
the pure :class:`~fabric.protocol.dialplan.DialPlan`, whose ``Dial`` effects become
``node.connect`` tasks and whose ``Disconnect`` effects ``node.disconnect`` calls. The
node's ``NodeUp``/``NodeDown`` events keep the plan's view of what is connected (the mesh
connects transitively, so most names are up before discovery dials them); a timer wakes
the plan when its next retry is due (one ``call_at`` handle, re-armed after every
change).

Discovery never touches mesh state. It stops by itself when the node stops (the node's
event stream ends), or with :meth:`Discovery.stop`.

``metrics`` holds the plan's counters (``seen``, ``dialled``, ``connected``, ``failed``,
``forgotten``, ``disconnected``) and the sources' (``gossip.refused.bad_mac``,
``dns.errors``...). :meth:`Discovery.events` yields :class:`DiscoveryEvent` for each name
seen, dialled (with its outcome), forgotten or disconnected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from fabric.discovery.config import (
    DnsConfig,
    GossipConfig,
    HostsFileConfig,
    StaticConfig,
    StrategyConfig,
    parse_specs,
)
from fabric.discovery.source import Source, count
from fabric.errors import ConfigError
from fabric.protocol import dialplan as dp
from fabric.types import parse_node_name

if TYPE_CHECKING:
    from fabric.node import Node

__all__ = ["Discovery", "DiscoveryEvent", "make_source", "normalise"]


@dataclass(frozen=True, slots=True)
class DiscoveryEvent:
    """``kind`` is ``seen``, ``dialled`` (``ok``/``reason`` say how it went),
    ``forgotten`` or ``disconnected``; ``source`` names the strategy for ``seen``."""

    kind: str
    node: str
    source: str = ""
    ok: bool | None = None
    reason: str = ""


def make_source(config: StrategyConfig, secret: bytes, counters: dict[str, int],
                name: str | None = None, creation: int = 0) -> Source:
    """The source that runs ``config`` (gossip announces ``name`` unless it is None)."""
    if isinstance(config, StaticConfig):
        from fabric.discovery.static import StaticSource
        return StaticSource(config)
    if isinstance(config, HostsFileConfig):
        from fabric.discovery.hostsfile import HostsFileSource
        return HostsFileSource(config, counters)
    if isinstance(config, GossipConfig):
        from fabric.discovery.gossip import GossipSource
        return GossipSource(config, secret, counters, name, creation)
    if isinstance(config, DnsConfig):
        from fabric.discovery.dns import DnsSource
        return DnsSource(config, counters)
    raise ConfigError(f"discovery: not a strategy configuration: {config!r}")


def normalise(names: frozenset[str], counters: dict[str, int]) -> frozenset[str]:
    """Full node names in canonical form; others are counted (``bad_name``) and dropped."""
    out: set[str] = set()
    for text in names:
        try:
            parsed = parse_node_name(text)
        except ConfigError:
            parsed = None
        if parsed is None or parsed.port is None:
            count(counters, "bad_name")
            continue
        out.add(str(parsed))
    return frozenset(out)


def as_configs(strategies: str | StrategyConfig | Sequence[str | StrategyConfig]
               ) -> list[StrategyConfig]:
    """Specs and config objects, in any mix, as config objects."""
    items = [strategies] if isinstance(strategies, (str, *_CONFIG_TYPES)) else strategies
    out: list[StrategyConfig] = []
    for item in items:
        out.extend(parse_specs(item) if isinstance(item, str) else [item])
    return out


_CONFIG_TYPES = (StaticConfig, HostsFileConfig, GossipConfig, DnsConfig)


class Discovery:
    """Runs strategies for a started node and dials what they find.

    Args:
        node: a started :class:`~fabric.Node`.
        strategies: spec strings (``"gossip"``, ``"dns:name=...,port=..."``) and/or
            strategy config objects.
        secret: the gossip secret unless a strategy sets its own (default: the cookie).
        max_backoff: the longest pause between two dials of a name never reached.

    Raises:
        ConfigError: a bad spec or option, or no strategy at all.
    """

    def __init__(self, node: Node,
                 strategies: str | StrategyConfig | Sequence[str | StrategyConfig],
                 *, secret: bytes | None = None, max_backoff: float = 5.0) -> None:
        self.configs = as_configs(strategies)
        if not self.configs:
            raise ConfigError("discovery: no strategy given")
        self.node = node
        self.metrics: dict[str, int] = {}
        self.plan = dp.DialPlan(node.name, disconnect=any(c.disconnect for c in self.configs),
                                max_backoff=max_backoff)
        self.metrics = self.plan.stats
        cookie: bytes = secret if secret is not None else node.get_cookie()
        self.sources = [(f"{c.KIND}#{i}", make_source(c, cookie, self.metrics, node.name,
                                                       node.creation))
                        for i, c in enumerate(self.configs)]
        self.log: Any = structlog.get_logger("fabric.discovery").bind(node=node.name)
        self._tasks: list[asyncio.Task[Any]] = []
        self._dials: set[asyncio.Task[Any]] = set()
        self._subscribers: list[asyncio.Queue[DiscoveryEvent]] = []
        self._timer: asyncio.TimerHandle | None = None
        self.running = False

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> Discovery:
        """Start the sources (on the node's running loop); returns self."""
        if self.running:
            raise ConfigError("discovery already started")
        self.running = True
        loop = asyncio.get_running_loop()
        node_events = self.node.monitor_nodes()
        for peer in self.node.nodes():
            self.plan.node_up(peer)
        self._tasks = [loop.create_task(self._run_source(label, src))
                       for label, src in self.sources]
        self._tasks.append(loop.create_task(self._follow_node(node_events)))
        self.log.info("discovery_started", strategies=[label for label, _ in self.sources])
        return self

    async def stop(self) -> None:
        """Stop the sources and pending dials (the node's sessions stay)."""
        if not self.running:
            return
        self.running = False
        self._schedule()  # cancels the timer
        current = asyncio.current_task()
        tasks = [t for t in [*self._tasks, *self._dials] if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def events(self) -> asyncio.Queue[DiscoveryEvent]:
        """A queue that receives every :class:`DiscoveryEvent` from now on."""
        queue: asyncio.Queue[DiscoveryEvent] = asyncio.Queue()
        self._subscribers.append(queue)
        return queue

    def wanted(self) -> list[str]:
        """The names the sources list now (this node's own excluded), sorted."""
        return sorted(self.plan.wanted())

    # -- tasks ----------------------------------------------------------------------------

    async def _run_source(self, label: str, source: Source) -> None:
        try:
            await source.run(lambda names: self._on_snapshot(label, names))
        except ConfigError as exc:
            count(self.metrics, "source_errors")
            self.log.error("discovery_source_failed", source=label, error=str(exc))

    async def _follow_node(self, node_events: Any) -> None:
        from fabric.node import NodeUp

        async for event in node_events:
            if isinstance(event, NodeUp):
                self.plan.node_up(event.node)
            else:
                self.plan.node_down(event.node, self._now())
                self._schedule()
        await self.stop()  # the node stopped

    def _schedule(self) -> None:
        """(Re)arm the one timer for the plan's next due retry."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self.plan.next_due()
        if due is not None and self.running:
            self._timer = asyncio.get_running_loop().call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._apply(self.plan.tick(self._now()))

    async def _dial(self, name: str) -> None:
        try:
            ok = await self.node.connect(name)
            reason = "ok" if ok else (self.node.last_connect_error(name) or "unknown")
        except ConfigError as exc:  # the node is stopping
            ok, reason = False, str(exc)
        self._publish(DiscoveryEvent("dialled", name, ok=ok, reason=reason))
        if not ok:
            self.log.debug("discovery_dial_failed", peer=name, reason=reason)
        self._apply(self.plan.dial_result(name, ok, reason, self._now()))

    # -- plan -----------------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _on_snapshot(self, label: str, names: frozenset[str]) -> None:
        if self.running:
            self._apply(self.plan.update(label, normalise(names, self.metrics), self._now()))

    def _apply(self, effects: list[dp.Effect]) -> None:
        loop = asyncio.get_running_loop()
        for eff in effects:
            if isinstance(eff, dp.Dial):
                task = loop.create_task(self._dial(eff.name))
                self._dials.add(task)
                task.add_done_callback(self._dials.discard)
            elif isinstance(eff, dp.Disconnect):
                self.node.disconnect(eff.name)
                self._publish(DiscoveryEvent("disconnected", eff.name))
            elif isinstance(eff, dp.Seen):
                self.log.info("discovery_seen", peer=eff.name, source=eff.source)
                self._publish(DiscoveryEvent("seen", eff.name, source=eff.source))
            elif isinstance(eff, dp.Forgotten):
                self.log.info("discovery_forgotten", peer=eff.name)
                self._publish(DiscoveryEvent("forgotten", eff.name))
        self._schedule()

    def _publish(self, event: DiscoveryEvent) -> None:
        for queue in self._subscribers:
            queue.put_nowait(event)
