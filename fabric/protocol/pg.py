"""Process groups: eventually consistent named groups of pids, after Erlang's ``pg``.

Theory of operation
-------------------
Every node runs one :class:`PgCore`. A *scope* is an independent namespace of groups (an
overlay; every method takes it first, :data:`DEFAULT_SCOPE` is ``"default"``); a *group*
is any hashable, msgpack-encodable value. There are no locks and no leader: **each node
is the sole authority for its own (local) members**. Only local pids may join or leave;
a node learns about other nodes' members only from those nodes. Every input method returns
its effects (the :class:`~fabric.protocol.service.ServiceCore` contract); one that has a
result (leave, monitor, monitor_scope, demonitor) returns it as a ``Reply`` effect.

Exchange protocol (service ``"pg"``; payloads are plain tuples, lists, str, int and Pid)::

    ("sync", [(scope, [(group, [pid, ...]), ...]), ...])   all local members, every scope
    ("join", scope, group, [pid, ...])                      pids joined (one occurrence each)
    ("leave", scope, group, [pid, ...])                     one occurrence of each pid left
    ("bcast", scope, group, msg)                            reliable broadcast, see below

* On ``nodeup(peer)`` each side sends the other one ``sync``. A received ``sync``
  *replaces* everything known about that peer's members, in every scope (scopes it does
  not list are empty). This is what makes views converge after a netsplit heals, and it
  is idempotent, so a duplicate ``sync`` is harmless.
* A local join or leave is applied at once and sent as ``join``/``leave`` to every
  connected peer. The mesh delivers a peer's messages in order after its ``nodeup``, so a
  peer's ``sync`` always precedes its ``join``/``leave``.
* A local process exit removes every occurrence of the pid and sends ``leave`` messages.
* On ``nodedown(peer)`` every member of that peer is dropped from every scope. A node that
  restarts has a new creation, so its old pids are gone with the nodedown and its new
  members arrive with the next ``sync``.

Monitors (:meth:`PgCore.monitor`, :meth:`PgCore.monitor_scope`) deliver, to a local
watcher, one message per change of a watched group, whatever its cause (local or remote
join/leave, exit, nodedown, sync)::

    PgJoin | PgLeave(token: Ref, scope, group, pids: [pid, ...])

(:mod:`fabric.protocol.events`; Erlang's ``{join | leave, Ref, Group, Pids}``.)

Fan-out: a node's SUB is subscribed to :func:`group_topic` of exactly the groups with at
least one local member (``Subscribe`` on the first local join, ``Unsubscribe`` when the
last local member leaves or exits). :meth:`PgCore.broadcast` publishes ``(scope, group,
msg)`` once under that topic (best effort, PUB/SUB may drop) and delivers to the local
members; :meth:`PgCore.broadcast_reliable` sends one ``bcast`` per node that has members
over the ordered mesh instead. Both deliver a message once per distinct member pid, even
when the pid joined several times, with one ``DeliverMany`` effect: each view keeps its
distinct local members and its member nodes up to date on every change, so a broadcast
(frequent) does not recompute them from the members (joins and leaves are rare).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack  # type: ignore[import-untyped,unused-ignore]

from fabric.errors import LocalProtocolError
from fabric.protocol.effects import (
    Deliver,
    DeliverMany,
    Effect,
    Log,
    Publish,
    Reply,
    Send,
    Subscribe,
    Unsubscribe,
)
from fabric.protocol.events import PgJoin, PgLeave
from fabric.protocol.messages import PG_TOPIC_PREFIX
from fabric.types import Pid, Ref

__all__ = ["DEFAULT_SCOPE", "PG_TOPIC_PREFIX", "FanOut", "PgCore", "group_topic"]

DEFAULT_SCOPE: Final = "default"
# Marks a monitor on a whole scope in PgCore._monitors (a group can never be this object).
_WHOLE_SCOPE: Final = object()


def group_topic(scope: str, group: Hashable) -> bytes:
    """The PUB/SUB topic of a group: ``b"g\\x00" + packb(scope) + packb(group)``.

    Both parts are complete msgpack values (``use_bin_type=True``; tuples as arrays).
    msgpack values are self-delimiting (a str carries its byte length in its header), so
    no topic is a proper prefix of another: group ``"a"`` never matches ``"ab"``, a scope
    never runs into a group, and NUL bytes inside names are harmless. Groups that compare
    equal must encode equally, so do not mix ``1``, ``1.0`` and ``True`` as group names.
    Two groups that encode equally (a Pid and the plain tuple of its fields) share a topic;
    that only costs bandwidth, because delivery checks the exact group.

    Raises:
        LocalProtocolError: the scope is not a str or the group cannot be encoded.
    """
    if not isinstance(scope, str):
        raise LocalProtocolError(f"pg scope must be a str, not {type(scope).__name__}")
    try:
        hash(group)
        body: bytes = msgpack.packb(group, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"pg group {group!r} is not a hashable msgpack value") from exc
    head: bytes = msgpack.packb(scope, use_bin_type=True)
    return PG_TOPIC_PREFIX + head + body


class _View:
    """What this node knows about one (scope, group)."""

    __slots__ = ("all", "local", "nodes", "recipients", "topic")

    def __init__(self, topic: bytes) -> None:
        self.all: list[Pid] = []  # every known member, one entry per join (local + remote)
        self.local: list[Pid] = []  # the local members, one entry per join
        # Kept up to date on join and leave (rare) for the broadcasts (frequent):
        self.recipients: tuple[Pid, ...] = ()  # the distinct local members, first-joined first
        # other node -> how many entries of `all` are its (key order is not meaningful)
        self.nodes: dict[str, int] = {}
        self.topic = topic  # group_topic(scope, group), computed once


@dataclass(frozen=True, slots=True)
class FanOut:
    """Whom a broadcast to one group reaches, as the view keeps it between changes:
    ``recipients``, the distinct local members (first-joined first), and ``nodes``, the
    other nodes with members and how many entries each has (see :meth:`PgCore.fan_out`)."""

    recipients: tuple[Pid, ...]
    nodes: dict[str, int]


# group -> pids: one scope's members as one peer reported them.
_Members = dict[Hashable, list[Pid]]


def _minus(a: Sequence[Pid], b: Sequence[Pid]) -> list[Pid]:
    """Multiset difference ``a - b`` (deterministic: in first-seen order of ``a``)."""
    return list((Counter(a) - Counter(b)).elements())


def _drop(table: dict[Any, dict[Ref, Pid]], key: Any, token: Ref) -> None:
    """Remove ``token`` from ``table[key]``, and the key once it holds no tokens."""
    watchers = table[key]
    del watchers[token]
    if not watchers:
        del table[key]


class PgCore:
    """The sans-I/O process-group service of one node (see the module docstring).

    Args:
        node: this node's full name.
        creation: this node run's creation (local pids must carry it).
    """

    service = "pg"
    topic_prefix = PG_TOPIC_PREFIX

    def __init__(self, node: str, creation: int) -> None:
        self.node = node  # this node's full name: pids with this node are local
        self.creation = creation  # this run: local pids from another run are refused
        # scope -> group -> _View: the merged view that get_members reads. A group is
        # present only while it has members, so which_groups is a plain key listing.
        self._views: dict[str, dict[Hashable, _View]] = {}
        # local pid -> the (scope, group) it joined, one entry per join: what an exit undoes.
        self._local: dict[Pid, list[tuple[str, Hashable]]] = {}
        # peer that is up -> scope -> group -> its members as it reported them: per peer so
        # a sync can replace them and a nodedown drop them (dict order: deterministic sends).
        self._remote: dict[str, dict[str, _Members]] = {}
        # monitor token -> (watcher, scope, group or _WHOLE_SCOPE): for demonitor.
        self._monitors: dict[Ref, tuple[Pid, str, Any]] = {}
        # (scope, group) -> {token: watcher}: group monitors, read on every change.
        self._group_watchers: dict[tuple[str, Hashable], dict[Ref, Pid]] = {}
        # scope -> {token: watcher}: scope monitors, read on every change.
        self._scope_watchers: dict[str, dict[Ref, Pid]] = {}
        # watcher -> its tokens: a watcher that exits is demonitored automatically.
        self._by_watcher: dict[Pid, list[Ref]] = {}
        # source of monitor token ids, unique within this node run.
        self._ref_ids = itertools.count(1)

    # -- local API -------------------------------------------------------------------------

    def join(
        self, scope: str, group: Hashable, pids: Pid | Sequence[Pid], now: float
    ) -> list[Effect]:
        """Add one occurrence of each local pid to ``group``.

        A pid may join a group several times; it is then listed that many times.

        Returns:
            The effects: monitor notifications, ``Subscribe`` on the group's first local
            member, and one ``("join", scope, group, pids)`` Send per connected peer.

        Raises:
            LocalProtocolError: a pid is not a live local pid, or scope/group are invalid.
        """
        group_topic(scope, group)
        pid_list = self._check_local(pids)
        if not pid_list:
            return []
        out: list[Effect] = []
        for pid in pid_list:
            self._local.setdefault(pid, []).append((scope, group))
        self._add(scope, group, pid_list, out)
        self._tell_peers(("join", scope, group, pid_list), out)
        return out

    def leave(
        self, scope: str, group: Hashable, pids: Pid | Sequence[Pid], now: float
    ) -> list[Effect]:
        """Remove one occurrence of each local pid from ``group``.

        Returns:
            The effects, starting with ``Reply(ok)``: ``ok`` is False ("not_joined", no
            other effect) when none of the pids was in the group; pids that were not in
            it are skipped otherwise.

        Raises:
            LocalProtocolError: a pid is not a live local pid, or scope/group are invalid.
        """
        group_topic(scope, group)
        left: list[Pid] = []
        for pid in self._check_local(pids):
            joined = self._local.get(pid)
            if joined and (scope, group) in joined:
                joined.remove((scope, group))
                if not joined:
                    del self._local[pid]
                left.append(pid)
        if not left:
            return [Reply(False)]
        out: list[Effect] = [Reply(True)]
        self._remove(scope, group, left, out)
        self._tell_peers(("leave", scope, group, left), out)
        return out

    def local_memberships(self) -> list[tuple[str, Hashable, Pid]]:
        """Every ``(scope, group, pid)`` a local process joined, once per join: what a
        graceful drain leaves so that peers stop routing here."""
        return [(scope, group, pid) for pid, joined in self._local.items()
                for scope, group in joined]

    def monitor(
        self, scope: str, group: Hashable, watcher: Pid, now: float
    ) -> list[Effect]:
        """Watch ``group``: ``watcher`` gets a message for each later change of it.

        Returns:
            ``[Reply((token, members))]``: the token that notifications carry and the
            members now.

        Raises:
            LocalProtocolError: the watcher is not a live local pid.
        """
        group_topic(scope, group)
        token = self._new_monitor(watcher, scope, group)
        self._group_watchers.setdefault((scope, group), {})[token] = watcher
        return [Reply((token, self.get_members(scope, group)))]

    def monitor_scope(
        self, scope: str, watcher: Pid, now: float
    ) -> list[Effect]:
        """Watch every group of ``scope``.

        Returns:
            ``[Reply((token, {group: members}))]``.

        Raises:
            LocalProtocolError: the watcher is not a live local pid.
        """
        group_topic(scope, None)
        token = self._new_monitor(watcher, scope, _WHOLE_SCOPE)
        self._scope_watchers.setdefault(scope, {})[token] = watcher
        groups = self._views.get(scope, {})
        return [Reply((token, {g: list(v.all) for g, v in groups.items()}))]

    def demonitor(self, token: Ref, now: float) -> list[Effect]:
        """Stop a monitor: ``[Reply(False)]`` if ``token`` is not an active monitor."""
        entry = self._monitors.pop(token, None)
        if entry is None:
            return [Reply(False)]
        watcher, scope, group = entry
        if group is _WHOLE_SCOPE:
            _drop(self._scope_watchers, scope, token)
        else:
            _drop(self._group_watchers, (scope, group), token)
        tokens = self._by_watcher[watcher]
        tokens.remove(token)
        if not tokens:
            del self._by_watcher[watcher]
        return [Reply(True)]

    def broadcast(self, scope: str, group: Hashable, msg: Any, now: float) -> list[Effect]:
        """Best-effort fan-out: one ``Publish`` for remote nodes, ``DeliverMany`` to the local
        members.

        The published payload is ``(scope, group, msg)``; receiving nodes pass it to
        :meth:`on_publish`.
        """
        view = self._views.get(scope, {}).get(group)
        topic = view.topic if view is not None else group_topic(scope, group)
        out: list[Effect] = [Publish(topic, (scope, group, msg))]
        self._deliver_local(scope, group, msg, out)
        return out

    def broadcast_reliable(self, scope: str, group: Hashable, msg: Any, now: float) -> list[Effect]:
        """Fan-out over the ordered mesh: one ``("bcast", scope, group, msg)`` Send per
        remote node that has members in our view, plus ``DeliverMany`` to local members."""
        out: list[Effect] = []
        view = self._views.get(scope, {}).get(group)
        if view is not None:
            for node in view.nodes:
                out.append(Send(node, ("bcast", scope, group, msg)))
        self._deliver_local(scope, group, msg, out)
        return out

    # -- reads (no effects) ---------------------------------------------------------------

    def get_members(self, scope: str, group: Hashable) -> list[Pid]:
        """All known members of ``group``, a pid once per join, in no specific order."""
        view = self._views.get(scope, {}).get(group)
        return list(view.all) if view is not None else []

    def get_local_members(self, scope: str, group: Hashable) -> list[Pid]:
        """The members of ``group`` that run on this node."""
        view = self._views.get(scope, {}).get(group)
        return list(view.local) if view is not None else []

    def which_groups(self, scope: str) -> list[Hashable]:
        """The groups of ``scope`` that have at least one known member."""
        return list(self._views.get(scope, {}))

    def which_local_groups(self, scope: str) -> list[Hashable]:
        """The groups of ``scope`` that have at least one local member."""
        return [g for g, v in self._views.get(scope, {}).items() if v.local]

    def scopes(self) -> list[str]:
        """The scopes that have at least one group with a known member."""
        return list(self._views)

    def fan_out(self, scope: str, group: Hashable) -> FanOut:
        """What a broadcast to ``group`` reaches (a copy of the view's cached fan-out;
        empty for a group without members): an observation for tests and debugging."""
        view = self._views.get(scope, {}).get(group)
        if view is None:
            return FanOut((), {})
        return FanOut(view.recipients, dict(view.nodes))

    # -- ServiceCore inputs ----------------------------------------------------------------

    def on_nodeup(self, peer: str, now: float) -> list[Effect]:
        """Start tracking ``peer`` and send it our full local membership (``sync``)."""
        if peer == self.node:
            return []
        # A repeated nodeup (no nodedown between) keeps what we knew: the peer's own sync,
        # which follows, replaces it anyway.
        self._remote.setdefault(peer, {})
        snapshot = [
            (scope, [(g, list(v.local)) for g, v in groups.items() if v.local])
            for scope, groups in self._views.items()
        ]
        return [Send(peer, ("sync", [s for s in snapshot if s[1]]))]

    def on_nodedown(self, peer: str, reason: str, now: float) -> list[Effect]:
        """Drop every member of ``peer`` in every scope."""
        known = self._remote.pop(peer, None)
        out: list[Effect] = []
        for scope, groups in (known or {}).items():
            for group, pids in groups.items():
                self._remove(scope, group, pids, out)
        return out

    def on_message(self, peer: str, payload: Any, now: float) -> list[Effect]:
        """Apply a ``sync``/``join``/``leave``/``bcast`` from ``peer``."""
        known = self._remote.get(peer)
        if known is None:
            # Race: the message was in flight when we handled the peer's nodedown (or it
            # came from outside the overlay). Dropping it is safe: the sync that follows
            # the next nodeup carries the peer's full state.
            return []
        out: list[Effect] = []
        try:
            kind = payload[0]
            if kind == "sync":
                self._on_sync(peer, known, payload[1], out)
            elif kind in ("join", "leave"):
                self._on_change(peer, known, payload, out)
            elif kind == "bcast":
                _, scope, group, msg = payload
                self._deliver_local(scope, group, msg, out)
            else:
                raise ValueError(f"unknown kind {kind!r}")
        except (LocalProtocolError, TypeError, ValueError, IndexError, KeyError) as exc:
            out.append(Log("warning", "pg_bad_message", {"peer": peer, "error": str(exc)}))
        return out

    def on_publish(self, payload: Any, now: float) -> list[Effect]:
        """Deliver a published ``(scope, group, msg)`` to this node's local members."""
        out: list[Effect] = []
        try:
            scope, group, msg = payload
            self._deliver_local(scope, group, msg, out)
        except (TypeError, ValueError) as exc:
            out.append(Log("warning", "pg_bad_publish", {"error": str(exc)}))
        return out

    def on_timer(self, key: Any, now: float) -> list[Effect]:
        """pg sets no timers."""
        return []

    def on_process_exit(self, pid: Pid, reason: Any, now: float) -> list[Effect]:
        """Remove every occurrence of a local pid, tell peers, and drop its monitors."""
        for token in list(self._by_watcher.get(pid, ())):
            self.demonitor(token, now)
        out: list[Effect] = []
        joined = self._local.pop(pid, None)
        if joined is None:
            # Also the leave/exit race: the pid left every group before its exit arrived.
            return out
        for (scope, group), count in Counter(joined).items():
            if left := self._remove(scope, group, [pid] * count, out):
                self._tell_peers(("leave", scope, group, left), out)
        return out

    # -- internals -------------------------------------------------------------------------

    def _check_local(self, pids: Pid | Sequence[Pid]) -> list[Pid]:
        pid_list = [pids] if isinstance(pids, Pid) else list(pids)
        for pid in pid_list:
            if not isinstance(pid, Pid):
                raise LocalProtocolError(f"pg expects pids, got {pid!r}")
            if pid.node != self.node:
                raise LocalProtocolError(f"pg: only local pids may join or leave, not {pid!r}")
            if pid.creation != self.creation:
                raise LocalProtocolError(f"pg: {pid!r} is from an earlier run of this node")
        return pid_list

    def _new_monitor(self, watcher: Pid, scope: str, group: Any) -> Ref:
        self._check_local(watcher)
        token: Ref = Ref(self.node, next(self._ref_ids), self.creation)
        self._monitors[token] = (watcher, scope, group)
        self._by_watcher.setdefault(watcher, []).append(token)
        return token

    def _tell_peers(self, payload: Any, out: list[Effect]) -> None:
        for peer in self._remote:
            out.append(Send(peer, payload))

    def _add(self, scope: str, group: Hashable, pids: list[Pid], out: list[Effect]) -> None:
        """Add members to the view (pids all local or all remote) and notify."""
        groups = self._views.setdefault(scope, {})
        view = groups.get(group)
        if view is None:
            view = groups[group] = _View(group_topic(scope, group))
        node = pids[0].node
        if node == self.node:
            if not view.local:
                out.append(Subscribe(view.topic))
            view.local.extend(pids)
            view.recipients = tuple(dict.fromkeys(view.local))
        else:
            view.nodes[node] = view.nodes.get(node, 0) + len(pids)
        view.all.extend(pids)
        self._notify(PgJoin, scope, group, pids, out)

    def _remove(
        self, scope: str, group: Hashable, pids: Iterable[Pid], out: list[Effect]
    ) -> list[Pid]:
        """Remove one occurrence of each pid from the view and notify; returns the removed."""
        groups = self._views.get(scope)
        view = groups.get(group) if groups is not None else None
        if groups is None or view is None:
            return []
        had_local = bool(view.local)
        removed: list[Pid] = []
        local_removed = False
        for pid in pids:
            try:
                view.all.remove(pid)
            except ValueError:
                continue
            node = pid.node
            if node == self.node:
                view.local.remove(pid)
                local_removed = True
            elif view.nodes[node] == 1:
                del view.nodes[node]
            else:
                view.nodes[node] -= 1
            removed.append(pid)
        if local_removed:
            view.recipients = tuple(dict.fromkeys(view.local))
        if had_local and not view.local:
            out.append(Unsubscribe(view.topic))
        if not view.all:
            del groups[group]
            if not groups:
                del self._views[scope]
        if removed:
            self._notify(PgLeave, scope, group, removed, out)
        return removed

    def _notify(
        self, kind: type[PgJoin | PgLeave], scope: str, group: Hashable, pids: list[Pid],
        out: list[Effect],
    ) -> None:
        for watchers in (self._group_watchers.get((scope, group)), self._scope_watchers.get(scope)):
            for token, watcher in (watchers or {}).items():
                out.append(Deliver(watcher, kind(token, scope, group, list(pids))))

    def _on_sync(self, peer: str, known: dict[str, _Members], body: Any, out: list[Effect]) -> None:
        # Parse everything before touching state, so a malformed sync changes nothing.
        new: dict[str, _Members] = {}
        for scope, groups in body:
            for group, pids in groups:
                group_topic(scope, group)
                mine = [p for p in pids if isinstance(p, Pid) and p.node == peer]
                if mine:
                    new.setdefault(scope, {}).setdefault(group, []).extend(mine)
        for scope in dict.fromkeys([*known, *new]):
            old_groups, new_groups = known.get(scope, {}), new.get(scope, {})
            for group in dict.fromkeys([*old_groups, *new_groups]):
                old, fresh = old_groups.get(group, []), new_groups.get(group, [])
                gone, came = _minus(old, fresh), _minus(fresh, old)
                if gone:
                    self._remove(scope, group, gone, out)
                if came:
                    self._add(scope, group, came, out)
        self._remote[peer] = new

    def _on_change(
        self, peer: str, known: dict[str, _Members], payload: Any, out: list[Effect]
    ) -> None:
        kind, scope, group, pids = payload
        group_topic(scope, group)
        # A peer is the authority for its own pids only: ignore anything else.
        mine = [p for p in pids if isinstance(p, Pid) and p.node == peer]
        groups = known.setdefault(scope, {})
        recorded = groups.setdefault(group, [])
        left: list[Pid] = []
        if kind == "join":
            recorded.extend(mine)
        for pid in mine if kind == "leave" else ():
            # A leave for a pid we do not hold (a duplicate, or one a sync already replaced)
            # is ignored rather than allowed to remove another occurrence from the view.
            if pid in recorded:
                recorded.remove(pid)
                left.append(pid)
        if not recorded:
            del groups[group]
            if not groups:
                del known[scope]
        if kind == "join" and mine:
            self._add(scope, group, mine, out)
        elif left:
            self._remove(scope, group, left, out)

    def _deliver_local(self, scope: str, group: Hashable, msg: Any, out: list[Effect]) -> None:
        view = self._views.get(scope, {}).get(group)
        if view is not None and view.recipients:
            out.append(DeliverMany(view.recipients, msg))
