"""The distributed cache's protocol: requests, replication, fail-over, hand-off.

Theory of operation
-------------------
One :class:`CacheCore` per cache name per node, hosted as the service
``"cache:<name>"``. Every node that uses the cache hosts one; the *owners* (the nodes
that hold keys) are told to the core by its runtime (``set_owners``, from a pg group),
and the core keeps the live ones (owners it has a session with, and itself) in a
:class:`~fabric.protocol.cache_placement.Placement`: a key's owners are its primary and
``replicas - 1`` replicas on the consistent-hash ring. Nodes that only read host a core
and are simply not owners.

Requests (client side). The facade gives an operation, a key and a token; the core sends
``["q", rid, op, key, args]`` to the key's primary (or serves it at once when the
primary is this node) and keeps the request pending by ``rid``. The answer
``["a", rid, [status, value]]`` completes the token (``Complete(token, (status,
value))``). When the node a request waits on goes down, the request moves to the key's
next live owner (fail-over: a replica answers reads when the primary is down); when no
owner is left it completes with ``("error", "unavailable")`` at once, never hangs.
Increments are not retried (their outcome at the lost node is unknown): they complete
with ``("error", "outcome unknown")``. Until an owner change settles (below), a read that
misses at the new primary is asked again of the key's owners before the change, so reads
keep answering while keys are handed off.

Writes. A ``put`` is stamped by the node that makes it, with a version (a Lamport
counter and the node's name, :data:`~fabric.protocol.cache_store.Version`), and sent to
every live owner of the key at once (``["w", rid, key, value, size, ttl_ms, version]``):
one round trip. Each owner keeps the newer copy and answers ``["wa", rid, accepted,
its clock]``. The put is acknowledged once ``write_acks`` owners accepted it; a key
with fewer live owners than that refuses writes at once (``("error", "unavailable:
...")``): on the minority side of a partition, or in a cluster with fewer owners than
``write_acks``. An owner whose copy is newer refuses it (another writer stamped higher):
the writer moves its clock past that owner's and stamps the put again (at most
``_MAX_RESTAMPS`` times), so a put that completes after another one wins, as it would
through a single primary. If an owner goes down first and the acknowledgements can no
longer reach that number, the caller gets ``("error", ...)``: acknowledged means on
``write_acks`` nodes.

Operations that read before they write (``put_new``, ``incr``, ``delete``, and ``fill``
below) go to the key's primary, which stamps the version itself (above the entry's) and
sends ``["rep", wid, key, value, size, ttl_ms, version]`` (``["rdel", wid, key,
version]`` for a delete) to the other live owners, which keep the newer copy and answer
``["rack", wid]``; the caller gets the answer once ``write_acks`` copies hold it, with
the same rules for too few owners and for an owner that goes down.

Single flight (``get_or_compute``). The primary keeps a
:class:`~fabric.protocol.cache_flight.Flights` of ``goc`` requests per missing key: the
first is answered ``compute``, the others wait; the leader's ``fill`` stores the value
(a write like ``put``) and answers every waiter with it; its ``abandon`` (its function
raised) or its node going down makes the next waiter the leader. Concurrent misses for
one key anywhere in the cluster therefore compute once.

Read repair. ``read_all`` asks every live owner for its copy (``getv``), answers with the
newest, and sends that copy (``rep``, no acknowledgement needed) to each owner whose copy
was older or missing.

Hand-off. When the live owner set changes, :func:`plan_handoff` lists what this node
sends where; a timer sends it in batches of ``handoff_batch`` entries (``["ho", hid,
[[key, value, size, ttl_ms, version], ...]]``, answered ``["hack", hid]``) so the loop
keeps serving meanwhile, and counts every entry sent (``stats.handoffs``). A copy that
leaves this node is dropped only once its new owner acknowledged it. When a change
settles, copies this node holds without owning the key (strays: a plan made during a heal
from a view already outdated sends copies to a node that turns out not to own them) are
sent to the key's owners and dropped the same way, and the node sends every other live
owner a digest of the copies both hold (``["dig", xor, count]``,
:mod:`fabric.protocol.cache_digest`); an owner whose own digest differs answers with its
``(key, version)`` list (``["dkeys", [[key, version]...], last]``, in chunks) and the
digest's sender hands it, in ordinary batches, every copy it lacks or holds older. So a
sender that dies after the change settled at the key's other owner (a hand-off longer
than ``handoff_grace``) costs no copy. Plans start from
the last *settled* placement (no change for ``handoff_grace`` seconds, this node's
hand-off done), not from the one just replaced: when a second change comes while the
first one's copies are still moving (their sender died right after a heal, say), the
two are planned as one and the survivors send what the dead sender could not. ``leave`` is
the graceful stop: the node plans as if it were gone, sends everything, and completes
its token once every batch is acknowledged (or its target went down); it keeps answering
from its store until then.

Deletes. ``del`` is written like a put (``["wd", rid, key, size, ttl_ms, version]``,
the same re-stamping): every owner replaces the value with a *tombstone* of the delete's
version that lives ``tombstone_ttl`` seconds (:meth:`CacheStore.bury`), so an older copy
that arrives later (a hand-off in flight, a replica, a read repair) is refused instead of
bringing the key back. Tombstones travel in hand-offs and digests; a read that finds one
answers ``gone``, a miss that the requester does not ask the key's previous owners about.

Near cache (``near_entries`` > 0). A read whose primary is another node is first looked
up in this node's near cache; a miss asks the primary with ``nget``, which answers
``nhit`` with the value and its remaining TTL and remembers this node as a *reader* of
the key. Every owner that changes a key (a write, a replica copy, a hand-off, a delete)
sends ``["inv", key]`` to the key's readers and forgets them. A near copy also expires
after ``near_ttl`` seconds (its staleness bound when an owner forgot its readers: it
tracks at most ``_READERS_MAX`` keys, and a change of owners moves keys away from the
owner that knew), and the whole near cache is emptied on every change of owners. A
node's own writes drop its near copy at once.

Expiry and memory: see :mod:`fabric.protocol.cache_store`; a ``sweep`` timer runs every
``sweep_interval`` seconds with ``sweep_budget`` entries at most.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from fabric.protocol.cache_digest import digest, lacking, shared_copies
from fabric.protocol.cache_flight import Flights
from fabric.protocol.cache_placement import Move, Placement, plan_handoff
from fabric.protocol.cache_store import NO_VERSION, CacheStore, Entry, Version
from fabric.protocol.effects import Complete, Effect, Log, Send, SetTimer
from fabric.types import Pid

__all__ = ["OPS", "CacheCore", "Result"]

Result = tuple[str, Any]  # (status, value): hit, miss, ok, exists, compute, error
OPS = frozenset({"get", "nget", "mget", "put", "del", "incr", "goc", "fill", "abandon",
                 "getv"})
_RETRIED = frozenset({"get", "nget", "mget", "put", "del", "goc", "fill", "abandon", "getv"})
_READERS_MAX = 100_000  # keys whose near-cache readers an owner tracks (then it forgets all)
_WRITES = frozenset({"put", "del", "incr", "fill"})
_SWEEP = ("sweep",)
_HANDOFF = ("handoff",)
_SETTLE = ("settle",)
_KEY_LIST_CHUNK = 4096  # (key, version) pairs per "dkeys" message
_MAX_RESTAMPS = 8  # a put re-stamped this often against newer copies fails
_OWNERS_MEMO = 65_536  # ring lookups remembered (a request costs one dict lookup, not a walk)
UNAVAILABLE: Result = ("error", "unavailable: every owner of the key is down")


@dataclass(slots=True)
class _Request:
    """A request this node started, waiting on ``target`` (or on several: a gather)."""

    token: Any
    op: str
    key: Any
    args: list[Any]
    target: str
    tried: set[str]
    gather: dict[str, Any] | None = None  # read_all: owner -> its getv answer
    waiting: set[str] = field(default_factory=set)  # read_all: owners yet to answer
    fallback: list[str] = field(default_factory=list)  # previous owners to ask on a miss


@dataclass(slots=True)
class _DirectWrite:
    """A put (or a delete's tombstone) this node sends to every owner of the key at
    once, stamped here."""

    token: Any
    key: Any
    row: list[Any]  # value, size, ttl_ms
    attempts: int
    tomb: bool = False  # a delete: the row is a tombstone
    existed: bool = False  # a delete: some owner held a live value
    needed: int = 0  # acknowledgements still needed
    waiting: set[str] = field(default_factory=set)  # owners yet to answer


@dataclass(slots=True)
class _Write:
    """A write this node stamped, waiting for replicas' acknowledgements."""

    origin: str
    rid: int
    result: Result
    needed: int  # acknowledgements still needed from replicas
    waiting: set[str]


class CacheCore:
    """One node's part of the cache ``name`` (see the module docstring)."""

    def __init__(self, name: str, me: str, *, replicas: int = 2, write_acks: int | None = None,
                 max_entries: int = 1_000_000, max_bytes: int = 256 << 20,
                 sweep_interval: float = 1.0, sweep_budget: int = 1000,
                 handoff_batch: int = 256, handoff_grace: float = 5.0,
                 near_entries: int = 0, near_ttl: float = 1.0,
                 tombstone_ttl: float = 60.0) -> None:
        if write_acks is not None and not 1 <= write_acks <= replicas:
            raise ValueError(f"write_acks must be 1..replicas ({replicas}), not {write_acks}")
        self.name = name
        self.me = me
        self.replicas = replicas
        self.write_acks = replicas if write_acks is None else write_acks
        self.store = CacheStore(max_entries, max_bytes)
        self.stats = self.store.stats
        # The near cache: copies of other primaries' keys this node read, invalidated by
        # the owners (which remember their readers) and never older than near_ttl.
        self.near = CacheStore(near_entries, 1 << 62) if near_entries > 0 else None
        self.near_ttl_ms = max(1, int(near_ttl * 1000))
        self.tombstone_ttl_ms = max(1, int(tombstone_ttl * 1000))
        self._readers: dict[Any, set[str]] = {}  # key -> nodes with it in a near cache
        self.sweep_interval = sweep_interval
        self.sweep_budget = sweep_budget
        self.handoff_batch = handoff_batch
        self.handoff_grace = handoff_grace
        self._service = f"cache:{name}"
        self._declared: set[str] = set()  # owners as the runtime reports them (pg)
        self._up: set[str] = set()  # peers with a session
        self.placement = Placement((), replicas)
        # key -> its owners, a memo of ring walks for requests (cleared on every change)
        self._owners: dict[Any, list[str]] = {}
        # The placement of the last settled moment (no change for handoff_grace seconds and
        # this node's hand-off done): reads that miss during a move are asked again of its
        # owners, and moves on standby (sender -> moves, see plan_handoff) wait until then.
        self._settled: Placement = self.placement
        self._standby: dict[str, list[Move]] = {}
        self._pending: dict[int, _Request] = {}
        self._writes: dict[int, _Write] = {}
        self._direct: dict[int, _DirectWrite] = {}  # rid -> a put this node stamped
        self._flights: Flights[tuple[str, int]] = Flights()
        self._next_id = 0
        self._clock = 0  # Lamport counter for versions
        self._moves: deque[Move] = deque()
        # hid -> (target, keys to drop once acknowledged): a copy that leaves this node
        # stays here until its new owners confirmed it, so no death in between loses it
        self._handoff_acks: dict[int, tuple[str, list[Any]]] = {}
        self._drop_after: dict[Any, set[int]] = {}  # key -> hids it waits for
        self._dropping: set[Any] = set()  # keys of the batch being built that will go
        self._leaving = False
        self._leave_token: Any = None
        # peer -> the (key, version) list it is sending after a digest mismatch
        self._key_lists: dict[str, dict[Any, Version]] = {}

    # -- ServiceCore ----------------------------------------------------------------------

    @property
    def service(self) -> str:
        return self._service

    @property
    def topic_prefix(self) -> bytes | None:
        return None

    def on_nodeup(self, peer: str, now: float) -> list[Effect]:
        self._up.add(peer)
        return self._replace_placement(now)

    def on_nodedown(self, peer: str, reason: str, now: float) -> list[Effect]:
        self._up.discard(peer)
        self._key_lists.pop(peer, None)
        if self._readers:
            for readers in self._readers.values():
                readers.discard(peer)
        out: list[Effect] = []
        self._moves.extend(self._standby.pop(peer, ()))  # it cannot send them any more
        for rid, req in list(self._pending.items()):
            if req.gather is not None:
                if peer in req.waiting:
                    req.waiting.discard(peer)
                    self._finish_gather(rid, req, now, out)
            elif req.target == peer:
                self._retry(rid, req, now, out)
        for rid, direct in list(self._direct.items()):
            if peer in direct.waiting:
                direct.waiting.discard(peer)
                if len(direct.waiting) < direct.needed:
                    del self._direct[rid]
                    out.append(Complete(direct.token, (
                        "error", f"write reached fewer than {self.write_acks} copies: "
                                 f"owner {peer} went down")))
        for wid, write in list(self._writes.items()):
            if peer in write.waiting:
                write.waiting.discard(peer)
                if len(write.waiting) < write.needed:
                    del self._writes[wid]
                    self._answer(write.origin, write.rid, (
                        "error", f"write reached fewer than {self.write_acks} copies: "
                                 f"replica {peer} went down"), now, out)
        for _key, leader in self._flights.drop_where(lambda w: w[0] == peer):
            self._answer(leader[0], leader[1], ("compute", None), now, out)
        for hid, (target, _) in list(self._handoff_acks.items()):
            if target == peer:
                self._handoff_acked(hid, False, now)  # never confirmed: the copy stays
        out += self._replace_placement(now)
        if self._moves:
            out.append(SetTimer(_HANDOFF, now))
        self._maybe_left(out)
        return out

    def on_message(self, peer: str, payload: Any, now: float) -> list[Effect]:
        out: list[Effect] = []
        try:
            self._dispatch(peer, payload, now, out)
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            out.append(Log("warning", "cache_bad_message",
                           {"cache": self.name, "peer": peer, "error": repr(exc)}))
        return out

    def on_publish(self, payload: Any, now: float) -> list[Effect]:
        return []

    def on_timer(self, key: Any, now: float) -> list[Effect]:
        if key == _SWEEP:
            self.store.sweep(now, self.sweep_budget)
            return [SetTimer(_SWEEP, now + self.sweep_interval)]
        if key == _HANDOFF:
            return self._handoff_step(now)
        if key == _SETTLE:
            if self._moves or self._handoff_acks:
                return [SetTimer(_SETTLE, now + self.handoff_grace)]
            self._settled = self.placement
            self._standby.clear()
            return self._rehome_strays(now) + self._send_digests(now)
        return []

    def on_process_exit(self, pid: Pid, reason: Any, now: float) -> list[Effect]:
        return []

    # -- API for the runtime ----------------------------------------------------------------

    def start(self, now: float) -> list[Effect]:
        """The sweep timer (once, when the runtime starts hosting the core)."""
        return [SetTimer(_SWEEP, now + self.sweep_interval)]

    def set_owners(self, owners: set[str], now: float) -> list[Effect]:
        """The owner set as the runtime sees it (the pg group's nodes)."""
        self._declared = set(owners)
        return self._replace_placement(now)

    def read_local(self, key: Any, now: float) -> Entry | None | bool:
        """A read served here without a message when this node is the key's primary:
        the entry or None (a miss); False when another node is the primary."""
        owners = self._owners.get(key) or self._owners_of(key)
        if not owners or owners[0] != self.me:
            return False
        return self.store.get(key, now)

    def read_near(self, key: Any, now: float) -> Entry | None:
        """This node's near copy of ``key`` (None: none, or no near cache)."""
        return None if self.near is None else self.near.get(key, now)

    def request(self, token: Any, op: str, key: Any, args: list[Any],
                now: float) -> list[Effect]:
        """Start ``op`` on ``key``; completes ``token`` with a :data:`Result`."""
        if op not in OPS:
            raise ValueError(f"unknown cache operation {op!r}")
        out: list[Effect] = []
        owners = self._owners.get(key) or self._owners_of(key)
        if not owners:
            out.append(Complete(token, UNAVAILABLE))
            return out
        if op in _WRITES and self.near is not None:
            self.near.delete(key)  # this node's own write: its near copy is stale
        if op == "put" and not args[3]:
            self._direct_write(_DirectWrite(token, key, args[:3], 0), owners, now, out)
            return out
        if op == "del":  # a tombstone, written like a put (see _direct_write)
            row = [None, len(str(key)), self.tombstone_ttl_ms]
            self._direct_write(_DirectWrite(token, key, row, 0, tomb=True), owners, now, out)
            return out
        rid = self._new_id()
        req = _Request(token, op, key, args, owners[0], {owners[0]})
        if op in ("get", "nget") and self._settled is not self.placement:
            req.fallback = [n for n in self._settled.owners(key)
                            if n not in owners[:1] and self._is_live(n)]
        self._pending[rid] = req
        self._send_request(rid, req, now, out)
        return out

    def read_all(self, token: Any, key: Any, now: float) -> list[Effect]:
        """Read every live owner's copy, answer the newest, repair the older ones."""
        out: list[Effect] = []
        owners = self.placement.owners(key)
        if not owners:
            out.append(Complete(token, UNAVAILABLE))
            return out
        rid = self._new_id()
        req = _Request(token, "getv", key, [], owners[0], set(owners), gather={},
                       waiting=set(owners))
        self._pending[rid] = req
        for owner in owners:
            if owner == self.me:
                self._serve(self.me, rid, "getv", key, [], now, out)
            else:
                out.append(Send(owner, ["q", rid, "getv", key, []]))
        return out

    def in_flight(self) -> int:
        """How many of this node's requests wait for an answer (observability, tests)."""
        return len(self._pending) + len(self._direct)

    def cancel(self, token: Any) -> None:
        """Forget the request of ``token`` (its caller stopped waiting)."""
        for rid, req in list(self._pending.items()):
            if req.token == token:
                del self._pending[rid]
        for rid, direct in list(self._direct.items()):
            if direct.token == token:
                del self._direct[rid]

    def leave(self, token: Any, now: float) -> list[Effect]:
        """Hand every entry to the owners that remain; completes ``token`` when done."""
        self._leaving = True
        self._leave_token = token
        out = self._replace_placement(now)
        while self._moves:  # bounded by the queue: every step takes a batch
            out += self._handoff_step(now)
        self._maybe_left(out)
        return out

    def owners_of(self, key: Any) -> list[str]:
        """The key's live owners, primary first."""
        return list(self._owners_of(key))

    def _owners_of(self, key: Any) -> list[str]:
        """The key's live owners from the memo (filled here): shared, do not change it."""
        owners = self._owners.get(key)
        if owners is None:
            owners = self.placement.owners(key)
            if len(self._owners) >= _OWNERS_MEMO:
                self._owners.clear()
            self._owners[key] = owners
        return owners

    def counters(self) -> dict[str, int]:
        stats = self.stats.as_dict()
        stats["entries"] = len(self.store)
        stats["bytes"] = self.store.bytes
        # entries still to send, plus batches sent and not yet acknowledged
        stats["handoff_pending"] = len(self._moves) + len(self._handoff_acks)
        if self.near is not None:
            stats["near_hits"] = self.near.stats.hits
            stats["near_entries"] = len(self.near)
        return stats

    # -- the client side ------------------------------------------------------------------

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _is_live(self, node: str) -> bool:
        return node == self.me or node in self._up

    def _send_request(self, rid: int, req: _Request, now: float, out: list[Effect]) -> None:
        if req.target == self.me:
            self._serve(self.me, rid, req.op, req.key, req.args, now, out)
        else:
            out.append(Send(req.target, ["q", rid, req.op, req.key, req.args]))

    def _retry(self, rid: int, req: _Request, now: float, out: list[Effect]) -> None:
        if req.op not in _RETRIED:
            del self._pending[rid]
            out.append(Complete(req.token, ("error", f"outcome unknown: owner {req.target} "
                                                     "went down during the operation")))
            return
        nxt = next((n for n in self.placement.owners(req.key)
                    if n not in req.tried and self._is_live(n)), None)
        if nxt is None:
            del self._pending[rid]
            out.append(Complete(req.token, UNAVAILABLE))
            return
        req.target = nxt
        req.tried.add(nxt)
        self._send_request(rid, req, now, out)

    def _on_answer(self, peer: str, rid: int, result: Result, now: float,
                   out: list[Effect]) -> None:
        req = self._pending.get(rid)
        if req is None:
            return  # cancelled, or answered by someone else after a fail-over
        if req.gather is not None:
            if peer in req.waiting:
                req.waiting.discard(peer)
                req.gather[peer] = result
                self._finish_gather(rid, req, now, out)
            return
        if peer != req.target:
            return
        if result[0] == "miss" and req.fallback:
            nxt = req.fallback.pop(0)
            req.target = nxt
            req.tried.add(nxt)
            self._send_request(rid, req, now, out)
            return
        del self._pending[rid]
        if result[0] == "gone":  # deleted: a miss that previous owners cannot overrule
            result = ("miss", None)
        elif result[0] == "nhit":
            value, ttl_ms = result[1]
            self._keep_near(req.key, value, ttl_ms, now)
            result = ("hit", value)
        elif req.op == "mget" and len(req.args) > 1 and req.args[1] and result[0] == "ok":
            for key, got in zip(req.args[0], result[1], strict=True):
                if got is not None:
                    self._keep_near(key, got[0], got[1], now)
        out.append(Complete(req.token, result))

    def _keep_near(self, key: Any, value: Any, ttl_ms: int | None, now: float) -> None:
        """A value read from its owner, which now counts this node among its readers."""
        if self.near is not None:
            near_ms = self.near_ttl_ms if ttl_ms is None else min(ttl_ms, self.near_ttl_ms)
            self.near.put(key, value, 1, near_ms, NO_VERSION, now)

    def _finish_gather(self, rid: int, req: _Request, now: float, out: list[Effect]) -> None:
        if req.waiting or req.gather is None:
            return
        del self._pending[rid]
        copies = {n: r[1] for n, r in req.gather.items() if r[0] == "v"}
        if not req.gather:
            out.append(Complete(req.token, UNAVAILABLE))
            return
        if not copies:
            out.append(Complete(req.token, ("miss", None)))
            return
        best_node = max(copies, key=lambda n: _version(copies[n][3]))
        value, size, ttl_ms, version, tomb = copies[best_node]
        for owner in req.gather:
            if owner in copies and _version(copies[owner][3]) == _version(version):
                continue
            self.stats.repairs += 1
            if owner == self.me:
                self._apply_write(req.key, value, size, ttl_ms, _version(version), tomb, now,
                                  out)
            elif tomb:  # the newest copy is a delete: it wins over older values
                out.append(Send(owner, ["rdel", 0, req.key, size, ttl_ms, version]))
            else:
                out.append(Send(owner, ["rep", 0, req.key, value, size, ttl_ms, version]))
        out.append(Complete(req.token, ("miss", None) if tomb else ("hit", value)))

    def _direct_write(self, write: _DirectWrite, owners: list[str], now: float,
                      out: list[Effect]) -> None:
        """Stamp a put here and send it to every live owner of the key at once: one round
        trip, where a write through the primary takes two. A copy newer than the stamp
        (another writer's) refuses it and the put is stamped again above that copy."""
        short = self._too_few_owners(owners)
        if short is not None:
            out.append(Complete(write.token, ("error", short)))
            return
        self._clock += 1
        version = (self._clock, self.me)
        value, size, ttl_ms = write.row
        write.needed = self.write_acks
        write.waiting = set(owners)
        rid = self._new_id()
        self._direct[rid] = write
        for owner in owners:
            if owner == self.me:
                accepted, existed = self._apply_write(write.key, value, size, ttl_ms, version,
                                                      write.tomb, now, out)
                self._on_direct_ack(self.me, rid, accepted, self._clock, now, out, existed)
                if not accepted:
                    return  # re-stamped and sent again by the line above
            elif write.tomb:
                out.append(Send(owner, ["wd", rid, write.key, size, ttl_ms, list(version)]))
            else:
                out.append(Send(owner, ["w", rid, write.key, value, size, ttl_ms,
                                        list(version)]))

    def _apply_write(self, key: Any, value: Any, size: int, ttl_ms: int | None,
                     version: Version, tomb: bool, now: float,
                     out: list[Effect]) -> tuple[bool, bool]:
        """A stamped put or tombstone at this owner: (kept, a live value was there)."""
        if tomb:
            accepted, existed = self.store.bury(key, size, ttl_ms or self.tombstone_ttl_ms,
                                                version, now)
        else:
            accepted, existed = self.store.merge(key, value, size, ttl_ms, version, now), False
        if accepted:
            self._invalidate(key, out)
        return accepted, existed

    def _on_direct_ack(self, peer: str, rid: int, accepted: bool, clock: int, now: float,
                       out: list[Effect], existed: bool = False) -> None:
        write = self._direct.get(rid)
        if write is None or peer not in write.waiting:
            return  # late, or from an attempt already replaced
        write.existed = write.existed or existed
        if not accepted:
            del self._direct[rid]
            self._clock = max(self._clock, clock)
            owners = self.placement.owners(write.key)
            if write.attempts >= _MAX_RESTAMPS or not owners:
                out.append(Complete(write.token, (
                    "error", f"write kept losing to newer copies ({write.attempts + 1} "
                             "stamps)") if owners else UNAVAILABLE))
                return
            write.attempts += 1
            self._direct_write(write, owners, now, out)
            return
        write.waiting.discard(peer)
        write.needed -= 1
        if write.needed <= 0:
            del self._direct[rid]
            out.append(Complete(write.token, ("ok", write.existed if write.tomb else True)))

    def _answer(self, origin: str, rid: int, result: Result, now: float,
                out: list[Effect]) -> None:
        if origin == self.me:
            self._on_answer(self.me, rid, result, now, out)
        else:
            out.append(Send(origin, ["a", rid, list(result)]))

    # -- the owner side -------------------------------------------------------------------

    def _dispatch(self, peer: str, msg: Any, now: float, out: list[Effect]) -> None:
        tag = msg[0]
        if tag == "q":
            op = msg[2]
            if op not in OPS or op == "del":  # a delete is a tombstone write ("wd")
                raise ValueError(f"unknown op {op!r}")
            self._serve(peer, int(msg[1]), op, msg[3], list(msg[4]), now, out)
        elif tag == "a":
            result = msg[2]
            self._on_answer(peer, int(msg[1]), (str(result[0]), result[1]), now, out)
        elif tag == "rep":
            _, wid, key, value, size, ttl_ms, version = msg
            if self.store.merge(key, value, int(size), ttl_ms, _version(version), now):
                self._invalidate(key, out)
            self._clock = max(self._clock, int(version[0]))
            if wid:
                out.append(Send(peer, ["rack", wid]))
        elif tag == "rdel":  # a tombstone from read repair
            _, wid, key, size, ttl_ms, version = msg
            self._apply_write(key, None, int(size), ttl_ms, _version(version), True, now, out)
            self._clock = max(self._clock, int(version[0]))
        elif tag in ("w", "wd"):
            if tag == "w":
                _, rid, key, value, size, ttl_ms, version = msg
            else:
                (_, rid, key, size, ttl_ms, version), value = msg, None
            stamp = _version(version)
            self._clock = max(self._clock, stamp[0])
            accepted, existed = self._apply_write(key, value, int(size), ttl_ms, stamp,
                                                  tag == "wd", now, out)
            out.append(Send(peer, ["wa", rid, accepted, self._clock, existed]))
        elif tag == "wa":
            self._on_direct_ack(peer, int(msg[1]), bool(msg[2]), int(msg[3]), now, out,
                                len(msg) > 4 and bool(msg[4]))
        elif tag == "rack":
            self._on_replica_ack(peer, int(msg[1]), now, out)
        elif tag == "ho":
            for key, value, size, ttl_ms, version, tomb in msg[2]:
                self._apply_write(key, value, int(size), ttl_ms, _version(version),
                                  bool(tomb), now, out)
                self._clock = max(self._clock, int(version[0]))
            out.append(Send(peer, ["hack", msg[1]]))
        elif tag == "dig":  # a co-owner's digest of the copies we share
            mine = self._shared_copies(now).get(peer, {})
            if digest(mine) != (int(msg[1]), int(msg[2])):
                rows = [[key, list(version)] for key, version in mine.items()]
                for start in range(0, max(1, len(rows)), _KEY_LIST_CHUNK):
                    last = start + _KEY_LIST_CHUNK >= len(rows)
                    out.append(Send(peer, ["dkeys", rows[start:start + _KEY_LIST_CHUNK],
                                           last]))
        elif tag == "dkeys":  # its copies, after our digest differed from its own
            theirs = self._key_lists.setdefault(peer, {})
            for key, version in msg[1]:
                theirs[key] = _version(version)
            if msg[2]:
                del self._key_lists[peer]
                mine = self._shared_copies(now).get(peer, {})
                for key in lacking(mine, theirs):
                    self._moves.append(Move(key, (peer,), False))
                if self._moves:
                    out.append(SetTimer(_HANDOFF, now))
        elif tag == "inv":
            if self.near is not None:
                self.near.delete(msg[1])
        elif tag == "hack":
            self._handoff_acked(int(msg[1]), True, now)
            self._maybe_left(out)
        else:
            raise ValueError(f"unknown message tag {tag!r}")

    def _too_few_owners(self, owners: list[str]) -> str | None:
        """Why a write to a key with these live owners cannot be acknowledged, or None."""
        if len(owners) >= self.write_acks:
            return None
        return (f"unavailable: {len(owners)} of the {self.write_acks} owners a write needs "
                "are reachable")

    def _serve(self, origin: str, rid: int, op: str, key: Any, args: list[Any], now: float,
               out: list[Effect]) -> None:
        store = self.store
        if op in _WRITES:
            short = self._too_few_owners(self._owners_of(key))
            if short is not None:  # refused before anything is applied
                self._answer(origin, rid, ("error", short), now, out)
                if op == "fill":
                    for waiter in self._flights.finish(key):
                        self._answer(waiter[0], waiter[1], ("error", short), now, out)
                return
        if op == "get":
            entry = store.get(key, now)
            self._answer(origin, rid, self._miss(key, now) if entry is None else (
                "hit", entry.value), now, out)
        elif op == "nget":
            entry = store.get(key, now)
            if entry is None:
                self._answer(origin, rid, self._miss(key, now), now, out)
                return
            self._add_reader(key, origin)
            self._answer(origin, rid, ("nhit", [entry.value, entry.ttl_ms(now)]), now, out)
        elif op == "mget":  # args: [keys] or [keys, near]
            near = len(args) > 1 and bool(args[1])
            found: list[list[Any] | None] = []
            for k in args[0]:
                entry = store.get(k, now)
                if entry is None:
                    found.append(None)
                elif near:  # as nget: remember the reader, send the TTL left
                    self._add_reader(k, origin)
                    found.append([entry.value, entry.ttl_ms(now)])
                else:
                    found.append([entry.value])
            self._answer(origin, rid, ("ok", found), now, out)
        elif op == "getv":
            entry = store.peek_any(key, now)
            self._answer(origin, rid, ("miss", None) if entry is None else (
                "v", [entry.value, entry.size, entry.ttl_ms(now), list(entry.version),
                      entry.tomb]), now, out)
        elif op == "put":
            value, size, ttl_ms, only_new = args
            if only_new:
                entry = store.get(key, now)
                if entry is not None:
                    self._answer(origin, rid, ("exists", entry.value), now, out)
                    return
            self._write(origin, rid, key, value, int(size), ttl_ms, ("ok", True), now, out)
        elif op == "incr":
            by, ttl_ms = args
            entry = store.get(key, now)
            base = 0 if entry is None else entry.value
            if type(base) is not int or type(by) is not int:
                self._answer(origin, rid, ("error", f"incr needs an int value, the key holds "
                                                    f"{type(base).__name__}"), now, out)
                return
            total = base + by
            if entry is not None and entry.expires_at is not None and ttl_ms is None:
                ttl_ms = entry.ttl_ms(now)  # an increment keeps the key's deadline
            self._write(origin, rid, key, total, 9 + len(str(key)), ttl_ms, ("ok", total),
                        now, out)
        elif op == "goc":
            entry = store.get(key, now)
            if entry is not None:
                self._answer(origin, rid, ("hit", entry.value), now, out)
            elif self._flights.join(key, (origin, rid)):
                self._answer(origin, rid, ("compute", None), now, out)
        elif op == "fill":
            value, size, ttl_ms = args
            self._write(origin, rid, key, value, int(size), ttl_ms, ("ok", True), now, out)
            for waiter in self._flights.finish(key):
                self._answer(waiter[0], waiter[1], ("hit", value), now, out)
        elif op == "abandon":
            self._answer(origin, rid, ("ok", None), now, out)
            leader = self._flights.abandon(key)
            if leader is not None:
                self._answer(leader[0], leader[1], ("compute", None), now, out)

    def _add_reader(self, key: Any, reader: str) -> None:
        if len(self._readers) >= _READERS_MAX:
            self._readers.clear()  # their copies expire within near_ttl anyway
        self._readers.setdefault(key, set()).add(reader)

    def _invalidate(self, key: Any, out: list[Effect]) -> None:
        """``key`` changed here: the nodes that hold it in a near cache drop it."""
        readers = self._readers.pop(key, None)
        if readers:
            for reader in readers:
                if reader == self.me:
                    if self.near is not None:
                        self.near.delete(key)
                elif reader in self._up:
                    out.append(Send(reader, ["inv", key]))

    def _miss(self, key: Any, now: float) -> Result:
        """A read's answer when ``key`` has no live value here: ``gone`` when a tombstone
        says it was deleted (so a reader does not ask the key's previous owners, whose
        copies may predate the delete), else ``miss``."""
        return ("gone", None) if self.store.peek_any(key, now) is not None else ("miss", None)

    def _stamp(self, floor: Version) -> Version:
        self._clock = max(self._clock, floor[0]) + 1
        return (self._clock, self.me)

    def _write(self, origin: str, rid: int, key: Any, value: Any, size: int,
               ttl_ms: int | None, result: Result, now: float, out: list[Effect]) -> None:
        version = self._stamp(self.store.peek_version(key, now))
        self.store.put(key, value, size, ttl_ms, version, now)
        self._invalidate(key, out)
        self._replicate(origin, rid, key,
                        ["rep", 0, key, value, size, ttl_ms, list(version)], result, now, out)

    def _replicate(self, origin: str, rid: int, key: Any, message: list[Any], result: Result,
                   now: float, out: list[Effect]) -> None:
        owners = self._owners_of(key)
        replicas = [n for n in owners if n != self.me]
        # _serve checked that the key has write_acks live owners; this copy counts if
        # this node is one of them.
        needed = self.write_acks - (1 if len(replicas) < len(owners) else 0)
        if not replicas or needed <= 0:
            for replica in replicas:
                out.append(Send(replica, message))  # wid 0: no acknowledgement expected
            self._answer(origin, rid, result, now, out)
            return
        wid = self._new_id()
        message[1] = wid
        self._writes[wid] = _Write(origin, rid, result, needed, set(replicas))
        for replica in replicas:
            out.append(Send(replica, message))

    def _on_replica_ack(self, peer: str, wid: int, now: float, out: list[Effect]) -> None:
        write = self._writes.get(wid)
        if write is None or peer not in write.waiting:
            return
        write.waiting.discard(peer)
        write.needed -= 1
        if write.needed <= 0:
            del self._writes[wid]
            self._answer(write.origin, write.rid, write.result, now, out)

    # -- placement and hand-off -----------------------------------------------------------

    def _replace_placement(self, now: float) -> list[Effect]:
        live = {n for n in self._declared if self._is_live(n)}
        if self._leaving:
            live.discard(self.me)
        if live == self.placement.members:
            return []
        old = self.placement
        self.placement = old.with_members(live)
        self._owners.clear()
        if self.near is not None:  # who tracks its readers may have changed
            for key in list(self.near.keys()):
                self.near.delete(key)
        if not old.members:
            self._settled = self.placement  # the first owners: nothing was anywhere before
        # Moves not sent yet are still owed (their targets are checked when sent).
        for move in plan_handoff(self.me, old, self.placement, self.store.keys()):
            if move.standby_for is None:
                self._moves.append(move)
            else:
                self._standby.setdefault(move.standby_for, []).append(move)
        out: list[Effect] = [SetTimer(_SETTLE, now + self.handoff_grace)]
        if self._moves:
            out.append(SetTimer(_HANDOFF, now))
        return out

    def _rehome_strays(self, now: float) -> list[Effect]:
        """Copies this node holds without owning them once a change settled (a hand-off
        planned from a view that was already outdated, during a heal, say): sent to the
        key's owners (who keep the newer copy) and dropped once they have it."""
        if self._leaving:
            return []
        held = self.store.keys()  # a copy: the loop below does not change the store
        for key in held:
            if key not in self._drop_after:
                owners = self.placement.owners(key)
                if self.me not in owners:
                    self._moves.append(Move(key, tuple(owners), True))
        return [SetTimer(_HANDOFF, now)] if self._moves else []

    def _shared_copies(self, now: float) -> dict[str, dict[Any, Version]]:
        held = []
        keys = self.store.keys()  # a copy: peek_any drops expired entries
        for key in keys:
            entry = self.store.peek_any(key, now)
            if entry is not None:
                held.append((key, entry.version))
        return shared_copies(self.me, self.placement, held)

    def _send_digests(self, now: float) -> list[Effect]:
        """Once a change settled: tell every other live owner the digest of the copies
        this node shares with it (see :mod:`fabric.protocol.cache_digest`)."""
        if self._leaving or self.me not in self.placement.members:
            return []
        shared = self._shared_copies(now)
        return [Send(peer, ["dig", *digest(shared.get(peer, {}))])
                for peer in sorted(self.placement.members - {self.me})]

    def _handoff_step(self, now: float) -> list[Effect]:
        out: list[Effect] = []
        batches: dict[str, list[list[Any]]] = {}
        for _ in range(min(self.handoff_batch, len(self._moves))):
            move = self._moves.popleft()
            entry = self.store.peek_any(move.key, now)  # tombstones travel too
            if entry is None:
                continue
            if move.drop:
                self._dropping.add(move.key)
            row = [move.key, entry.value, entry.size, entry.ttl_ms(now), list(entry.version),
                   entry.tomb]
            live = [t for t in move.targets if self._is_live(t)]
            for target in live:
                batches.setdefault(target, []).append(row)
            if move.drop and not live and not self._leaving:
                self._drop_if_not_owner(move.key)  # its owners have it already
        for target, rows in batches.items():
            hid = self._new_id()
            dropping = [row[0] for row in rows if row[0] in self._dropping]
            self._handoff_acks[hid] = (target, dropping)
            for key in dropping:
                self._drop_after.setdefault(key, set()).add(hid)
            self.stats.handoffs += len(rows)
            out.append(Send(target, ["ho", hid, rows]))
        self._dropping.clear()
        if self._moves:
            out.append(SetTimer(_HANDOFF, now))
        return out

    def _handoff_acked(self, hid: int, confirmed: bool, now: float) -> None:
        """A hand-off batch was acknowledged (or its target went down, unconfirmed)."""
        found = self._handoff_acks.pop(hid, None)
        if found is None:
            return
        for key in found[1]:
            waiting = self._drop_after.get(key)
            if waiting is None:
                continue
            waiting.discard(hid)
            if not confirmed:
                del self._drop_after[key]  # keep the copy: a later plan moves it
            elif not waiting:
                del self._drop_after[key]
                if not self._leaving:
                    self._drop_if_not_owner(key)

    def _drop_if_not_owner(self, key: Any) -> None:
        if self.me not in self.placement.owners(key):
            self.store.delete(key)

    def _maybe_left(self, out: list[Effect]) -> None:
        if self._leave_token is None or self._moves or self._handoff_acks:
            return
        for key in list(self.store.keys()):
            self.store.delete(key)
        out.append(Complete(self._leave_token, ("ok", None)))
        self._leave_token = None


def _version(raw: Any) -> Version:
    return (int(raw[0]), str(raw[1]))
