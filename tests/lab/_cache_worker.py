"""A cache workload for the lab, loaded into a node through its REPL (``runpy.run_path``).

:func:`start` creates the node's part of the cache ``"kv"`` (an owner, 2 copies per key,
writes acknowledged by both) and a task that, until told to stop, writes unique keys and
remembers which writes were acknowledged and how many were refused. :func:`check` reads
every acknowledged key back through the cache and prints, as one JSON line on stdout (the
test reads it like the node's events), the tallies and the keys that came back wrong.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from fabric.cache import Cache
from fabric.errors import CacheError, FabricTimeout


def _line(event: str, **fields: Any) -> None:
    # One write per line: the REPL thread writes its prompts to the same stream.
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def start(node: Any, interval: float, owners: int) -> dict[str, Any]:
    cache = Cache(node, "kv", replicas=2, timeout=2.0)
    work: dict[str, Any] = {"cache": cache, "stop": False, "acked": {}, "refused": 0,
                            "done": False, "write": False}

    async def run() -> None:
        while len(cache.core.placement) < owners:  # ends when the test kills the node
            await asyncio.sleep(0.05)
        _line("cache_ready", node=node.name)
        i = 0
        while not work["stop"]:
            if work["write"]:
                key = f"{node.name}#{i}"
                try:
                    await cache.put(key, i)
                    work["acked"][key] = i
                except (CacheError, FabricTimeout):
                    work["refused"] += 1  # not acknowledged: no promise made
                i += 1
            await asyncio.sleep(interval)
        work["done"] = True

    work["task"] = node.loop.create_task(run())
    return work


def check(work: dict[str, Any]) -> None:
    cache: Cache = work["cache"]

    async def run() -> None:
        acked = work["acked"]
        got = await cache.get_many(list(acked))
        wrong = sorted(k for k, v in acked.items() if got.get(k) != v)
        _line("cache_state", done=work["done"], acked=len(acked), refused=work["refused"],
              wrong=wrong, owners=sorted(cache.core.placement.members))

    cache.node.loop.create_task(run())
