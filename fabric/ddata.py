"""Replicated data on a node: the runtime half of :mod:`fabric.protocol.replicator`.

``fabric.ddata.Replicator(node)`` hosts the replicator service on a node (create one on
every node that shares the data; a node without it ignores the others' messages). Keys
have a declared CRDT type; values are immutable CRDTs from :mod:`fabric.protocol.crdt`,
re-exported here::

    from fabric.ddata import GCounter, Key, ORSet, Replicator

    hits = Key("hits", GCounter)
    repl = Replicator(node)
    await repl.update(hits, lambda c: c.increment(1))                 # local, at once
    await repl.update(hits, lambda c: c.increment(1), write="majority")
    counter = await repl.get(hits, read="majority")                   # GCounter or None
    print(counter.value)

``update`` and ``get`` raise :class:`fabric.ConsistencyError` when the level cannot be
met (too few nodes reachable, or the timeout passed). Writes stamp LWW registers with
the wall clock (``time.time_ns() // 1000``). See docs/CRDT.md for the guarantees.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from fabric.errors import ConsistencyError
from fabric.protocol import crdt as _crdt
from fabric.protocol.crdt import *  # noqa: F403  (the CRDT types are part of this API)
from fabric.protocol.crdt import Crdt, Replica
from fabric.protocol.replicator import ALL, LOCAL, MAJORITY, Consistency, Key, ReplicatorCore
from fabric.types import Pid

if TYPE_CHECKING:
    from fabric.node import Node

__all__ = [*_crdt.__all__, "ALL", "LOCAL", "MAJORITY", "Consistency", "Key", "Replicator"]

C = TypeVar("C", bound=Crdt)
SERVICE = ReplicatorCore.service


class Replicator:
    """The replicated keys of one node (see the module docstring).

    Args:
        node: a started :class:`fabric.Node`.
        **options: :class:`~fabric.protocol.replicator.ReplicatorCore` options
            (``delta_interval``, ``gossip_interval``, ``members``).
    """

    def __init__(self, node: Node, **options: Any) -> None:
        self.node = node
        self.core = ReplicatorCore(node.name, node.creation, **options)
        node.add_service(self.core)

    @property
    def replica(self) -> Replica:
        return self.core.replica

    def value(self, key: Key[C]) -> C | None:
        """This node's value of ``key``, without any messages."""
        return self.core.value(key)

    async def update(self, key: Key[C], fn: Callable[[C], C], write: Consistency = LOCAL,
                     timeout: float = 5.0) -> C:
        """Apply ``fn`` to the key's value and replicate the change at level ``write``;
        returns the new local value."""
        stamp = time.time_ns() // 1000
        result: C = await self._request(lambda token, now: self.core.update(
            key, fn, write, token, now, timeout=timeout, timestamp=stamp), timeout)
        return result

    async def get(self, key: Key[C], read: Consistency = LOCAL,
                  timeout: float = 5.0) -> C | None:
        """The key's value merged from ``read`` replicas (None if no replica has it)."""
        result: C | None = await self._request(
            lambda token, now: self.core.get(key, read, token, now, timeout=timeout), timeout)
        return result

    async def delete(self, key: Key[Any], write: Consistency = LOCAL,
                     timeout: float = 5.0) -> None:
        """Delete ``key`` for good on every replica."""
        await self._request(
            lambda token, now: self.core.delete(key, write, token, now, timeout=timeout),
            timeout)

    def subscribe(self, key: Key[Any], pid: Pid) -> None:
        """Deliver ``("ddata_changed", name, value)`` to the local process ``pid`` on every
        change of ``key`` (and ``("ddata_deleted", name)``); ends when ``pid`` exits."""
        self.node.run_service(SERVICE, "subscribe", key.name, pid)

    def unsubscribe(self, key: Key[Any], pid: Pid) -> bool:
        return self.core.unsubscribe(key.name, pid)

    async def _request(self, start: Callable[[Any, float], list[Any]], timeout: float) -> Any:
        token = self.node.make_ref()
        effects = start(token, self.node.loop.time())  # may raise (bad level, fn failed)
        fut = self.node.expect(token)  # before the effects run: one may complete it
        self.node._exec_service(SERVICE, effects)
        # The core completes every request by its own timeout; the margin only guards
        # against a node that stops meanwhile.
        status, value = await asyncio.wait_for(fut, timeout + 5.0)
        if status != "ok":
            raise ConsistencyError(value)
        return value
