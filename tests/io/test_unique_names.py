"""Unique base names on real sockets: two nodes named ``p@127.0.0.1`` (other ports) are
never both admitted, whether a node dials the second one itself or two clusters that each
hold one merge through their peer lists (issue 12, item 4)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from fabric import Node
from fabric.testing import async_wait_until, free_port

pytestmark = pytest.mark.io

COOKIE = "unique-names"
FAST: dict[str, Any] = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.6}
# How long the merged clusters are watched for a second holder sneaking in: many peer-list
# rounds and handshakes on loopback.
HOLD = 1.5


def holders(node: Node) -> list[str]:
    """The ``p@127.0.0.1`` nodes that ``node`` lists."""
    return [n for n in node.nodes() if n.startswith("p@127.0.0.1:")]


async def started(short: str) -> Node:
    node = Node(f"{short}@127.0.0.1:{free_port()}", COOKIE, **FAST)
    await node.start()
    return node


def test_dialling_a_second_holder_is_refused_on_real_sockets(arun: Callable[..., Any]) -> None:
    async def main() -> None:
        x, pa, pb = [await started(s) for s in ("x", "p", "p")]
        try:
            assert await x.connect(pa.name)
            assert not await x.connect(pb.name)
            assert x.last_connect_error(pb.name) == "name_in_use"
            # and pb dialling x meets the same refusal from the accepting side
            assert not await pb.connect(x.name)
            assert pb.last_connect_error(x.name) == "name_in_use"
            assert x.nodes() == [pa.name] and pb.nodes() == []
        finally:
            for node in (x, pa, pb):
                await node.stop()

    arun(main())


def test_two_clusters_holding_the_same_name_merge_without_a_duplicate(
        arun: Callable[..., Any]) -> None:
    async def main() -> None:
        # cluster 1: x and pa; cluster 2: y, w and pb (pa and pb are both p@127.0.0.1)
        x, pa, y, w, pb = [await started(s) for s in ("x", "p", "y", "w", "p")]
        nodes = [x, pa, y, w, pb]
        try:
            assert await pa.connect(x.name)
            assert await w.connect(y.name)
            assert await pb.connect(y.name)
            await async_wait_until(lambda: set(pb.nodes()) == {y.name, w.name}, 10,
                                   message="cluster 2 formed")
            assert await x.connect(y.name)  # the merge: peer lists cross

            def merged() -> bool:
                trio = {x.name, y.name, w.name}
                return all(set(n.nodes()) >= trio - {n.name} for n in (x, y, w))

            await async_wait_until(merged, 10, message="x, y and w in one mesh")
            # Every peer list has been read once each pair answered a ping (the list is
            # the first message of a session, and the stream is ordered).
            for a in (x, y, w):
                for b in (x, y, w):
                    if a is not b:
                        assert await a.ping(b.name) == "pong"
            end = time.monotonic() + HOLD
            while time.monotonic() < end:  # watch: no node ever lists two holders
                for n in nodes:
                    assert len(holders(n)) <= 1, (n.name, n.nodes())
                await asyncio.sleep(0.02)
            assert holders(x) == [pa.name]
            assert holders(y) == [pb.name] and holders(w) == [pb.name]
            assert pb.name not in pa.nodes() and pa.name not in pb.nodes()
        finally:
            for node in nodes:
                await node.stop()

    arun(main())
