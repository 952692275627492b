"""The requester side of ``global``: :class:`Transactions`, one :class:`Txn` per request.

Theory of operation
-------------------
Every write to a name and every ``set_lock`` is a transaction this node runs against
every connected node's granter (:mod:`.global_locks`); the overview is in
:mod:`fabric.protocol.global_`. :class:`Transactions` starts them, follows their answers
(``grant``, ``deny``, ``taken``, ``ack``, ``unreg``, ``unreg_ok``), retries them after a
backoff, extends the ones in flight to a peer that comes up, stops waiting for a peer
that goes down, and completes each one exactly once: with ``Complete(token, result)``
for the runtime, with ``unreg_ok`` for an unregister forwarded by a peer
(:class:`ReplyTo`), or through the plug-in for the transactions the plug-in started.

A transaction goes through phases::

    lock ──all granted──▶ ack ──all acked──▶ done        (register)
      ├──all granted──▶ clear ──all acked──▶ ack ──▶ done (re_register)
      │                   (unregister starts in ack)
      ├──all granted──▶ done                              (lock: "hold" sent, True)
      └──denied──▶ backoff ──timer──▶ lock (next attempt, same priority)

Each attempt has its own request id ``rid = (node, txn number, attempt)``, so a late
answer to an aborted attempt is recognised and ignored; the priority ``prio`` is fixed
for the life of the transaction, which is what makes wait-die starvation-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from fabric.protocol.effects import CancelTimer, Complete, SetTimer
from fabric.protocol.global_context import GlobalContext
from fabric.protocol.global_locks import Prio, Rid
from fabric.protocol.global_names import NameTable
from fabric.protocol.global_plugin import NamePlugin
from fabric.protocol.global_resolve import Entry
from fabric.types import Pid

__all__ = ["Phase", "ReplyTo", "Transactions", "Txn", "TxnKind"]

TxnKind = Literal["register", "re_register", "lock", "unregister"]
Phase = Literal["lock", "clear", "ack", "backoff", "done"]

_RETRY = "global_retry"  # timer key tag: ("global_retry", txn number)
# Attempts lost to younger-dies before a request gives up; far beyond any real contention.
_MAX_ATTEMPTS = 200


class ReplyTo(tuple):  # type: ignore[type-arg]
    """Internal token ``(peer, rid)``: when done, tell ``peer`` that ``rid`` is done."""

    __slots__ = ()


@dataclass(slots=True, eq=False)
class Txn:
    """A request this node started and has not completed."""

    # This node's number for the transaction (the timer key and part of every rid).
    tid: int
    kind: TxnKind
    # ("n", name) or ("l", resource): what is locked.
    key: Any
    # Age for wait-die; kept across attempts.
    prio: Prio
    # The runtime's token, completed at the end (or an internal marker).
    token: Any
    # The pid that will hold the name or lock (None for unregister).
    pid: Pid | None
    # Registration only: resolver method and meta to store with the claim.
    method: str | None = None
    meta: Any = None
    # The current attempt's request id (None before the first attempt).
    rid: Rid | None = None
    phase: Phase = "lock"
    # Nodes the current attempt asked (the ones to release on abort).
    asked: set[str] = field(default_factory=set)
    # Nodes whose grant (lock phase) or ack (ack phase) is still missing.
    waiting: set[str] = field(default_factory=set)
    # Unregister: owners that have not confirmed their retract yet.
    owners: set[str] = field(default_factory=set)
    # Register: some granter sees a claim on the name, so the answer is "no".
    taken: bool = False
    # Extra information from the grants of the current attempt (see GlobalCore hooks).
    extras: list[Any] = field(default_factory=list)
    # Attempts refused because the lock was held, and how many are allowed.
    refusals: int = 0
    retries: int = 0
    # What to complete with when the ack phase ends.
    result: Any = None
    # Attempt counter (third part of rid).
    attempts: int = 0
    # Register: False to answer "yes" at the commit instead of after every node's ack.
    wait_all: bool = True
    # The token was completed at the commit (wait_all False): nothing to tell at the end.
    answered: bool = False

    def next_attempt(self, node: str, ask: set[str]) -> Rid:
        """Start a new attempt that asks ``ask``; returns its request id."""
        self.attempts += 1
        self.rid = (node, self.tid, self.attempts)
        self.phase = "lock"
        self.asked = set(ask)
        self.waiting = set(ask)
        self.taken = False
        self.extras = []
        return self.rid


class Transactions:
    """The transactions this node started, from first attempt to completion.

    Args:
        ctx: the core's shared context.
        names: the claims table (a registration of a visibly taken name answers "no"
            at once; an unregister retracts our own claim directly).
        plugin: commits the meta of a claim (``finalize_meta``) and receives the
            completions of its own transactions.
        lock_retries: default number of retries of ``set_lock`` on a held lock.
        retry_base: first backoff, seconds; doubled per refusal up to ``retry_cap``.
    """

    def __init__(
        self,
        ctx: GlobalContext,
        names: NameTable,
        plugin: NamePlugin,
        *,
        lock_retries: int,
        retry_base: float,
        retry_cap: float,
    ) -> None:
        self._ctx = ctx
        self._names = names
        self._plugin = plugin
        self.lock_retries = lock_retries
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        # Transactions this node started, by number.
        self._txns: dict[int, Txn] = {}
        # Transaction numbers (part of every request id and priority).
        self._last_tid = 0

    def pending(self) -> int:
        """Number of transactions in progress."""
        return len(self._txns)

    # -- starting -------------------------------------------------------------------------

    def register(
        self,
        kind: TxnKind,
        name: Any,
        pid: Pid,
        token: Any,
        method: str | None,
        meta: Any,
        *,
        wait_all: bool = True,
    ) -> None:
        """Register (``kind`` "register") or re-register ``name`` for the local ``pid``.

        ``wait_all`` False answers "yes" at the commit (see ``GlobalCore.register_name``).
        """
        self._ctx.check_local((name, meta), pid)
        if kind == "register" and self._names.claimed(name):
            self._complete(token, "no")  # visibly taken: no need to ask anyone
            return
        self._start(kind, ("n", name), pid, token, method, meta, 0, wait_all)

    def lock(self, resource: Any, pid: Pid, token: Any, retries: int) -> None:
        """Lock ``resource`` for the local ``pid`` (checked by the caller)."""
        self._start("lock", ("l", resource), pid, token, None, None, retries, True)

    def unregister(self, name: Any, token: Any) -> None:
        """Remove ``name`` everywhere: retract ours, ask the other owners to retract."""
        tid = self._new_tid()
        prio = (self._ctx.lamport, self._ctx.node, tid)
        txn = Txn(tid, "unregister", ("n", name), prio, token, None)
        rid = txn.next_attempt(self._ctx.node, set())
        txn.phase, txn.result = "ack", "ok"
        self._txns[tid] = txn
        for owner, entry in self._names.owners(name):
            if owner == self._ctx.node:
                txn.waiting |= self._ctx.peers
                self._names.retract_own(name, entry, rid)
            else:
                txn.owners.add(owner)
                self._ctx.send(owner, ("unreg", rid, name, entry.pid))
        self._progress(txn)

    # -- node, process and timer events ---------------------------------------------------

    def on_nodeup(self, peer: str) -> None:
        """Extend the attempts collecting grants to ``peer``."""
        for txn in self._txns.values():
            if txn.phase == "lock" and txn.rid is not None:
                txn.asked.add(peer)
                txn.waiting.add(peer)
                self._ctx.send(peer, ("req", txn.rid, txn.key, txn.prio, txn.pid))

    def on_nodedown(self, peer: str) -> None:
        """Stop waiting for ``peer``."""
        for txn in list(self._txns.values()):
            txn.asked.discard(peer)
            txn.waiting.discard(peer)
            txn.owners.discard(peer)
            self._progress(txn)

    def on_timer(self, key: Any) -> bool:
        """A backoff ended: retry. False if ``key`` is not a retry timer."""
        if not (isinstance(key, tuple) and len(key) == 2 and key[0] == _RETRY):
            return False
        txn = self._txns.get(key[1])
        if txn is not None and txn.phase == "backoff":
            self._attempt(txn)
        return True

    def local_exit(self, pid: Pid) -> None:
        """End the requests of a local pid that exited ("no"/False)."""
        for txn in list(self._txns.values()):
            if txn.pid == pid and txn.phase in ("lock", "clear", "backoff"):
                if txn.phase != "backoff":
                    self._release_all(txn)
                self._finish(txn, False if txn.kind == "lock" else "no")

    # -- message handlers -----------------------------------------------------------------

    def on_ack(self, peer: str, rid: Any) -> None:
        txn = self._txn_of(rid)
        if txn is not None and txn.phase in ("ack", "clear"):
            txn.waiting.discard(peer)
            self._progress(txn)

    def on_grant(self, peer: str, rid: Any, info: Any) -> None:
        txn = self._txn_of(rid)
        if txn is None or txn.phase != "lock" or peer not in txn.waiting:
            return  # late answer to an aborted attempt
        txn.waiting.discard(peer)
        if info is not None:
            taken, extra = info
            txn.taken = txn.taken or bool(taken)
            txn.extras.append(extra)
        self._progress(txn)

    def on_taken(self, peer: str, rid: Any) -> None:
        # A granter saw a claim on the name arrive after it granted: the answer is "no".
        txn = self._txn_of(rid)
        if txn is not None and txn.phase == "lock" and peer in txn.asked:
            txn.taken = True

    def on_deny(self, peer: str, rid: Any, why: Any) -> None:
        txn = self._txn_of(rid)
        if txn is not None and txn.phase == "lock":
            self._abort(txn, str(why))

    def on_unreg(self, peer: str, rid: Any, name: Any, pid: Any) -> None:
        mine = self._names.own(name)
        if mine is not None and mine.pid == pid:
            self.unregister(name, ReplyTo((peer, rid)))
        else:
            self._ctx.send(peer, ("unreg_ok", rid))

    def on_unreg_ok(self, peer: str, rid: Any) -> None:
        txn = self._txn_of(rid)
        if txn is not None:
            txn.owners.discard(peer)
            self._progress(txn)

    # -- internals ------------------------------------------------------------------------

    def _new_tid(self) -> int:
        self._last_tid += 1
        return self._last_tid

    def _start(
        self,
        kind: TxnKind,
        key: Any,
        pid: Pid,
        token: Any,
        method: str | None,
        meta: Any,
        retries: int,
        wait_all: bool,
    ) -> None:
        tid = self._new_tid()
        prio = (self._ctx.tick(), self._ctx.node, tid)
        txn = Txn(tid, kind, key, prio, token, pid, method, meta)
        txn.retries = retries
        txn.wait_all = wait_all
        self._txns[tid] = txn
        self._attempt(txn)

    def _attempt(self, txn: Txn) -> None:
        rid = txn.next_attempt(self._ctx.node, {self._ctx.node} | self._ctx.peers)
        for node in sorted(txn.asked):
            self._ctx.send(node, ("req", rid, txn.key, txn.prio, txn.pid))

    def _txn_of(self, rid: Any) -> Txn | None:
        if not (isinstance(rid, tuple) and len(rid) == 3 and rid[0] == self._ctx.node):
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
                self._ctx.send(node, ("hold", txn.rid, txn.pid))
            self._finish(txn, True)
        elif txn.kind == "register" and txn.taken:
            self._release_all(txn)
            self._finish(txn, "no")
        elif txn.kind == "re_register":
            # Two rounds, so that no node shows the new pid while another connected node
            # still shows the old one: first every node drops the other claims...
            txn.phase = "clear"
            txn.waiting = {self._ctx.node} | self._ctx.peers
            for node in sorted(txn.waiting):
                self._ctx.send(node, ("clear", txn.key[1], txn.rid))
        else:
            self._commit_claim(txn)

    def _commit_claim(self, txn: Txn) -> None:
        """Stamp the claim and send it everywhere (each node then drops the lock)."""
        assert txn.pid is not None
        name = txn.key[1]
        meta = self._plugin.finalize_meta(name, txn.meta, txn.extras)
        entry = Entry(name, txn.pid, self._names.new_stamp(), txn.method, meta)
        supersede = txn.kind == "re_register"
        txn.phase, txn.result = "ack", "yes"
        txn.waiting = {self._ctx.node} | self._ctx.peers
        for node in sorted(txn.waiting):
            self._ctx.send(node, ("claim", entry.wire(), txn.rid, True, supersede))
        if not txn.wait_all:
            # The result is final here: the ack phase ends in "yes" whatever happens (a
            # nodedown stops the wait, an exit does not cancel a commit). The claims are
            # queued before the answer, so each peer applies ours before anything this
            # node sends it after the answer; this node applies it within this input.
            txn.answered = True
            self._complete(txn.token, "yes")

    def _release_all(self, txn: Txn) -> None:
        for node in sorted(txn.asked):
            self._ctx.send(node, ("release", txn.rid))

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
            self._ctx.log("warning", "global_gave_up", key=txn.key, attempts=txn.attempts)
            self._finish(txn, False if txn.kind == "lock" else "no")
            return
        else:
            delay = self._retry_base  # a transient wait-die loss: the oldest goes first
        txn.phase = "backoff"
        at = self._ctx.now + delay * (0.5 + self._ctx.rng.random())
        self._ctx.emit(SetTimer((_RETRY, txn.tid), at))

    def _finish(self, txn: Txn, result: Any) -> None:
        if self._txns.pop(txn.tid, None) is None:
            return
        if txn.phase == "backoff":
            self._ctx.emit(CancelTimer((_RETRY, txn.tid)))
        txn.phase = "done"
        if not txn.answered:
            self._complete(txn.token, result)

    def _complete(self, token: Any, result: Any) -> None:
        """Tell whoever started a transaction that it ended."""
        if self._plugin.owns_token(token):
            self._plugin.done(token, result)
        elif isinstance(token, ReplyTo):
            self._ctx.send(token[0], ("unreg_ok", token[1]))
        else:
            self._ctx.emit(Complete(token, result))
