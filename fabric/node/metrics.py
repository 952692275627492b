"""The node's counters, every one declared here: ``node.metrics``.

Theory of operation
-------------------
Each counter is a field of :class:`Metrics`, incremented by the one object that sees the
event (the comment next to a field names it). Plain attribute increments are as cheap as
a counter can be in Python, which matters on the paths that count per message
(``undeliverable``). A counter is never created on first use: a name that is not a field
is a typo, which ``mypy`` and ``__slots__`` reject.

``node.metrics`` is also a read-only mapping (``metrics["undeliverable"]``,
``metrics.get(...)``, ``dict(metrics)``), which is how ``fabric status`` and the
benchmarks read it. The mapping also shows the mesh core's own counters of dropped
handshake traffic (:class:`fabric.protocol.mesh.MeshStats`), which the core owns because
it is the one that sees those frames.

Traffic per peer (:class:`PeerTraffic`, :meth:`Metrics.traffic_with`) is counted per batch,
never per message: the reactor adds each batch it reads from a peer
(:meth:`Metrics.received_from`); what was sent is counted by the peer's
:class:`~fabric.outbound.Outbound` while its channel is open and folded in here when the
channel closes (:meth:`Metrics.channel_closed`), so the totals outlive reconnects and the
send path gains nothing but one byte count per batch. Entries are kept for every peer
this node run exchanged batches with (bounded by the peers it ever knew).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fabric.outbound import Outbound
    from fabric.protocol.mesh import MeshStats

__all__ = ["Metrics", "PeerTraffic"]


@dataclass(slots=True, eq=False)
class PeerTraffic:
    """What this node run exchanged with one peer: batches (ZeroMQ frames), the messages
    in them and their bytes (msgpack payload, without ZeroMQ's framing). Outgoing
    figures here are those of closed channels until :meth:`Metrics.traffic_with` adds
    the open one's; ``refused`` counts sends refused for backpressure, ``unencodable``
    messages dropped because the codec refused them."""

    batches_in: int = 0
    messages_in: int = 0
    bytes_in: int = 0
    batches_out: int = 0
    messages_out: int = 0
    bytes_out: int = 0
    refused: int = 0
    unencodable: int = 0


@dataclass(slots=True, eq=False)
class Metrics(Mapping[str, int]):
    """Counters of one node run, readable as attributes or as a mapping."""

    # Channels: messages still queued for a session that ended (or never came up).
    dropped_on_down: int = 0
    # ProcessTable / Signals / ServiceHost: a message for a process, name or service that
    # does not exist (as Erlang drops it).
    undeliverable: int = 0
    # Reactor: frames and messages that were not valid input (wrong frame count,
    # undecodable, oversized from a stranger, malformed message, bad heartbeat).
    bad_input: int = 0
    # Reactor: messages of a kind this node does not know (PROTOCOL.md section 6).
    unknown_kind: int = 0
    # Reactor: batch items that are not arrays (PROTOCOL.md section 6).
    not_a_message: int = 0
    # ServiceHost: PUB/SUB publishes refused by the socket.
    publish_dropped: int = 0
    # ServiceHost: PUB/SUB messages received on a service topic.
    topic_in: int = 0
    # ServiceHost: publications under a service's topic prefix that did not decode.
    bad_publish: int = 0
    # TransportRefusals: ZeroMQ (CURVE/ZAP) handshakes that failed, at our DEALERs or
    # our ROUTER; and client keys our ZAP handler refused (DECISIONS D18).
    handshake_failed: int = 0
    key_refused: int = 0
    # Mailboxes (DECISIONS D23): sends refused with MailboxFullError (a full local
    # mailbox, or a remote destination reported busy).
    mailbox_refused: int = 0
    # Mailboxes: messages from peers dropped at a full mailbox (their node is told how
    # many in the "room" notice).
    mailbox_dropped: int = 0
    # Mailboxes: group broadcast deliveries dropped at a full mailbox (nobody to tell).
    broadcast_dropped: int = 0
    # Mailboxes: "busy" notices sent to peers, and received from them.
    busy_sent: int = 0
    busy_received: int = 0
    # Mailboxes: messages this node sent that peers reported dropped at a full mailbox.
    dropped_by_peers: int = 0
    # The mesh core's counters, shown under these names (owned by the core).
    mesh_stats: MeshStats | None = None
    # Reactor (in) and Channels (out, at close): per-peer traffic; see the module docstring.
    traffic: dict[str, PeerTraffic] = field(default_factory=dict)

    def received_from(self, peer: str) -> PeerTraffic:
        """``peer``'s entry, created on first use (the reactor adds each batch to it)."""
        entry = self.traffic.get(peer)
        if entry is None:
            entry = self.traffic[peer] = PeerTraffic()
        return entry

    def channel_closed(self, peer: str, out: Outbound) -> None:
        """Fold the counters of ``peer``'s closing channel into its running totals."""
        _add_sent(self.received_from(peer), out)

    def traffic_with(self, peer: str, out: Outbound | None = None) -> PeerTraffic:
        """A copy of ``peer``'s totals, plus the counters of ``out``, its open channel's
        queue if it has one (``node.channels.outbound(peer)``)."""
        entry = self.traffic.get(peer)
        total = PeerTraffic() if entry is None else replace(entry)
        if out is not None:
            _add_sent(total, out)
        return total

    def _mesh_counters(self) -> dict[str, int]:
        stats = self.mesh_stats
        if stats is None:
            return {"bad_mesh_frames": 0, "stray_batches": 0}
        # bad_frames: malformed handshake frames and mesh control messages;
        # unauthenticated_frames: batches from identities without a session.
        return {"bad_mesh_frames": stats.bad_frames,
                "stray_batches": stats.unauthenticated_frames}

    def as_dict(self) -> dict[str, int]:
        """Every counter by name."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("mesh_stats", "traffic")}
        out.update(self._mesh_counters())
        return out

    def __getitem__(self, key: str) -> int:
        return self.as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())


def _add_sent(entry: PeerTraffic, out: Outbound) -> None:
    entry.batches_out += out.sent_frames
    entry.messages_out += out.sent_messages
    entry.bytes_out += out.sent_bytes
    entry.refused += out.refused
    entry.unencodable += out.unencodable
