"""Timeouts: every timeout fabric raises is a builtin ``TimeoutError``, on every Python.

Theory of operation
-------------------
Before Python 3.11, ``asyncio.TimeoutError`` and ``concurrent.futures.TimeoutError`` are
*not* the builtin ``TimeoutError``, so a user's ``except TimeoutError`` missed a raw
``asyncio.wait_for`` timeout escaping from fabric. Every fabric API that waits with a
deadline therefore raises :class:`~fabric.errors.FabricTimeout` (a ``FabricError`` and a
builtin ``TimeoutError``) or one of its subclasses (``CallTimeout``, ``ReceiveTimeout``,
``SpawnTimeout``). :func:`wait_for` is ``asyncio.wait_for`` with that translation, for the
places that wait on a future of their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fabric.errors import FabricTimeout

__all__ = ["wait_for"]

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
