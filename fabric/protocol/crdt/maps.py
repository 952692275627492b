"""Maps of CRDTs: OR-Map, and the LWW-Map, PN-Counter map and OR-Multimap built on it.

Theory of operation
-------------------
An :class:`ORMap` is the product of two lattices: its keys are an add-wins
:class:`~fabric.protocol.crdt.sets.ORSet`, and its values a map key -> CRDT merged per key.
``update(key, fn, empty)`` applies ``fn`` to the key's value (``empty`` if it never had
one) and (re-)adds the key; its delta is the key's OR-Set delta plus the value's own delta.
``remove(key)`` removes the key from the key set only. The value of a removed key is kept
(hidden): dropping it on remove would make the merge depend on the order of merges (a
remove and a concurrent update would or would not erase the update's counter depending on
who merged first), so it would not be a join. Consequences, the same as Akka's ORMap:

* an update concurrent with a remove wins (add-wins keys), and its value is the merge of
  everything written under the key;
* a key updated again after a remove continues from its old value: a counter goes on
  counting. :class:`ORMultiMap` clears a key's set before removing it, so a re-added key
  starts empty; :class:`LWWMap` overwrites on every put;
* removed keys cost their value's size until the map is deleted.

The typed maps fix the value type: :class:`LWWMap` (values are LWW-Registers),
:class:`PNCounterMap` (PN-Counters) and :class:`ORMultiMap` (OR-Sets: key -> set).
Pruning a dead replica prunes the key set and every value that supports it (an
MV-Register value only once the dead replica's value there was overwritten).

Anti-entropy of one large map (``seen`` / ``missing_for``, as for the OR-Set): a replica
says what it has seen: its key set's ``seen`` (a version vector) and the digests of its
values in buckets (a key's bucket is a hash of its encoding; a bucket's digest is the XOR
of the 64-bit hashes of its ``[key, value]`` encodings, removed keys' hidden values
included). The peer answers with its key set's ``missing_for`` and every value of the
buckets whose digests differ. Key dots alone cannot say which values a peer lacks: a
remove or a pruning changes a value without a new dot, and a removed key's dots leave no
trace of the key in the context; the digests can, at about a byte per key. With about
``KEYS_PER_BUCKET`` keys a bucket, ``d`` changed keys cost at most ``d`` buckets' values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any, ClassVar, Final, Generic, TypeVar

from fabric.protocol.codec import Codec
from fabric.protocol.crdt.base import Crdt, canonical, check, dump, load, wire_type
from fabric.protocol.crdt.counters import PNCounter
from fabric.protocol.crdt.registers import LWWRegister
from fabric.protocol.crdt.replica import Replica
from fabric.protocol.crdt.sets import ORSet

__all__ = ["LWWMap", "ORMap", "ORMultiMap", "PNCounterMap"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V", bound=Crdt)
W = TypeVar("W", bound="_TypedMap")
# A map's "seen" digests its values in buckets of about this many keys: a changed key
# costs its bucket's values, every key about 9 / KEYS_PER_BUCKET bytes of digests.
KEYS_PER_BUCKET: Final = 16
MAX_BUCKETS: Final = 1 << 20
_codec = Codec()


def _hash(data: Any, size: int) -> int:
    return int.from_bytes(hashlib.blake2b(_codec.encode(data), digest_size=size).digest(),
                          "big")


@wire_type("ormap")
class ORMap(Crdt, Generic[K, V]):
    """Keys (add-wins) to CRDT values:
    ``ORMap().update("a", lambda c: c.increment(1), GCounter()).value == {"a": 1}``."""

    __slots__ = ("_delta", "_keys", "_values")

    def __init__(self, keys: ORSet[K] | None = None, values: Mapping[K, V] | None = None,
                 delta: ORMap[K, V] | None = None) -> None:
        self._keys: ORSet[K] = keys if keys is not None else ORSet()
        self._values: dict[K, V] = dict(values or {})
        self._delta = delta

    @classmethod
    def _owning(cls, keys: ORSet[K], values: dict[K, V],
                delta: ORMap[K, V] | None) -> ORMap[K, V]:
        """A value that takes ``values`` without copying it (nothing else may hold it)."""
        m: ORMap[K, V] = cls.__new__(cls)
        m._keys, m._values, m._delta = keys, values, delta
        return m

    # -- reading --------------------------------------------------------------------------

    @property
    def value(self) -> dict[K, Any]:
        """key -> the value of its CRDT, for the present keys."""
        return {k: self._values[k].value for k in self._keys if k in self._values}

    @property
    def entries(self) -> dict[K, V]:
        """key -> its CRDT, for the present keys."""
        return {k: self._values[k] for k in self._keys if k in self._values}

    @property
    def delta(self) -> ORMap[K, V] | None:
        return self._delta

    def get(self, key: K) -> V | None:
        return self._values.get(key) if key in self._keys else None

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __iter__(self) -> Iterator[K]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    # -- writing --------------------------------------------------------------------------

    def update(self, key: K, fn: Callable[[V], V], empty: V, *,
               at: Replica | None = None) -> ORMap[K, V]:
        """Apply ``fn`` to ``key``'s value (``empty`` if it has none) and (re-)add ``key``."""
        old = self._values.get(key, empty).reset_delta()
        new = fn(old)
        keys = self._keys.reset_delta().add(key, at=at)
        assert keys.delta is not None
        values = dict(self._values)
        values[key] = new.reset_delta()
        step_value = new.delta
        step: ORMap[K, V] = ORMap(keys.delta, {} if step_value is None else {key: step_value})
        return ORMap._owning(keys.reset_delta(), values,
                             step if self._delta is None else self._delta.merge(step))

    def remove(self, key: K, clear: Callable[[V], V] | None = None) -> ORMap[K, V]:
        """Remove ``key`` as observed here (its value is kept hidden, see the docstring);
        ``clear``, if given, is applied to the hidden value first (e.g. ``ORSet.clear``)."""
        if key not in self._keys:
            return self
        keys = self._keys.reset_delta().remove(key)
        assert keys.delta is not None
        values, step_values = self._values, {}
        if clear is not None and key in self._values:
            cleared = clear(self._values[key].reset_delta())
            values = dict(self._values)
            values[key] = cleared.reset_delta()
            if cleared.delta is not None:
                step_values[key] = cleared.delta
        step: ORMap[K, V] = ORMap(keys.delta, step_values)
        return ORMap._owning(keys.reset_delta(), values,
                             step if self._delta is None else self._delta.merge(step))

    def merge(self, other: ORMap[K, V]) -> ORMap[K, V]:
        values = dict(self._values)
        for key, theirs in other._values.items():
            mine = values.get(key)
            values[key] = theirs.reset_delta() if mine is None else mine.merge(theirs)
        return ORMap._owning(self._keys.merge(other._keys), values, self._delta)

    def reset_delta(self) -> ORMap[K, V]:
        if self._delta is None:
            return self
        return ORMap._owning(self._keys, self._values, None)  # never mutated: shared

    # -- anti-entropy of one large map ----------------------------------------------------

    def seen(self, buckets: int | None = None) -> Any:
        """What this replica has seen, for :meth:`missing_for` at a peer: its key set's
        ``seen`` and its values' digests in ``buckets`` buckets (by default one per
        ``KEYS_PER_BUCKET`` values; see the module docstring)."""
        if buckets is None:
            buckets = len(self._values) // KEYS_PER_BUCKET
        buckets = max(1, min(MAX_BUCKETS, buckets))
        return [self._keys.seen(), buckets, self._bucket_digests(buckets)[0]]

    def _bucket_digests(self, buckets: int) -> tuple[list[int], dict[K, int]]:
        """Each bucket's digest, and each key's bucket."""
        digests = [0] * buckets
        bucket_of: dict[K, int] = {}
        for key, value in self._values.items():
            bucket = bucket_of[key] = _hash(key, 4) % buckets
            digests[bucket] ^= _hash([key, dump(value)], 8)
        return digests, bucket_of

    def missing_for(self, seen: Any) -> ORMap[K, V]:
        """The part of this map a replica that has ``seen`` (:meth:`seen`) lacks: merged
        there, it gives what merging the whole map would. It holds the key set's
        :meth:`ORSet.missing_for` and the values of the buckets whose digests differ
        from the peer's; it is a state below this one, so merging it anywhere is safe.

        Raises:
            RemoteProtocolError: ``seen`` is malformed.
        """
        check(isinstance(seen, list) and len(seen) == 3, "ormap seen")
        keys_seen, buckets, theirs = seen
        check(type(buckets) is int and 1 <= buckets <= MAX_BUCKETS
              and isinstance(theirs, list) and len(theirs) == buckets
              and all(type(d) is int for d in theirs), "ormap seen digests")
        mine, bucket_of = self._bucket_digests(buckets)
        values = {k: v for k, v in self._values.items()
                  if mine[bucket_of[k]] != theirs[bucket_of[k]]}
        return ORMap._owning(self._keys.missing_for(keys_seen), values, None)

    # -- pruning --------------------------------------------------------------------------

    def replicas(self) -> set[Replica]:
        """Every replica with entries in the key set or a prunable value."""
        out = self._keys.replicas()
        for v in self._values.values():
            if _prunable(v):
                out |= v.replicas()  # type: ignore[attr-defined]
        return out

    def needs_pruning(self, removed: Replica) -> bool:
        return self._keys.needs_pruning(removed) or any(
            _prunable(v) and v.needs_pruning(removed)  # type: ignore[attr-defined]
            for v in self._values.values())

    def prune(self, removed: Replica, *, at: Replica | None = None) -> ORMap[K, V]:
        """Prune the key set and every value that supports pruning; the delta is the
        whole state."""
        keys = self._keys.prune(removed, at=at).reset_delta()
        # A value that cannot prune ``removed`` yet (an MV-Register whose current value
        # it wrote) keeps it until a later round.
        values = {k: v.prune(removed, at=at).reset_delta()  # type: ignore[attr-defined]
                  if _prunable(v) and removed in v.replicas()  # type: ignore[attr-defined]
                  else v for k, v in self._values.items()}
        return ORMap(keys, values, ORMap(keys, values))

    # -- values ---------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ORMap) and self._keys == other._keys
                and self._values == other._values)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ORMap({self.value!r})"

    def to_data(self) -> Any:
        return [self._keys.to_data(), canonical([k, dump(v)] for k, v in self._values.items())]

    @classmethod
    def from_data(cls, data: Any) -> ORMap[Any, Any]:
        check(isinstance(data, list) and len(data) == 2 and isinstance(data[1], list), "ormap")
        values: dict[Any, Crdt] = {}
        for row in data[1]:
            check(isinstance(row, list) and len(row) == 2, "ormap value")
            hash(row[0])
            values[row[0]] = load(row[1])
        return ORMap(ORSet.from_data(data[0]), values)


