"""Dots and causal contexts: the bookkeeping under OR-Sets and MV-Registers.

Theory of operation
-------------------
A *dot* ``(replica, n)`` names the n-th event of a replica (a :class:`Replica` is a node
run, so a restarted node starts a fresh dot sequence). A causal CRDT is a *dot store*
(which dots are live, and what they carry) plus a :class:`CausalContext`: every dot the
replica has *seen*, live or not. A dot that is in the context but not in the store was
removed; this is how a remove is told apart from an add that has not arrived yet, without
keeping tombstone elements.

The context is kept compact: a version vector ``vv`` (replica -> n: dots 1..n all seen)
plus a *cloud* of seen dots beyond the vector's contiguous prefix. Deltas have clouds
(a delta's context holds just the dots it talks about), full states of a replica usually
do not. :meth:`CausalContext.merge` is set union followed by compaction, which moves a
cloud dot into the vector once the gap before it is filled; the compact form is canonical,
so two contexts holding the same dots compare equal.

The join of two dot stores (Almeida et al., "Delta state replicated data types"): a dot
survives if both stores have it, or one store has it and the other's context has never
seen it (if the other side saw it and does not have it, it was removed there).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fabric.protocol.crdt.base import canonical, check
from fabric.protocol.crdt.replica import Replica, replica_from_data

__all__ = ["CausalContext", "Dot", "dot_from_data", "dot_to_data", "join_dots"]

Dot = tuple[Replica, int]


def dot_to_data(dot: Dot) -> list[Any]:
    return [dot[0].node, dot[0].creation, dot[1]]


def dot_from_data(data: Any) -> Dot:
    check(isinstance(data, list) and len(data) == 3 and type(data[2]) is int and data[2] > 0,
          "dot")
    return (replica_from_data(data[:2]), data[2])


class CausalContext:
    """The set of dots a replica has seen, as a version vector plus a cloud."""

    __slots__ = ("_cloud", "_vv")

    def __init__(self, vv: Mapping[Replica, int] | None = None,
                 cloud: Iterable[Dot] = ()) -> None:
        self._vv: dict[Replica, int] = {r: n for r, n in (vv or {}).items() if n > 0}
        self._cloud: frozenset[Dot] = frozenset(cloud)
        if self._cloud:
            self._compact()

    @classmethod
    def of(cls, dots: Iterable[Dot]) -> CausalContext:
        """The context holding exactly ``dots``."""
        return cls(None, dots)

    def _compact(self) -> None:
        vv = self._vv
        rest: list[Dot] = []
        for dot in sorted(self._cloud, key=lambda d: (d[0], d[1])):
            replica, n = dot
            seen = vv.get(replica, 0)
            if n == seen + 1:
                vv[replica] = n
            elif n > seen:
                rest.append(dot)
        self._cloud = frozenset(rest)

    # -- reading --------------------------------------------------------------------------

    def __contains__(self, dot: Dot) -> bool:
        return dot[1] <= self._vv.get(dot[0], 0) or dot in self._cloud

    @property
    def vv(self) -> dict[Replica, int]:
        return dict(self._vv)

    @property
    def cloud(self) -> frozenset[Dot]:
        return self._cloud

    def replicas(self) -> set[Replica]:
        return set(self._vv) | {d[0] for d in self._cloud}

    def dot_count(self) -> int:
        """How many dots this context holds."""
        return sum(self._vv.values()) + len(self._cloud)

    def dot_set(self) -> set[Dot]:
        """Every dot, spelled out (for small contexts: deltas)."""
        out = set(self._cloud)
        for replica, n in self._vv.items():
            out.update((replica, i) for i in range(1, n + 1))
        return out

    def next_dot(self, replica: Replica) -> Dot:
        """A dot of ``replica`` that this context has not seen (its next event)."""
        top = self._vv.get(replica, 0)
        for r, n in self._cloud:
            if r == replica and n > top:
                top = n
        return (replica, top + 1)

    # -- combining ------------------------------------------------------------------------

    def add(self, dot: Dot) -> CausalContext:
        replica, n = dot
        if n == self._vv.get(replica, 0) + 1 and not self._cloud:  # the common local case
            vv = dict(self._vv)
            vv[replica] = n
            return CausalContext(vv)
        return CausalContext(self._vv, self._cloud | {dot})

    def merge(self, other: CausalContext) -> CausalContext:
        vv = dict(self._vv)
        for replica, n in other._vv.items():
            if n > vv.get(replica, 0):
                vv[replica] = n
        return CausalContext(vv, self._cloud | other._cloud)

    def without(self, replicas: Iterable[Replica]) -> CausalContext:
        """This context minus every dot of ``replicas`` (pruning)."""
        drop = set(replicas)
        if not drop:
            return self
        return CausalContext({r: n for r, n in self._vv.items() if r not in drop},
                             (d for d in self._cloud if d[0] not in drop))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, CausalContext) and self._vv == other._vv
                and self._cloud == other._cloud)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CausalContext({self._vv}, {set(self._cloud)})"

    def to_data(self) -> list[Any]:
        return [canonical([r.node, r.creation, n] for r, n in self._vv.items()),
                canonical(dot_to_data(d) for d in self._cloud)]

    @classmethod
    def from_data(cls, data: Any) -> CausalContext:
        check(isinstance(data, list) and len(data) == 2, "causal context")
        vv = dict(dot_from_data(row) for row in data[0])
        return cls(vv, (dot_from_data(d) for d in data[1]))


def join_dots(mine: frozenset[Dot], my_context: CausalContext,
              theirs: frozenset[Dot], their_context: CausalContext) -> frozenset[Dot]:
    """The dots of one element after a join (see the module docstring)."""
    if mine == theirs:
        return mine
    return (mine & theirs) | frozenset(d for d in mine if d not in their_context) \
        | frozenset(d for d in theirs if d not in my_context)
