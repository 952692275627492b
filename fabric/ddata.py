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

Durable keys: ``Replicator(node, durable=["cart-*", "config"], path="ddata.sqlite")``
writes every change of those keys to a sqlite file (standard library) before it is
acknowledged, and reads them back when a Replicator starts on the same file, so a write
this node acknowledged survives a crash even if no peer had it yet.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from fabric import lowlevel
from fabric.errors import ConfigError, ConsistencyError
from fabric.protocol import crdt as _crdt
from fabric.protocol.codec import Codec
from fabric.protocol.crdt import *  # noqa: F403  (the CRDT types are part of this API)
from fabric.protocol.crdt import Crdt, Replica
from fabric.protocol.replicator import (
    ALL,
    LOCAL,
    MAJORITY,
    Consistency,
    Key,
    Persist,
    ReplicatorCore,
)
from fabric.timeouts import CALL_TIMEOUT, wait_for
from fabric.types import Pid

if TYPE_CHECKING:
    from fabric.node import Node

__all__ = [*_crdt.__all__, "ALL", "LOCAL", "MAJORITY", "Consistency", "Key", "Replicator",
           "SqliteStore"]

C = TypeVar("C", bound=Crdt)
SERVICE = ReplicatorCore.service


class SqliteStore:
    """Durable key states in one sqlite file: ``key -> msgpack of the CRDT's dump``
    (NULL for a deleted key). Every write is committed before it returns."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db = sqlite3.connect(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS ddata (key TEXT PRIMARY KEY, state BLOB)")
        self._db.commit()
        self._codec = Codec()

    def save(self, key: str, state: Any) -> None:
        blob = None if state is None else self._codec.encode(state)
        self._db.execute("INSERT OR REPLACE INTO ddata (key, state) VALUES (?, ?)", (key, blob))
        self._db.commit()

    def load(self) -> list[tuple[str, Any]]:
        rows = self._db.execute("SELECT key, state FROM ddata").fetchall()
        return [(key, None if blob is None else self._codec.decode(blob)) for key, blob in rows]

    def close(self) -> None:
        self._db.close()


class Replicator:
    """The replicated keys of one node (see the module docstring).

    Args:
        node: a started :class:`fabric.Node`.
        durable: key names, or prefixes ending in ``*``, kept in the sqlite file ``path``.
        path: the sqlite file for durable keys (required with ``durable``).
        **options: :class:`~fabric.protocol.replicator.ReplicatorCore` options
            (``delta_interval``, ``gossip_interval``, ``members``).
    """

    def __init__(self, node: Node, *, durable: list[str] | None = None,
                 path: str | None = None, **options: Any) -> None:
        if durable and path is None:
            raise ConfigError("durable keys need a sqlite file: Replicator(..., path=...)")
        self.node = node
        self.core = ReplicatorCore(node.name, node.creation, durable=durable or (),
                                   **options)
        self.store = SqliteStore(path) if durable and path is not None else None
        if self.store is not None:
            # Before the service meets its peers: what this node acknowledged is back.
            lowlevel.run_service(node, SERVICE,
                                 self.core.restore(self.store.load(), lowlevel.now(node)))
            lowlevel.on_effect(node, Persist, self._persist)
        lowlevel.add_service(node, self.core)

    def close(self) -> None:
        """Close the sqlite file (after the node stopped)."""
        if self.store is not None:
            self.store.close()

    def _persist(self, service: str, effect: Persist) -> None:
        assert self.store is not None
        self.store.save(effect.key, effect.state)

    @property
    def replica(self) -> Replica:
        return self.core.replica

    def value(self, key: Key[C]) -> C | None:
        """This node's value of ``key``, without any messages."""
        return self.core.value(key)

    async def update(self, key: Key[C], fn: Callable[[C], C], write: Consistency = LOCAL,
                     timeout: float = CALL_TIMEOUT) -> C:
        """Apply ``fn`` to the key's value and replicate the change at level ``write``;
        returns the new local value."""
        stamp = time.time_ns() // 1000
        result: C = await self._request(lambda token, now: self.core.update(
            key, fn, write, token, now, timeout=timeout, timestamp=stamp), timeout)
        return result

    async def get(self, key: Key[C], read: Consistency = LOCAL,
                  timeout: float = CALL_TIMEOUT) -> C | None:
        """The key's value merged from ``read`` replicas (None if no replica has it)."""
        result: C | None = await self._request(
            lambda token, now: self.core.get(key, read, token, now, timeout=timeout), timeout)
        return result

    async def delete(self, key: Key[Any], write: Consistency = LOCAL,
                     timeout: float = CALL_TIMEOUT) -> None:
        """Delete ``key`` for good on every replica."""
        await self._request(
            lambda token, now: self.core.delete(key, write, token, now, timeout=timeout),
            timeout)

    def subscribe(self, key: Key[Any], pid: Pid) -> None:
        """Deliver :class:`~fabric.DataChanged` ``(key, value)`` to the local process
        ``pid`` on every change of ``key`` (and :class:`~fabric.DataDeleted` ``(key)``);
        ends when ``pid`` exits."""
        lowlevel.run_service(self.node, SERVICE,
                             self.core.subscribe(key.name, pid, lowlevel.now(self.node)))

    def unsubscribe(self, key: Key[Any], pid: Pid) -> bool:
        return self.core.unsubscribe(key.name, pid)

    async def _request(self, start: Callable[[Any, float], list[Any]], timeout: float) -> Any:
        token = self.node.make_ref()
        effects = start(token, lowlevel.now(self.node))  # may raise (bad level, fn failed)
        fut = lowlevel.expect(self.node, token)  # before the effects run: one may complete it
        lowlevel.run_service(self.node, SERVICE, effects)
        # The core completes every request by its own timeout; the margin only guards
        # against a node that stops meanwhile.
        status, value = await wait_for(fut, timeout + 5.0, "ddata request")
        if status != "ok":
            raise ConsistencyError(value)
        return value
