"""Sets: G-Set (grow only) and the add-wins observed-remove set (OR-Set), with pruning.

Theory of operation
-------------------
A :class:`GSet` is a set under union; its delta is the set of elements added.

An :class:`ORSet` is a causal CRDT (see :mod:`fabric.protocol.crdt.dots`): each present
element maps to the dots of the adds that put it there, and the causal context records
every dot seen. ``add(e)`` mints a fresh dot for the writing replica and supersedes the
element's older dots; its delta is ``({e: {new}}, {new} + old dots)``. ``remove(e)``
forgets e's dots; its delta is ``({}, e's dots)``: "I saw these adds and removed them".
The join keeps a dot that both sides have, or that one side has and the other never saw,
so a remove only cancels the adds it observed, and an add concurrent with a remove wins.
No tombstone elements are kept; removed elements leave only dots in the context, and a
replica's context is a version vector (one integer per replica) once its deltas are
contiguous.

Pruning (see :mod:`fabric.protocol.crdt.counters` for the safety conditions, which are the
same): ``prune(dead)`` by one live replica re-dots every element held by a dot of ``dead``
with a fresh dot of its own, drops ``dead`` from the context and records it as pruned;
merges drop every dot of a pruned replica. If a remove of such an element by another
replica is concurrent with the pruning, the element survives (the remove observed the old
dot, not the new one): prune only keys whose replicas agree on the dead replica's dots.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from fabric.errors import LocalProtocolError
from fabric.protocol.crdt.base import Crdt, canonical, check, wire_type
from fabric.protocol.crdt.dots import (
    CausalContext,
    Dot,
    dot_from_data,
    dot_to_data,
    join_dots,
)
from fabric.protocol.crdt.replica import Replica, replica_from_data, resolve_replica

__all__ = ["GSet", "ORSet"]

T = TypeVar("T", bound=Hashable)
# Merge strategy switch (documented so tests can force either path): a context with at
# most this many dots (a delta's) is merged by spelling its dots out and testing each
# element with C-level set operations; a larger one (a full state) dot by dot.
SMALL_CONTEXT = 4096


def _element(data: Any) -> Any:
    try:
        hash(data)
    except TypeError:
        check(False, f"unhashable set element {data!r:.60}")
    return data


@wire_type("gset")
class GSet(Crdt, Generic[T]):
    """A grow-only set: ``GSet().add("a").value == frozenset({"a"})``."""

    __slots__ = ("_delta", "_elements")

    def __init__(self, elements: Iterable[T] = (), delta: GSet[T] | None = None) -> None:
        self._elements: frozenset[T] = frozenset(elements)
        self._delta = delta

    @property
    def value(self) -> frozenset[T]:
        return self._elements

    @property
    def delta(self) -> GSet[T] | None:
        return self._delta

    def __contains__(self, element: object) -> bool:
        return element in self._elements

    def __len__(self) -> int:
        return len(self._elements)

    def add(self, element: T) -> GSet[T]:
        step = GSet((element,))
        return GSet(self._elements | {element},
                    step if self._delta is None else self._delta.merge(step))

    def merge(self, other: GSet[T]) -> GSet[T]:
        return GSet(self._elements | other._elements, self._delta)

    def reset_delta(self) -> GSet[T]:
        return self if self._delta is None else GSet(self._elements)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GSet) and self._elements == other._elements

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"GSet({set(self._elements)!r})"

    def to_data(self) -> Any:
        return canonical(self._elements)

    @classmethod
    def from_data(cls, data: Any) -> GSet[Any]:
        check(isinstance(data, list), "gset")
        return cls(_element(e) for e in data)


@wire_type("orset")
class ORSet(Crdt, Generic[T]):
    """An add-wins observed-remove set: ``ORSet().add("a").remove("a").value == frozenset()``."""

    __slots__ = ("_context", "_delta", "_entries", "_pruned")

    def __init__(self, entries: Mapping[T, frozenset[Dot]] | None = None,
                 context: CausalContext | None = None,
                 pruned: frozenset[Replica] = frozenset(),
                 delta: ORSet[T] | None = None) -> None:
        self._entries: dict[T, frozenset[Dot]] = dict(entries or {})
        self._context = context if context is not None else CausalContext()
        self._pruned = pruned
        self._delta = delta

    @classmethod
    def _owning(cls, entries: dict[T, frozenset[Dot]], context: CausalContext,
                pruned: frozenset[Replica], delta: ORSet[T] | None) -> ORSet[T]:
        """A value that takes ``entries`` without copying it (nothing else may hold it):
        operations build their new dict once instead of twice."""
        s: ORSet[T] = cls.__new__(cls)
        s._entries, s._context, s._pruned, s._delta = entries, context, pruned, delta
        return s

    # -- reading --------------------------------------------------------------------------

    @property
    def value(self) -> frozenset[T]:
        return frozenset(self._entries)

    @property
    def delta(self) -> ORSet[T] | None:
        return self._delta

    @property
    def context(self) -> CausalContext:
        return self._context

    @property
    def pruned(self) -> frozenset[Replica]:
        return self._pruned

    def dots(self, element: T) -> frozenset[Dot]:
        """The dots that keep ``element`` present (empty if absent)."""
        return self._entries.get(element, frozenset())

    def __contains__(self, element: object) -> bool:
        return element in self._entries

    def __iter__(self) -> Iterator[T]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    # -- writing --------------------------------------------------------------------------

    def _then(self, entries: dict[T, frozenset[Dot]], context: CausalContext,
              step: ORSet[T]) -> ORSet[T]:
        return ORSet._owning(entries, context, self._pruned,
                             step if self._delta is None else self._delta.merge(step))

    def add(self, element: T, *, at: Replica | None = None) -> ORSet[T]:
        """Add ``element`` in the name of the writing replica (wins over concurrent removes)."""
        dot = self._context.next_dot(resolve_replica(at))
        new = frozenset((dot,))
        old = self._entries.get(element, frozenset())
        entries = dict(self._entries)
        entries[element] = new
        return self._then(entries, self._context.add(dot),
                          ORSet({element: new}, CausalContext.of(old | new)))

    def add_all(self, elements: Iterable[T], *, at: Replica | None = None) -> ORSet[T]:
        """Add several elements at the cost of one copy."""
        me = resolve_replica(at)
        entries = dict(self._entries)
        context = self._context
        step_entries: dict[T, frozenset[Dot]] = {}
        seen: set[Dot] = set()
        for element in elements:
            dot = context.next_dot(me)
            context = context.add(dot)
            new = frozenset((dot,))
            seen |= entries.get(element, frozenset()) | new
            entries[element] = step_entries[element] = new
        if not step_entries:
            return self
        return self._then(entries, context, ORSet(step_entries, CausalContext.of(seen)))

    def remove(self, element: T) -> ORSet[T]:
        """Remove ``element`` as observed here (a no-op if absent)."""
        old = self._entries.get(element)
        if old is None:
            return self
        entries = dict(self._entries)
        del entries[element]
        return self._then(entries, self._context, ORSet({}, CausalContext.of(old)))

    def clear(self) -> ORSet[T]:
        """Remove every element observed here."""
        if not self._entries:
            return self
        seen = frozenset().union(*self._entries.values())
        return self._then({}, self._context, ORSet({}, CausalContext.of(seen)))

    def merge(self, other: ORSet[T]) -> ORSet[T]:
        mine, theirs = self._context, other._context
        entries = self._join_mine(other)
        self._join_theirs(other, entries)
        context = mine.merge(theirs)
        pruned = self._pruned | other._pruned
        if pruned and pruned & context.replicas():
            entries = {e: kept for e, ds in entries.items()
                       if (kept := frozenset(d for d in ds if d[0] not in pruned))}
            context = context.without(pruned)
        return ORSet._owning(entries, context, pruned, self._delta)

    def _join_mine(self, other: ORSet[T]) -> dict[T, frozenset[Dot]]:
        """This set's elements that ``other`` does not have, minus the dots ``other``
        has seen (removed there); the elements both have are left to _join_theirs."""
        theirs = other._context
        if theirs.dot_count() <= SMALL_CONTEXT:
            # A delta: spell its dots out; only elements holding one of them change,
            # and C-level set tests find them.
            covered = theirs.dot_set()
            entries = dict(self._entries)
            if covered:
                for element, dots in self._entries.items():
                    if not dots.isdisjoint(covered) and element not in other._entries:
                        keep = dots - covered
                        if keep:
                            entries[element] = keep
                        else:
                            del entries[element]
            return entries
        entries = {}
        for element, dots in self._entries.items():
            if element not in other._entries:
                keep = frozenset(d for d in dots if d not in theirs)
                if keep:
                    entries[element] = keep
        return entries

    def _join_theirs(self, other: ORSet[T], entries: dict[T, frozenset[Dot]]) -> None:
        """Set or drop, in ``entries``, every element ``other`` has."""
        mine, theirs = self._context, other._context
        for element, dots in other._entries.items():
            mine_dots = self._entries.get(element)
            if mine_dots is None:
                keep = frozenset(d for d in dots if d not in mine)
            else:
                keep = join_dots(mine_dots, mine, dots, theirs)
            if keep:
                entries[element] = keep
            else:
                entries.pop(element, None)

    def reset_delta(self) -> ORSet[T]:
        if self._delta is None:
            return self
        # Sharing the dict is safe: values are never mutated after construction.
        return ORSet._owning(self._entries, self._context, self._pruned, None)

    # -- anti-entropy of one large set ----------------------------------------------------

    def seen(self) -> Any:
        """What this replica has seen, for :meth:`missing_for` at a peer: its causal
        context and pruned replicas, as plain data (small: a version vector)."""
        return [self._context.to_data(), canonical(r.to_data() for r in self._pruned)]

    def missing_for(self, seen: Any) -> ORSet[T]:
        """The part of this set a replica that has ``seen`` (:meth:`seen`) lacks: merged
        there, it gives what merging the whole set would.

        It holds the dots the peer has not seen, and in its context those dots plus every
        dot both have seen that is no longer live here (removed), so the peer drops them;
        the live dots the peer has seen stay out of the context, so the peer keeps them.
        Its size follows what changed plus the removes both have seen (the peer may still
        hold those dots: it cannot be told apart here), not the live set.
        It is a valid state below this one, so merging it anywhere is safe whatever the
        peer holds by then. The whole set when that would not be smaller.

        Raises:
            RemoteProtocolError: ``seen`` is malformed.
        """
        check(isinstance(seen, list) and len(seen) == 2, "orset seen")
        theirs = CausalContext.from_data(seen[0])
        check(isinstance(seen[1], list), "orset seen pruned")
        their_pruned = frozenset(replica_from_data(r) for r in seen[1])
        entries: dict[T, frozenset[Dot]] = {}
        live: set[Dot] = set()
        for element, dots in self._entries.items():
            live |= dots
            new = frozenset(d for d in dots if d not in theirs)
            if new:
                entries[element] = new
        context = {d for d in self._context.dot_set() if d not in live or d not in theirs}
        if len(context) >= len(live):
            return self.reset_delta()
        pruned = self._pruned if self._pruned - their_pruned else frozenset()
        return ORSet._owning(entries, CausalContext.of(context), pruned, None)

    # -- pruning --------------------------------------------------------------------------

    def replicas(self) -> set[Replica]:
        """Every replica with dots here (what pruning looks at)."""
        return self._context.replicas()

    def needs_pruning(self, removed: Replica) -> bool:
        return removed in self._context.replicas()

    def prune(self, removed: Replica, *, at: Replica | None = None) -> ORSet[T]:
        """Re-dot ``removed``'s elements as the writing replica's and forget ``removed``
        (see the module docstring for when this is safe). The delta is the whole state."""
        into = resolve_replica(at)
        if removed == into:
            raise LocalProtocolError(f"replica {into} cannot prune itself")
        context = self._context.without((removed,))
        entries: dict[T, frozenset[Dot]] = {}
        for element, dots in self._entries.items():
            if any(d[0] == removed for d in dots):
                dot = context.next_dot(into)
                context = context.add(dot)
                dots = frozenset(d for d in dots if d[0] != removed) | {dot}
            entries[element] = dots
        state: ORSet[T] = ORSet(entries, context, self._pruned | {removed})
        return ORSet(entries, context, state._pruned, state)

    # -- values ---------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ORSet) and self._entries == other._entries
                and self._context == other._context and self._pruned == other._pruned)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ORSet({set(self._entries)!r})"

    def to_data(self) -> Any:
        return [canonical([e, canonical(dot_to_data(d) for d in dots)]
                          for e, dots in self._entries.items()),
                self._context.to_data(), canonical(r.to_data() for r in self._pruned)]

    @classmethod
    def from_data(cls, data: Any) -> ORSet[Any]:
        check(isinstance(data, list) and len(data) == 3, "orset")
        entries: dict[Any, frozenset[Dot]] = {}
        for row in data[0]:
            check(isinstance(row, list) and len(row) == 2 and isinstance(row[1], list),
                  "orset entry")
            entries[_element(row[0])] = frozenset(dot_from_data(d) for d in row[1])
        context = CausalContext.from_data(data[1])
        check(all(d in context for ds in entries.values() for d in ds),
              "orset dot outside its context")
        check(isinstance(data[2], list), "orset pruned")
        return cls(entries, context, frozenset(replica_from_data(r) for r in data[2]))
