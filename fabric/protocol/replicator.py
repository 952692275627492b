"""The CRDT replicator: replicated keys with delta propagation, anti-entropy and quorums.

Theory of operation
-------------------
Every node runs one :class:`ReplicatorCore` (service ``"ddata"``). It holds named keys,
each a CRDT value of the type its :class:`Key` declares (see :mod:`fabric.protocol.crdt`).
A node writes only through ``update(key, fn)``: ``fn`` gets the current value (or an empty
one) and returns the new one, with the node's :class:`~fabric.protocol.crdt.Replica`
(name + creation) ambient, so ``lambda c: c.increment(1)`` just works. The result is
stored at once; the *delta* of the update is what travels.

Three ways state moves between nodes (payloads are plain lists; ``state`` is a CRDT's
``dump`` form, or None for a deleted key)::

    ("delta", seq, [[key, state], ...])       batched deltas, every delta_interval
    ("write", rid, key, state) / ("write_ack", rid)         quorum writes
    ("read", rid, key) / ("read_reply", rid, state)         quorum reads (read repair)
    ("digest", creation, depth, [parent, ...], [[prefix, digest, count], ...])
                                        anti-entropy: tree nodes, root first, then down
    ("keys", depth, [prefix, ...], [[key, digest], ...])     the keys of differing nodes
    ("gossip", [[key, state], ...], [key, ...])              states, and wanted keys
    ("seen", [[key, seen], ...], reply)        large OR-Sets: what I have seen; send what I lack

* **Delta propagation.** Deltas of local-level updates accumulate per key and are sent to
  every connected peer in one batch per ``delta_interval``, numbered by a per-node
  sequence. A receiver that sees a sequence gap (a batch was lost) merges what it got and
  starts anti-entropy with the sender. We chose sequence numbers + anti-entropy over
  Akka's per-peer acked delta sequences or causal delta-intervals: our deltas are join
  decompositions whose causal contexts carry exact dots (see ``dots.py``), so a delta can
  be merged out of order, twice, or after a gap without breaking anything; the only risk
  of a lost delta is a replica that lacks it, which anti-entropy repairs. The sender
  keeps no per-peer delta buffers.
* **Anti-entropy** runs when a peer joins (its hello after a heal or restart; the side
  with the smaller name starts it) and every ``gossip_interval`` with the next connected
  peer in turn. Both sides keep a Merkle-style digest tree over their keys
  (:mod:`fabric.protocol.ddata_digests`): the initiator sends the root's digest; each
  side answers the nodes that differ with their children's digests (the next ``digest``
  message, one level down) or, for a node with few keys, with its keys' digests
  (``keys``); only keys whose digests differ are then exchanged, in full, both ways (a
  wanted key is not sent back when merging the state just received made both sides
  equal). A differing OR-Set or map (OR-Map and the maps built on it) of at least
  ``SEEN_MIN_ELEMENTS`` elements or keys on both sides is not sent whole: the side that
  finds it sends what it has seen (``seen``: its causal context, a version vector, and
  for a map its values' digests in buckets), the other answers with only what the first
  lacks (``missing_for``) and its own ``seen``, which the first answers alike. Converged
  replicas exchange one root digest per round; a heal after ``d`` of
  ``n`` keys changed costs about ``d * log16(n / d)`` node digests plus those keys'
  states, in about ``log16(n)`` round trips, not the whole state. A hello is repeated
  for a few gossip rounds until the peer answers: a pair that never joined would never
  exchange.
* **Consistency levels** (``write=`` / ``read=``): ``"local"``, an int N (this node
  included), ``"majority"`` (more than half of the *members*) or ``"all"``. Members are
  the configured ``members`` plus every node ever seen up, minus :meth:`forget`-ten ones:
  a node cut off in a minority counts the nodes it cannot reach, so it cannot form a
  "majority" of itself. A peer is "seen" once it says ``hello`` (or sends a digest):
  nodes without this service (hidden tools) never count. The local update is applied
  first in every case; a quorum write then sends its delta to every connected peer that
  runs the service and completes ``("ok", value)`` when
  enough have merged it (acks), or ``("error", reason)`` when the timeout expires, when
  not enough peers are connected to start with, or when too many of them go down. A
  failed write is not rolled back: it is applied here and spreads like any other.
  A quorum read asks every connected peer, merges their states into the local one (read
  repair) and completes with the merge once enough have answered.
  Read-your-writes: a write acknowledged at ``"majority"`` is held by more than M/2
  members; a later ``"majority"`` read merges more than M/2 members' states; with the
  same member count M both sets intersect, so the read returns a value that includes the
  write. This holds while every node counts the same members (configure ``members`` to
  fix M) and while no member that acknowledged it has lost it (a restart without
  durability loses a replica's state).
* **Delete** is permanent: the key becomes a tombstone (None state) that wins every
  merge and travels like a value; a deleted key cannot be used again.
* **Pruning** of dead node runs (so counters and sets do not grow with every restart):
  a replica ``(node, creation)`` is *dead* when that node's current run has another
  creation (learnt from the ``("hello", creation)`` each side sends on nodeup; two runs
  of one name never live at once), or the node was :meth:`forget`-ten. Every
  ``prune_interval``, the member with the smallest name, if every member is connected,
  proposes ``("prune_check", rid, [[key, digest, [dead, ...]], ...])`` for the keys whose
  values hold dead replicas' entries and support pruning (counters, OR-Sets,
  MV-Registers, maps). Each
  member answers ``("prune_ok", rid, [key, ...])`` with the keys whose digest equals the
  proposal's (so it holds the same, final, entries of the dead replicas) and whose
  replicas it also sees as dead. When every member agreed on a key that has not changed
  meanwhile, the proposer prunes it (``value.prune(dead)``: the dead entries fold into
  its own, the dead replica is remembered as pruned) and spreads the result as a delta.
  That meets the safety conditions of ``crdt/counters.py``: the dead replica cannot
  write, every replica holds its final entries, and one replica prunes. A key written
  continuously never matches and is not pruned; a round in progress is abandoned when a
  member goes down or the next round starts.
* **Durability**: keys named in ``durable`` (exact names, or prefixes ending in ``*``)
  emit :class:`Persist` whenever their stored state changes, *before* the effects that
  acknowledge or announce the change (the runtime writes it to sqlite); after a restart
  the runtime feeds the stored rows to :meth:`ReplicatorCore.restore` before the node
  meets its peers, so a write this node acknowledged survives its crash.
* **Subscriptions**: a local process subscribed to a key receives
  ``DataChanged(key, value)`` after every change of the key's value, whatever caused
  it, and ``DataDeleted(key)`` on delete (:mod:`fabric.protocol.events`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar, cast

from fabric.errors import LocalProtocolError, RemoteProtocolError
from fabric.protocol.crdt.base import Crdt, dump, load
from fabric.protocol.crdt.replica import Replica, acting_as, replica_from_data
from fabric.protocol.ddata_digests import DigestTree
from fabric.protocol.effects import CancelTimer, Complete, Deliver, Effect, Log, Send, SetTimer
from fabric.protocol.events import DataChanged, DataDeleted
from fabric.types import Pid

__all__ = ["ALL", "LOCAL", "MAJORITY", "Consistency", "Key", "Persist", "ReplicatorCore"]

LOCAL: Final = "local"
MAJORITY: Final = "majority"
ALL: Final = "all"
Consistency = str | int

C = TypeVar("C", bound=Crdt)

_DELTA_TIMER: Final = "delta"
_GOSSIP_TIMER: Final = "gossip"
_PRUNE_TIMER: Final = "prune"
_HELLO_REPEATS: Final = 5
# A differing OR-Set (or map) of at least this many elements (keys) is reconciled by
# "seen" (what each side lacks), not sent whole.
SEEN_MIN_ELEMENTS: Final = 64


@dataclass(frozen=True)
class Key(Generic[C]):
    """A replicated key: its name and the CRDT type of its value."""

    name: str
    type: type[C]


@dataclass(frozen=True, slots=True)
class Persist:
    """An effect: write ``key``'s state (a ``dump`` form; None: deleted) to durable storage
    before executing the effects that follow it."""

    key: str
    state: Any


@dataclass
class _PruneRound:
    rid: int
    proposals: dict[str, tuple[bytes, list[Replica]]]  # key -> (digest, dead replicas)
    waiting: set[str]
    agreed: set[str]


@dataclass
class _Request:
    token: Any
    kind: str  # "write" or "read"
    key: str
    level: Consistency
    needed: int
    timeout: float
    sent_to: set[str]
    replied: set[str] = field(default_factory=set)


class ReplicatorCore:
    """The sans-I/O replicator of one node (see the module docstring).

    Args:
        node: this node's full name.
        creation: this node run's creation (with ``node``, the writing replica).
        delta_interval: seconds between batches of deltas.
        gossip_interval: seconds between anti-entropy rounds.
        members: nodes that count for majority/all even before they were seen.
        durable: key names (or prefixes ending in ``*``) whose changes emit ``Persist``.
        prune_interval: seconds between pruning rounds (started by the smallest member).
    """

    service = "ddata"
    topic_prefix: bytes | None = None  # it never publishes: everything goes on the mesh

    def __init__(self, node: str, creation: int, *, delta_interval: float = 0.2,
                 gossip_interval: float = 2.0, members: Iterable[str] = (),
                 durable: Iterable[str] = (), prune_interval: float = 30.0) -> None:
        self.node = node
        self.replica = Replica(node, creation)
        self.delta_interval = delta_interval
        self.gossip_interval = gossip_interval
        self._data: dict[str, Crdt] = {}
        self._deleted: set[str] = set()
        self._pending: dict[str, Crdt | None] = {}  # key -> delta to send (None: deleted)
        self._digests = DigestTree(self._state_of)  # refreshed when a key changes
        self._members: set[str] = set(members) - {node}
        self._connected: set[str] = set()  # peers up at the mesh level
        # Connected peers that run this service (they said hello), in order (round robin).
        self._up: list[str] = []
        self._hellos_left: dict[str, int] = {}  # connected, not joined -> hellos to repeat
        self._next_gossip = 0
        self._delta_seq = 0
        self._received_seq: dict[str, int] = {}  # peer -> last delta batch seq this session
        self._requests: dict[int, _Request] = {}
        self._request_ids = itertools.count(1)
        self._subscribers: dict[str, list[Pid]] = {}
        self._delta_armed = False
        self._gossip_armed = False
        patterns = list(durable)
        self._durable_names = {p for p in patterns if not p.endswith("*")}
        self._durable_prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))
        self._restoring = False
        self.prune_interval = prune_interval
        self._creations: dict[str, int] = {}  # connected peer -> its run's creation
        self._forgotten: set[str] = set()
        self._prune_round: _PruneRound | None = None
        self._prune_armed = False
        self.stats = {"delta_batches": 0, "gossip_rounds": 0, "gaps": 0, "bad_payloads": 0,
                      "pruned": 0}

    # -- local API ------------------------------------------------------------------------

    def value(self, key: Key[C]) -> C | None:
        """The local value of ``key`` (None if absent or deleted); no messages."""
        current = self._data.get(key.name)
        if current is not None and type(current) is not key.type:
            raise LocalProtocolError(
                f"key {key.name!r} holds a {type(current).__name__}, not {key.type.__name__}")
        return current

    def keys(self) -> list[str]:
        return sorted(self._data)

    def members(self) -> list[str]:
        """The nodes that count for majority and all (this node included)."""
        return sorted(self._members | {self.node})

    def forget(self, node: str) -> None:
        """Stop counting ``node`` as a member (it left the cluster for good); its
        replicas' entries become prunable."""
        self._members.discard(node)
        self._forgotten.add(node)

    def update(self, key: Key[C], fn: Callable[[C], C], write: Consistency, token: Any,
               now: float, *, timeout: float = 5.0,
               timestamp: int | None = None) -> list[Effect]:
        """Apply ``fn`` to the key's value here, then replicate it at level ``write``.

        Completes ``token`` with ``("ok", value)`` or ``("error", reason)``.

        Raises:
            LocalProtocolError: bad level, or ``fn`` returned another type than the key's.
            Exception: whatever ``fn`` raised (nothing is changed then).
        """
        needed = self._needed(write)
        name = key.name
        if name in self._deleted:
            return [Complete(token, ("error", f"key {name!r} is deleted"))]
        current = self.value(key)
        with acting_as(self.replica, timestamp):
            new = fn(current if current is not None else key.type())
        if type(new) is not key.type:
            raise LocalProtocolError(
                f"update of {name!r} returned a {type(new).__name__}, not {key.type.__name__}")
        delta = new.delta
        stored = new.reset_delta()
        out: list[Effect] = []
        self._store(name, stored, current, out)
        if delta is None:
            out.append(Complete(token, ("ok", stored)))
            return out
        self._replicate(token, name, delta, write, needed, timeout, now, out)
        return out

    def delete(self, key: Key[Any], write: Consistency, token: Any, now: float, *,
               timeout: float = 5.0) -> list[Effect]:
        """Delete ``key`` for good, replicated at level ``write``."""
        needed = self._needed(write)
        out: list[Effect] = []
        self._tombstone(key.name, out)
        self._replicate(token, key.name, None, write, needed, timeout, now, out)
        return out

    def get(self, key: Key[C], read: Consistency, token: Any, now: float, *,
            timeout: float = 5.0) -> list[Effect]:
        """Read ``key`` at level ``read``; completes ``token`` with ``("ok", value or
        None)`` or ``("error", reason)``."""
        needed = self._needed(read)
        current = self.value(key)
        if needed <= 1 or key.name in self._deleted:
            return [Complete(token, ("ok", current))]
        out: list[Effect] = []
        rid = self._start(token, "read", key.name, read, needed, timeout, now, out)
        if rid is not None:
            for peer in self._up:
                out.append(Send(peer, ("read", rid, key.name)))
        return out

    def subscribe(self, key_name: str, pid: Pid, now: float) -> list[Effect]:
        """Deliver ``DataChanged(key, value)`` to ``pid`` on every change of the key
        (and its current value now, if it has one)."""
        watchers = self._subscribers.setdefault(key_name, [])
        if pid not in watchers:
            watchers.append(pid)
        current = self._data.get(key_name)
        return [] if current is None else [Deliver(pid, DataChanged(key_name, current))]

    def unsubscribe(self, key_name: str, pid: Pid) -> bool:
        watchers = self._subscribers.get(key_name, [])
        if pid not in watchers:
            return False
        watchers.remove(pid)
        if not watchers:
            del self._subscribers[key_name]
        return True

    # -- service inputs -------------------------------------------------------------------

    def on_nodeup(self, peer: str, now: float) -> list[Effect]:
        if peer == self.node:
            return []
        # The peer counts (as a member, for deltas, quorums and gossip) once it says
        # hello: a node without this service (a hidden tool, a node that does not share
        # data) never does, so it can never inflate the majority.
        self._connected.add(peer)
        self._received_seq.pop(peer, None)  # a new session: any sequence number is fine
        self._creations.pop(peer, None)  # until its hello says which run it is
        # The mesh does not lose messages, but if a hello were lost (or the peer started
        # its service late) the pair would never join: repeat it a few gossip rounds.
        self._hellos_left[peer] = _HELLO_REPEATS
        out: list[Effect] = [Send(peer, ("hello", self.replica.creation))]
        self._arm_gossip(now, out)
        return out

    def _arm_gossip(self, now: float, out: list[Effect]) -> None:
        if not self._gossip_armed:
            self._gossip_armed = True
            out.append(SetTimer(_GOSSIP_TIMER, now + self.gossip_interval))

    def _joined(self, peer: str, creation: Any, now: float, out: list[Effect]) -> None:
        """``peer`` runs this service as run ``creation`` (from its hello or a digest)."""
        if type(creation) is not int:
            raise RemoteProtocolError("bad ddata creation")
        self._creations[peer] = creation
        if peer in self._up or peer not in self._connected:
            return
        self._up.append(peer)
        self._members.add(peer)
        # One side starts anti-entropy (the exchange goes both ways), now: from here on
        # the peer also gets every delta batch, so nothing falls between the two.
        if self.node < peer:
            out.append(self._digest_message(peer))
        if not self._prune_armed:
            self._prune_armed = True
            out.append(SetTimer(_PRUNE_TIMER, now + self.prune_interval))
        self._arm_gossip(now, out)

    def on_nodedown(self, peer: str, reason: str, now: float) -> list[Effect]:
        self._connected.discard(peer)
        if peer in self._up:
            self._up.remove(peer)
        self._received_seq.pop(peer, None)
        self._creations.pop(peer, None)
        if self._prune_round is not None and peer in self._prune_round.waiting:
            self._prune_round = None
        out: list[Effect] = []
        for rid, req in list(self._requests.items()):
            reachable = {p for p in req.sent_to if p in self._up} | req.replied
            if len(reachable) + 1 < req.needed:
                self._finish(rid, ("error", f"{req.kind} {req.level} of {req.key!r}: {peer} "
                                   f"went down ({reason}); {len(reachable) + 1} of "
                                   f"{req.needed} replicas left"), out)
        return out

    def on_timer(self, key: Any, now: float) -> list[Effect]:
        out: list[Effect] = []
        if key == _DELTA_TIMER:
            self._delta_armed = False
            self._flush_deltas(out)
        elif key == _GOSSIP_TIMER:
            self._gossip_armed = False
            for peer, left in list(self._hellos_left.items()):
                if peer in self._up or peer not in self._connected or left <= 0:
                    del self._hellos_left[peer]
                else:
                    self._hellos_left[peer] = left - 1
                    out.append(Send(peer, ("hello", self.replica.creation)))
            if self._up:
                self._next_gossip = (self._next_gossip + 1) % len(self._up)
                out.append(self._digest_message(self._up[self._next_gossip]))
                self.stats["gossip_rounds"] += 1
            if self._up or self._hellos_left:
                self._arm_gossip(now, out)
        elif key == _PRUNE_TIMER:
            self._prune_armed = False
            self._start_prune(out)
            if self._up:
                self._prune_armed = True
                out.append(SetTimer(_PRUNE_TIMER, now + self.prune_interval))
        elif isinstance(key, tuple) and len(key) == 2 and key[0] == "request":
            req = self._requests.get(key[1])
            if req is not None:
                self._finish(key[1], ("error", f"timeout: {req.kind} {req.level} of "
                                      f"{req.key!r} reached {len(req.replied) + 1} of "
                                      f"{req.needed} replicas in {req.timeout}s"), out)
        return out

    def on_publish(self, payload: Any, now: float) -> list[Effect]:
        """Never called: the service declares no topic prefix (ServiceCore contract)."""
        return []

    def on_process_exit(self, pid: Pid, reason: Any, now: float) -> list[Effect]:
        for name in [n for n, pids in self._subscribers.items() if pid in pids]:
            self.unsubscribe(name, pid)
        return []

    def on_message(self, peer: str, payload: Any, now: float) -> list[Effect]:
        out: list[Effect] = []
        try:
            self._dispatch(peer, payload, now, out)
        except (RemoteProtocolError, TypeError, ValueError, IndexError, KeyError) as exc:
            self.stats["bad_payloads"] += 1
            out.append(Log("warning", "ddata_bad_payload",
                           {"peer": peer, "error": f"{type(exc).__name__}: {exc}"}))
        return out

    def _dispatch(self, peer: str, payload: Any, now: float, out: list[Effect]) -> None:
        kind = payload[0]
        if kind == "delta":
            _, seq, rows = payload
            last = self._received_seq.get(peer)
            self._received_seq[peer] = seq
            self._merge_rows(rows, out)
            if last is not None and seq != last + 1:
                self.stats["gaps"] += 1
                out.append(self._digest_message(peer))
        elif kind == "write":
            _, rid, name, state = payload
            self._merge_rows([[name, state]], out)
            out.append(Send(peer, ("write_ack", rid)))
        elif kind == "read":
            _, rid, name = payload
            current = self._data.get(name)
            state = None if name in self._deleted or current is None else dump(current)
            out.append(Send(peer, ("read_reply", rid, state, name in self._deleted)))
        elif kind in ("write_ack", "read_reply"):
            rid = payload[1]
            req = self._requests.get(rid)
            if req is None:
                return  # finished already (timeout, enough replies)
            if kind == "read_reply" and (payload[2] is not None or payload[3]):
                self._merge_rows([[req.key, payload[2]]], out)
            req.replied.add(peer)
            if len(req.replied) + 1 >= req.needed:
                current = self._data.get(req.key)
                self._finish(rid, ("ok", None if req.key in self._deleted else current), out)
        elif kind == "hello":
            self._joined(peer, payload[1], now, out)
        elif kind == "prune_check":
            _, rid, rows = payload
            agreed = [name for name, digest, dead in rows
                      if name in self._data and self._digests.of(name) == digest
                      and all(self._is_dead(replica_from_data(r)) for r in dead)]
            out.append(Send(peer, ("prune_ok", rid, agreed)))
        elif kind == "prune_ok":
            prune = self._prune_round
            if prune is None or prune.rid != payload[1] or peer not in prune.waiting:
                return
            prune.agreed &= set(payload[2])
            prune.waiting.discard(peer)
            if not prune.waiting:
                self._finish_prune(prune, now, out)
        elif kind == "digest":
            _, creation, depth, parents, rows = payload
            self._joined(peer, creation, now, out)
            self._on_digest(peer, depth, parents, rows, out)
        elif kind == "keys":
            _, depth, prefixes, rows = payload
            self._on_keys(peer, depth, prefixes, rows, out)
        elif kind == "seen":
            self._on_seen(peer, payload[1], payload[2], out)
        elif kind == "gossip":
            _, rows, wanted = payload
            self._merge_rows(rows, out)
            if wanted:
                # A key whose merge equals the state just received: the peer has it all.
                same = {name for name, state in rows if self._digests.of_state(state) ==
                        (self._digests.of(name) if self._has(name) else None)}
                back = [self._row(n) for n in wanted if self._has(n) and n not in same]
                if back:
                    out.append(Send(peer, ("gossip", back, [])))
        else:
            raise RemoteProtocolError(f"unknown ddata message {kind!r}")

    # -- replication ----------------------------------------------------------------------

    def _needed(self, level: Consistency) -> int:
        size = len(self._members) + 1
        if level == LOCAL:
            return 1
        if level == MAJORITY:
            return size // 2 + 1
        if level == ALL:
            return size
        if type(level) is int and level >= 1:
            return level
        raise LocalProtocolError(
            f"consistency level {level!r}: use 'local', 'majority', 'all' or an int >= 1")

    def _replicate(self, token: Any, name: str, delta: Crdt | None, level: Consistency,
                   needed: int, timeout: float, now: float, out: list[Effect]) -> None:
        if needed > 1:
            rid = self._start(token, "write", name, level, needed, timeout, now, out)
            if rid is not None:
                state = None if delta is None else dump(delta)
                for peer in self._up:
                    out.append(Send(peer, ("write", rid, name, state)))
                return
        else:
            out.append(Complete(token, ("ok", self._data.get(name))))
        # Local level, or a quorum write that could not start: spread it with the deltas.
        old = self._pending.get(name)
        if delta is None or name in self._deleted:
            self._pending[name] = None
        else:
            self._pending[name] = delta if old is None else old.merge(delta)
        if not self._delta_armed:
            self._delta_armed = True
            out.append(SetTimer(_DELTA_TIMER, now + self.delta_interval))

    def _start(self, token: Any, kind: str, name: str, level: Consistency, needed: int,
               timeout: float, now: float, out: list[Effect]) -> int | None:
        """Register a quorum request; None (and an error completion) if too few peers."""
        if len(self._up) + 1 < needed:
            out.append(Complete(token, ("error", f"unreachable: {kind} {level} of {name!r} "
                                        f"needs {needed} of {len(self._members) + 1} "
                                        f"replicas, {len(self._up) + 1} reachable")))
            return None
        rid = next(self._request_ids)
        self._requests[rid] = _Request(token, kind, name, level, needed, timeout,
                                       set(self._up))
        out.append(SetTimer(("request", rid), now + timeout))
        return rid

    def _finish(self, rid: int, result: Any, out: list[Effect]) -> None:
        req = self._requests.pop(rid)
        out.append(CancelTimer(("request", rid)))
        out.append(Complete(req.token, result))

    def _flush_deltas(self, out: list[Effect]) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        if not self._up:
            return  # nobody to tell: anti-entropy brings them up to date on nodeup
        self._delta_seq += 1
        self.stats["delta_batches"] += 1
        rows = [[name, None if d is None else dump(d)] for name, d in batch.items()]
        for peer in self._up:
            out.append(Send(peer, ("delta", self._delta_seq, rows)))

    # -- pruning --------------------------------------------------------------------------

    def _is_dead(self, replica: Replica) -> bool:
        """True if ``replica``'s node run is over, as far as this node can prove."""
        if replica.node == self.node:
            return replica.creation != self.replica.creation
        if replica.node in self._forgotten:
            return True
        current = self._creations.get(replica.node)  # only while connected to that node
        return current is not None and current != replica.creation

    def _start_prune(self, out: list[Effect]) -> None:
        self._prune_round = None
        members = self._members
        if not members or any(m not in self._up for m in members) or min(members) < self.node:
            return
        proposals: dict[str, tuple[bytes, list[Replica]]] = {}
        for name, value in self._data.items():
            replicas = getattr(value, "replicas", None)
            if replicas is None:
                continue
            dead = sorted(r for r in replicas() if self._is_dead(r))
            if dead:
                proposals[name] = (self._digests.of(name), dead)
        if not proposals:
            return
        rid = next(self._request_ids)
        self._prune_round = _PruneRound(rid, proposals, set(members), set(proposals))
        rows = [[name, digest, [r.to_data() for r in dead]]
                for name, (digest, dead) in proposals.items()]
        for member in sorted(members):
            out.append(Send(member, ("prune_check", rid, rows)))

    def _finish_prune(self, prune: _PruneRound, now: float, out: list[Effect]) -> None:
        self._prune_round = None
        pruned_any = False
        for name in sorted(prune.agreed):
            digest, dead = prune.proposals[name]
            current = self._data.get(name)
            if current is None or self._digests.of(name) != digest:
                continue  # changed since the check: the next round will see it
            value: Any = current
            for replica in dead:
                value = value.prune(replica, at=self.replica).reset_delta()
            self.stats["pruned"] += len(dead)
            self._store(name, value, current, out)
            old = self._pending.get(name)
            self._pending[name] = value if old is None else old.merge(value)
            pruned_any = True
        if pruned_any and not self._delta_armed:
            self._delta_armed = True
            out.append(SetTimer(_DELTA_TIMER, now + self.delta_interval))

    # -- storing and merging --------------------------------------------------------------

    def _has(self, name: str) -> bool:
        return name in self._data or name in self._deleted

    def _row(self, name: str) -> list[Any]:
        return [name, None if name in self._deleted else dump(self._data[name])]

    def is_durable(self, name: str) -> bool:
        return name in self._durable_names or name.startswith(self._durable_prefixes)

    def restore(self, rows: Iterable[tuple[str, Any]], now: float) -> list[Effect]:
        """Merge rows ``(key, state)`` read back from durable storage (at start)."""
        out: list[Effect] = []
        self._restoring = True
        try:
            self._merge_rows([[name, state] for name, state in rows], out)
        finally:
            self._restoring = False
        return out

    def _store(self, name: str, value: Crdt, old: Crdt | None, out: list[Effect]) -> None:
        self._data[name] = value
        self._digests.forget(name)
        if not self._restoring and self.is_durable(name) and (old is None or old != value):
            out.append(cast(Effect, Persist(name, dump(value))))
        watchers = self._subscribers.get(name)
        if watchers and (old is None or old.value != value.value):
            out.extend(Deliver(pid, DataChanged(name, value)) for pid in watchers)

    def _tombstone(self, name: str, out: list[Effect]) -> None:
        if name in self._deleted:
            return
        self._deleted.add(name)
        self._data.pop(name, None)
        self._digests.forget(name)
        if not self._restoring and self.is_durable(name):
            out.append(cast(Effect, Persist(name, None)))
        for pid in self._subscribers.pop(name, []):
            out.append(Deliver(pid, DataDeleted(name)))

    def _merge_rows(self, rows: Any, out: list[Effect]) -> None:
        for name, state in rows:
            if not isinstance(name, str):
                raise RemoteProtocolError(f"bad key {name!r:.60}")
            if name in self._deleted:
                continue
            if state is None:
                self._tombstone(name, out)
                continue
            remote = load(state)
            current = self._data.get(name)
            if current is None:
                self._store(name, remote, None, out)
            elif type(current) is not type(remote):
                out.append(Log("warning", "ddata_type_mismatch",
                               {"key": name, "local": type(current).__name__,
                                "remote": type(remote).__name__}))
            else:
                self._store(name, current.merge(remote), current, out)

    # -- anti-entropy ---------------------------------------------------------------------

    def _state_of(self, name: str) -> Any:
        return None if name in self._deleted else dump(self._data[name])

    def _digest_message(self, peer: str) -> Send:
        # The creation rides along too: a lost hello is made good by the next round.
        return Send(peer, ("digest", self.replica.creation, 0, [], self._digests.root()))

    def _on_digest(self, peer: str, depth: Any, parents: Any, rows: Any,
                   out: list[Effect]) -> None:
        expand, listed = self._digests.compare(depth, parents, rows)
        if expand:
            out.append(Send(peer, ("digest", self.replica.creation, depth + 1, expand,
                                   self._digests.children(depth, expand))))
        if listed:
            names = self._digests.names_under(depth, listed)
            out.append(Send(peer, ("keys", depth, listed,
                                   [[n, self._digests.of(n)] for n in names])))

    def _on_keys(self, peer: str, depth: Any, prefixes: Any, rows: Any,
                 out: list[Effect]) -> None:
        theirs = {name: digest for name, digest in rows}
        digest = self._digests.of
        mine = self._digests.names_under(depth, prefixes)
        differ = {n for n in mine if theirs.get(n) != digest(n)}
        # A large set both hold: exchange what each has seen, then only what each lacks.
        seen = [[n, self._data[n].seen()] for n in sorted(differ)  # type: ignore[attr-defined]
                if n in theirs and self._summarizes(n)]
        summarized = {row[0] for row in seen}
        send = [self._row(n) for n in sorted(differ - summarized)]
        want = [n for n, d in theirs.items()
                if (not self._has(n) or d != digest(n)) and n not in summarized]
        if send or want:
            out.append(Send(peer, ("gossip", send, want)))
        if seen:
            out.append(Send(peer, ("seen", seen, True)))

    def _summarizes(self, name: str) -> bool:
        """Whether ``name``'s value is large and can send a peer only what it lacks."""
        value = self._data.get(name)
        return (value is not None and hasattr(value, "missing_for")
                and len(value) >= SEEN_MIN_ELEMENTS)  # type: ignore[arg-type]

    def _on_seen(self, peer: str, rows: Any, reply: Any, out: list[Effect]) -> None:
        if type(reply) is not bool:
            raise RemoteProtocolError("bad ddata seen flag")
        back: list[list[Any]] = []
        mine: list[list[Any]] = []
        for name, seen in rows:
            value: Any = self._data.get(name)
            if value is None or not hasattr(value, "missing_for"):
                if self._has(name):  # deleted here, or another type: the whole state
                    back.append(self._row(name))
                continue
            back.append([name, dump(value.missing_for(seen))])
            if reply:
                mine.append([name, value.seen()])
        if back:
            out.append(Send(peer, ("gossip", back, [])))
        if mine:
            out.append(Send(peer, ("seen", mine, False)))
