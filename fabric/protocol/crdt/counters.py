"""Counters: G-Counter (grow only) and PN-Counter (up and down), with pruning.

Theory of operation
-------------------
A :class:`GCounter` maps each :class:`Replica` to the total it has added; the value is
the sum, the merge takes the per-replica maximum (each slot only grows, and only its owner
writes it, so the maximum is the latest). An increment's delta is the one changed slot.
A :class:`PNCounter` is two G-Counters, increments and decrements; value = P - N.

Pruning (after Akka Distributed Data): a replica that is gone for good (its node was
removed, or it restarted with a new creation) would keep its slot forever. ``prune(dead)``,
called **by one live replica** (the ``at=`` / ambient replica, the "collapse-into" owner),
adds the dead slot to its own slot, deletes the dead slot and records ``dead`` in the
``pruned`` set. Merges drop every slot of a pruned replica, so a stale copy that still
holds the dead slot cannot bring it back and count it twice.

When pruning is safe: (1) the dead replica will never write again (a replica is a node
*run*, so a restart does not revive it); (2) the pruning replica already holds the dead
replica's final slot, i.e. every live replica has merged it (Akka waits until all nodes
have seen a "pruning initialized" marker); (3) only one replica prunes a given dead
replica (two would each add its count). Under those conditions the value is unchanged and
stays unchanged under every later merge. The ``pruned`` set itself is kept forever: one
``Replica`` per departed node run, not per key entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fabric.errors import LocalProtocolError
from fabric.protocol.crdt.base import Crdt, canonical, check, wire_type
from fabric.protocol.crdt.replica import Replica, replica_from_data, resolve_replica

__all__ = ["GCounter", "PNCounter"]


def _pruned_from_data(data: Any) -> frozenset[Replica]:
    check(isinstance(data, list), "pruned set")
    return frozenset(replica_from_data(r) for r in data)


def _check_prunable(removed: Replica, into: Replica) -> None:
    if removed == into:
        raise LocalProtocolError(f"replica {into} cannot prune itself")


@wire_type("gcounter")
class GCounter(Crdt):
    """A grow-only counter. ``GCounter().increment(5).value == 5``."""

    __slots__ = ("_delta", "_entries", "_pruned")

    def __init__(self, entries: Mapping[Replica, int] | None = None,
                 pruned: frozenset[Replica] = frozenset(),
                 delta: GCounter | None = None) -> None:
        self._entries: dict[Replica, int] = dict(entries or {})
        self._pruned = pruned
        self._delta = delta

    @classmethod
    def _owning(cls, entries: dict[Replica, int], pruned: frozenset[Replica],
                delta: GCounter | None) -> GCounter:
        """A value that takes ``entries`` without copying it (nothing else may hold it)."""
        c = cls.__new__(cls)
        c._entries, c._pruned, c._delta = entries, pruned, delta
        return c

    # -- reading --------------------------------------------------------------------------

    @property
    def value(self) -> int:
        return sum(self._entries.values())

    @property
    def entries(self) -> dict[Replica, int]:
        """Replica -> its total (a copy)."""
        return dict(self._entries)

    @property
    def pruned(self) -> frozenset[Replica]:
        return self._pruned

    @property
    def delta(self) -> GCounter | None:
        return self._delta

    # -- writing --------------------------------------------------------------------------

    def increment(self, n: int = 1, *, at: Replica | None = None) -> GCounter:
        """Add ``n >= 0`` in the name of the writing replica."""
        if n < 0:
            raise LocalProtocolError("a GCounter cannot decrease (use a PNCounter)")
        me = resolve_replica(at)
        total = self._entries.get(me, 0) + n
        entries = dict(self._entries)
        entries[me] = total
        step = GCounter({me: total})
        return GCounter._owning(entries, self._pruned,
                                step if self._delta is None else self._delta.merge(step))

    def merge(self, other: GCounter) -> GCounter:
        entries = dict(self._entries)
        for replica, count in other._entries.items():
            if count > entries.get(replica, -1):
                entries[replica] = count
        pruned = self._pruned | other._pruned
        for replica in pruned:
            entries.pop(replica, None)
        return GCounter._owning(entries, pruned, self._delta)

    def reset_delta(self) -> GCounter:
        if self._delta is None:
            return self
        return GCounter._owning(self._entries, self._pruned, None)  # never mutated: shared

    # -- pruning --------------------------------------------------------------------------

    def replicas(self) -> set[Replica]:
        """Every replica with entries here (what pruning looks at)."""
        return set(self._entries)

    def needs_pruning(self, removed: Replica) -> bool:
        return removed in self._entries

    def prune(self, removed: Replica, *, at: Replica | None = None) -> GCounter:
        """Fold ``removed``'s slot into the writing replica's (see the module docstring
        for when this is safe). The delta is the whole new state."""
        into = resolve_replica(at)
        _check_prunable(removed, into)
        entries = dict(self._entries)
        moved = entries.pop(removed, 0)
        if moved:
            entries[into] = entries.get(into, 0) + moved
        result = GCounter(entries, self._pruned | {removed})
        return GCounter(entries, result._pruned, result)

    # -- values ---------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, GCounter) and self._entries == other._entries
                and self._pruned == other._pruned)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"GCounter({self.value})"

    def to_data(self) -> Any:
        return [canonical([r.node, r.creation, n] for r, n in self._entries.items()),
                canonical(r.to_data() for r in self._pruned)]

    @classmethod
    def from_data(cls, data: Any) -> GCounter:
        check(isinstance(data, list) and len(data) == 2, "gcounter")
        entries: dict[Replica, int] = {}
        for row in data[0]:
            check(isinstance(row, list) and len(row) == 3 and type(row[2]) is int
                  and row[2] >= 0, "gcounter entry")
            entries[replica_from_data(row[:2])] = row[2]
        return cls(entries, _pruned_from_data(data[1]))


@wire_type("pncounter")
class PNCounter(Crdt):
    """A counter that goes up and down: ``PNCounter().increment(5).decrement(2).value == 3``."""

    __slots__ = ("_delta", "_n", "_p")

    def __init__(self, p: GCounter | None = None, n: GCounter | None = None,
                 delta: PNCounter | None = None) -> None:
        self._p = p if p is not None else GCounter()
        self._n = n if n is not None else GCounter()
        self._delta = delta

    @property
    def value(self) -> int:
        return self._p.value - self._n.value

    @property
    def increments(self) -> GCounter:
        return self._p

    @property
    def decrements(self) -> GCounter:
        return self._n

    @property
    def delta(self) -> PNCounter | None:
        return self._delta

    def _with(self, p: GCounter, n: GCounter, step: PNCounter) -> PNCounter:
        return PNCounter(p.reset_delta(), n.reset_delta(),
                         step if self._delta is None else self._delta.merge(step))

    def increment(self, n: int = 1, *, at: Replica | None = None) -> PNCounter:
        """Add ``n`` (a negative ``n`` decrements)."""
        if n < 0:
            return self.decrement(-n, at=at)
        p = self._p.increment(n, at=at)
        assert p.delta is not None
        return self._with(p, self._n, PNCounter(p.delta, GCounter()))

    def decrement(self, n: int = 1, *, at: Replica | None = None) -> PNCounter:
        """Subtract ``n`` (a negative ``n`` increments)."""
        if n < 0:
            return self.increment(-n, at=at)
        d = self._n.increment(n, at=at)
        assert d.delta is not None
        return self._with(self._p, d, PNCounter(GCounter(), d.delta))

    def merge(self, other: PNCounter) -> PNCounter:
        return PNCounter(self._p.merge(other._p), self._n.merge(other._n), self._delta)

    def reset_delta(self) -> PNCounter:
        return self if self._delta is None else PNCounter(self._p, self._n)

    def replicas(self) -> set[Replica]:
        return self._p.replicas() | self._n.replicas()

    def needs_pruning(self, removed: Replica) -> bool:
        return self._p.needs_pruning(removed) or self._n.needs_pruning(removed)

    def prune(self, removed: Replica, *, at: Replica | None = None) -> PNCounter:
        """Prune both halves (see :meth:`GCounter.prune`); the delta is the whole state."""
        p = self._p.prune(removed, at=at).reset_delta()
        n = self._n.prune(removed, at=at).reset_delta()
        return PNCounter(p, n, PNCounter(p, n))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PNCounter) and self._p == other._p and self._n == other._n

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PNCounter({self.value})"

    def to_data(self) -> Any:
        return [self._p.to_data(), self._n.to_data()]

    @classmethod
    def from_data(cls, data: Any) -> PNCounter:
        check(isinstance(data, list) and len(data) == 2, "pncounter")
        return cls(GCounter.from_data(data[0]), GCounter.from_data(data[1]))
