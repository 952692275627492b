"""Consistent hashing: route keys to members so that a membership change moves few keys.

Theory of operation
-------------------
A router (a worker pool, a sharded cache) must send the same key to the same member on
every node, and when a member joins or leaves only the keys that member gains or loses
may move. Two classic schemes do that; both are pure functions of their inputs:

* :func:`rendezvous` (highest random weight): every ``(key, member)`` pair gets a score
  from a hash of both; the member with the highest score owns the key. Removing a member
  moves exactly the keys it owned; adding one moves exactly the keys it now wins, about
  ``1/N`` of them. It needs no state and costs one hash per member per lookup: the right
  choice for pools of tens of members.
* :class:`HashRing`: each member owns ``vnodes`` points on a 64-bit circle; a key
  belongs to the member of the first point at or after the key's hash (wrapping around).
  Lookups are a binary search, ``O(log(N * vnodes))``; many virtual nodes keep each
  member's share close to ``1/N``.

Hashes are BLAKE2b, never :func:`hash` (which is salted per process), so every node and
every run routes a key the same way. Keys and members become bytes first:

* keys (:func:`key_bytes`): ``bytes`` as they are, ``str`` as UTF-8 and ``int`` as its
  decimal digits, so ``42`` and ``"42"`` route alike;
* members (:func:`member_bytes`, replaceable with ``identity=``): the same for ``bytes``,
  ``str`` and ``int``; anything else (tuples, :class:`~fabric.types.Pid`) as its msgpack
  encoding with tuples as arrays. Distinct members must have distinct identities.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Sequence
from hashlib import blake2b
from typing import Any, Final, Generic, TypeVar

import msgpack  # type: ignore[import-untyped,unused-ignore]

__all__ = ["HashRing", "Key", "key_bytes", "member_bytes", "rendezvous"]

T = TypeVar("T")
Key = bytes | str | int

# Domain separation: a key's hash and a ring point's hash never come from the same input
# space, so a key named like a member's point cannot land on that point by construction.
_KEY_PERSON: Final = b"fabric.key"
_POINT_PERSON: Final = b"fabric.ring"
_HRW_PERSON: Final = b"fabric.hrw"
DEFAULT_VNODES: Final = 160


def key_bytes(key: Key) -> bytes:
    """The bytes a routing key is hashed as (see the module docstring).

    Raises:
        TypeError: the key is not bytes, str or int.
    """
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, int):
        return b"%d" % key
    raise TypeError(f"routing keys are bytes, str or int, not {type(key).__name__}")


def member_bytes(member: object) -> bytes:
    """The default identity of a member: the bytes its hashes are computed from."""
    if isinstance(member, (bytes, str, int)):
        return key_bytes(member)
    packed: bytes = msgpack.packb(member, use_bin_type=True)
    return packed


def _u64(data: bytes, person: bytes) -> int:
    return int.from_bytes(blake2b(data, digest_size=8, person=person).digest(), "big")


def rendezvous(
    key: Key, members: Sequence[T], *, identity: Callable[[T], bytes] = member_bytes
) -> T:
    """The member that owns ``key`` by highest random weight.

    Args:
        key: the routing key.
        members: the candidates, in any order (the result does not depend on it).
        identity: maps a member to the bytes it is hashed as.

    Returns:
        One of ``members``.

    Raises:
        ValueError: ``members`` is empty.
    """
    if not members:
        raise ValueError("rendezvous needs at least one member")
    kb = key_bytes(key)
    # The key is length-prefixed so that (key, member) pairs never share an input, and
    # hashed once: each member's score continues from a copy of that state.
    base = blake2b(len(kb).to_bytes(4, "big") + kb, digest_size=8, person=_HRW_PERSON)
    best = members[0]
    best_score: tuple[bytes, bytes] | None = None
    for member in members:
        ident = identity(member)
        h = base.copy()
        h.update(ident)
        # Ties (a 64-bit collision) fall to the larger identity: still order-independent.
        score = (h.digest(), ident)
        if best_score is None or score > best_score:
            best, best_score = member, score
    return best


class HashRing(Generic[T]):
    """A consistent-hash ring with virtual nodes.

    Args:
        members: the initial members.
        vnodes: points per member; more points spread load more evenly.
        identity: maps a member to the bytes it is hashed as.

    Raises:
        ValueError: ``vnodes`` is less than 1.
    """

    def __init__(
        self,
        members: Iterable[T] = (),
        *,
        vnodes: int = DEFAULT_VNODES,
        identity: Callable[[T], bytes] = member_bytes,
    ) -> None:
        if vnodes < 1:
            raise ValueError(f"vnodes must be at least 1, not {vnodes}")
        self._vnodes = vnodes  # points per member
        self._identity = identity  # member -> the bytes its points derive from
        self._members: dict[bytes, T] = {}  # identity -> member, in insertion order
        self._points: list[int] = []  # every member's points, sorted (bisect searches here)
        self._owners: list[T] = []  # _owners[i] owns _points[i]
        for member in members:
            self._members.setdefault(identity(member), member)
        self._rebuild()

    @property
    def members(self) -> list[T]:
        """The members, in the order they were added."""
        return list(self._members.values())

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, member: object) -> bool:
        try:
            return self._identity(member) in self._members  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._members.values()))

    def add(self, member: T) -> None:
        """Add ``member``; adding a member that is already there does nothing."""
        ident = self._identity(member)
        if ident not in self._members:
            self._members[ident] = member
            self._rebuild()

    def remove(self, member: T) -> None:
        """Remove ``member``.

        Raises:
            KeyError: ``member`` is not on the ring.
        """
        del self._members[self._identity(member)]
        self._rebuild()

    def discard(self, member: T) -> None:
        """Remove ``member`` if it is on the ring."""
        if self._members.pop(self._identity(member), None) is not None:
            self._rebuild()

    def lookup(self, key: Key) -> T:
        """The member that owns ``key``.

        Raises:
            LookupError: the ring is empty.
        """
        if not self._points:
            raise LookupError("lookup on an empty hash ring")
        i = bisect.bisect_left(self._points, _u64(key_bytes(key), _KEY_PERSON))
        return self._owners[i if i < len(self._points) else 0]

    def preference(self, key: Key, n: int) -> list[T]:
        """The first ``n`` distinct members clockwise from ``key``'s hash: its owner, then
        the members a replicated store puts its copies on (fewer if the ring has fewer).

        Raises:
            LookupError: the ring is empty.
        """
        if not self._points:
            raise LookupError("lookup on an empty hash ring")
        want = min(n, len(self._members))
        count = len(self._points)
        i = bisect.bisect_left(self._points, _u64(key_bytes(key), _KEY_PERSON))
        found: list[T] = []
        seen: set[int] = set()
        for step in range(count):  # bounded: at most once round the ring
            owner = self._owners[(i + step) % count]
            if id(owner) not in seen:
                seen.add(id(owner))
                found.append(owner)
                if len(found) == want:
                    break
        return found

    def _rebuild(self) -> None:
        # Rebuilding from scratch (rather than inserting points) keeps the ring a pure
        # function of its member set: insertion order cannot change any lookup.
        points: list[tuple[int, bytes, Any]] = []
        for ident, member in self._members.items():
            prefix = len(ident).to_bytes(4, "big") + ident
            for i in range(self._vnodes):
                points.append((_u64(prefix + i.to_bytes(4, "big"), _POINT_PERSON), ident, member))
        points.sort(key=lambda p: (p[0], p[1]))
        self._points = [p[0] for p in points]
        self._owners = [p[2] for p in points]
