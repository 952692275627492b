"""fabric.cache with owners as OS processes: kill -9 of one owner of three loses no
acknowledged write; ``fabric status`` shows the cache's counters."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from contextlib import ExitStack

import pytest

import fabric
from fabric.cache import Cache
from fabric.errors import CacheError, FabricTimeout
from fabric.testing import async_wait_until, free_port
from fabric.testing.cluster import DEFAULT_COOKIE, NodeProcess, child_pythonpath

pytestmark = [pytest.mark.procs, pytest.mark.io]

START_CACHE = "import fabric.cache; cache = fabric.cache.Cache(node, 'kv', replicas=2)"
FAST = dict(heartbeat_interval=0.1, heartbeat_timeout=1.0)


def test_kill_9_of_one_owner_of_three_loses_no_acknowledged_write() -> None:
    with ExitStack() as stack:
        first = stack.enter_context(NodeProcess("ck0", extra_args=["--eval", START_CACHE]))
        first.wait_ready()
        owners = [first] + [stack.enter_context(NodeProcess(
            f"ck{i}", connect=[first.name], extra_args=["--eval", START_CACHE]))
            for i in (1, 2)]
        for owner in owners[1:]:
            owner.wait_ready()

        async def body() -> None:
            client = fabric.Node(f"cli@127.0.0.1:{free_port()}", cookie=DEFAULT_COOKIE,
                                 **FAST)  # type: ignore[arg-type]
            await client.start()
            try:
                assert await client.connect(first.name)
                cache = Cache(client, "kv", owner=False, timeout=5.0)
                await async_wait_until(lambda: len(cache.core.placement) == 3, timeout=20,
                                       message="the client sees three owners")
                acked: dict[str, int] = {}

                async def writer(w: int) -> None:
                    for i in range(w, 800, 8):  # 8 writers: writes are in flight at the kill
                        if len(acked) >= 300 and owners[1].returncode is None:
                            owners[1].kill()  # SIGKILL: no goodbye, no hand-off
                        try:
                            await cache.put(f"k{i}", i)
                            acked[f"k{i}"] = i
                        except (CacheError, FabricTimeout):
                            pass  # not acknowledged: no promise made

                await asyncio.gather(*(writer(w) for w in range(8)))
                assert owners[1].returncode is not None
                await async_wait_until(lambda: len(cache.core.placement) == 2, timeout=20,
                                       message="the dead owner left the ring")
                assert len(acked) >= 600
                got = await cache.get_many(list(acked))
                assert got == acked
            finally:
                await client.stop()

        asyncio.run(asyncio.wait_for(body(), 90))

        status = subprocess.run(
            [sys.executable, "-m", "fabric.cli", "status", owners[0].name, "--json"],
            env={**os.environ, "FABRIC_COOKIE": DEFAULT_COOKIE,
                 "PYTHONPATH": child_pythonpath()},
            capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)[owners[0].name]
        counters = report["caches"]["kv"]
        # The survivors re-replicated the dead owner's keys to each other.
        assert counters["entries"] > 0 and counters["handoffs"] > 0
        assert {"hits", "misses", "evictions", "expirations"} <= set(counters)
