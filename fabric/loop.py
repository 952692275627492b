"""Event loops for fabric nodes: uvloop when it is installed, asyncio's own otherwise.

Theory of operation
-------------------
A remote call's round trip is mostly waking up: ZeroMQ's I/O thread, then the event loop,
then the waiting process, on each side (docs/DECISIONS.md D31). uvloop runs the loop's
own part of that (the selector, ready callbacks, ``call_soon``) in C, and measured in the
same run it cut a GenServer call's p50 by about a fifth (bench/bench_call.py, the
"asyncio loop" rows). fabric works on any asyncio loop; this module only picks one:

* :func:`run` runs a coroutine to completion on a new loop, as :func:`asyncio.run` does;
* :func:`new_event_loop` makes a loop without running it (for a thread of its own).

Both use uvloop when it can be imported (``pip install "fabric-dist[fast]"``) and the
environment does not say ``FABRIC_UVLOOP=0``; otherwise asyncio's default loop. The node
program (``python -m nodes.node``), :class:`fabric.sync.SyncNode`'s thread and the
benchmarks start their loop here; an application that starts its own loop keeps
whatever it chose.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["new_event_loop", "run", "uvloop_module"]

T = TypeVar("T")

#: Set to "0" to keep asyncio's default loop even when uvloop is installed.
ENV_VAR = "FABRIC_UVLOOP"


def uvloop_module() -> Any | None:
    """The uvloop module if installed and not disabled by ``FABRIC_UVLOOP=0``, else None."""
    if os.environ.get(ENV_VAR, "1") == "0":
        return None
    try:
        return importlib.import_module("uvloop")
    except ImportError:
        return None


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's when available (see the module doc), else asyncio's."""
    uvloop = uvloop_module()
    if uvloop is None:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a new loop from :func:`new_event_loop`, then close
    the loop (cancelling what is left, as :func:`asyncio.run` does)."""
    uvloop = uvloop_module()
    if uvloop is None:
        return asyncio.run(main)
    result: T = uvloop.run(main)
    return result
