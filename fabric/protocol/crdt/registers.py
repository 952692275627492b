"""Registers and flags: LWW-Register, MV-Register, Flag.

Theory of operation
-------------------
:class:`LWWRegister` keeps one value with the timestamp of its write and the writing
replica; the merge keeps the larger ``(timestamp, replica)``, so ties between replicas
break the same way everywhere. A write's timestamp is ``max(current + 1, clock)`` where
``clock`` is the ambient wall-clock timestamp (integer microseconds, set by the replicator
runtime) or an explicit ``timestamp=``: a replica's own writes always move forward even if
its clock steps back. Concurrent writes lose silently (the loser is whoever's clock was
behind): use it for values where that is acceptable, or use an MV-Register.

:class:`MVRegister` keeps every concurrent write: a causal CRDT (see
:mod:`fabric.protocol.crdt.dots`) whose store maps dots to values. ``assign(v)`` replaces
the values this replica has seen with ``v`` under a fresh dot; writes it had not seen
survive the merge. ``value`` is the tuple of surviving values (one unless writes were
concurrent), in the order of their encodings (so it does not depend on who wrote them);
the application resolves them by assigning again.

Pruning: the context remembers one entry per replica (node run) that ever wrote, so it
grows with churn. ``prune(dead)`` drops the dead replica's dots from the context and
records it as pruned; merges then drop every dot and value of a pruned replica, so a
stale copy cannot bring it back. Only a replica none of whose values is current can be
pruned (:meth:`MVRegister.replicas` lists those): its dots are then only history, and
nothing is re-dotted, so a write concurrent with the pruning loses nothing (unlike
re-dotting a live value, which would resurrect a value the write overwrote). A dead
run whose value is still current keeps its entry until someone assigns again; that is
bounded by the number of concurrent values. Safe under the conditions of
:mod:`fabric.protocol.crdt.counters` (the replica is dead; every replica holds its final
entries; one replica prunes, though here two pruning alike would also be harmless).

:class:`LWWRegister` needs no pruning: it holds exactly one writer whatever the churn; a
dead run stays its writer until the next assignment (a restarted node writes as its new
run, ``max(current + 1, clock)``, never as the dead one).

:class:`Flag` is a boolean that can only be switched on (merge is ``or``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fabric.errors import LocalProtocolError
from fabric.protocol.crdt.base import Crdt, canonical, check, wire_type
from fabric.protocol.crdt.dots import CausalContext, Dot, dot_from_data, dot_to_data
from fabric.protocol.crdt.replica import (
    Replica,
    current_timestamp,
    replica_from_data,
    resolve_replica,
)

__all__ = ["Flag", "LWWRegister", "MVRegister"]

_NOBODY = Replica("", 0)


@wire_type("flag")
class Flag(Crdt):
    """``Flag().switch_on().value is True``."""

    __slots__ = ("_delta", "_enabled")

    def __init__(self, enabled: bool = False, delta: Flag | None = None) -> None:
        self._enabled = enabled
        self._delta = delta

    @property
    def value(self) -> bool:
        return self._enabled

    @property
    def delta(self) -> Flag | None:
        return self._delta

    def switch_on(self) -> Flag:
        return Flag(True, Flag(True))

    def merge(self, other: Flag) -> Flag:
        return Flag(self._enabled or other._enabled, self._delta)

    def reset_delta(self) -> Flag:
        return self if self._delta is None else Flag(self._enabled)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Flag) and self._enabled == other._enabled

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Flag({self._enabled})"

    def to_data(self) -> Any:
        return self._enabled

    @classmethod
    def from_data(cls, data: Any) -> Flag:
        check(isinstance(data, bool), "flag")
        return cls(data)


@wire_type("lwwregister")
class LWWRegister(Crdt):
    """``LWWRegister().assign("x").value == "x"`` (last writer wins)."""

    __slots__ = ("_delta", "_timestamp", "_value", "_writer")

    def __init__(self, value: Any = None, timestamp: int = 0, writer: Replica = _NOBODY,
                 delta: LWWRegister | None = None) -> None:
        self._value = value
        self._timestamp = timestamp
        self._writer = writer
        self._delta = delta

    @property
    def value(self) -> Any:
        return self._value

    @property
    def timestamp(self) -> int:
        return self._timestamp

    @property
    def writer(self) -> Replica:
        return self._writer

    @property
    def delta(self) -> LWWRegister | None:
        return self._delta

    def assign(self, value: Any, *, timestamp: int | None = None,
               at: Replica | None = None) -> LWWRegister:
        """Write ``value`` at ``max(current + 1, timestamp or the ambient clock)``."""
        me = resolve_replica(at)
        clock = timestamp if timestamp is not None else current_timestamp()
        stamp = max(self._timestamp + 1, clock or 0)
        return LWWRegister(value, stamp, me, LWWRegister(value, stamp, me))

    def merge(self, other: LWWRegister) -> LWWRegister:
        if (other._timestamp, other._writer) > (self._timestamp, self._writer):
            return LWWRegister(other._value, other._timestamp, other._writer, self._delta)
        return self

    def reset_delta(self) -> LWWRegister:
        if self._delta is None:
            return self
        return LWWRegister(self._value, self._timestamp, self._writer)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, LWWRegister) and self._timestamp == other._timestamp
                and self._writer == other._writer and self._value == other._value)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LWWRegister({self._value!r})"

    def to_data(self) -> Any:
        return [self._value, self._timestamp, self._writer.to_data()]

    @classmethod
    def from_data(cls, data: Any) -> LWWRegister:
        check(isinstance(data, list) and len(data) == 3 and type(data[1]) is int,
              "lwwregister")
        return cls(data[0], data[1], replica_from_data(data[2]))


@wire_type("mvregister")
class MVRegister(Crdt):
    """A multi-value register: concurrent writes are all kept (``value`` is a tuple)."""

    __slots__ = ("_context", "_delta", "_entries", "_pruned")

    def __init__(self, entries: Mapping[Dot, Any] | None = None,
                 context: CausalContext | None = None,
                 delta: MVRegister | None = None,
                 pruned: frozenset[Replica] = frozenset()) -> None:
        self._entries: dict[Dot, Any] = dict(entries or {})
        self._context = context if context is not None else CausalContext()
        self._delta = delta
        self._pruned = pruned

    @property
    def value(self) -> tuple[Any, ...]:
        return tuple(canonical(self._entries.values()))

    @property
    def delta(self) -> MVRegister | None:
        return self._delta

    @property
    def pruned(self) -> frozenset[Replica]:
        return self._pruned

    def assign(self, value: Any, *, at: Replica | None = None) -> MVRegister:
        """Replace every value seen here by ``value``."""
        dot = self._context.next_dot(resolve_replica(at))
        step = MVRegister({dot: value}, CausalContext.of(set(self._entries) | {dot}))
        return MVRegister({dot: value}, self._context.add(dot),
                          step if self._delta is None else self._delta.merge(step),
                          self._pruned)

    def merge(self, other: MVRegister) -> MVRegister:
        entries = {d: v for d, v in self._entries.items()
                   if d in other._entries or d not in other._context}
        for d, v in other._entries.items():
            if d not in self._entries and d not in self._context:
                entries[d] = v
        context = self._context.merge(other._context)
        pruned = self._pruned | other._pruned
        if pruned and pruned & context.replicas():
            entries = {d: v for d, v in entries.items() if d[0] not in pruned}
            context = context.without(pruned)
        return MVRegister(entries, context, self._delta, pruned)

    def reset_delta(self) -> MVRegister:
        if self._delta is None:
            return self
        return MVRegister(self._entries, self._context, None, self._pruned)

    # -- pruning --------------------------------------------------------------------------

    def replicas(self) -> set[Replica]:
        """The replicas that can be pruned: in the context, with no current value."""
        return self._context.replicas() - {d[0] for d in self._entries}

    def needs_pruning(self, removed: Replica) -> bool:
        return removed in self._context.replicas()

    def prune(self, removed: Replica, *, at: Replica | None = None) -> MVRegister:
        """Forget ``removed``'s dots (see the module docstring for when this is safe).
        The delta is the whole state.

        Raises:
            LocalProtocolError: ``removed`` is the pruning replica, or still holds a
                current value.
        """
        into = resolve_replica(at)
        if removed == into:
            raise LocalProtocolError(f"replica {into} cannot prune itself")
        if any(d[0] == removed for d in self._entries):
            raise LocalProtocolError(f"replica {removed} still holds a current value")
        state = MVRegister(self._entries, self._context.without((removed,)), None,
                           self._pruned | {removed})
        return MVRegister(state._entries, state._context, state, state._pruned)

    # -- values ---------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, MVRegister) and self._entries == other._entries
                and self._context == other._context and self._pruned == other._pruned)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MVRegister({self.value!r})"

    def to_data(self) -> Any:
        return [canonical([dot_to_data(d), v] for d, v in self._entries.items()),
                self._context.to_data(), canonical(r.to_data() for r in self._pruned)]

    @classmethod
    def from_data(cls, data: Any) -> MVRegister:
        # Two fields: written before pruning existed (durable rows keep old forms).
        check(isinstance(data, list) and len(data) in (2, 3), "mvregister")
        entries: dict[Dot, Any] = {}
        for row in data[0]:
            check(isinstance(row, list) and len(row) == 2, "mvregister entry")
            entries[dot_from_data(row[0])] = row[1]
        context = CausalContext.from_data(data[1])
        check(all(d in context for d in entries), "mvregister dot outside its context")
        pruned: frozenset[Replica] = frozenset()
        if len(data) == 3:
            check(isinstance(data[2], list), "mvregister pruned")
            pruned = frozenset(replica_from_data(r) for r in data[2])
        return cls(entries, context, None, pruned)
