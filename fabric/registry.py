"""A distributed registry on process groups: many processes may share one name.

Each name is a group in a dedicated pg scope, so the registry inherits pg's guarantees:
no locks, each node is the authority for its own registrations, entries vanish when their
process exits or their node goes down, and views converge after a partition heals. Use
``fabric.global_`` instead when a name must have exactly one owner cluster-wide.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from fabric.pg import pick_member
from fabric.timeouts import CALL_TIMEOUT
from fabric.types import Pid

if TYPE_CHECKING:
    from fabric.node import Node

__all__ = ["Registry"]


class Registry:
    """Names shared by any number of processes, cluster-wide.

    Args:
        node: the local node.
        scope: the pg scope that holds this registry (separate registries, separate scopes).
    """

    def __init__(self, node: Node, scope: str = "fabric.registry") -> None:
        self.node = node
        self.scope = scope

    def register(self, name: Hashable, pid: Pid) -> None:
        """Add a local live process under ``name`` (a process may hold many names)."""
        self.node.pg.join(name, pid, scope=self.scope)

    def unregister(self, name: Hashable, pid: Pid) -> bool:
        """Remove one registration; False if ``pid`` was not registered under ``name``."""
        return self.node.pg.leave(name, pid, scope=self.scope)

    def lookup(self, name: Hashable) -> list[Pid]:
        """Every process registered under ``name``, cluster-wide, each once."""
        return sorted(set(self.node.pg.get_members(name, scope=self.scope)))

    def lookup_local(self, name: Hashable) -> list[Pid]:
        return sorted(set(self.node.pg.get_local_members(name, scope=self.scope)))

    def whereis(self, name: Hashable) -> Pid | None:
        """One process under ``name``: a local one if there is one, else any."""
        return pick_member(self.lookup(name), self.lookup_local(name), "local_first")

    def names(self) -> list[Hashable]:
        return self.node.pg.which_groups(scope=self.scope)

    def send(self, name: Hashable, message: Any) -> Pid | None:
        """Send to the process :meth:`whereis` picks; returns it (None: nobody)."""
        pid = self.whereis(name)
        if pid is not None:
            self.node.send(pid, message)
        return pid

    def broadcast(self, name: Hashable, message: Any) -> None:
        """Send to every process under ``name`` over the ordered mesh."""
        self.node.pg.broadcast_reliable(name, message, scope=self.scope)

    async def call(self, name: Hashable, request: Any, timeout: float = CALL_TIMEOUT) -> Any:
        """GenServer-call the process :meth:`whereis` picks.

        Raises:
            ProcessDeadError: nobody is registered under ``name``.
        """
        from fabric.calls import call
        from fabric.errors import ProcessDeadError

        pid = self.whereis(name)
        if pid is None:
            raise ProcessDeadError(name, "noproc")
        return await call(self.node, pid, request, timeout=timeout)
