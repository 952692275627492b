"""Work distribution over a process group: routers with a choice of strategy.

A :class:`Router` sends (or GenServer-calls) one member of a pg group per request:

* ``local_first``: a member on this node if any (no network hop), else a random one;
* ``random`` and ``round_robin``;
* ``hash``: consistent (rendezvous) hashing of a key, so the same key goes to the same
  member while membership is stable, and when a member joins or leaves only about 1/N of
  the keys move (``hash(key) % N`` would move almost all of them).
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from fabric.errors import ProcessDeadError
from fabric.pg import DEFAULT_SCOPE, STRATEGIES, pick_member
from fabric.timeouts import CALL_TIMEOUT
from fabric.types import Pid

if TYPE_CHECKING:
    from fabric.node import Node

__all__ = ["Router"]


class Router:
    """Routes messages to the members of ``group`` by ``strategy``."""

    def __init__(self, node: Node, group: Hashable, strategy: str = "round_robin",
                 scope: str = DEFAULT_SCOPE) -> None:
        if strategy not in STRATEGIES:
            from fabric.errors import ConfigError

            raise ConfigError(f"unknown strategy {strategy!r}; use one of {STRATEGIES}")
        self.node = node
        self.group = group
        self.strategy = strategy
        self.scope = scope
        self._counter = itertools.count()

    def pick(self, key: Any = None) -> Pid | None:
        pg = self.node.pg
        return pick_member(pg.get_members(self.group, self.scope),
                           pg.get_local_members(self.group, self.scope), self.strategy,
                           key=key, counter=self._counter)

    def send(self, message: Any, key: Any = None) -> Pid | None:
        """Send to one member; returns it (None: the group is empty)."""
        pid = self.pick(key)
        if pid is not None:
            self.node.send(pid, message)
        return pid

    async def call(self, request: Any, key: Any = None, timeout: float = CALL_TIMEOUT) -> Any:
        """GenServer-call one member.

        Raises:
            ProcessDeadError: the group is empty.
        """
        from fabric.calls import call

        pid = self.pick(key)
        if pid is None:
            raise ProcessDeadError(self.group, "noproc")
        return await call(self.node, pid, request, timeout=timeout)
