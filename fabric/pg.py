"""Process groups on a node: the runtime half of :mod:`fabric.protocol.pg`.

``node.pg`` (created when the node starts, on every node, so that its view of the groups is
complete whenever it is read) joins local processes
to named groups and reads the cluster-wide membership with plain lookups. Membership is
eventually consistent and lock-free: each node is the authority for its own members, and
views converge after a partition heals (see the core's docstring for the algorithm).

Fan-out:

* :meth:`Groups.broadcast` publishes once on this node's PUB socket under the group's
  topic; only nodes with local members of the group are subscribed, and each delivers to
  its own members. **Best effort**: PUB/SUB drops at the high-water mark and a node that
  joined a moment ago may miss messages published before its subscription propagated.
* :meth:`Groups.broadcast_reliable` sends one message per member node over the ordered
  mesh instead: nothing is dropped while the peer is up, and it is ordered with the
  sender's other direct messages.
* :meth:`Groups.send_to_one` picks one member: local first, random, round robin, or by
  consistent hashing of a key.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

from fabric import lowlevel
from fabric.errors import LocalProtocolError
from fabric.node.services import standard_service
from fabric.protocol.effects import Effect
from fabric.protocol.hashring import rendezvous
from fabric.protocol.pg import DEFAULT_SCOPE, PgCore
from fabric.types import Pid, Ref

if TYPE_CHECKING:
    from fabric.node import Node

__all__ = ["DEFAULT_SCOPE", "Groups", "pick_member"]

STRATEGIES: tuple[str, ...] = ("local_first", "random", "round_robin", "hash")


def pick_member(
    members: Sequence[Pid],
    local: Sequence[Pid],
    strategy: str,
    *,
    key: Any = None,
    counter: itertools.count[int] | None = None,
    rng: random.Random | None = None,
) -> Pid | None:
    """Choose one of ``members`` (None if empty) by ``strategy``.

    ``hash`` maps ``key`` with rendezvous hashing over the distinct members, so when a
    member joins or leaves only about 1/N of the keys move.

    Raises:
        LocalProtocolError: unknown strategy, or ``hash`` without a key.
    """
    if not members:
        return None
    if strategy == "local_first":
        pool = local or members
        return (rng or random).choice(list(pool))
    if strategy == "random":
        return (rng or random).choice(list(members))
    if strategy == "round_robin":
        ordered = sorted(set(members))
        n = next(counter) if counter is not None else 0
        return ordered[n % len(ordered)]
    if strategy == "hash":
        if key is None:
            raise LocalProtocolError("strategy 'hash' needs a key")
        return rendezvous(key, sorted(set(members)))
    raise LocalProtocolError(f"unknown strategy {strategy!r}; use one of {STRATEGIES}")


class Groups:
    """``node.pg``: join, leave, read, watch and message process groups."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.core = PgCore(node.name, node.creation)
        lowlevel.add_service(node, self.core)  # it routes publications under core.topic_prefix
        self._rr: dict[tuple[str, Hashable], itertools.count[int]] = {}

    # -- membership -----------------------------------------------------------------------

    def join(self, group: Hashable, pids: Pid | Sequence[Pid], scope: str = DEFAULT_SCOPE) -> None:
        """Add local live processes to ``group`` (a pid may join several times).

        Raises:
            LocalProtocolError: a pid is remote or not alive.
        """
        self._check_alive(pids)
        self._run(self.core.join(scope, group, pids, self._now()))

    def leave(self, group: Hashable, pids: Pid | Sequence[Pid],
              scope: str = DEFAULT_SCOPE) -> bool:
        """Remove one occurrence of each pid; False if none was a member."""
        ok: bool = self._run(self.core.leave(scope, group, pids, self._now()))
        return ok

    def get_members(self, group: Hashable, scope: str = DEFAULT_SCOPE) -> list[Pid]:
        """Every known member, cluster-wide (no round trip)."""
        return self.core.get_members(scope, group)

    def get_local_members(self, group: Hashable, scope: str = DEFAULT_SCOPE) -> list[Pid]:
        """Members on this node (no round trip)."""
        return self.core.get_local_members(scope, group)

    def which_groups(self, scope: str = DEFAULT_SCOPE) -> list[Hashable]:
        return self.core.which_groups(scope)

    def which_local_groups(self, scope: str = DEFAULT_SCOPE) -> list[Hashable]:
        return self.core.which_local_groups(scope)

    # -- monitors -------------------------------------------------------------------------

    def monitor(self, group: Hashable, watcher: Pid,
                scope: str = DEFAULT_SCOPE) -> tuple[Ref, list[Pid]]:
        """Watch ``group``; returns ``(token, members now)``. Then ``watcher`` receives
        a :class:`~fabric.PgJoin` or :class:`~fabric.PgLeave` event (``token``, ``scope``,
        ``group``, ``pids``) for every change."""
        self._check_alive(watcher)
        result: tuple[Ref, list[Pid]] = self._run(
            self.core.monitor(scope, group, watcher, self._now()))
        return result

    def monitor_scope(self, watcher: Pid,
                      scope: str = DEFAULT_SCOPE) -> tuple[Ref, dict[Hashable, list[Pid]]]:
        """Watch every group of ``scope``; returns ``(token, {group: members})``."""
        self._check_alive(watcher)
        result: tuple[Ref, dict[Hashable, list[Pid]]] = self._run(
            self.core.monitor_scope(scope, watcher, self._now()))
        return result

    def demonitor(self, token: Ref) -> bool:
        ok: bool = self._run(self.core.demonitor(token, self._now()))
        return ok

    # -- messaging ------------------------------------------------------------------------

    def broadcast(self, group: Hashable, message: Any, scope: str = DEFAULT_SCOPE) -> None:
        """Best-effort fan-out to every member (one publish; see the module docstring)."""
        self._run(self.core.broadcast(scope, group, message, self._now()))

    def broadcast_reliable(self, group: Hashable, message: Any,
                           scope: str = DEFAULT_SCOPE) -> None:
        """Fan-out over the ordered mesh: one message per member node, none dropped while
        the node is up."""
        self._run(self.core.broadcast_reliable(scope, group, message, self._now()))

    def send_to_one(self, group: Hashable, message: Any, *, strategy: str = "local_first",
                    key: Any = None, scope: str = DEFAULT_SCOPE) -> Pid | None:
        """Send to one member chosen by ``strategy``; returns it (None: group empty)."""
        pid = self.pick(group, strategy=strategy, key=key, scope=scope)
        if pid is not None:
            self.node.send(pid, message)
        return pid

    def pick(self, group: Hashable, *, strategy: str = "local_first", key: Any = None,
             scope: str = DEFAULT_SCOPE) -> Pid | None:
        """The member :meth:`send_to_one` would choose."""
        counter = self._rr.setdefault((scope, group), itertools.count())
        return pick_member(self.get_members(group, scope), self.get_local_members(group, scope),
                           strategy, key=key, counter=counter)

    # -- internals ------------------------------------------------------------------------

    def _check_alive(self, pids: Pid | Sequence[Pid]) -> None:
        for pid in [pids] if isinstance(pids, Pid) else pids:
            if not self.node.is_alive(pid):
                raise LocalProtocolError(f"{pid!r} is not a live local process")

    def _now(self) -> float:
        return lowlevel.now(self.node)

    def _run(self, effects: list[Effect]) -> Any:
        """Execute the effects of a core method; returns its reply (None without one)."""
        return lowlevel.run_service(self.node, self.core.service, effects)


# Every node runs it, as node.pg: the node creates it at start (it never imports this).
standard_service("pg", Groups, rank=0)
