"""Discovery as a running object: sources' snapshots in, ``node.learn`` calls out.

Theory of operation
-------------------
A :class:`Discovery` holds a reference to a started node and uses only its public API:
``name``, ``creation``, ``nodes()``, ``monitor_nodes()``, ``learn()`` and
``disconnect()``. It runs one task per source (:mod:`fabric.discovery.source`); each
snapshot is checked (a name that does not parse as a full node name is counted under
``bad_name`` and dropped, names are normalised) and fed to the pure
:class:`~fabric.protocol.discovered.DiscoveredNames`, whose ``Learn`` effects become
``node.learn`` calls and whose ``Disconnect`` effects ``node.disconnect`` calls. The mesh
owns dialing and retrying (one backoff, the mesh's: PROTOCOL.md section 7.1); discovery
only hands it names, again on each snapshot and at a listed name's ``nodedown`` (the
mesh ignores names it already holds). Whether a forgotten name is connected is read from the node
(``nodes()``, ``hidden_nodes()``) when it is forgotten.

Discovery never touches mesh state. It stops by itself when the node stops (the node's
event stream ends), or with :meth:`Discovery.stop`.

``metrics`` holds the core's counters (``seen``, ``learned``, ``forgotten``) and
``disconnected`` and the sources' (``gossip.refused.bad_mac``, ``dns.errors``...).
:meth:`Discovery.events` yields :class:`DiscoveryEvent` for each name seen, forgotten or
disconnected.
"""

from __future__ import annotations

import asyncio
import warnings
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
from fabric.protocol import discovered as dn
from fabric.types import parse_node_name

if TYPE_CHECKING:
    from fabric.node import Node

__all__ = ["Discovery", "DiscoveryEvent", "make_source", "normalise"]


@dataclass(frozen=True, slots=True)
class DiscoveryEvent:
    """``kind`` is ``seen``, ``forgotten`` or ``disconnected``; ``source`` names the
    strategy for ``seen``. (``ok`` and ``reason`` belonged to ``dialled`` events, from
    when discovery dialled by itself: the mesh dials now, and ``node.monitor_nodes()``
    and ``node.last_connect_error()`` say how it goes.)"""

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
        max_backoff: deprecated and ignored: the mesh retries the names discovery hands
            it, paced by the node's ``reconnect_*`` settings.

    Raises:
        ConfigError: a bad spec or option, or no strategy at all.
    """

    def __init__(self, node: Node,
                 strategies: str | StrategyConfig | Sequence[str | StrategyConfig],
                 *, secret: bytes | None = None, max_backoff: float | None = None) -> None:
        if max_backoff is not None:
            warnings.warn("Discovery(max_backoff=...) is ignored: the mesh retries what "
                          "discovery finds (NodeConfig.reconnect_max_backoff)",
                          DeprecationWarning, stacklevel=2)
        self.configs = as_configs(strategies)
        if not self.configs:
            raise ConfigError("discovery: no strategy given")
        self.node = node
        self.metrics: dict[str, int] = {}
        self.plan = dn.DiscoveredNames(node.name,
                                       disconnect=any(c.disconnect for c in self.configs))
        self.metrics = self.plan.stats
        self.metrics["disconnected"] = 0  # sessions ended on removal (disconnect=true)
        cookie: bytes = secret if secret is not None else node.get_cookie()
        self.sources = [(f"{c.KIND}#{i}", make_source(c, cookie, self.metrics, node.name,
                                                       node.creation))
                        for i, c in enumerate(self.configs)]
        self.log: Any = structlog.get_logger("fabric.discovery").bind(node=node.name)
        self._tasks: list[asyncio.Task[Any]] = []
        self._subscribers: list[asyncio.Queue[DiscoveryEvent]] = []
        self.running = False

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> Discovery:
        """Start the sources (on the node's running loop); returns self."""
        if self.running:
            raise ConfigError("discovery already started")
        self.running = True
        loop = asyncio.get_running_loop()
        node_events = self.node.monitor_nodes()
        self._tasks = [loop.create_task(self._run_source(label, src))
                       for label, src in self.sources]
        self._tasks.append(loop.create_task(self._follow_node(node_events)))
        self.log.info("discovery_started", strategies=[label for label, _ in self.sources])
        return self

    async def stop(self) -> None:
        """Stop the sources (the node's sessions, and the mesh's retries, stay)."""
        if not self.running:
            return
        self.running = False
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
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
            if not isinstance(event, NodeUp) and self.running:
                self._apply(self.plan.node_down(event.node))
        await self.stop()  # the node stopped

    # -- the core -------------------------------------------------------------------------

    def _on_snapshot(self, label: str, names: frozenset[str]) -> None:
        if self.running:
            self._apply(self.plan.update(label, normalise(names, self.metrics)))

    def _apply(self, effects: list[dn.Effect]) -> None:
        for eff in effects:
            if isinstance(eff, dn.Learn):
                try:
                    self.node.learn(eff.name)
                except ConfigError:  # the node is stopping: its event stream ends us
                    return
            elif isinstance(eff, dn.Seen):
                self.log.info("discovery_seen", peer=eff.name, source=eff.source)
                self._publish(DiscoveryEvent("seen", eff.name, source=eff.source))
            elif isinstance(eff, dn.Forgotten):
                self.log.info("discovery_forgotten", peer=eff.name)
                self._publish(DiscoveryEvent("forgotten", eff.name))
                self._forget(eff)

    def _forget(self, eff: dn.Forgotten) -> None:
        """Take a name no source lists back from the mesh: its attempts stop unless it
        is connected; with ``disconnect`` its session ends too."""
        connected = eff.name in self.node.nodes() or eff.name in self.node.hidden_nodes()
        if connected and not eff.disconnect:
            return  # its session stays (and is retried by the mesh if it drops)
        try:
            self.node.disconnect(eff.name)
        except ConfigError:  # the node is stopping: its event stream ends us
            return
        if connected:
            count(self.metrics, "disconnected")
            self._publish(DiscoveryEvent("disconnected", eff.name))

    def _publish(self, event: DiscoveryEvent) -> None:
        for queue in self._subscribers:
            queue.put_nowait(event)
