"""``node.learn``, the entry point for discovery, on real sockets: a name learned before its
node runs is retried until the node answers, then the session comes up by itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from fabric import Node
from fabric.testing import async_wait_until, free_port

pytestmark = pytest.mark.io

COOKIE = "learn"
FAST: dict[str, Any] = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.6,
                        "reconnect_max_backoff": 0.2}


def test_a_learned_name_is_retried_until_its_node_starts(arun: Callable[..., Any]) -> None:
    async def main() -> None:
        a = Node(f"a@127.0.0.1:{free_port()}", COOKIE, **FAST)
        await a.start()
        b_name = f"b@127.0.0.1:{free_port()}"
        b: Node | None = None
        try:
            a.learn(b_name)
            # nothing listens there yet: the attempt fails and a retry is planned
            await async_wait_until(lambda: b_name in a.mesh.reconnecting(), 10,
                                   message="a retry of the learned name is planned")
            assert a.nodes() == []
            b = Node(b_name, COOKIE, **FAST)
            await b.start()
            await async_wait_until(lambda: a.nodes() == [b_name] and b.nodes() == [a.name],
                                   10, message="the session came up by itself")
            assert a.mesh.reconnecting() == {}
            a.learn(b_name)  # a known name is ignored
            assert a.nodes() == [b_name]
        finally:
            for node in (a, b):
                if node is not None:
                    await node.stop()

    arun(main())
