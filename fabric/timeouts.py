"""Timeouts: every timeout fabric raises is a builtin ``TimeoutError``, on every Python.

Theory of operation
-------------------
Before Python 3.11, ``asyncio.TimeoutError`` and ``concurrent.futures.TimeoutError`` are
*not* the builtin ``TimeoutError``, so a user's ``except TimeoutError`` missed a raw
``asyncio.wait_for`` timeout escaping from fabric. Every fabric API that waits with a
deadline therefore raises :class:`~fabric.errors.FabricTimeout` (a ``FabricError`` and a
builtin ``TimeoutError``) or one of its subclasses (``CallTimeout``, ``ReceiveTimeout``,
``SpawnTimeout``). :func:`wait_for` is ``asyncio.wait_for`` with that translation, for the
places that wait on a future of their own; :func:`wait_future` does the same for a bare
future one loop turn sooner (``asyncio.wait_for`` wakes its caller through a second
future, one more pass of the event loop per answer: a registration's latency pays it).

Defaults: one per kind of wait, not one per function (docs/API.md, "Timeouts"):

* :data:`CALL_TIMEOUT` (5 s), an answer from one process or one node: ``fabric.call``,
  ``genserver.stop``, ``GenServer.start`` (its ``init``), ``rpc.call`` and ``multicall``,
  ``node.spawn_on``, ``node.ping``, ``Router.call``, ``Registry.call``, the replicated
  data's ``update``/``get``/``delete``, and ``SyncNode``'s mirrors of them;
* :data:`CLUSTER_TIMEOUT` (30 s), the agreement of every connected node: global
  ``register_name``, ``re_register_name``, ``unregister_name``, ``set_lock``;
* :func:`connect_timeout`, a new session: the node's ``handshake_timeout`` plus two
  seconds (``node.connect``; ``ping`` and calls connect within their own timeout).

``timeout=None`` waits forever wherever it is accepted. Waits that only involve this node
(``proc.receive``, ``NodeMonitor.next``) have no default: they wait until told otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Final, TypeVar

from fabric.errors import FabricTimeout

if TYPE_CHECKING:
    from fabric.config import NodeConfig

__all__ = ["CALL_TIMEOUT", "CLUSTER_TIMEOUT", "connect_timeout", "wait_for", "wait_future"]

CALL_TIMEOUT: Final = 5.0
"""Seconds to wait, by default, for an answer from one process or one node."""

CLUSTER_TIMEOUT: Final = 30.0
"""Seconds to wait, by default, for the agreement of every connected node (global)."""


def connect_timeout(config: NodeConfig) -> float:
    """The default wait for a new session: the handshake's own deadline, which a CHALLENGE
    arriving late may extend by up to a second (D36), plus a second: the mesh core, not
    this wait, decides whether the attempt failed."""
    return config.handshake_timeout + 2.0

T = TypeVar("T")


async def wait_for(awaitable: Awaitable[T], timeout: float | None, what: str,
                   error: type[FabricTimeout] = FabricTimeout) -> T:
    """Await ``awaitable`` for at most ``timeout`` seconds (None: forever).

    Raises:
        FabricTimeout: ``error``, with ``what`` in its message, when the time ran out (the
            awaitable is cancelled, as by ``asyncio.wait_for``).
    """
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise error(f"{what}: nothing within {timeout} s") from None


async def wait_future(fut: asyncio.Future[T], timeout: float | None, what: str,
                      error: type[FabricTimeout] = FabricTimeout) -> T:
    """Await the future ``fut`` for at most ``timeout`` seconds (None: forever).

    As :func:`wait_for`, but the caller awaits ``fut`` itself, so its completion wakes the
    caller in the next pass of the loop (``asyncio.wait_for`` relays it through a future
    of its own, one pass later). When the time runs out, or the caller is cancelled,
    ``fut`` is cancelled.

    Raises:
        FabricTimeout: ``error``, with ``what`` in its message, when the time ran out.
    """
    if timeout is None or fut.done():
        return await fut
    expired = False

    def expire() -> None:
        nonlocal expired
        if not fut.done():
            expired = True
            fut.cancel()

    handle = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        return await fut
    except asyncio.CancelledError:
        if expired:
            raise error(f"{what}: nothing within {timeout} s") from None
        raise
    finally:
        handle.cancel()
