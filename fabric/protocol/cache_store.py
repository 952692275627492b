"""One node's share of a distributed cache: entries with TTLs, bounded, LRU-evicted.

Theory of operation
-------------------
A :class:`CacheStore` holds the entries a node owns (as primary or replica) in one
``OrderedDict`` kept in least-recently-used order: a read or a write moves the key to the
end, and eviction takes from the front. It is pure: every method that depends on time
takes ``now`` (seconds on the runtime's monotonic clock), so the simulator drives it with
a fake clock.

* **Expiry, exact on read.** An entry written with a TTL holds ``expires_at = now + ttl``
  (TTLs travel in whole milliseconds). :meth:`get` checks it on every read, so an entry
  is never returned at or after its deadline, whatever the sweep did (lazy expiry, as
  Redis does).
* **A bounded sweep.** Lazy expiry alone would keep entries nobody reads again. Every
  deadline also goes into a heap; :meth:`sweep` pops the deadlines that have passed, at
  most ``budget`` per call, and drops those entries (a heap item whose entry was since
  rewritten with another deadline is skipped). The runtime calls it on a timer, so the
  memory held by expired entries is bounded by what expires between two sweeps.
* **Bounds in entries and bytes.** Each entry carries its size (the length of the
  value's msgpack encoding, measured by the caller that encoded it anyway, plus the
  key's). A write that takes the store over ``max_entries`` or ``max_bytes`` evicts from
  the LRU end until both hold. A single entry larger than ``max_bytes`` is refused
  (:class:`~fabric.errors.CacheValueError`) before anything is evicted.
* **Versions.** Every entry carries the version its primary stamped (a ``(counter,
  node)`` pair compared as a tuple). :meth:`merge` (replication, hand-off, read repair)
  keeps the newer of two copies, so copies arriving in any order converge.
* **Tombstones.** A delete does not just forget a key: :meth:`bury` leaves a *tombstone*,
  an entry with no value and the delete's version, living ``ttl_ms`` (the core's
  ``tombstone_ttl``). Reads see it as absent (:meth:`get`, :meth:`peek`), but
  :meth:`merge` compares against it (:meth:`peek_version`), so an older copy arriving
  later (a hand-off in flight, a replica, a read repair) cannot bring the key back. It
  counts against both bounds like any entry (``TOMBSTONE_SIZE`` bytes plus the key's
  caller-measured size) and leaves by expiry, the sweep, or LRU eviction.
* **Counts.** ``stats`` holds hits, misses, evictions and expirations (lazy and swept);
  the runtime shows them in ``fabric status``.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fabric.errors import CacheValueError

__all__ = ["CacheStats", "CacheStore", "Entry", "Version"]

Version = tuple[int, str]  # (counter, stamping node): totally ordered across nodes
NO_VERSION: Version = (0, "")
TOMBSTONE_SIZE = 16  # bytes a tombstone is counted for, on top of its key


@dataclass(slots=True)
class Entry:
    value: Any
    size: int  # bytes counted against max_bytes (key + encoded value)
    expires_at: float | None  # None: no TTL
    version: Version
    tomb: bool = False  # a delete's tombstone: no value, read as absent

    def ttl_ms(self, now: float) -> int | None:
        """Milliseconds left (at least 1 while alive), or None without a TTL."""
        if self.expires_at is None:
            return None
        return max(1, int((self.expires_at - now) * 1000.0 + 0.999))


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    expirations: int = 0
    tombstones: int = 0  # tombstones held now (they are entries too)
    handoffs: int = 0  # entries sent to new owners (counted by the core)
    repairs: int = 0  # stale copies overwritten by read repair (counted by the core)

    def as_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions,
                "expirations": self.expirations, "tombstones": self.tombstones,
                "handoffs": self.handoffs,
                "repairs": self.repairs}


class CacheStore:
    """Entries with TTLs under an entries and bytes bound (see the module docstring).

    Args:
        max_entries: the most entries kept (then LRU eviction).
        max_bytes: the most bytes kept, counted as each entry's ``size``.
    """

    def __init__(self, max_entries: int = 1_000_000, max_bytes: int = 256 << 20) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("a cache store needs room for at least one entry and byte")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._entries: OrderedDict[Any, Entry] = OrderedDict()  # LRU order: oldest first
        self._bytes = 0
        self._deadlines: list[tuple[float, int, Any]] = []  # (expires_at, seq, key) heap
        self._seq = 0  # ties in the heap never compare keys

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    @property
    def bytes(self) -> int:
        return self._bytes

    def keys(self) -> Iterator[Any]:
        """The keys held (expired ones included until read or swept), oldest use first."""
        return iter(list(self._entries))

    def peek(self, key: Any, now: float) -> Entry | None:
        """The live entry of ``key`` without counting a hit or touching the LRU order
        (None for a tombstone)."""
        entry = self.peek_any(key, now)
        return None if entry is None or entry.tomb else entry

    def peek_any(self, key: Any, now: float) -> Entry | None:
        """The unexpired entry of ``key``, a tombstone included."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at is not None and now >= entry.expires_at:
            self._expire(key)
            return None
        return entry

    def get(self, key: Any, now: float) -> Entry | None:
        """The live entry of ``key`` (a hit, moved to the LRU end) or None (a miss)."""
        entry = self._entries.get(key)
        if entry is not None:
            if entry.expires_at is not None and now >= entry.expires_at:
                self._expire(key)
            elif not entry.tomb:
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return entry
        self.stats.misses += 1
        return None

    def put(self, key: Any, value: Any, size: int, ttl_ms: int | None, version: Version,
            now: float, tomb: bool = False) -> Entry:
        """Store ``value`` (replacing any entry), then evict down to the bounds."""
        if size > self.max_bytes:
            raise CacheValueError(f"an entry of {size} bytes exceeds the store's whole bound "
                                f"of {self.max_bytes} bytes")
        self._remove(key)
        expires_at = None if ttl_ms is None else now + ttl_ms / 1000.0
        entry = Entry(value, size, expires_at, version, tomb)
        self._entries[key] = entry
        self._bytes += size
        if tomb:
            self.stats.tombstones += 1
        if expires_at is not None:
            self._seq += 1
            heapq.heappush(self._deadlines, (expires_at, self._seq, key))
            if len(self._deadlines) > 2 * len(self._entries) + 1024:
                self._compact_deadlines()
        self._evict()
        return entry

    def merge(self, key: Any, value: Any, size: int, ttl_ms: int | None, version: Version,
              now: float, tomb: bool = False) -> bool:
        """Keep the copy with the newer version (a tombstone's too); True if this one
        was stored."""
        if self.peek_version(key, now) >= version:
            return False
        self.put(key, value, size, ttl_ms, version, now, tomb)
        return True

    def peek_version(self, key: Any, now: float) -> Version:
        """The version held for ``key``, a tombstone's included (NO_VERSION: none)."""
        entry = self.peek_any(key, now)
        return NO_VERSION if entry is None else entry.version

    def bury(self, key: Any, key_size: int, ttl_ms: int, version: Version,
             now: float) -> tuple[bool, bool]:
        """Replace ``key`` with a tombstone of ``version`` unless a newer copy is held:
        (stored, a live value was there before)."""
        existed = self.peek(key, now) is not None
        stored = self.merge(key, None, key_size + TOMBSTONE_SIZE, ttl_ms, version, now,
                            tomb=True)
        return stored, existed

    def delete(self, key: Any) -> bool:
        """Drop ``key`` (its tombstone too) without a trace; True if it was held."""
        return self._remove(key)

    def _remove(self, key: Any) -> bool:
        old = self._entries.pop(key, None)
        if old is None:
            return False
        self._bytes -= old.size
        if old.tomb:
            self.stats.tombstones -= 1
        return True

    def sweep(self, now: float, budget: int = 1000) -> int:
        """Drop entries whose deadline passed, examining at most ``budget`` deadlines
        (stale ones of rewritten entries count); returns how many were dropped."""
        dropped = 0
        heap = self._deadlines
        for _ in range(budget):  # bounded work per call
            if not heap or heap[0][0] > now:
                break
            expires_at, _, key = heapq.heappop(heap)
            entry = self._entries.get(key)
            if entry is not None and entry.expires_at == expires_at:
                self._expire(key)
                dropped += 1
        return dropped

    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None

    def _expire(self, key: Any) -> None:
        self.delete(key)
        self.stats.expirations += 1

    def _evict(self) -> None:
        entries = self._entries
        while len(entries) > self.max_entries or self._bytes > self.max_bytes:
            _, entry = entries.popitem(last=False)
            self._bytes -= entry.size
            if entry.tomb:
                self.stats.tombstones -= 1
            self.stats.evictions += 1

    def _compact_deadlines(self) -> None:
        # Rewrites leave stale heap items behind; rebuild from the live entries so the heap
        # stays proportional to the store.
        self._deadlines = [(e.expires_at, i, k) for i, (k, e) in enumerate(self._entries.items())
                           if e.expires_at is not None]
        heapq.heapify(self._deadlines)
        self._seq = len(self._deadlines)
