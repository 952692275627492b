"""The events services deliver to processes: frozen dataclasses, one per kind.

Theory of operation
-------------------
A service tells a local process about a change by putting an event in its mailbox (a
``Deliver`` effect): a process-group monitor sees :class:`PgJoin` and :class:`PgLeave`,
a leadership candidate :class:`LeaderElected` and :class:`LeaderLost`, the loser of a
global name after a heal :class:`GlobalNameConflict`, a subscriber to replicated data
:class:`DataChanged` and :class:`DataDeleted`. They join the events fabric already
delivered as dataclasses (``Down``, ``Exit``, ``NodeUp``, ``NodeDown``), so a process
matches every event the same way, by type::

    msg = await proc.receive(lambda m: type(m) is PgJoin and m.token == token)
    match msg:
        case LeaderElected(group=g, leader=pid, term=term): ...

Events are created by the sans-I/O cores and delivered to local processes only: they
never cross the wire (a process that forwards one to another node sends its fields).

In fabric 0.1 these events were tagged tuples, Erlang's shape
(``("pg_join", token, scope, group, pids)``). For one release (0.2) an event still reads as
that tuple, with a ``DeprecationWarning``: indexing and slicing (``m[0] == "pg_join"``),
unpacking (``kind, token, *rest = m``), ``len(m)`` and ``m == (...)``. What cannot be
kept is ``type(m) is tuple`` / ``isinstance(m, tuple)``: code that checks for a tuple
before indexing must match on the event's type instead (DECISIONS D25).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

from fabric.types import Pid, Ref

__all__ = ["DataChanged", "DataDeleted", "GlobalNameConflict", "LeaderElected", "LeaderLost",
           "PgJoin", "PgLeave", "ServiceEvent"]

T = TypeVar("T")


class ServiceEvent:
    """Base of the service events: the deprecated view as the old tagged tuple."""

    __slots__ = ()
    tag: ClassVar[str]  # the old tuple's first element, Erlang's atom

    def as_tuple(self) -> tuple[Any, ...]:
        """The event as the tagged tuple it used to be (``(tag, *fields)``)."""
        return (self.tag, *(getattr(self, f.name) for f in fields(self)))  # type: ignore[arg-type]

    def _old(self) -> tuple[Any, ...]:
        warnings.warn(
            f"{type(self).__name__} is a dataclass now: read its fields by name, match on "
            f"its type; reading it as the tuple ({self.tag!r}, ...) goes in fabric 0.3",
            DeprecationWarning, stacklevel=3)
        return self.as_tuple()

    def __getitem__(self, index: Any) -> Any:
        return self._old()[index]

    def __iter__(self) -> Any:
        return iter(self._old())

    def __len__(self) -> int:
        return len(self._old())

    def __bool__(self) -> bool:
        return True  # an event is always true (without this, ``if event:`` asks __len__)


def _tuple_equality(cls: type[T]) -> type[T]:
    """Let ``event == (tag, ...)`` still hold for one release (with the warning)."""
    generated: Any = cls.__eq__

    def __eq__(self: ServiceEvent, other: object) -> bool:
        if type(other) is tuple:
            return self._old() == other
        result: bool = generated(self, other)
        return result

    setattr(cls, "__eq__", __eq__)  # noqa: B010  (a method replaced after @dataclass)
    return cls


@_tuple_equality
@dataclass(frozen=True, slots=True)
class PgJoin(ServiceEvent):
    """Members joined a watched group (``node.pg.monitor`` / ``monitor_scope``)."""

    tag: ClassVar[str] = "pg_join"
    token: Ref  # the monitor's token, as returned by monitor()
    scope: str
    group: Any
    pids: list[Pid]


@_tuple_equality
@dataclass(frozen=True, slots=True)
class PgLeave(ServiceEvent):
    """Members left a watched group: they left, exited, or their node went down."""

    tag: ClassVar[str] = "pg_leave"
    token: Ref
    scope: str
    group: Any
    pids: list[Pid]


@_tuple_equality
@dataclass(frozen=True, slots=True)
class LeaderElected(ServiceEvent):
    """To every local candidate of ``group`` whenever its leader or term changes (and at
    ``stand``). Terms only grow: use them as fencing tokens."""

    tag: ClassVar[str] = "leader_elected"
    group: Any
    leader: Pid
    term: int


@_tuple_equality
@dataclass(frozen=True, slots=True)
class LeaderLost(ServiceEvent):
    """To a leader deposed after a heal (another leader of ``group`` won)."""

    tag: ClassVar[str] = "leader_lost"
    group: Any
    term: int


@_tuple_equality
@dataclass(frozen=True, slots=True)
class GlobalNameConflict(ServiceEvent):
    """To the owner of a global name that lost it after a heal (resolver ``notify``
    methods); Erlang's ``{global_name_conflict, Name, OtherPid}``."""

    tag: ClassVar[str] = "global_name_conflict"
    name: Any
    other: Pid


@_tuple_equality
@dataclass(frozen=True, slots=True)
class DataChanged(ServiceEvent):
    """To a subscriber of a replicated key after every change of its value, whatever
    caused it (``Replicator.subscribe``; Akka's ``Changed``)."""

    tag: ClassVar[str] = "ddata_changed"
    key: str  # the key's name
    value: Any  # the new value, a CRDT


@_tuple_equality
@dataclass(frozen=True, slots=True)
class DataDeleted(ServiceEvent):
    """To a subscriber of a replicated key that was deleted (for good)."""

    tag: ClassVar[str] = "ddata_deleted"
    key: str
