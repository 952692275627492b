"""``node.global_``: cluster-wide unique names, cluster locks and leader election.

The runtime half of :mod:`fabric.protocol.global_` (read its docstring for the algorithm:
wait-die locks on every connected node, so among concurrent registrations of one name
exactly one gets ``"yes"``, without livelock). Every node runs it, so reads are plain
lookups everywhere::

    await node.global_.register_name("scheduler", pid)    # "yes" / "no"
    node.global_.whereis_name("scheduler")                # pid or None, no round trip
    node.global_.send("scheduler", message)
    await node.global_.call("scheduler", request)          # GenServer call by global name

A name disappears everywhere when its process exits or its node goes down. After a
partition heals, two owners of a name are resolved by the resolver (default: the earlier
registration wins); the loser receives ``("global_name_conflict", name, winner)`` and is
not killed unless the resolver says so (``method="random_exit"`` kills one, as Erlang's
``random_exit_name``).

Leader election: candidates :meth:`Global.stand` for a group; each is told
``("leader_elected", group, leader_pid, term)`` whenever the leader changes, and a leader
deposed after a heal gets ``("leader_lost", group, term)``. Terms only grow: use them as
fencing tokens.

Pids passed here must be local to this node (register a process on its own node).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from fabric.errors import LocalProtocolError, ProcessDeadError
from fabric.protocol.global_ import ExitProcess
from fabric.protocol.global_resolve import BUILTIN_RESOLVERS
from fabric.protocol.leader import LeaderCore
from fabric.types import Pid

if TYPE_CHECKING:
    from fabric.node import Node

__all__ = ["Global"]

T = TypeVar("T")


class Global:
    """Cluster-wide names, locks and leaders on one node (``node.global_``)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.core = LeaderCore(node.name, node.creation, seed=random.getrandbits(32))
        node.add_service(self.core)
        node.on_effect(ExitProcess, self._exit_process)

    # -- names ----------------------------------------------------------------------------

    async def register_name(self, name: Any, pid: Pid, *, method: str | None = None,
                            timeout: float | None = 30.0) -> str:
        """Register ``pid`` (local, alive) under ``name`` cluster-wide: ``"yes"`` or ``"no"``.

        Args:
            method: the conflict resolver for this name after a heal: ``"earliest"``
                (default), ``"random_exit"``, ``"random_notify"``, ``"notify_all"``.
        """
        self._check(pid)
        answer: str = await self._request(lambda token, now: self.core.register_name(
            name, pid, token, now, method=_method(method)), timeout)
        return answer

    async def re_register_name(self, name: Any, pid: Pid, *, method: str | None = None,
                               timeout: float | None = 30.0) -> str:
        """Register ``pid`` under ``name``, replacing any current owner (no notification)."""
        self._check(pid)
        answer: str = await self._request(lambda token, now: self.core.re_register_name(
            name, pid, token, now, method=_method(method)), timeout)
        return answer

    async def unregister_name(self, name: Any, timeout: float | None = 30.0) -> None:
        """Remove ``name`` everywhere (whoever owns it)."""
        await self._request(lambda token, now: self.core.unregister_name(name, token, now),
                            timeout)

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

    async def call(self, name: Any, request: Any, timeout: float = 5.0) -> Any:
        """GenServer-call the owner of ``name``.

        Raises:
            ProcessDeadError: no process is registered under ``name`` (or it died).
        """
        from fabric.calls import call

        pid = self.whereis_name(name)
        if pid is None:
            raise ProcessDeadError(name, "noproc")
        return await call(self.node, pid, request, timeout=timeout)

    # -- locks ----------------------------------------------------------------------------

    async def set_lock(self, resource: Any, pid: Pid, *, retries: int | None = None,
                       timeout: float | None = 60.0) -> bool:
        """Lock ``resource`` cluster-wide for ``pid``; False after ``retries`` refusals."""
        self._check(pid)
        ok: bool = await self._request(lambda token, now: self.core.set_lock(
            resource, pid, token, now, retries=retries), timeout)
        return ok

    def del_lock(self, resource: Any, pid: Pid) -> None:
        self.node.services.execute("global", self.core.del_lock(resource, pid,
                                                              self.node.loop.time()))

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
        """Make the local ``pid`` a candidate for leading ``group`` (see module docs)."""
        self._check(pid)
        self.node.run_service("global", "stand", group, pid)

    def resign(self, group: Any, pid: Pid) -> None:
        self.node.run_service("global", "resign", group, pid)

    def leader(self, group: Any) -> tuple[Pid, int] | None:
        """``(leader pid, term)`` as this node sees it, or None."""
        return self.core.leader(group)

    # -- internals ------------------------------------------------------------------------

    def _check(self, pid: Pid) -> None:
        if not self.node.is_alive(pid):
            raise LocalProtocolError(
                f"{pid!r} is not a live process of this node (register a process on its "
                "own node)")

    async def _request(self, start: Callable[[Any, float], list[Any]],
                       timeout: float | None) -> Any:
        import asyncio

        token = self.node.make_ref()
        fut = self.node.expect(token)
        self.node.services.execute("global", start(token, self.node.loop.time()))
        return await asyncio.wait_for(fut, timeout)

    def _exit_process(self, service: str, effect: ExitProcess) -> None:
        self.node.exit(effect.pid, effect.reason)


def _method(method: str | None) -> str | None:
    if method is not None and method not in BUILTIN_RESOLVERS:
        raise LocalProtocolError(
            f"unknown resolver method {method!r}; use one of {sorted(BUILTIN_RESOLVERS)}")
    return method
