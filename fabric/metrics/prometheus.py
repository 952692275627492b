"""A node's figures as Prometheus metric families: names, types, labels, help texts.

Theory of operation
-------------------
:func:`families` turns one :class:`~fabric.metrics.snapshot.NodeSnapshot` into the metric
families a scrape returns; :class:`NodeCollector` is the custom collector that asks for a
fresh snapshot at each scrape (the usual pattern for state that lives elsewhere: nothing
is copied into ``prometheus_client``'s own counters, so the send and receive paths pay
nothing for the exporter). A scrape that gets no snapshot (the node's loop did not answer
in time, or the node is not running) returns only ``fabric_up 0``.

Names follow Prometheus conventions: the ``fabric_`` prefix, ``_total`` on counters, base
units (``_bytes``, ``_seconds``), and labels (``peer``, ``reason``, ``name``, ``hidden``,
``cache``) for dimensions whose values sum to something meaningful. docs/METRICS.md lists
them all; ``tests/test_metrics_collector.py`` checks that the two agree.

``prometheus_client`` (the ``metrics`` extra) is imported when :func:`families` first
runs, so this module imports without it; nothing calls it unless a node is configured with
a ``metrics_address``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import TYPE_CHECKING

from fabric.metrics.snapshot import NodeSnapshot, PeerSample

if TYPE_CHECKING:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["NodeCollector", "families"]

# Per-peer series: (name, help, type, value of a PeerSample); None values are left out.
_Series = tuple[str, str, str, Callable[[PeerSample], "float | None"]]


def _traffic_series() -> list[_Series]:
    """fabric_peer_{received,sent}_{batches,messages,bytes}_total."""
    series: list[_Series] = []
    for verb, side, whom in (("received", "in", "from"), ("sent", "out", "to")):
        for unit, what in (("batches", "Batches (ZeroMQ frames)"), ("messages", "Messages"),
                           ("bytes", "Payload bytes of the batches")):
            series.append((f"fabric_peer_{verb}_{unit}_total", f"{what} {verb} {whom} the "
                           "peer.", "counter", attrgetter(f"{unit}_{side}")))
    return series


_PEER_SERIES: tuple[_Series, ...] = (
    ("fabric_peer_up", "1 if a session with the peer is up, else 0.", "gauge",
     lambda s: 1.0 if s.up else 0.0),
    *_traffic_series(),
    ("fabric_peer_sends_refused_total", "Sends to the peer refused because its outbound "
     "queue was full (BackpressureError).", "counter", attrgetter("refused")),
    ("fabric_peer_queued_messages", "Messages waiting to be sent to the peer.", "gauge",
     attrgetter("queued")),
    ("fabric_peer_heartbeat_age_seconds", "Seconds since the peer was last heard (any "
     "frame or heartbeat).", "gauge", attrgetter("heartbeat_age")),
    ("fabric_peer_rtt_seconds", "Round trip of the last ping to the peer.", "gauge",
     attrgetter("rtt")),
)


# The counters of fabric.cache.Cache.stats(), labelled by cache name: counter -> help.
# Exposed as fabric_cache_<counter>_total (counters) and fabric_cache_<counter> (gauges);
# a counter a cache lacks (near_* without a near cache) is left out for it.
_CACHE_COUNTERS = {
    "hits": "Reads served from this node's store.",
    "misses": "Reads of keys this node does not hold (absent, deleted or expired).",
    "evictions": "Entries evicted (least recently used) to keep the bounds.",
    "expirations": "Entries and tombstones dropped at their deadline.",
    "handoffs": "Entries sent to new owners after owner changes.",
    "repairs": "Stale copies overwritten by read repair.",
    "near_hits": "Reads served from this node's near cache.",
}
_CACHE_GAUGES = {
    "entries": "Entries held, tombstones included.",
    "bytes": "Bytes held, counted against max_bytes.",
    "tombstones": "Tombstones of deletes held.",
    "handoff_pending": "Hand-off work not finished (entries to send, batches unacknowledged).",
    "near_entries": "Entries in this node's near cache.",
}


def _cache_families(caches: Mapping[str, Mapping[str, int]]) -> list[Metric]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    out: list[Metric] = []
    series: list[tuple[str, CounterMetricFamily | GaugeMetricFamily]] = [
        (c, CounterMetricFamily(f"fabric_cache_{c}", h, labels=["cache"]))
        for c, h in _CACHE_COUNTERS.items()]
    series += [(c, GaugeMetricFamily(f"fabric_cache_{c}", h, labels=["cache"]))
               for c, h in _CACHE_GAUGES.items()]
    for counter, family in series:
        for cache, numbers in sorted(caches.items()):
            if counter in numbers:
                family.add_metric([cache], numbers[counter])
        out.append(family)
    return out


def families(snap: NodeSnapshot | None) -> list[Metric]:
    """The metric families of one scrape (only ``fabric_up 0`` without a snapshot)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    up = GaugeMetricFamily("fabric_up", "1 if the node answered this scrape, else 0.",
                           value=0.0 if snap is None else 1.0)
    if snap is None:
        return [up]
    info = GaugeMetricFamily("fabric_node_info", "The node's name and creation (value 1).",
                             labels=["node", "creation"])
    info.add_metric([snap.node, str(snap.creation)], 1.0)
    peers = GaugeMetricFamily("fabric_peers", "Peers with a session up.", labels=["hidden"])
    peers.add_metric(["false"], snap.peers)
    peers.add_metric(["true"], snap.hidden_peers)
    mailboxes = GaugeMetricFamily("fabric_registered_mailbox_messages",
                                  "Messages in the mailbox of a registered process.",
                                  labels=["name"])
    for name, depth in sorted(snap.registered_mailboxes.items()):
        mailboxes.add_metric([name], depth)
    out: list[Metric] = [
        up, info, peers,
        GaugeMetricFamily("fabric_processes", "Local processes (and mailboxes).",
                          value=snap.processes),
        GaugeMetricFamily("fabric_registered_names", "Locally registered names.",
                          value=snap.registered_names),
        GaugeMetricFamily("fabric_mailbox_messages", "Messages in all local mailboxes.",
                          value=snap.mailbox_messages),
        GaugeMetricFamily("fabric_mailbox_max_messages", "Messages in the deepest local "
                          "mailbox.", value=snap.mailbox_max),
        mailboxes,
        _by_label("fabric_dropped_total", "Messages or frames dropped, by reason "
                  "(docs/METRICS.md).", "reason", snap.dropped),
        _by_label("fabric_handshakes_refused_total", "Handshakes refused, by reason.",
                  "reason", snap.handshakes_refused),
        CounterMetricFamily("fabric_topic_messages_received_total",
                            "PUB/SUB messages received on a service topic.",
                            value=snap.topic_messages_in),
    ]
    for name, help_text, kind, value_of in _PEER_SERIES:
        family: CounterMetricFamily | GaugeMetricFamily = (
            CounterMetricFamily(name, help_text, labels=["peer"]) if kind == "counter"
            else GaugeMetricFamily(name, help_text, labels=["peer"]))
        for sample in snap.peer_samples:
            value = value_of(sample)
            if value is not None:
                family.add_metric([sample.peer], value)
        out.append(family)
    out += _cache_families(snap.caches)
    return out


def _by_label(name: str, help_text: str, label: str,
              counts: Mapping[str, int]) -> CounterMetricFamily:
    from prometheus_client.core import CounterMetricFamily

    family = CounterMetricFamily(name, help_text, labels=[label])
    for key, count in sorted(counts.items()):
        family.add_metric([key], count)
    return family


class NodeCollector:
    """A ``prometheus_client`` collector that reads a fresh snapshot at every scrape.

    Args:
        read: returns the node's snapshot, or None if it could not be taken (called in
            the scraping thread: it must be thread-safe, see
            :class:`fabric.metrics.exporter.MetricsExporter`).
    """

    def __init__(self, read: Callable[[], NodeSnapshot | None]) -> None:
        self._read = read

    def collect(self) -> list[Metric]:
        return families(self._read())
