"""Discovery: strategies that find node names and hand them to the mesh.

Theory of operation
-------------------
Each strategy is a small module with one job that produces snapshots of node names: a
static list (:mod:`~fabric.discovery.static`), a hosts file
(:mod:`~fabric.discovery.hostsfile`), authenticated multicast gossip
(:mod:`~fabric.discovery.gossip`) and DNS A/AAAA/SRV records (:mod:`~fabric.discovery.dns`).
They are configured alike (:mod:`~fabric.discovery.config`: a dataclass per strategy and a
one-line spec). :class:`Discovery` (:mod:`~fabric.discovery.runner`) runs several at once
for a node and hands what they list to the mesh (``node.learn``), which dials and retries;
it never touches mesh state.

Three ways to turn it on::

    node = fabric.Node("app@10.0.0.5", discovery="gossip")          # NodeConfig field
    disc = fabric.discovery.start(node, ["dns:name=app.svc,basename=app,port=9100"])
    FABRIC_DISCOVERY="gossip;hosts:path=/etc/fabric/hosts"           # env, or --discovery

:func:`watch` runs strategies without a node, for ``fabric discover``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from fabric.discovery.config import (
    DnsConfig,
    GossipConfig,
    HostsFileConfig,
    StaticConfig,
    StrategyConfig,
    parse_specs,
)
from fabric.discovery.runner import Discovery, DiscoveryEvent, as_configs, make_source, normalise

if TYPE_CHECKING:
    from fabric.node import Node

__all__ = ["Discovery", "DiscoveryEvent", "DnsConfig", "GossipConfig", "HostsFileConfig",
           "StaticConfig", "StrategyConfig", "parse_specs", "start", "watch"]


def start(node: Node, strategies: str | StrategyConfig | Sequence[str | StrategyConfig],
          *, secret: bytes | None = None, max_backoff: float | None = None) -> Discovery:
    """Start discovery for a started ``node`` (on its loop); see :class:`Discovery`.

    Raises:
        ConfigError: a bad spec or option, or no strategy at all.
    """
    return Discovery(node, strategies, secret=secret, max_backoff=max_backoff).start()


async def watch(strategies: str | StrategyConfig | Sequence[str | StrategyConfig],
                secret: bytes, on_change: Callable[[str, frozenset[str]], None],
                counters: dict[str, int] | None = None) -> None:
    """Run strategies without a node (gossip only listens) until cancelled, calling
    ``on_change(label, names)`` whenever a strategy's list changes.

    Raises:
        ConfigError: a bad spec, or a source cannot start (its error is raised).
    """
    counters = {} if counters is None else counters
    last: dict[str, frozenset[str]] = {}

    def reporter(label: str) -> Callable[[frozenset[str]], None]:
        def report(names: frozenset[str]) -> None:
            names = normalise(names, counters)
            if last.get(label) != names:
                last[label] = names
                on_change(label, names)
        return report

    configs = as_configs(strategies)
    tasks = [asyncio.ensure_future(make_source(c, secret, counters).run(
        reporter(f"{c.KIND}#{i}"))) for i, c in enumerate(configs)]
    try:
        await asyncio.gather(*tasks)
        await asyncio.Event().wait()  # sources that return (static) keep their list
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
