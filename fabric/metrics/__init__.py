"""A node's metrics for operators: snapshots, and the optional Prometheus exporter.

Theory of operation
-------------------
The node counts (``node.metrics``, :mod:`fabric.node.metrics`); this package reports.
:mod:`fabric.metrics.snapshot` reads one consistent, immutable copy of a node's counters
and gauges on its event loop; :mod:`fabric.metrics.prometheus` turns a copy into
Prometheus metric families; :mod:`fabric.metrics.exporter` serves them over HTTP when a
node has a ``metrics_address``; :mod:`fabric.metrics.rtt` measures round trips to peers
for it. ``prometheus_client`` is imported only by the last two, and only when configured.
docs/METRICS.md lists every metric.
"""

from fabric.metrics.snapshot import DROP_REASONS, NodeSnapshot, PeerSample, take_snapshot

__all__ = ["DROP_REASONS", "NodeSnapshot", "PeerSample", "take_snapshot"]