def _prunable(value: Crdt) -> bool:
    return hasattr(value, "prune")


class _TypedMap(Crdt):
    """An ORMap whose values all have one type (``empty()`` makes a fresh one)."""

    __slots__ = ("_map",)
    empty: ClassVar[Callable[[], Crdt]]

    def __init__(self, inner: ORMap[Any, Any] | None = None) -> None:
        self._map: ORMap[Any, Any] = inner if inner is not None else ORMap()

    @property
    def value(self) -> dict[Any, Any]:
        return self._map.value

    @property
    def delta(self: W) -> W | None:
        d = self._map.delta
        return None if d is None else type(self)(d)

    def __contains__(self, key: object) -> bool:
        return key in self._map

    def __iter__(self) -> Iterator[Any]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def _update(self: W, key: Any, fn: Callable[[Any], Any], at: Replica | None) -> W:
        return type(self)(self._map.update(key, fn, type(self).empty(), at=at))

    def remove(self: W, key: Any) -> W:
        """Remove ``key`` (add-wins against a concurrent update of it)."""
        return type(self)(self._map.remove(key))

    def merge(self: W, other: W) -> W:
        return type(self)(self._map.merge(other._map))

    def reset_delta(self: W) -> W:
        return self if self._map.delta is None else type(self)(self._map.reset_delta())

    def seen(self, buckets: int | None = None) -> Any:
        """See :meth:`ORMap.seen`."""
        return self._map.seen(buckets)

    def missing_for(self: W, seen: Any) -> W:
        """See :meth:`ORMap.missing_for`."""
        return type(self)(self._map.missing_for(seen))

    def replicas(self) -> set[Replica]:
        return self._map.replicas()

    def needs_pruning(self, removed: Replica) -> bool:
        return self._map.needs_pruning(removed)

    def prune(self: W, removed: Replica, *, at: Replica | None = None) -> W:
        return type(self)(self._map.prune(removed, at=at))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._map == other._map

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r})"

    def to_data(self) -> Any:
        return self._map.to_data()

    @classmethod
    def from_data(cls: type[W], data: Any) -> W:
        inner = ORMap.from_data(data)
        want = cls.empty().wire_tag
        check(all(v.wire_tag == want for v in inner._values.values()),
              f"{cls.__name__} values must be {want}")
        return cls(inner)


