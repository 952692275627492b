"""What every replicated data type has in common: merge, delta, wire form.

Theory of operation
-------------------
A CRDT here is an **immutable value** in a join-semilattice: ``merge`` is the least upper
bound (commutative, associative, idempotent), so replicas that have seen the same updates,
in any order and any number of times, hold equal values. Operations return a new value.

Delta-state CRDTs (Almeida, Shoker, Baquero 2018): an operation's effect is itself a small
value of the same type (a *delta*), and joining the delta into any replica has the same
effect as joining the whole new state. Each value carries ``delta``: the join of the
deltas of the operations applied to it since the last :meth:`Crdt.reset_delta`, or None.
The replicator takes that delta after a local update, resets it, and ships it; because
a delta is an ordinary value, receivers simply ``merge`` it, in any order, duplicated or
not. A delta never has a delta of its own.

Equality compares state only (never the pending delta).

Wire form: :func:`dump` gives ``[tag, data]`` of plain msgpack values (lists, dicts, str,
int, bytes and the user's own elements), :func:`load` turns it back and validates it.
Each type registers its tag with :func:`wire_type`. The form is canonical: unordered
collections are written sorted by their encoded bytes (:func:`canonical`), so equal states
dump to equal bytes and the replicator can compare replicas by digest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeVar

from fabric.errors import LocalProtocolError, RemoteProtocolError
from fabric.protocol.codec import Codec

__all__ = ["Crdt", "canonical", "dump", "load", "merge", "wire_type"]

C = TypeVar("C", bound="Crdt")


class Crdt:
    """Base of every CRDT value (see the module docstring)."""

    __slots__ = ()
    wire_tag: ClassVar[str] = ""

    @property
    def delta(self: C) -> C | None:
        raise NotImplementedError

    @property
    def value(self) -> Any:
        raise NotImplementedError

    def merge(self: C, other: C) -> C:
        raise NotImplementedError

    def reset_delta(self: C) -> C:
        raise NotImplementedError

    def to_data(self) -> Any:
        raise NotImplementedError

    @classmethod
    def from_data(cls: type[C], data: Any) -> C:
        raise NotImplementedError


_TYPES: dict[str, type[Crdt]] = {}


def wire_type(tag: str) -> Callable[[type[C]], type[C]]:
    """Class decorator: register ``cls`` under ``tag`` for :func:`dump`/:func:`load`."""

    def register(cls: type[C]) -> type[C]:
        if tag in _TYPES:
            raise LocalProtocolError(f"CRDT wire tag {tag!r} is taken")
        cls.wire_tag = tag
        _TYPES[tag] = cls
        return cls

    return register


def type_for(tag: str) -> type[Crdt]:
    """The class registered under ``tag``.

    Raises:
        RemoteProtocolError: unknown tag.
    """
    cls = _TYPES.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise RemoteProtocolError(f"unknown CRDT type {tag!r}")
    return cls


def merge(a: C, b: C) -> C:
    """The join of two values of the same type."""
    if type(a) is not type(b):
        raise LocalProtocolError(f"cannot merge {type(a).__name__} with {type(b).__name__}")
    return a.merge(b)


def dump(value: Crdt) -> list[Any]:
    """``[tag, data]``: the plain msgpack form of ``value`` (its pending delta excluded)."""
    return [value.wire_tag, value.to_data()]


def load(data: Any) -> Crdt:
    """Inverse of :func:`dump`.

    Raises:
        RemoteProtocolError: malformed data or unknown type.
    """
    if not isinstance(data, (list, tuple)) or len(data) != 2:
        raise RemoteProtocolError(f"bad CRDT wire form {data!r:.80}")
    cls = type_for(data[0])
    try:
        return cls.from_data(data[1])
    except RemoteProtocolError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise RemoteProtocolError(f"bad {data[0]} wire form: {exc}") from None


def check(condition: bool, what: str) -> None:
    """Raise RemoteProtocolError(what) unless ``condition`` (for from_data validation)."""
    if not condition:
        raise RemoteProtocolError(f"bad CRDT wire form: {what}")


_sort_codec = Codec()


def canonical(rows: Iterable[Any]) -> list[Any]:
    """``rows`` (the items of an unordered collection) in the order of their encodings."""
    return sorted(rows, key=_sort_codec.encode)
