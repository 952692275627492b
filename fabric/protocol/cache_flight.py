"""Single-flight bookkeeping: concurrent misses for one key compute it once.

Theory of operation
-------------------
groupcache's idea: when many callers miss the same key at once, one of them (the
*leader*) computes the value and the others wait for its result instead of computing it
too. :class:`Flights` is only the bookkeeping, keyed by the cache key; what a waiter is
(a local future's token, a remote node's request) is up to the caller:

* :meth:`Flights.join` adds a waiter; the first waiter of a key becomes its leader
  (``True``), the others wait (``False``).
* :meth:`Flights.finish` ends the flight and returns every waiter but the leader: the
  caller hands them the value.
* :meth:`Flights.abandon` is the leader giving up (its computation failed, or its node
  went down): the next waiter becomes the leader and must compute (or None when nobody
  waits any more, and the flight is over).
* :meth:`Flights.drop_where` removes the waiters that match (the ones on a node that went
  down), promoting a new leader where the leader was among them.

The cache core keeps one ``Flights`` at each key's primary (cluster-wide single flight:
every node's misses for a key meet there).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["Flights"]

W = TypeVar("W")


class Flights(Generic[W]):
    """Waiters per key; the first is the leader that computes."""

    def __init__(self) -> None:
        self._waiting: dict[Hashable, list[W]] = {}  # key -> [leader, waiters...]

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, key: object) -> bool:
        return key in self._waiting

    def join(self, key: Hashable, waiter: W) -> bool:
        """Add ``waiter`` for ``key``; True if it is the leader (it must compute)."""
        queue = self._waiting.get(key)
        if queue is None:
            self._waiting[key] = [waiter]
            return True
        queue.append(waiter)
        return False

    def leader(self, key: Hashable) -> W | None:
        queue = self._waiting.get(key)
        return queue[0] if queue else None

    def finish(self, key: Hashable) -> list[W]:
        """End the flight; the waiters other than the leader, in arrival order."""
        queue = self._waiting.pop(key, None)
        return queue[1:] if queue else []

    def abandon(self, key: Hashable) -> W | None:
        """The leader gave up: the new leader, or None (the flight is over)."""
        queue = self._waiting.get(key)
        if not queue:
            return None
        queue.pop(0)
        if not queue:
            del self._waiting[key]
            return None
        return queue[0]

    def drop_where(self, gone: Callable[[W], bool]) -> list[tuple[Hashable, W]]:
        """Remove the waiters ``gone`` matches; returns ``(key, new leader)`` for each
        flight whose leader was removed and that still has waiters."""
        promoted: list[tuple[Hashable, W]] = []
        for key in list(self._waiting):
            queue = self._waiting[key]
            kept = [w for w in queue if not gone(w)]
            if not kept:
                del self._waiting[key]
                continue
            self._waiting[key] = kept
            if kept[0] is not queue[0]:
                promoted.append((key, kept[0]))
        return promoted
