"""Replica identities and the ambient "who is writing" context of CRDT operations.

Theory of operation
-------------------
Every CRDT entry (a counter slot, a dot of an OR-Set) is owned by a :class:`Replica`: a
node name *and* that node run's creation. A node that restarts gets a new creation, so it
owns fresh entries and never continues (or clobbers) a dead incarnation's counters or
dots; the dead incarnation's entries stay valid history until they are pruned.

Operations that write (``increment``, ``add``, ``assign``) need the writing replica. It is
either passed as ``at=`` or taken from the ambient :func:`acting_as` context, which the
replicator sets around the function given to ``update``; that is what lets user code say
``GCounter().increment(5)``. Outside both, a write raises ``LocalProtocolError``: guessing
an identity would let two nodes write the same entry and silently lose increments.

The context also carries an optional wall-clock ``timestamp`` (integer microseconds) for
last-writer-wins registers; the sans-I/O layer never reads a clock itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NamedTuple

from fabric.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["Replica", "acting_as", "current_timestamp", "replica_from_data", "resolve_replica"]


class Replica(NamedTuple):
    """A writer of CRDT entries: one run (``creation``) of one node (``node``)."""

    node: str
    creation: int

    def to_data(self) -> list[Any]:
        return [self.node, self.creation]


def replica_from_data(data: Any) -> Replica:
    """Decode ``[node, creation]``.

    Raises:
        RemoteProtocolError: malformed.
    """
    if (not isinstance(data, (list, tuple)) or len(data) != 2 or not isinstance(data[0], str)
            or type(data[1]) is not int):
        raise RemoteProtocolError(f"bad replica {data!r}")
    return Replica(data[0], data[1])


@dataclass(frozen=True, slots=True)
class _Context:
    replica: Replica
    timestamp: int | None


_context: ContextVar[_Context | None] = ContextVar("fabric_crdt_context", default=None)


@contextmanager
def acting_as(replica: Replica, timestamp: int | None = None) -> Iterator[None]:
    """Within the block, CRDT writes are made by ``replica`` (and LWW registers may use
    ``timestamp``, integer microseconds of a wall clock)."""
    token = _context.set(_Context(replica, timestamp))
    try:
        yield
    finally:
        _context.reset(token)


def resolve_replica(at: Replica | None) -> Replica:
    """``at`` if given, else the ambient replica.

    Raises:
        LocalProtocolError: neither is set.
    """
    if at is not None:
        return at
    ctx = _context.get()
    if ctx is None:
        raise LocalProtocolError(
            "no writing replica: call inside Replicator.update, within "
            "acting_as(Replica(node, creation)), or pass at=")
    return ctx.replica


def current_timestamp() -> int | None:
    """The ambient wall-clock timestamp, if the context has one."""
    ctx = _context.get()
    return None if ctx is None else ctx.timestamp
