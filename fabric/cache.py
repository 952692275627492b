"""A distributed cache across a cluster's nodes: the runtime half of
:mod:`fabric.protocol.cache`.

Theory of operation
-------------------
``Cache(node, "sessions")`` on every node that takes part hosts the cache's core (the
service ``"cache:sessions"``) and, with ``owner=True`` (the default), joins the pg group
``("fabric.cache", "sessions")``: the group's nodes are the cache's *owners*. A node with
``owner=False`` reads and writes the same keys without holding any. Several caches, each
with its own name, may coexist on one cluster::

    cache = fabric.cache.Cache(node, "sessions", replicas=2, max_bytes=64 << 20)
    await cache.put("user:1", {"name": "ada"}, ttl=30)    # acknowledged by write_acks copies
    await cache.get("user:1")                            # from the key's primary
    await cache.get_or_compute("report", build, ttl=60)  # computed once cluster-wide
    await cache.handoff()                                # before stopping the node

The facade keeps the pg group's members (a monitor on the group, delivered to a mailbox
that a watcher task reads) and tells the core which nodes own keys; everything else is
the core's. A read of a key whose primary is this node is a plain lookup in the node's
store, with no message and no future. Every other operation is one request through the
core (``Complete(token, (status, value))``), bounded by ``timeout`` seconds.

Refused at the caller, before anything is sent: keys other than ``str``, ``bytes`` and
``int`` (:class:`TypeError`); values msgpack cannot carry and entries over
``max_entry_bytes`` (:class:`CacheValueError`); a key with no live owner fails with
:class:`CacheUnavailableError` at once.

Graceful stop: :meth:`Cache.handoff` sends every entry this node holds to the owners
that remain and waits for their acknowledgements, then leaves the group. On a node with
drain hooks (``node.on_drain(..., handoff=True)``, run by a graceful ``node.stop()``
before it leaves its groups), every owner's cache registers ``handoff`` as one, so
``stop()`` hands the keys off by itself.

Counters (hits, misses, evictions, expirations, hand-offs, repairs, entries, bytes) per
cache are in :meth:`Cache.stats`, in ``fabric status`` and in the Prometheus export
(``fabric_cache_*{cache="NAME"}``, docs/METRICS.md).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import math
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from fabric import lowlevel
from fabric.errors import (
    CacheError,
    CacheUnavailableError,
    CacheValueError,
    FabricTimeout,
    LocalProtocolError,
)
from fabric.metrics.snapshot import report_caches
from fabric.protocol.cache import CacheCore, Result
from fabric.protocol.events import PgJoin, PgLeave
from fabric.protocol.hashring import key_bytes
from fabric.timeouts import CALL_TIMEOUT
from fabric.types import Pid

if TYPE_CHECKING:
    from fabric.node import Node

__all__ = ["Cache", "CacheError", "CacheUnavailableError", "CacheValueError", "caches_of"]

GROUP = "fabric.cache"  # the pg group of a cache's owners is (GROUP, name)
_tokens = itertools.count(1)
_by_node: weakref.WeakKeyDictionary[Node, dict[str, Cache]] = weakref.WeakKeyDictionary()


def caches_of(node: Node) -> dict[str, dict[str, int]]:
    """The counters of every cache started on ``node``, by cache name (``fabric status``
    and the metrics snapshot read them)."""
    return {name: cache.stats() for name, cache in sorted(_by_node.get(node, {}).items())}


report_caches(caches_of)  # the metrics snapshot reads them without importing this module


class Cache:
    """One node's handle on the distributed cache ``name`` (see the module docstring).

    Args:
        node: a started node.
        name: the cache's name, the same on every node that uses it.
        owner: whether this node holds keys (False: it only reads and writes them).
        replicas: copies per key, the primary included.
        write_acks: copies that must hold a write before it is acknowledged (default:
            ``replicas``).
        max_entries: this node's bound in entries; beyond it the least recently used
            entries are evicted.
        max_bytes: this node's bound in bytes (keys plus encoded values), evicted alike.
        max_entry_bytes: the largest value accepted (its msgpack encoding plus the key).
        timeout: seconds an operation may take before :class:`~fabric.FabricTimeout`.
        sweep_interval: seconds between sweeps of expired entries.
        handoff_grace: seconds without an owner change (and with this node's hand-off
            done) after which a change is settled; until then a miss at a key's new
            primary is asked again of its previous owners.
        near_entries: keep up to this many values read from other nodes in a near cache
            on this node (0: none), invalidated by the owners when the key changes.
        near_ttl: the longest a near copy is used, seconds (its staleness bound if an
            invalidation is lost).
        tombstone_ttl: seconds a delete's tombstone is kept (it stops copies older than
            the delete from coming back through a hand-off, replication or read repair;
            it must outlast the longest hand-off).
    """

    def __init__(self, node: Node, name: str = "default", *, owner: bool = True,
                 replicas: int = 2, write_acks: int | None = None,
                 max_entries: int = 1_000_000, max_bytes: int = 256 << 20,
                 max_entry_bytes: int = 1 << 20, timeout: float = CALL_TIMEOUT,
                 sweep_interval: float = 1.0, handoff_grace: float = 5.0,
                 near_entries: int = 0, near_ttl: float = 1.0,
                 tombstone_ttl: float = 60.0) -> None:
        if not node.started or node.stopped:
            raise CacheError("start the node before its cache (await node.start())")
        caches = _by_node.setdefault(node, {})
        if name in caches:
            raise CacheError(f"cache {name!r} is already started on {node.name}")
        self.node = node
        self.name = name
        self.owner = owner
        self.timeout = timeout
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)
        self.core = CacheCore(name, node.name, replicas=replicas, write_acks=write_acks,
                              max_entries=max_entries, max_bytes=max_bytes,
                              sweep_interval=sweep_interval, handoff_grace=handoff_grace,
                              near_entries=near_entries, near_ttl=near_ttl,
                              tombstone_ttl=tombstone_ttl)
        self._read_op = "nget" if near_entries > 0 else "get"
        self._service = self.core.service
        self._loop = node.loop
        self._group = (GROUP, name)
        self._members: set[Pid] = set()
        # (deadline, future) of requests waiting with the default timeout, in the order
        # they started (so in deadline order): one timer for the earliest, instead of a
        # timer per request (see _watch_deadline)
        self._deadlines: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._deadline_timer: asyncio.TimerHandle | None = None
        lowlevel.add_service(node, self.core)
        self._run = functools.partial(lowlevel.run_service, node)
        self._expect = functools.partial(lowlevel.expect, node)
        self._run(self._service, self.core.start(self._loop.time()))
        self._box = node.new_mailbox()
        if owner:
            node.pg.join(self._group, self._box.self)
        self._monitor, members = node.pg.monitor(self._group, self._box.self)
        self._set_members(set(members))
        self._watcher = self._loop.create_task(self._watch())
        # A graceful node.stop() hands an owner's keys off by itself, in the drain's
        # hand-off step: while the node still belongs to the owners' group, so the others
        # take the keys from it instead of seeing it leave first (D27, D28).
        self._remove_drain_hook: Callable[[], None] | None = (
            node.on_drain(self.handoff, handoff=True) if owner else None)
        caches[name] = self

    # -- reads ------------------------------------------------------------------------------

    async def get(self, key: Any, default: Any = None, *, repair: bool = False) -> Any:
        """The key's value, or ``default`` if it is absent or expired.

        Read from the key's primary (a replica when the primary is down), or from this
        node's near cache when it has one and holds the key. With
        ``repair=True`` every live owner is asked, the newest copy is returned and older
        copies are overwritten with it (read repair).
        """
        if type(key) not in _KEY_TYPES:
            _check_key(key)  # raises
        if repair:
            status, value = await self._await(lambda t, now: self.core.read_all(t, key, now))
            return value if status == "hit" else default
        now = self._loop.time()
        entry = self.core.read_local(key, now)
        if entry is not False:
            return default if entry is None else entry.value  # type: ignore[union-attr]
        near = self.core.read_near(key, now)
        if near is not None:
            return near.value
        status, value = await self._request(self._read_op, key, [])
        return value if status == "hit" else default

    async def get_many(self, keys: Iterable[Any]) -> dict[Any, Any]:
        """The present keys among ``keys`` with their values (one request per owner set;
        keys in this node's near cache, when it has one, are served from it)."""
        wanted = list(dict.fromkeys(keys))
        found: dict[Any, Any] = {}
        groups: dict[tuple[str, ...], list[Any]] = {}
        now = self._loop.time()
        near = self._read_op == "nget"
        for key in wanted:
            _check_key(key)
            entry = self.core.read_local(key, now)
            if entry is False:
                near_entry = self.core.read_near(key, now) if near else None
                if near_entry is not None:
                    found[key] = near_entry.value
                else:
                    groups.setdefault(tuple(self.core.owners_of(key)), []).append(key)
            elif entry is not None:
                found[key] = entry.value  # type: ignore[union-attr]
        # With a near cache, the owners remember this node as a reader of what they send
        # (as for get) and the values are kept near.
        results = await asyncio.gather(*(self._request("mget", batch[0], [batch, near])
                                         for batch in groups.values()))
        for batch, (_, values) in zip(groups.values(), results, strict=True):
            for key, got in zip(batch, values, strict=True):
                if got is not None:
                    found[key] = got[0]
        return {key: found[key] for key in wanted if key in found}

    # -- writes -----------------------------------------------------------------------------

    async def put(self, key: Any, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` (for ``ttl`` seconds, or until evicted)."""
        size = self._size(key, value)
        await self._request("put", key, [value, size, _ttl_ms(ttl), False])

    async def put_new(self, key: Any, value: Any, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent; True if it was stored."""
        size = self._size(key, value)
        status, _ = await self._request("put", key, [value, size, _ttl_ms(ttl), True])
        return status == "ok"

    async def put_many(self, items: Mapping[Any, Any], ttl: float | None = None) -> None:
        """``put`` every item (concurrently)."""
        await asyncio.gather(*(self.put(k, v, ttl) for k, v in items.items()))

    async def delete(self, key: Any) -> bool:
        """Remove ``key``; True if it was present."""
        _check_key(key)
        _, existed = await self._request("del", key, [])
        return bool(existed)

    async def incr(self, key: Any, by: int = 1, ttl: float | None = None) -> int:
        """Add ``by`` to the int under ``key`` (absent counts as 0); returns the new value.
        An absent key gets ``ttl``; a present one keeps its own deadline."""
        _check_key(key)
        if type(by) is not int:
            raise TypeError(f"incr adds an int, not {type(by).__name__}")
        _, total = await self._request("incr", key, [by, _ttl_ms(ttl)])
        return int(total)

    async def get_or_compute(self, key: Any, fn: Callable[[], Any | Awaitable[Any]],
                             ttl: float | None = None) -> Any:
        """The key's value; on a miss, ``fn()`` (sync or async) computes it, once for all
        the concurrent misses of this key across the cluster, and it is stored with ``ttl``.

        If ``fn`` raises, the error reaches this caller and another waiting caller (if
        any) computes instead.
        """
        _check_key(key)
        for _ in range(8):  # bounded: each round is a hit, a computation or a hand-over
            status, value = await self._request("goc", key, [])
            if status == "hit":
                return value
            try:
                value = fn()
                if inspect.isawaitable(value):
                    value = await value
                size = self._size(key, value)
            except BaseException:
                await asyncio.shield(self._abandon(key))
                raise
            await self._request("fill", key, [value, size, _ttl_ms(ttl)])
            return value
        raise CacheError(f"get_or_compute({key!r}): no value after 8 hand-overs")

    # -- membership, life cycle, counters ----------------------------------------------------

    def owners(self, key: Any) -> list[str]:
        """The key's live owners as this node sees them, primary first."""
        return self.core.owners_of(key)

    def stats(self) -> dict[str, int]:
        """This node's counters for the cache: hits, misses, evictions, expirations,
        handoffs (entries sent to new owners), repairs, entries, bytes, and
        handoff_pending (hand-off work not finished: 0 when this node's part is done)."""
        return self.core.counters()

    async def handoff(self, timeout: float | None = None) -> None:
        """Hand every entry this node holds to the remaining owners, then stop owning keys.

        A graceful ``node.stop()`` calls it (the drain's hand-off step); call it yourself
        to stop owning keys while the node goes on. Reads keep being answered here until
        it returns.
        """
        if self.owner:
            await self._await(lambda t, now: self.core.leave(t, now),
                              timeout if timeout is not None else max(self.timeout, 30.0))
            self.node.pg.leave(self._group, self._box.self)
            self.owner = False

    async def close(self) -> None:
        """Stop taking part (without a hand-off: use :meth:`handoff` first to keep keys)."""
        if self._remove_drain_hook is not None:
            self._remove_drain_hook()
            self._remove_drain_hook = None
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self._watcher.cancel()
        try:
            await self._watcher
        except asyncio.CancelledError:
            pass
        if self.node.started and not self.node.stopped:
            self.node.pg.demonitor(self._monitor)
            self.node.close_mailbox(self._box)
        _by_node.get(self.node, {}).pop(self.name, None)

    async def _watch(self) -> None:
        while True:  # ends when close() cancels it, or the node stops
            event = await self._box.receive()
            if type(event) is PgJoin and event.token == self._monitor:
                self._set_members(self._members | set(event.pids))
            elif type(event) is PgLeave and event.token == self._monitor:
                self._set_members(self._members - set(event.pids))

    def _set_members(self, members: set[Pid]) -> None:
        self._members = members
        effects = self.core.set_owners({pid.node for pid in members}, self._loop.time())
        self._run(self._service, effects)

    # -- requests ---------------------------------------------------------------------------

    async def _abandon(self, key: Any) -> None:
        try:
            await self._request("abandon", key, [])
        except CacheError:
            pass  # the primary went down: the flight went with it

    async def _request(self, op: str, key: Any, args: list[Any]) -> Result:
        return await self._await(
            lambda token, now: self.core.request(token, op, key, args, now))

    async def _await(self, start: Callable[[Any, float], list[Any]],
                     timeout: float | None = None) -> Result:
        token = ("cache", next(_tokens))
        fut = self._expect(token)  # before the effects run: one may complete it
        self._run(self._service, start(token, self._loop.time()))
        if not fut.done():
            timer = None
            if timeout is None:
                self._watch_deadline(fut)
            else:
                timer = self._loop.call_later(timeout, _expire, fut, timeout)
            try:
                await fut
            except (FabricTimeout, asyncio.CancelledError):
                # Timed out, or the caller was cancelled (wait_for around a get): the core
                # forgets the request instead of holding it until an answer that may
                # never come.
                self.core.cancel(token)
                raise
            finally:
                if timer is not None:
                    timer.cancel()
        result: Result = fut.result()
        if result[0] == "error":
            text = str(result[1])
            raise (CacheUnavailableError if text.startswith("unavailable") else CacheError)(
                f"cache {self.name!r}: {text}")
        return result

    def _watch_deadline(self, fut: asyncio.Future[Any]) -> None:
        """Fail ``fut`` with FabricTimeout if it is not done within ``self.timeout``.

        Requests share one timer, armed for the earliest deadline: a timer per request
        (created, pushed on the loop's heap, cancelled) cost about 2 us of each remote
        operation's ~20 us of cache overhead. Requests that finished are dropped from the
        front as new ones come, so the queue holds about the requests in flight."""
        queue = self._deadlines
        while queue and queue[0][1].done():  # bounded by the queue
            queue.popleft()
        queue.append((self._loop.time() + self.timeout, fut))
        if self._deadline_timer is None:
            self._deadline_timer = self._loop.call_at(queue[0][0], self._expire_due)

    def _expire_due(self) -> None:
        self._deadline_timer = None
        queue = self._deadlines
        due = self._loop.time() + 0.001  # the loop may run a timer a little early
        while queue and (queue[0][1].done() or queue[0][0] <= due):  # bounded by the queue
            _expire(queue.popleft()[1], self.timeout)
        if queue:
            self._deadline_timer = self._loop.call_at(queue[0][0], self._expire_due)

    def _size(self, key: Any, value: Any) -> int:
        kb = _check_key(key)
        try:
            size = len(self.node.codec.encode(value)) + len(kb)
        except LocalProtocolError as exc:
            raise CacheValueError(f"cache {self.name!r} cannot store this value: {exc}") from None
        if size > self.max_entry_bytes:
            raise CacheValueError(f"cache {self.name!r}: an entry of {size} bytes is over the "
                                  f"limit of {self.max_entry_bytes} (max_entry_bytes)")
        return size


def _expire(fut: asyncio.Future[Any], limit: float) -> None:
    if not fut.done():
        fut.set_exception(FabricTimeout(f"cache operation: nothing within {limit} s"))


_KEY_TYPES = (str, bytes, int)


def _check_key(key: Any) -> bytes:
    if type(key) not in _KEY_TYPES:
        raise TypeError(f"cache keys are str, bytes or int, not {type(key).__name__}")
    return key_bytes(key)


def _ttl_ms(ttl: float | None) -> int | None:
    if ttl is None:
        return None
    if not ttl > 0 or math.isinf(ttl):
        raise ValueError(f"a TTL is a positive, finite number of seconds, not {ttl!r}")
    return max(1, math.ceil(ttl * 1000.0))
