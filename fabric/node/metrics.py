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
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fabric.protocol.mesh import MeshStats

__all__ = ["Metrics"]


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
    # The mesh core's counters, shown under these names (owned by the core).
    mesh_stats: MeshStats | None = None

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
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "mesh_stats"}
        out.update(self._mesh_counters())
        return out

    def __getitem__(self, key: str) -> int:
        return self.as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())
