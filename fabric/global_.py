"""``node.global_``: cluster-wide unique names, cluster locks and leader election.

The runtime half of :mod:`fabric.protocol.global_` (read its docstring for the algorithm:
wait-die locks on every connected node, so among concurrent registrations of one name
exactly one gets ``"yes"``, without livelock). Every node runs it, so reads are plain
lookups everywhere::

    await node.global_.register_name("scheduler", pid)    # "yes" / "no"
    node.global_.whereis_name("scheduler")                # pid or None, no round trip
    node.global_.send("scheduler", message)
    await fabric.call(node, GlobalName("scheduler"), request)  # a GenServer, by global name

A registration (or unregistration) whose answer does not come within ``timeout`` raises
:class:`~fabric.errors.OutcomeUnknown` (a ``TimeoutError``): the request stays in flight,
so the name may still be registered later (when the silent peer answers or is declared
down), or not. Read ``whereis_name`` to learn what happened; unregister if unwanted.

A name disappears everywhere when its process exits or its node goes down. After a
partition heals, two owners of a name are resolved by the resolver (default: the earlier
registration wins); the loser receives ``GlobalNameConflict(name, winner)`` and is
not killed unless the resolver says so (``method="random_exit"`` kills one, as Erlang's
``random_exit_name``).

Leader election: candidates :meth:`Global.stand` for a group; each is told
``LeaderElected(group, leader, term)`` whenever the leader changes, and a leader
deposed after a heal gets ``LeaderLost(group, term)`` (events: :mod:`fabric.protocol.events`,
exported from ``fabric``). Terms only grow: use them as
fencing tokens.

Pids passed here must be local to this node (register a process on its own node).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from fabric import lowlevel
from fabric._deprecation import deprecated
from fabric.errors import LocalProtocolError, OutcomeUnknown, ProcessDeadError
from fabric.node.services import standard_service
from fabric.protocol.effects import Effect
from fabric.protocol.global_ import GlobalCore
from fabric.protocol.global_resolve import BUILTIN_RESOLVERS
from fabric.protocol.leader import LeaderElection
from fabric.timeouts import CALL_TIMEOUT, CLUSTER_TIMEOUT, wait_future
from fabric.types import Answer, GlobalName, Pid

if TYPE_CHECKING:
    from fabric.node import Node

__all__ = ["Global"]

T = TypeVar("T")


class Global:
    """Cluster-wide names, locks and leaders on one node (``node.global_``)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        # Leader election is a plug-in that observes names; the core is what is hosted.
        self.leaders = LeaderElection()
        self.core = GlobalCore(node.name, node.creation, seed=random.getrandbits(32),
                               plugin=self.leaders)
        lowlevel.add_service(node, self.core)

    # -- names ----------------------------------------------------------------------------

    async def register_name(self, name: Any, pid: Pid, *, method: str | None = None,
                            wait_all: bool = True,
                            timeout: float | None = CLUSTER_TIMEOUT) -> Answer:
        """Register ``pid`` (local, alive) under ``name`` cluster-wide: ``"yes"`` or ``"no"``
        (an :class:`~fabric.types.Answer`: true for ``"yes"`` only).

        Args:
            method: the conflict resolver for this name after a heal: ``"earliest"``
                (default), ``"random_exit"``, ``"random_notify"``, ``"notify_all"``.
            wait_all: True (default): the answer comes once every connected node shows
                the name, as in Erlang. False: it comes at the commit, a round trip
                sooner; the name is exactly as unique, this node shows it at once and
                every peer before any later message from this node, but a third node
                may not show it yet.

        Raises:
            OutcomeUnknown: no answer within ``timeout``; the registration may still take
                effect later (see the module docstring).
        """
        self._check(pid)
        answer: str = await self._request(lambda token, now: self.core.register_name(
            name, pid, token, now, method=_method(method), wait_all=wait_all), timeout,
            f"register_name({name!r})")
        return Answer(answer)

    async def re_register_name(self, name: Any, pid: Pid, *, method: str | None = None,
                               wait_all: bool = True,
                               timeout: float | None = CLUSTER_TIMEOUT) -> Answer:
        """Register ``pid`` under ``name``, replacing any current owner (no notification).

        ``wait_all``: as for :meth:`register_name`.

        Raises:
            OutcomeUnknown: as :meth:`register_name`.
        """
        self._check(pid)
        answer: str = await self._request(lambda token, now: self.core.re_register_name(
            name, pid, token, now, method=_method(method), wait_all=wait_all), timeout,
            f"re_register_name({name!r})")
        return Answer(answer)

    async def unregister_name(self, name: Any, timeout: float | None = CLUSTER_TIMEOUT) -> None:
        """Remove ``name`` everywhere (whoever owns it).

        Raises:
            OutcomeUnknown: no answer within ``timeout``; the name may still go later.
        """
        await self._request(lambda token, now: self.core.unregister_name(name, token, now),
                            timeout, f"unregister_name({name!r})")

    def whereis_name(self, name: Any) -> Pid | None:
        """The owner of ``name`` as this node sees it (no round trip)."""
        return self.core.whereis_name(name)

    def registered_names(self) -> list[Any]:
        return self.core.registered_names()

    def send(self, name: Any, message: Any) -> Pid:
        """Send to the owner of ``name``; returns it.

        Raises:
            ProcessDeadError: no process is registered under ``name``.
        """
        pid = self.whereis_name(name)
        if pid is None:
            raise ProcessDeadError(name, "noproc")
        self.node.send(pid, message)
        return pid

    async def call(self, name: Any, request: Any, timeout: float = CALL_TIMEOUT) -> Any:
        """Deprecated: ``fabric.call(node, fabric.GlobalName(name), request)``, the one
        GenServer call, takes a global name like any other address.

        Raises:
            ProcessDeadError: no process is registered under ``name`` (or it died).
        """
        from fabric.calls import call

        deprecated("node.global_.call(name, ...)",
                   "fabric.call(node, fabric.GlobalName(name), ...)")
        return await call(self.node, GlobalName(name), request, timeout=timeout)

    # -- locks ----------------------------------------------------------------------------

    async def set_lock(self, resource: Any, pid: Pid, *, retries: int | None = None,
                       timeout: float | None = CLUSTER_TIMEOUT) -> bool:
        """Lock ``resource`` cluster-wide for ``pid``; False after ``retries`` refusals."""
        self._check(pid)
        ok: bool = await self._request(lambda token, now: self.core.set_lock(
            resource, pid, token, now, retries=retries), timeout)
        return ok

    def del_lock(self, resource: Any, pid: Pid) -> None:
        self._run(self.core.del_lock(resource, pid, self._now()))

    async def trans(self, resource: Any, pid: Pid, fn: Callable[[], Awaitable[T]], *,
                    retries: int | None = None) -> T:
        """Run ``fn`` holding the lock on ``resource``; always releases it.

        Raises:
            LocalProtocolError: the lock could not be taken.
        """
        if not await self.set_lock(resource, pid, retries=retries):
            raise LocalProtocolError(f"could not lock {resource!r}")
        try:
            return await fn()
        finally:
            self.del_lock(resource, pid)

    # -- leaders --------------------------------------------------------------------------

    def stand(self, group: Any, pid: Pid) -> None:
        """Make the local ``pid`` a candidate for leading ``group`` (see module docs).
        Ignored once the node drains: a stopping node resigned and stands no more."""
        self._check(pid)
        if self.node.draining:
            return
        self._run(self.leaders.stand(group, pid, self._now()))

    def resign(self, group: Any, pid: Pid) -> None:
        self._run(self.leaders.resign(group, pid, self._now()))

    def leader(self, group: Any) -> tuple[Pid, int] | None:
        """``(leader pid, term)`` as this node sees it, or None."""
        return self.leaders.leader(group)

    # -- internals ------------------------------------------------------------------------

    def _check(self, pid: Pid) -> None:
        if not self.node.is_alive(pid):
            raise LocalProtocolError(
                f"{pid!r} is not a live process of this node (register a process on its "
                "own node)")

    def _now(self) -> float:
        return lowlevel.now(self.node)

    def _run(self, effects: list[Effect]) -> None:
        lowlevel.run_service(self.node, self.core.service, effects)

    async def _request(self, start: Callable[[Any, float], list[Effect]],
                       timeout: float | None, what: str | None = None) -> Any:
        """Start a transaction whose ``Complete(token, result)`` ends it; its result.
        ``what``: a name operation, whose timeout is reported as :class:`OutcomeUnknown`
        (it stays in flight)."""
        token = self.node.make_ref()
        fut = lowlevel.expect(self.node, token)
        self._run(start(token, self._now()))
        if what is None:
            return await wait_future(fut, timeout, "global request")
        return await wait_future(fut, timeout, f"{what} got no answer: the outcome is "
                                 "unknown, it may still take effect (check whereis_name)",
                                 OutcomeUnknown)


def _method(method: str | None) -> str | None:
    if method is not None and method not in BUILTIN_RESOLVERS:
        raise LocalProtocolError(
            f"unknown resolver method {method!r}; use one of {sorted(BUILTIN_RESOLVERS)}")
    return method


# Every node runs it, as node.global_: the node creates it at start (it never imports this).
standard_service("global_", Global, rank=1)