@wire_type("lwwmap")
class LWWMap(_TypedMap):
    """Keys to last-writer-wins values: ``LWWMap().put("a", 1).value == {"a": 1}``."""

    __slots__ = ()
    empty = LWWRegister

    def put(self, key: Any, value: Any, *, timestamp: int | None = None,
            at: Replica | None = None) -> LWWMap:
        return self._update(key, lambda r: r.assign(value, timestamp=timestamp, at=at), at)

    def get(self, key: Any, default: Any = None) -> Any:
        register = self._map.get(key)
        return default if register is None else register.value


@wire_type("pncountermap")
class PNCounterMap(_TypedMap):
    """Keys to PN-Counters: ``PNCounterMap().increment("a", 2).value == {"a": 2}``."""

    __slots__ = ()
    empty = PNCounter

    def increment(self, key: Any, n: int = 1, *, at: Replica | None = None) -> PNCounterMap:
        return self._update(key, lambda c: c.increment(n, at=at), at)

    def decrement(self, key: Any, n: int = 1, *, at: Replica | None = None) -> PNCounterMap:
        return self._update(key, lambda c: c.decrement(n, at=at), at)

    def get(self, key: Any, default: int = 0) -> int:
        counter = self._map.get(key)
        return default if counter is None else int(counter.value)


@wire_type("ormultimap")
class ORMultiMap(_TypedMap):
    """Keys to add-wins sets:
    ``ORMultiMap().add_binding("a", 1).value == {"a": frozenset({1})}``."""

    __slots__ = ()
    empty = ORSet

    def add_binding(self, key: Any, element: Any, *, at: Replica | None = None) -> ORMultiMap:
        return self._update(key, lambda s: s.add(element, at=at), at)

    def remove_binding(self, key: Any, element: Any, *,
                       at: Replica | None = None) -> ORMultiMap:
        """Remove one element of ``key``'s set; the key stays (possibly with an empty set)."""
        if key not in self._map:
            return self
        return self._update(key, lambda s: s.remove(element), at)

    def remove(self, key: Any) -> ORMultiMap:
        """Clear ``key``'s set, then remove the key (a later re-add starts empty)."""
        return ORMultiMap(self._map.remove(key, clear=lambda s: s.clear()))

    def get(self, key: Any) -> frozenset[Any]:
        values = self._map.get(key)
        return frozenset() if values is None else frozenset(values.value)

