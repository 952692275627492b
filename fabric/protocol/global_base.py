"""State, plumbing and extension hooks shared by the parts of ``global``.

:class:`GlobalBase` holds every field of a node's ``global`` core (each commented), the
read-only lookups, the effect plumbing and the hooks through which a layer built on names
(leader election, :mod:`fabric.protocol.leader`) observes and steers registrations.
:mod:`fabric.protocol.global_names` adds the claims table and
:mod:`fabric.protocol.global_` the transactions and the public API; the theory of
operation is in the docstring of :mod:`fabric.protocol.global_`.

Messages to this node itself (a node is one of the nodes it locks) go through a local
queue that is drained before the current input returns, so self-messages take exactly the
same code path as remote ones without re-entrancy.
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from fabric.errors import LocalProtocolError
from fabric.protocol.effects import Complete, Effect, Log, Send
from fabric.protocol.global_locks import LockTable
from fabric.protocol.global_resolve import BUILTIN_RESOLVERS, Entry, Resolver, earliest_name
from fabric.protocol.global_txn import Txn
from fabric.types import Pid

__all__ = ["GlobalBase", "ReplyTo"]


class ReplyTo(tuple):  # type: ignore[type-arg]
    """Internal token ``(peer, rid)``: when done, tell ``peer`` that ``rid`` is done."""

    __slots__ = ()


class GlobalBase:
    """The state of one node's ``global`` core. Not used directly: see GlobalCore.

    Args:
        node: this node's full name.
        creation: this node run's creation (pids of earlier runs are refused).
        resolver: the default name-conflict resolver (must be the same on every node).
        seed: seeds the backoff jitter, so simulations are reproducible.
        resolvers: extra named resolvers, selectable per registration by ``method``.
        lock_retries: default number of retries of ``set_lock`` on a held lock.
        retry_base: first backoff, seconds; doubled per refusal up to ``retry_cap``.
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
    ) -> None:
        self.node = node
        self.creation = creation
        # Resolver used when a claim names no method (or an unknown one).
        self._default_resolver = resolver
        # method name -> resolver; the earlier claim's method picks the resolver.
        self._resolvers: dict[str, Resolver] = {**BUILTIN_RESOLVERS, **(resolvers or {})}
        # Backoff jitter only; correctness never depends on it.
        self._rng = random.Random(seed)
        # set_lock's default number of retries on a held lock, and its backoff bounds.
        self._lock_retries = lock_retries
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        # Connected peers (full names): the nodes every transaction locks besides us.
        self._peers: set[str] = set()
        # name -> owner node -> claim; owners are this node and connected peers only.
        self._claims: dict[Any, dict[str, Entry]] = {}
        # name -> the claim shown (the resolved one); absent when nobody holds the name.
        self._view: dict[Any, Entry] = {}
        # local pid -> names it claims (to retract them when it exits).
        self._local: dict[Pid, set[Any]] = {}
        # The granter side of the name and user locks.
        self._locks = LockTable()
        # Transactions this node started, by number.
        self._txns: dict[int, Txn] = {}
        # Transaction numbers (part of every request id and priority).
        self._txn_ids = itertools.count(1)
        # Sequence of claim stamps (the third part of a stamp).
        self._stamps = itertools.count(1)
        # Lamport clock: ages of requests and claims.
        self._lamport = 0
        # name -> claim pairs (earlier first) already reported to their owners. Whole
        # entries, meta included: a claim whose meta changed (a leader's new term) may
        # change the verdict, so that version is reported anew.
        self._reported: dict[Any, set[tuple[Entry, Entry]]] = {}
        # (my claim, other claim) versions this node already acted on as an owner.
        self._handled: set[tuple[Entry, Entry]] = set()
        # Messages to ourselves, handled before the current input returns.
        self._inbox: deque[Any] = deque()
        # Effects of the input being handled.
        self._out: list[Effect] = []
        # The current input's time.
        self._now = 0.0

    # -- reads ----------------------------------------------------------------------------

    def whereis_name(self, name: Any) -> Pid | None:
        """The pid registered under ``name`` as this node sees it, or None."""
        entry = self._view.get(name)
        return entry.pid if entry is not None else None

    def name_info(self, name: Any) -> Entry | None:
        """The full claim shown for ``name`` (stamp, method, meta), or None."""
        return self._view.get(name)

    def registered_names(self) -> list[Any]:
        """Every name this node shows, in no particular order."""
        return list(self._view)

    def lock_holders(self, resource: Any) -> frozenset[Pid]:
        """The pids holding lock ``resource`` as this node knows."""
        return self._locks.holders(("l", resource))

    def pending(self) -> int:
        """Number of transactions in progress (zero once a simulation settles)."""
        return len(self._txns)

    # -- plumbing -------------------------------------------------------------------------

    def _run(self, now: float, fn: Callable[..., None], *args: Any) -> list[Effect]:
        """Handle one input: run ``fn``, then the messages it sent to this node."""
        self._now = now
        try:
            fn(*args)
            while self._inbox:
                self._dispatch(self.node, self._inbox.popleft())
        except BaseException:
            self._inbox.clear()  # misuse raises before any change; leave nothing behind
            self._out = []
            raise
        out, self._out = self._out, []
        return out

    def _send(self, peer: str, payload: Any) -> None:
        if peer == self.node:
            self._inbox.append(payload)
        else:
            self._out.append(Send(peer, payload))

    def _broadcast(self, payload: Any) -> None:
        for peer in sorted(self._peers):
            self._out.append(Send(peer, payload))

    def _log(self, level: str, event: str, **fields: Any) -> None:
        self._out.append(Log(level, event, {"node": self.node, **fields}))

    def _check(self, name: Any, pid: Pid) -> None:
        if not isinstance(pid, Pid) or pid.node != self.node:
            raise LocalProtocolError(f"global: {pid!r} is not a pid of this node")
        if pid.creation != self.creation:
            raise LocalProtocolError(f"global: {pid!r} is from an earlier run of this node")
        try:
            hash(name)
        except TypeError:
            raise LocalProtocolError(f"global: {name!r} is not hashable") from None

    def _dispatch(self, peer: str, payload: Any) -> None:
        try:
            tag = payload[0]
            # Only methods named _h_<tag> are reachable from the wire.
            handler = getattr(self, f"_h_{tag}", None) if isinstance(tag, str) else None
            if handler is None:
                raise ValueError(f"unknown message {tag!r}")
            handler(peer, *payload[1:])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            # A malformed or unknown message is the peer's fault: log it, never crash.
            self._log("warning", "global_bad_message", peer=peer, error=repr(exc))

    # -- hooks for layers built on names (see fabric.protocol.leader) ---------------------

    def _done(self, token: Any, result: Any) -> None:
        """A transaction ended. Default: ``Complete`` (or the reply of a forwarded one)."""
        if isinstance(token, ReplyTo):
            self._send(token[0], ("unreg_ok", token[1]))
        else:
            self._out.append(Complete(token, result))

    def _view_changed(self, name: Any, old: Entry | None, new: Entry | None) -> None:
        """The claim shown for ``name`` changed."""

    def _on_claim(self, entry: Entry) -> None:
        """A claim was stored (new or updated)."""

    def _conflict_outcome(self, name: Any, mine: Entry, other: Entry, won: bool) -> None:
        """Our claim ``mine`` met ``other`` and ``won`` or lost (owner side, once)."""

    def _grant_extra(self, name: Any) -> Any:
        """Extra information a grant for ``name`` carries to the requester."""
        return None

    def _finalize_meta(self, name: Any, meta: Any, extras: list[Any]) -> Any:
        """The meta to commit, given every granter's extra information."""
        return meta

    def _sync_extra(self) -> Any:
        """Extra state sent in a sync (must be msgpack-able)."""
        return None

    def _on_sync_extra(self, peer: str, extra: Any) -> None:
        """Extra state received in a sync."""

    def _extra_timer(self, key: Any) -> None:
        """A timer that is not ours fired."""

    def _on_local_exit(self, pid: Pid) -> None:
        """A local process exited (after its names and locks were dropped)."""
