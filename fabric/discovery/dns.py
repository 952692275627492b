"""The DNS strategy: node names from A/AAAA or SRV records, polled.

Theory of operation
-------------------
libcluster's ``Kubernetes.DNS``/``DNSPoll`` and ``Kubernetes.DNSSRV``: a Kubernetes
headless Service has one A (or AAAA) record per ready pod, and a StatefulSet's pods also
get SRV records whose targets are their stable DNS names. Every ``interval`` seconds the
source asks for the configured name and reports

* ``a``/``aaaa``: ``basename@<address>:<port>`` for each address;
* ``srv``: ``basename@<target>:<port>`` for each record, the port the record's unless
  configured. The target is a DNS name: the node connects to it by name (ZeroMQ resolves
  it when it dials), and the pod's own node name must use the same name.

An answer that the name does not exist, or has no record of that type, is a real answer:
no node (every pod gone). A failed query (timeout, server failure) is not: the last list
stays, and ``dns.errors`` counts it. Queries use dnspython's asyncio resolver, asking
``resolver``:``resolver_port`` when configured, else the system's resolvers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from fabric.discovery.config import DnsConfig
from fabric.discovery.source import Report, count
from fabric.errors import ConfigError

__all__ = ["DnsSource"]


def _resolver(config: DnsConfig) -> Any:
    try:
        import dns.asyncresolver
    except ImportError:
        raise ConfigError("discovery dns needs dnspython (pip install 'fabric-dist[dns]')"
                          ) from None
    resolver = dns.asyncresolver.Resolver(configure=config.resolver is None)
    if config.resolver is not None:
        resolver.nameservers = [config.resolver]
        resolver.port = config.resolver_port
    resolver.lifetime = config.timeout
    resolver.cache = None  # every poll must see the server's current answer
    return resolver


class DnsSource:
    """Polls ``config.name`` and reports the node names its records give."""

    def __init__(self, config: DnsConfig, counters: dict[str, int]) -> None:
        self.config = config
        self.counters = counters
        self.resolver = _resolver(config)
        self.log: Any = structlog.get_logger("fabric.discovery").bind(dns=config.name)

    async def query(self) -> frozenset[str] | None:
        """The names the records give now, or None when the query failed."""
        import dns.exception
        import dns.resolver

        cfg = self.config
        try:
            answer = await self.resolver.resolve(cfg.name, cfg.record.upper(),
                                                 search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return frozenset()
        except dns.exception.DNSException as exc:
            count(self.counters, "dns.errors")
            self.log.warning("dns_query_failed", error=str(exc) or type(exc).__name__)
            return None
        count(self.counters, "dns.queries")
        if cfg.record == "srv":
            return frozenset(
                f"{cfg.basename}@{rr.target.to_text(omit_final_dot=True)}:"
                f"{cfg.port or rr.port}" for rr in answer)
        fmt = "{}@[{}]:{}" if cfg.record == "aaaa" else "{}@{}:{}"
        return frozenset(fmt.format(cfg.basename, rr.address, cfg.port) for rr in answer)

    async def run(self, report: Report) -> None:
        while True:
            names = await self.query()
            if names is not None:
                report(names)
            await asyncio.sleep(self.config.interval)
