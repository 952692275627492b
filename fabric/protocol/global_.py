"""``global``: cluster-wide unique names and cluster locks, as a sans-I/O core.

Theory of operation
-------------------
**Claims and authority.** A name is held by a *claim* (:class:`Entry`): name, pid,
stamp, resolver method, meta. Only the node of the pid (the *owner*) creates, updates or
retracts it: register a pid on its own node (the runtime forwards otherwise). Each node
stores every claim of itself and of its connected peers and shows, per name, the claim
the resolvers pick (:func:`fold_claims`; normally there is exactly one). As in ``pg``,
nothing else ever introduces a claim, so a stale one cannot come back from a third node.

**Registration** (``register_name``, ``re_register_name``) is a transaction: lock the key
``("n", name)`` on this node and on every connected node (:mod:`.global_locks`: wait-die
on a fixed ``(lamport, node, txn)`` priority, so no deadlock and no livelock, whatever the
timing; randomness only jitters the retry of a request that lost), each grant reporting
whether that node sees a claim on the name; a claim that reaches a granter while its grant
is outstanding (synced by a peer that came up, so it took no lock) is reported too
(``taken``). If any does, the answer is ``"no"``; else the claim is stamped, sent to every
node (which applies it, then drops the lock) and ``"yes"`` comes once every node
acknowledged it, so ``whereis_name`` anywhere sees it after the reply (as Erlang's
``multi_call``). Two requesters that are connected, or share a connected node, both lock
that node, which serialises them: exactly one ``"yes"``. A request in flight is extended
to a peer that comes up meanwhile. ``re_register_name`` commits in two rounds: every node
first drops the other claims (their owners retract them, without notification, like
Erlang) and acks, then the new claim is sent, so no two connected nodes ever show the old
and the new pid at once.

**Removal** needs no lock because only the owner removes: a retract is broadcast when
the process exits, on ``unregister_name`` (forwarded to the owner; the reply waits for
every node's ack) and when a claim loses a conflict. A ``nodedown`` drops the peer's
claims, so names of a dead or unreachable node vanish.

**Partitions and conflicts.** On ``nodeup`` both sides send their own claims and held
locks (``sync``, replacing what the other knew of them). A node that then holds two
claims for one name reports the pair to both owners (``conflict``); every node computes
the same verdict (:func:`resolve_pair`), the loser's owner delivers
``("global_name_conflict", name, other_pid)`` or kills (:class:`ExitProcess`) as the
resolver says, and retracts. Nodes that see both claims show the winner at once.

**Overlapping partitions** (a-b, b-c up, a-c down) are kept, not cut as OTP 25 does
(disconnecting trades availability for simplicity and flaps on asymmetric links). b is
a common lock node for a and c, so uniqueness holds; a node shows only names whose owner
it reaches (c does not show a's names: it could not send to them). Two claims that meet
at any node are reported by it to both owners, so connected nodes never show different
pids for longer than one conflict round. Limit: in a chord-less chain a-b-c-d, a's and
d's lock sets ({a, b}, {c, d}) do not meet, so both may register a name, and no node
holds both claims: b and c show different pids until a link of the chain's ends heals
(``connect_all`` makes such chains rare and short-lived). There is no quorum, as in
Erlang: each side of a clean split registers freely and the resolver decides at the heal.

**Locks** (``set_lock``) lock ``("l", resource)`` on every connected node the same way;
when all granted, ``hold`` makes the pid the holder everywhere. A lock held elsewhere
costs one retry after an exponential, seeded-random backoff; ``False`` after ``retries``.
Locks of a pid go when it exits, calls ``del_lock`` or its node goes down; held locks sync
on nodeup. Two holders after a healed split brain both hold until they release.

Wire (service ``"global"``; entries as ``Entry.wire()`` tuples; ``rid = (node, txn,
attempt)``, ``prio = (lamport, node, txn)``)::

    ("sync", [entry], [(resource, pid)], extra)      ("claim", entry, rid|None, ack, supersede)
    ("retract", name, pid, rid|None)                  ("ack", rid)
    ("conflict", name, entry, entry)                  ("supersede", name, entry)
    ("req", rid, key, prio, pid|None)                 ("grant", rid, (taken, extra)|None)
    ("deny", rid, "younger"|"held")                   ("release", rid)
    ("taken", rid)
    ("hold", rid, pid)     ("unlock", resource, pid)  ("unlock_pid", pid)
    ("unreg", rid, name, pid)                         ("unreg_ok", rid)
    ("clear", name, rid)

Results: ``register_name`` completes with ``"yes"``/``"no"``, ``re_register_name`` with
``"yes"`` (``"no"`` only if the pid exits meanwhile), ``unregister_name`` with ``"ok"``,
``set_lock`` with True/False. A transaction of a pid that exits ends at once ("no"/False).
``trans`` is the runtime's: ``set_lock``, run, ``del_lock``.

Modules: :mod:`.global_resolve` (claims, resolvers, :class:`ExitProcess`),
:mod:`.global_locks` (granter side), :mod:`.global_txn` (requester side),
:mod:`.global_base` (state, hooks), :mod:`.global_names` (claims table), this one (API).
"""

