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
``multi_call``); with ``wait_all=False`` the answer comes at the commit instead, one
round trip sooner (the answer is final once the claim is sent: uniqueness rests on the
locks, which each node drops only when it applies the claim). Two requesters that are
connected, or share a connected node, both lock that node, which serialises them:
exactly one ``"yes"``. A request in flight is extended to a peer that comes up
meanwhile. ``re_register_name`` commits in two rounds: every node first drops the other
claims (their owners retract them, without notification, like Erlang) and acks, then the
new claim is sent, so no two connected nodes ever show the old and the new pid at once.

**Removal** needs no lock because only the owner removes: a retract is broadcast when
the process exits, on ``unregister_name`` (forwarded to the owner; the reply waits for
every node's ack) and when a claim loses a conflict. A ``nodedown`` drops the peer's
claims, so names of a dead or unreachable node vanish.

**Partitions and conflicts.** On ``nodeup`` both sides send their own claims and held
locks (``sync``, replacing what the other knew of them). A node that then holds two
claims for one name reports the pair to both owners (``conflict``); every node computes
the same verdict (:func:`resolve_pair`), the loser's owner delivers
``GlobalNameConflict(name, other_pid)`` or kills (:class:`ExitProcess`) as the
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

Composition (DECISIONS.md D16): :class:`GlobalCore` is the one service hosted as
``"global"``; it wires parts with one job each and owns the one table from message tag
to handler (:meth:`GlobalCore._handlers`):

* :mod:`.global_context`: the shared context of an input (identity, peers, Lamport
  clock, randomness, outputs, the queue of messages to this node itself);
* :mod:`.global_names`: the claims table (``claim``, ``retract``, ``clear``,
  ``supersede``);
* :mod:`.global_locks`: the granter side, wait-die (``req``, ``release``, ``hold``,
  ``unlock``, ``unlock_pid``);
* :mod:`.global_heal`: resolution after a heal (``sync``, ``conflict``), with the
  resolvers of :mod:`.global_resolve`;
* :mod:`.global_txn`: the requester side (``grant``, ``deny``, ``taken``, ``ack``,
  ``unreg``, ``unreg_ok``, retry timers);
* :mod:`.global_plugin`: the plug-in slot through which a layer built on names (leader
  election, :mod:`.leader`) observes and steers them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fabric.protocol.effects import Effect
from fabric.protocol.global_context import GlobalContext
from fabric.protocol.global_heal import Healer
from fabric.protocol.global_locks import Granter
from fabric.protocol.global_names import NameTable
from fabric.protocol.global_plugin import NamePlugin
from fabric.protocol.global_resolve import (
    ConflictInfo,
    Entry,
    ExitProcess,
    Resolution,
    Resolver,
    Verdicts,
    earliest_name,
    highest_term,
    notify_all_name,
    random_exit_name,
    random_notify_name,
)
from fabric.protocol.global_txn import Transactions, TxnKind
from fabric.types import Pid

__all__ = [
    "ConflictInfo",
    "Entry",
    "ExitProcess",
    "GlobalCore",
    "NamePlugin",
    "Resolution",
    "Resolver",
    "earliest_name",
    "highest_term",
    "notify_all_name",
    "random_exit_name",
    "random_notify_name",
]


class GlobalCore:
    """Cluster-wide names and locks for one node: the ``"global"`` service core.

    Args:
        node: this node's full name.
        creation: this node run's creation (pids of earlier runs are refused).
        resolver: the default name-conflict resolver (must be the same on every node).
        seed: seeds the backoff jitter, so simulations are reproducible.
        resolvers: extra named resolvers, selectable per registration by ``method``.
        lock_retries: default number of retries of ``set_lock`` on a held lock.
        retry_base: first backoff, seconds; doubled per refusal up to ``retry_cap``.
        plugin: the layer built on names (leader election), if any.
    """

    service = "global"
    topic_prefix = None  # global never publishes: everything goes over the mesh

    def __init__(
        self,
        node: str,
        creation: int,
        resolver: Resolver = earliest_name,
        *,
        seed: int = 0,
        resolvers: Mapping[str, Resolver] | None = None,
        lock_retries: int = 5,
        retry_base: float = 0.02,
        retry_cap: float = 1.0,
        plugin: NamePlugin | None = None,
    ) -> None:
        self.node = node
        self.creation = creation
        ctx = GlobalContext(node, creation, seed)
        plugin = plugin if plugin is not None else NamePlugin()
        verdicts = Verdicts(resolver, resolvers, self._resolver_failed)
        granter = Granter(ctx, self._grant_info)
        names = NameTable(ctx, verdicts, granter, plugin)
        self._ctx = ctx
        self._plugin = plugin
        self._granter = granter
        self._names = names
        self._heal = Healer(ctx, names, granter, verdicts, plugin)
        self._txns = Transactions(
            ctx, names, plugin, lock_retries=lock_retries, retry_base=retry_base,
            retry_cap=retry_cap)
        # The one table from message tag to handler: nothing else is reachable from the
        # wire. Every handler takes the sending peer and the message's fields.
        self._handlers: dict[str, Callable[..., None]] = {
            # claims (global_names)
            "claim": names.on_claim,
            "retract": names.on_retract,
            "clear": names.on_clear,
            "supersede": names.on_supersede,
            # resolution after a heal (global_heal)
            "sync": self._heal.on_sync,
            "conflict": self._heal.on_conflict,
            # granter side of the locks (global_locks)
            "req": granter.on_req,
            "release": granter.on_release,
            "hold": granter.on_hold,
            "unlock": granter.on_unlock,
            "unlock_pid": granter.on_unlock_pid,
            # requester side (global_txn)
            "grant": self._txns.on_grant,
            "deny": self._txns.on_deny,
            "taken": self._txns.on_taken,
            "ack": self._txns.on_ack,
            "unreg": self._txns.on_unreg,
            "unreg_ok": self._txns.on_unreg_ok,
        }
        plugin.attach(_Port(self))

    # -- reads ----------------------------------------------------------------------------

    def whereis_name(self, name: Any) -> Pid | None:
        """The pid registered under ``name`` as this node sees it, or None."""
        entry = self._names.shown(name)
        return entry.pid if entry is not None else None

    def name_info(self, name: Any) -> Entry | None:
        """The full claim shown for ``name`` (stamp, method, meta), or None."""
        return self._names.shown(name)

    def registered_names(self) -> list[Any]:
        """Every name this node shows, in no particular order."""
        return self._names.names()

    def lock_holders(self, resource: Any) -> frozenset[Pid]:
        """The pids holding lock ``resource`` as this node knows."""
        return self._granter.holders(resource)

    def pending(self) -> int:
        """Number of transactions in progress (zero once a simulation settles)."""
        return self._txns.pending()

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
        wait_all: bool = True,
    ) -> list[Effect]:
        """Register ``name`` for the local ``pid``; completes ``token`` with "yes" or "no".

        ``name`` is any hashable msgpack value (str, int, bytes, tuples of them).
        ``method`` picks a resolver by name ("earliest", "random_exit", "random_notify",
        "notify_all", "leader" or one given to the constructor); ``meta`` (hashable,
        msgpack-able) travels with the claim. One pid may hold several names.

        ``wait_all`` False answers "yes" at the commit, one round trip sooner, instead
        of once every node acknowledged the claim: the name is exactly as unique, this
        node shows it at once and every peer before any later message from this node,
        but a third node may show it up to a round trip after the answer.

        Raises:
            LocalProtocolError: ``pid`` is not a pid of this node run, or ``name`` or
                ``meta`` is not hashable.
        """
        return self._run(
            now, self._register, "register", name, pid, token, method, meta, wait_all)

    def re_register_name(
        self,
        name: Any,
        pid: Pid,
        token: Any,
        now: float,
        *,
        method: str | None = None,
        meta: Any = None,
        wait_all: bool = True,
    ) -> list[Effect]:
        """Register ``name`` for ``pid`` even if taken; completes ``token`` with "yes".

        ``wait_all``: as for :meth:`register_name`.

        Raises:
            LocalProtocolError: ``pid`` is not a pid of this node run, or bad ``name``.
        """
        return self._run(
            now, self._register, "re_register", name, pid, token, method, meta, wait_all)

    def unregister_name(self, name: Any, token: Any, now: float) -> list[Effect]:
        """Remove ``name`` everywhere; completes ``token`` with "ok" once all nodes did."""
        return self._run(now, self._txns.unregister, name, token)

    def set_lock(
        self, resource: Any, pid: Pid, token: Any, now: float, *, retries: int | None = None
    ) -> list[Effect]:
        """Lock ``resource`` for the local ``pid`` on every connected node.

        Completes ``token`` with True, or with False after ``retries`` refusals (each
        followed by a backoff). Lock id is ``(resource, pid)``; re-entrant per pid.

        Raises:
            LocalProtocolError: ``pid`` is not a pid of this node run, or bad ``resource``.
        """
        self._ctx.check_local(resource, pid)
        n = self._txns.lock_retries if retries is None else retries
        return self._run(now, self._txns.lock, resource, pid, token, n)

    def del_lock(self, resource: Any, pid: Pid, now: float) -> list[Effect]:
        """Release ``pid``'s lock on ``resource`` everywhere (no-op if not held).

        Raises:
            LocalProtocolError: ``pid`` is not a pid of this node run.
        """
        self._ctx.check_local(resource, pid)

        def go() -> None:
            self._granter.unlock(resource, pid)
            self._ctx.broadcast(("unlock", resource, pid))

        return self._run(now, go)

    # -- ServiceCore inputs ---------------------------------------------------------------

    def on_nodeup(self, peer: str, now: float) -> list[Effect]:
        """Send ``peer`` our claims and locks; extend requests in flight to it."""

        def go() -> None:
            self._ctx.peers.add(peer)
            self._heal.sync_to(peer)
            self._txns.on_nodeup(peer)

        return self._run(now, go)

    def on_nodedown(self, peer: str, reason: str, now: float) -> list[Effect]:
        """Drop ``peer``'s claims, requests and locks; stop waiting for it."""

        def go() -> None:
            self._ctx.peers.discard(peer)
            self._names.drop_peer(peer)
            self._granter.drop_node(peer)
            self._txns.on_nodedown(peer)

        return self._run(now, go)

    def on_message(self, peer: str, payload: Any, now: float) -> list[Effect]:
        """Handle one message from the global core of ``peer``."""
        return self._run(now, self._dispatch, peer, payload)

    def on_publish(self, payload: Any, now: float) -> list[Effect]:
        """Never called: global declares no topic prefix."""
        return []

    def on_timer(self, key: Any, now: float) -> list[Effect]:
        """A backoff ended: retry the transaction (or a plug-in's timer fired)."""

        def go() -> None:
            if not self._txns.on_timer(key):
                self._plugin.on_timer(key)

        return self._run(now, go)

    def on_process_exit(self, pid: Pid, reason: Any, now: float) -> list[Effect]:
        """A local process exited: retract its names, release its locks and requests."""
        return self._run(now, self._exit, pid)

    # -- internals ------------------------------------------------------------------------

    def _run(self, now: float, fn: Callable[..., None], *args: Any) -> list[Effect]:
        """Handle one input: run ``fn``, then the messages it sent to this node."""
        ctx = self._ctx
        ctx.now = now
        try:
            fn(*args)
            while ctx.inbox:
                self._dispatch(self.node, ctx.inbox.popleft())
        except BaseException:
            ctx.discard()  # misuse raises before any change; leave nothing behind
            raise
        return ctx.take()

    def _dispatch(self, peer: str, payload: Any) -> None:
        try:
            tag = payload[0]
            handler = self._handlers.get(tag) if isinstance(tag, str) else None
            if handler is None:
                raise ValueError(f"unknown message {tag!r}")
            handler(peer, *payload[1:])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            # A malformed or unknown message is the peer's fault: log it, never crash.
            self._ctx.log("warning", "global_bad_message", peer=peer, error=repr(exc))

    def _register(self, kind: TxnKind, name: Any, pid: Pid, token: Any, method: str | None,
                  meta: Any, wait_all: bool) -> None:
        self._txns.register(kind, name, pid, token, method, meta, wait_all=wait_all)

    def _exit(self, pid: Pid) -> None:
        if pid.node != self.node:
            return
        # The plug-in forgets the pid first, so that nothing it does in reaction to the
        # retracts below (a leader standing again) can pick the dead pid.
        self._plugin.local_exit(pid)
        self._txns.local_exit(pid)
        for name in self._names.names_of(pid):
            entry = self._names.own(name)
            if entry is not None:
                self._names.retract_own(name, entry, None)
        if any(p == pid for _, p in self._granter.held_here()):
            # Only then: every process exit would otherwise cost a broadcast.
            self._granter.drop_pid(pid)
            self._ctx.broadcast(("unlock_pid", pid))

    def _grant_info(self, name: Any) -> tuple[bool, Any]:
        """What a grant of the lock on ``name`` tells the requester."""
        return self._names.claimed(name), self._plugin.grant_extra(name)

    def _resolver_failed(self, name: Any, exc: Exception) -> None:
        self._ctx.log("error", "global_resolver_failed", name=name, error=repr(exc))


class _Port:
    """What the plug-in of a :class:`GlobalCore` may do (see :class:`NamesPort`)."""

    def __init__(self, core: GlobalCore) -> None:
        self._core = core
        self._ctx = core._ctx

    @property
    def node(self) -> str:
        return self._ctx.node

    @property
    def now(self) -> float:
        return self._ctx.now

    def random(self) -> float:
        return self._ctx.rng.random()

    def run(self, now: float, action: Callable[[], None]) -> list[Effect]:
        return self._core._run(now, action)

    def emit(self, effect: Effect) -> None:
        self._ctx.emit(effect)

    def check_local(self, name: Any, pid: Pid) -> None:
        self._ctx.check_local(name, pid)

    def name_info(self, name: Any) -> Entry | None:
        return self._core._names.shown(name)

    def claimed(self, name: Any) -> bool:
        return self._core._names.claimed(name)

    def register(self, name: Any, pid: Pid, token: Any, method: str | None, meta: Any) -> None:
        self._core._txns.register("register", name, pid, token, method, meta)

    def unregister(self, name: Any, token: Any) -> None:
        self._core._txns.unregister(name, token)

    def update_own_meta(self, name: Any, meta: Any) -> None:
        self._core._names.update_own_meta(name, meta)
