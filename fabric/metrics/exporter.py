"""The optional Prometheus exporter: an HTTP endpoint serving one node's metrics.

Theory of operation
-------------------
Off by default. When a node's ``metrics_address`` is set (``NodeConfig``,
``FABRIC_METRICS_ADDRESS``, ``fabric node --metrics-address``), the node opens a
:class:`MetricsExporter` as it starts and closes it as it stops. ``prometheus_client``
(the ``metrics`` extra, ``pip install fabric-dist[metrics]``) serves ``/metrics`` from its
own HTTP server thread, with a registry of its own per node (several nodes may share a
process, and none of them registers anything globally).

The node's state belongs to its event loop, and the HTTP thread must not read it while
the loop changes it. So a scrape asks the loop for a snapshot: the collector schedules
:func:`~fabric.metrics.snapshot.take_snapshot` with ``loop.call_soon_threadsafe`` and
waits for its result on a ``concurrent.futures.Future``, at most
:data:`SNAPSHOT_TIMEOUT` seconds. The node pays only when it is scraped, between two of its
callbacks, and nothing on the send and receive paths; a loop too busy to answer in time
yields ``fabric_up 0`` rather than a stale or torn reading. (The other way, publishing an
immutable snapshot every tick, would cost every node all the time, scraped or not.)

The exporter also runs the :class:`~fabric.metrics.rtt.RttProbe`, which measures the
round trip to each peer for ``fabric_peer_rtt_seconds``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import TYPE_CHECKING, Any, Final

from fabric.config import parse_address
from fabric.errors import ConfigError
from fabric.metrics.rtt import RttProbe
from fabric.metrics.snapshot import NodeSnapshot, take_snapshot

if TYPE_CHECKING:
    from fabric.node import Node

__all__ = ["SNAPSHOT_TIMEOUT", "MetricsExporter"]

#: How long a scrape waits for the node's loop to take its snapshot, seconds.
SNAPSHOT_TIMEOUT: Final = 2.0


class MetricsExporter:
    """Serves ``node``'s metrics over HTTP on ``address``; see the module docstring.

    Use :meth:`open` (the node does, in ``start``); :attr:`address` is the bound
    ``host:port`` (useful with port 0).
    """

    def __init__(self, node: Node, loop: asyncio.AbstractEventLoop) -> None:
        self.node = node
        self._loop = loop
        self.rtt = RttProbe(node)
        self.address = ""
        self._server: Any = None
        self._thread: Any = None

    @classmethod
    def open(cls, node: Node, address: str) -> MetricsExporter:
        """Bind ``address`` and serve ``node``'s metrics (on the node's running loop).

        Raises:
            ConfigError: ``prometheus_client`` is not installed, or the address cannot
                be bound.
        """
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError:
            raise ConfigError(
                f"metrics_address={address!r} needs prometheus_client: "
                "pip install fabric-dist[metrics] (or leave metrics_address empty)") from None
        from fabric.metrics.prometheus import NodeCollector

        host, port = parse_address(address)
        exporter = cls(node, asyncio.get_running_loop())
        registry = CollectorRegistry(auto_describe=False)
        registry.register(NodeCollector(exporter.snapshot))
        try:
            exporter._server, exporter._thread = start_http_server(port, addr=host,
                                                                   registry=registry)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {address}: {exc}") from None
        bound_host, bound_port = exporter._server.server_address[:2]
        exporter.address = (f"[{bound_host}]:{bound_port}" if ":" in bound_host
                            else f"{bound_host}:{bound_port}")
        exporter.rtt.start()
        return exporter

    def snapshot(self, timeout: float = SNAPSHOT_TIMEOUT) -> NodeSnapshot | None:
        """The node's snapshot, taken on its loop; None if the node is not running or
        its loop did not answer within ``timeout``. Safe to call from any thread but the
        loop's own (which it would wait for)."""
        done: concurrent.futures.Future[NodeSnapshot | None] = concurrent.futures.Future()

        def take() -> None:  # on the loop
            if not done.set_running_or_notify_cancel():
                return  # the scrape gave up waiting
            node = self.node
            try:
                running = node.started and not node.stopped
                done.set_result(take_snapshot(node, self.rtt.last) if running else None)
            except BaseException as exc:  # a bug: let the scrape fail loudly (HTTP 500)
                done.set_exception(exc)

        try:
            self._loop.call_soon_threadsafe(take)
        except RuntimeError:
            return None  # the loop is closed
        try:
            return done.result(timeout)
        except concurrent.futures.TimeoutError:
            done.cancel()
            return None

    async def aclose(self) -> None:
        """Stop probing and serving; the port is free when this returns."""
        self.rtt.stop()
        # shutdown() waits for the server thread's poll loop (up to 0.5 s): not on the loop.
        await self._loop.run_in_executor(None, self._server.shutdown)
        self._server.server_close()
        self._thread.join(timeout=5.0)