from __future__ import annotations

from typing import Any

from fabric.protocol.effects import CancelTimer, Effect, SetTimer
from fabric.protocol.global_base import ReplyTo
from fabric.protocol.global_locks import LockReq
from fabric.protocol.global_names import GlobalNames
from fabric.protocol.global_resolve import (
    ConflictInfo,
    Entry,
    ExitProcess,
    Resolution,
    Resolver,
    earliest_name,
    highest_term,
    notify_all_name,
    random_exit_name,
    random_notify_name,
)
from fabric.protocol.global_txn import Txn, TxnKind
from fabric.types import Pid

__all__ = [
    "ConflictInfo",
    "Entry",
    "ExitProcess",
    "GlobalCore",
    "Resolution",
    "Resolver",
    "earliest_name",
    "highest_term",
    "notify_all_name",
    "random_exit_name",
    "random_notify_name",
]

_RETRY = "global_retry"  # timer key tag: ("global_retry", txn number)
# Attempts lost to younger-dies before a request gives up; far beyond any real contention.
_MAX_ATTEMPTS = 200


class GlobalCore(GlobalNames):
    """Cluster-wide names and locks for one node (a ``ServiceCore``, service "global").

    Constructor arguments: see :class:`~fabric.protocol.global_base.GlobalBase`.
    """

    # -- requests -------------------------------------------------------------------------

    def register_name(
        self,
        name: Any,
        pid: Pid,
        token: Any,
        now: float,
        *,
        method: str | None = None,
        meta: Any = None,
    ) -> list[Effect]:
        """Register ``name`` for the local ``pid``; completes ``token`` with "yes" or "no".

        ``name`` is any hashable msgpack value (str, int, bytes, tuples of them).
        ``method`` picks a resolver by name ("earliest", "random_exit", "random_notify",
        "notify_all", "leader" or one given to the constructor); ``meta`` (hashable,
        msgpack-able) travels with the claim. One pid may hold several names.

        Raises:
            LocalProtocolError: ``pid`` is not a pid of this node run, or ``name`` or
                ``meta`` is not hashable.
        """
        return self._run(now, self._register, "register", name, pid, token, method, meta)

    def re_register_name(
        self,
        name: Any,
        pid: Pid,
        token: Any,
        now: float,
        *,
        method: str | None = None,
        meta: Any = None,
    ) -> list[Effect]:
        """Register ``name`` for ``pid`` even if taken; completes ``token`` with "yes".

        Raises:
            LocalProtocolError: ``pid`` is not a pid of this node run, or bad ``name``.
        """
        return self._run(now, self._register, "re_register", name, pid, token, method, meta)

    def unregister_name(self, name: Any, token: Any, now: float) -> list[Effect]:
        """Remove ``name`` everywhere; completes ``token`` with "ok" once all nodes did."""
        return self._run(now, self._unregister, name, token)

    def set_lock(
        self, resource: Any, pid: Pid, token: Any, now: float, *, retries: int | None = None
    ) -> list[Effect]:
        """Lock ``resource`` for the local ``pid`` on every connected node.

        Completes ``token`` with True, or with False after ``retries`` refusals (each
        followed by a backoff). Lock id is ``(resource, pid)``; re-entrant per pid.

        Raises:
            LocalProtocolError: ``pid`` is not a pid of this node run, or bad ``resource``.
        """
        self._check(resource, pid)
        n = self._lock_retries if retries is None else retries
        return self._run(now, self._start_txn, "lock", ("l", resource), pid, token, None, None, n)

    def del_lock(self, resource: Any, pid: Pid, now: float) -> list[Effect]:
        """Release ``pid``'s lock on ``resource`` everywhere (no-op if not held).

        Raises:
            LocalProtocolError: ``pid`` is not a pid of this node run.
        """
        self._check(resource, pid)

        def go() -> None:
            self._answer(self._locks.unlock(("l", resource), pid))
            self._broadcast(("unlock", resource, pid))

        return self._run(now, go)

    # -- ServiceCore inputs ---------------------------------------------------------------

    def on_nodeup(self, peer: str, now: float) -> list[Effect]:
        """Send ``peer`` our claims and locks; extend requests in flight to it."""

        def go() -> None:
            self._peers.add(peer)
            mine = [e.wire() for c in self._claims.values() if (e := c.get(self.node))]
            held = [(k[1], p) for k, p in self._locks.held_by(self.node)]
            self._send(peer, ("sync", mine, held, self._sync_extra()))
            for txn in self._txns.values():
                if txn.phase == "lock" and txn.rid is not None:
                    txn.asked.add(peer)
                    txn.waiting.add(peer)
                    self._send(peer, ("req", txn.rid, txn.key, txn.prio, txn.pid))

        return self._run(now, go)

    def on_nodedown(self, peer: str, reason: str, now: float) -> list[Effect]:
        """Drop ``peer``'s claims, requests and locks; stop waiting for it."""
        return self._run(now, self._nodedown, peer)

    def on_message(self, peer: str, payload: Any, now: float) -> list[Effect]:
        """Handle one message from the global core of ``peer``."""
        return self._run(now, self._dispatch, peer, payload)

    def on_publish(self, payload: Any, now: float) -> list[Effect]:
        """Never called: global declares no topic prefix."""
        return []

    def on_timer(self, key: Any, now: float) -> list[Effect]:
        """A backoff ended: retry the transaction (or a subclass timer fired)."""

        def go() -> None:
            if isinstance(key, tuple) and len(key) == 2 and key[0] == _RETRY:
                txn = self._txns.get(key[1])
                if txn is not None and txn.phase == "backoff":
                    self._attempt(txn)
            else:
                self._extra_timer(key)

        return self._run(now, go)

    def on_process_exit(self, pid: Pid, reason: Any, now: float) -> list[Effect]:
        """A local process exited: retract its names, release its locks and requests."""
        return self._run(now, self._exit, pid)

    # -- transactions (requester side) ----------------------------------------------------

    def _register(
        self, kind: TxnKind, name: Any, pid: Pid, token: Any, method: str | None, meta: Any
    ) -> None:
        self._check((name, meta), pid)
        if kind == "register" and name in self._claims:
            self._done(token, "no")  # visibly taken: no need to ask anyone
            return
        self._start_txn(kind, ("n", name), pid, token, method, meta, 0)

    def _start_txn(
        self,
        kind: TxnKind,
        key: Any,
        pid: Pid,
        token: Any,
        method: str | None,
        meta: Any,
        retries: int,
    ) -> None:
        tid = next(self._txn_ids)
        self._lamport += 1
        txn = Txn(tid, kind, key, (self._lamport, self.node, tid), token, pid, method, meta)
        txn.retries = retries
        self._txns[tid] = txn
        self._attempt(txn)

    def _attempt(self, txn: Txn) -> None:
        rid = txn.next_attempt(self.node, {self.node} | self._peers)
        for node in sorted(txn.asked):
            self._send(node, ("req", rid, txn.key, txn.prio, txn.pid))

    def _txn_of(self, rid: Any) -> Txn | None:
        if not (isinstance(rid, tuple) and len(rid) == 3 and rid[0] == self.node):
            return None
        txn = self._txns.get(rid[1])
        return txn if txn is not None and txn.rid == tuple(rid) else None

    def _progress(self, txn: Txn) -> None:
        if txn.waiting or txn.owners:
            return
        if txn.phase == "lock":
            self._locked(txn)
        elif txn.phase == "clear":
            self._commit_claim(txn)
        elif txn.phase == "ack":
            self._finish(txn, txn.result)

    def _locked(self, txn: Txn) -> None:
        """Every node granted the current attempt: commit or give up."""
        assert txn.rid is not None and txn.pid is not None
        if txn.kind == "lock":
            for node in sorted(txn.asked):
                self._send(node, ("hold", txn.rid, txn.pid))
            self._finish(txn, True)
        elif txn.kind == "register" and txn.taken:
            self._release_all(txn)
            self._finish(txn, "no")
        elif txn.kind == "re_register":
            # Two rounds, so that no node shows the new pid while another connected node
            # still shows the old one: first every node drops the other claims...
            txn.phase = "clear"
            txn.waiting = {self.node} | self._peers
            for node in sorted(txn.waiting):
                self._send(node, ("clear", txn.key[1], txn.rid))
        else:
            self._commit_claim(txn)

    def _commit_claim(self, txn: Txn) -> None:
        """Stamp the claim and send it everywhere (each node then drops the lock)."""
        assert txn.pid is not None
        name = txn.key[1]
        self._lamport += 1
        meta = self._finalize_meta(name, txn.meta, txn.extras)
        stamp = (self._lamport, self.node, next(self._stamps))
        entry = Entry(name, txn.pid, stamp, txn.method, meta)
        supersede = txn.kind == "re_register"
        txn.phase, txn.result = "ack", "yes"
        txn.waiting = {self.node} | self._peers
        for node in sorted(txn.waiting):
            self._send(node, ("claim", entry.wire(), txn.rid, True, supersede))

    def _release_all(self, txn: Txn) -> None:
        for node in sorted(txn.asked):
            self._send(node, ("release", txn.rid))

    def _abort(self, txn: Txn, why: str) -> None:
        """The current attempt was denied: release it and retry after a backoff."""
        self._release_all(txn)
        if why == "held":
            txn.refusals += 1
            if txn.refusals > txn.retries:
                self._finish(txn, False)
                return
            delay = min(self._retry_cap, self._retry_base * 2**txn.refusals)
        elif txn.attempts >= _MAX_ATTEMPTS:
            # Wait-die lets the oldest request through, so this means a grant is stuck
            # (a peer that never answers nor goes down): give up rather than spin.
            self._log("warning", "global_gave_up", key=txn.key, attempts=txn.attempts)
            self._finish(txn, False if txn.kind == "lock" else "no")
            return
        else:
            delay = self._retry_base  # a transient wait-die loss: the oldest goes first
        txn.phase = "backoff"
        at = self._now + delay * (0.5 + self._rng.random())
        self._out.append(SetTimer((_RETRY, txn.tid), at))

    def _finish(self, txn: Txn, result: Any) -> None:
        if self._txns.pop(txn.tid, None) is None:
            return
        if txn.phase == "backoff":
            self._out.append(CancelTimer((_RETRY, txn.tid)))
        txn.phase = "done"
        self._done(txn.token, result)

    def _unregister(self, name: Any, token: Any) -> None:
        claims = self._claims.get(name, {})
        tid = next(self._txn_ids)
        txn = Txn(tid, "unregister", ("n", name), (self._lamport, self.node, tid), token, None)
        rid = txn.next_attempt(self.node, set())
        txn.phase, txn.result = "ack", "ok"
        self._txns[tid] = txn
        for owner, entry in sorted(claims.items()):
            if owner == self.node:
                txn.waiting |= self._peers
                self._retract_own(name, entry, rid)
            else:
                txn.owners.add(owner)
                self._send(owner, ("unreg", rid, name, entry.pid))
        self._progress(txn)

    # -- node and process events ----------------------------------------------------------

    def _nodedown(self, peer: str) -> None:
        self._peers.discard(peer)
        for name in [n for n, c in self._claims.items() if peer in c]:
            del self._claims[name][peer]
            self._refresh(name)
        self._answer(self._locks.drop_node(peer))
        for txn in list(self._txns.values()):
            txn.asked.discard(peer)
            txn.waiting.discard(peer)
            txn.owners.discard(peer)
            self._progress(txn)

    def _exit(self, pid: Pid) -> None:
        if pid.node != self.node:
            return
        # The layer above forgets the pid first, so that nothing it does in reaction to
        # the retracts below (a leader standing again) can pick the dead pid.
        self._on_local_exit(pid)
        for txn in list(self._txns.values()):
            if txn.pid == pid and txn.phase in ("lock", "clear", "backoff"):
                if txn.phase != "backoff":
                    self._release_all(txn)
                self._finish(txn, False if txn.kind == "lock" else "no")
        for name in sorted(self._local.get(pid, ()), key=repr):
            entry = self._claims.get(name, {}).get(self.node)
            if entry is not None:
                self._retract_own(name, entry, None)
        if any(p == pid for _, p in self._locks.held_by(self.node)):
            # Only then: every process exit would otherwise cost a broadcast.
            self._answer(self._locks.drop_pids(lambda p: p == pid))
            self._broadcast(("unlock_pid", pid))

    # -- message handlers -----------------------------------------------------------------

    def _h_ack(self, peer: str, rid: Any) -> None:
        txn = self._txn_of(rid)
        if txn is not None and txn.phase in ("ack", "clear"):
            txn.waiting.discard(peer)
            self._progress(txn)

    def _h_req(self, peer: str, rid: Any, key: Any, prio: Any, pid: Any) -> None:
        lamport, node, seq = prio
        self._lamport = max(self._lamport, int(lamport))
        req = LockReq(tuple(rid), tuple(key), (lamport, node, seq), pid)
        if req.rid[0] == peer:
            self._answer(self._locks.request(req))

    def _h_grant(self, peer: str, rid: Any, info: Any) -> None:
        txn = self._txn_of(rid)
        if txn is None or txn.phase != "lock" or peer not in txn.waiting:
            return  # late answer to an aborted attempt
        txn.waiting.discard(peer)
        if info is not None:
            taken, extra = info
            txn.taken = txn.taken or bool(taken)
            txn.extras.append(extra)
        self._progress(txn)

    def _h_taken(self, peer: str, rid: Any) -> None:
        # A granter saw a claim on the name arrive after it granted: the answer is "no".
        txn = self._txn_of(rid)
        if txn is not None and txn.phase == "lock" and peer in txn.asked:
            txn.taken = True

    def _h_deny(self, peer: str, rid: Any, why: Any) -> None:
        txn = self._txn_of(rid)
        if txn is not None and txn.phase == "lock":
            self._abort(txn, str(why))

    def _h_release(self, peer: str, rid: Any) -> None:
        self._answer(self._locks.release(tuple(rid)))

    def _h_hold(self, peer: str, rid: Any, pid: Any) -> None:
        self._answer(self._locks.hold(tuple(rid), pid))

    def _h_unlock(self, peer: str, resource: Any, pid: Any) -> None:
        if isinstance(pid, Pid) and pid.node == peer:
            self._answer(self._locks.unlock(("l", resource), pid))

    def _h_unlock_pid(self, peer: str, pid: Any) -> None:
        if isinstance(pid, Pid) and pid.node == peer:
            self._answer(self._locks.drop_pids(lambda p: p == pid))

    def _h_unreg(self, peer: str, rid: Any, name: Any, pid: Any) -> None:
        mine = self._claims.get(name, {}).get(self.node)
        if mine is not None and mine.pid == pid:
            self._unregister(name, ReplyTo((peer, rid)))
        else:
            self._send(peer, ("unreg_ok", rid))

    def _h_unreg_ok(self, peer: str, rid: Any) -> None:
        txn = self._txn_of(rid)
        if txn is not None:
            txn.owners.discard(peer)
            self._progress(txn)
