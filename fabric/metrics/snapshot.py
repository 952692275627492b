"""One consistent, immutable reading of a node's counters and gauges.

Theory of operation
-------------------
A node's state belongs to its event loop (ARCHITECTURE.md section 2), so its figures are
read there, all at once, into a frozen :class:`NodeSnapshot`; whoever reports them (the
Prometheus exporter's HTTP thread, ``fabric status``) works on that copy and never
touches the node. :func:`take_snapshot` must therefore run on the node's loop; it reads
only the node's public API and the low-level accessors of ARCHITECTURE.md section 8
(``node.metrics``, ``node.channels``, ``node.processes``, ``node.mesh``'s queries and its
detector's ``silence``), never private state.

Nothing here runs on the hot path: the counters it reads are the ones the node keeps
anyway (``node.metrics``, each channel's :class:`~fabric.outbound.Outbound`), and the
gauges (mailbox depths, queue lengths, heartbeat age) are computed when a snapshot is
taken. Its cost is linear in processes plus peers, paid once per scrape. The counters of
the node's distributed caches (the figures ``fabric status`` shows) are copied too, a few
integers per cache: ``fabric.cache`` hands its reader to :func:`report_caches` when it is
imported, so this module (which the node imports) never imports the cache (which imports
the node); no cache module loaded means no cache on the node.

Drops are reported by reason, each drop counted under exactly one reason so that their
sum means something (``bad_input`` includes ``unknown_kind`` and ``not_a_message``, so
the rest of it is reported as ``malformed``): see :data:`DROP_REASONS` and
docs/METRICS.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from fabric.node import Node

__all__ = ["DROP_REASONS", "NodeSnapshot", "PeerSample", "report_caches", "take_snapshot"]

CacheCounters = Callable[["Node"], Mapping[str, Mapping[str, int]]]
_cache_counters: list[CacheCounters] = []  # set once, by fabric.cache at import


def report_caches(reader: CacheCounters) -> None:
    """Let snapshots read every cache's counters on a node with ``reader(node)``."""
    _cache_counters[:] = [reader]

#: Reasons a message or frame is dropped, as ``fabric_dropped_total{reason}`` shows them.
DROP_REASONS: Final = (
    "undeliverable",  # to a process, name or service that does not exist
    "peer_down",  # still queued when the session ended, or never came up
    "unknown_kind",  # a message of a kind this node does not know
    "not_a_message",  # a batch item that is not an array
    "malformed",  # any other bad input: frame shape, undecodable, wrong fields
    "stray_batch",  # a batch from an identity with no session (refused)
    "bad_handshake_frame",  # a malformed handshake or mesh control frame
    "unencodable",  # a queued message the codec refused at send time
    "publish_full",  # a PUB/SUB broadcast the PUB socket refused
    "undecodable_publish",  # a group broadcast whose payload did not decode
)


@dataclass(frozen=True, slots=True)
class PeerSample:
    """One peer as this node sees it. ``up``: a session is up; ``queued``: messages
    waiting to be sent (in its outbound queue, or held for a session being negotiated);
    ``heartbeat_age``: seconds since it was last heard (None without a session);
    ``rtt``: the last measured ping round trip, seconds (None if not measured)."""

    peer: str
    up: bool
    batches_in: int
    messages_in: int
    bytes_in: int
    batches_out: int
    messages_out: int
    bytes_out: int
    refused: int
    queued: int
    heartbeat_age: float | None
    rtt: float | None


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """A node's figures at one instant; see the module docstring."""

    node: str
    creation: int
    peers: int
    hidden_peers: int
    processes: int
    registered_names: int
    mailbox_messages: int  # in every local mailbox together
    mailbox_max: int  # in the deepest one
    registered_mailboxes: Mapping[str, int]  # registered name -> its mailbox depth
    dropped: Mapping[str, int]  # reason (DROP_REASONS) -> count
    handshakes_refused: Mapping[str, int]  # refusal reason -> count
    topic_messages_in: int
    peer_samples: tuple[PeerSample, ...]
    # cache name -> its counters on this node (fabric.cache.Cache.stats)
    caches: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


def take_snapshot(node: Node, rtt: Mapping[str, float] | None = None) -> NodeSnapshot:
    """Read ``node``'s figures; call it on the node's event loop, on a started node.

    Args:
        rtt: the last ping round trip per peer, seconds, if someone measures it
            (:class:`fabric.metrics.rtt.RttProbe`).
    """
    rtt = rtt or {}
    metrics = node.metrics
    counters = dict(metrics)
    channels = node.channels
    detector = node.mesh.detector
    now = node.loop.time()

    depths = [len(proc.mailbox) for proc in node.processes.processes()]
    registered: dict[str, int] = {}
    for name in node.registered():
        pid = node.whereis(name)
        proc = None if pid is None else node.processes.get(pid)
        if proc is not None:
            registered[name] = len(proc.mailbox)

    samples = []
    unencodable = 0
    for peer in sorted(set(metrics.traffic) | set(channels.peers())):
        out = channels.outbound(peer)
        t = metrics.traffic_with(peer, out)
        unencodable += t.unencodable
        up = node.mesh.is_up(peer)
        samples.append(PeerSample(
            peer=peer, up=up,
            batches_in=t.batches_in, messages_in=t.messages_in, bytes_in=t.bytes_in,
            batches_out=t.batches_out, messages_out=t.messages_out, bytes_out=t.bytes_out,
            refused=t.refused,
            queued=(0 if out is None else len(out.queue)) + channels.waiting(peer),
            heartbeat_age=detector.silence(peer, now) if up else None,
            rtt=rtt.get(peer) if up else None,
        ))

    bad_input = counters["bad_input"]
    dropped = {
        "undeliverable": counters["undeliverable"],
        "peer_down": counters["dropped_on_down"],
        "unknown_kind": counters["unknown_kind"],
        "not_a_message": counters["not_a_message"],
        "malformed": max(0, bad_input - counters["unknown_kind"] - counters["not_a_message"]),
        "stray_batch": counters["stray_batches"],
        "bad_handshake_frame": counters["bad_mesh_frames"],
        "unencodable": unencodable,
        "publish_full": counters["publish_dropped"],
        "undecodable_publish": counters["bad_publish"],
    }
    return NodeSnapshot(
        node=node.name,
        creation=node.creation,
        peers=len(node.nodes()),
        hidden_peers=len(node.hidden_nodes()),
        processes=len(depths),
        registered_names=len(registered),
        mailbox_messages=sum(depths),
        mailbox_max=max(depths, default=0),
        registered_mailboxes=registered,
        dropped=dropped,
        handshakes_refused=dict(node.mesh.stats.refused),
        topic_messages_in=counters["topic_in"],
        peer_samples=tuple(samples),
        caches=_cache_counters[0](node) if _cache_counters else {},
    )
