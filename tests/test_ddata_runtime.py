"""fabric.ddata over real sockets: three nodes in one process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import fabric
from fabric.ddata import MAJORITY, GCounter, Key, ORSet, PNCounter, Replicator
from fabric.testing import async_wait_until

pytestmark = pytest.mark.io

FAST = dict(heartbeat_interval=0.05, heartbeat_timeout=0.5)
HITS = Key("hits", GCounter)
SEEN = Key("seen", ORSet)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


async def cluster(n: int) -> tuple[list[fabric.Node], list[Replicator]]:
    nodes = [fabric.Node(f"d{i}@127.0.0.1:{free_port()}", cookie="dd", **FAST)
             for i in range(n)]
    for node in nodes:
        await node.start()
    names = [node.name for node in nodes]
    repls = [Replicator(node, members=names, delta_interval=0.05, gossip_interval=0.5)
             for node in nodes]
    for node in nodes[1:]:
        assert await node.connect(nodes[0].name)
    await async_wait_until(lambda: all(len(x.nodes()) == n - 1 for x in nodes), timeout=10)
    return nodes, repls


async def stop(nodes: list[fabric.Node]) -> None:
    for node in nodes:
        await node.stop()


def test_three_nodes_replicate_counters_and_sets() -> None:
    async def main() -> None:
        nodes, repls = await cluster(3)
        try:
            for i, repl in enumerate(repls):
                for _ in range(10):
                    await repl.update(HITS, lambda c: c.increment(1))
                await repl.update(SEEN, lambda s, i=i: s.add(("from", i)))

            def agreed() -> bool:
                hits = [r.value(HITS) for r in repls]
                seen = [r.value(SEEN) for r in repls]
                return all(h is not None and h.value == 30 for h in hits) and all(
                    s is not None and len(s.value) == 3 for s in seen)

            await async_wait_until(agreed, timeout=10)
            # A majority write on one node is read by a majority read on another at once.
            counter = await repls[0].update(Key("pn", PNCounter),
                                            lambda c: c.decrement(4), write=MAJORITY)
            assert counter.value == -4
            read = await repls[2].get(Key("pn", PNCounter), read=MAJORITY)
            assert read is not None and read.value == -4
            # Subscriptions deliver every change to a local process.
            box = nodes[1].new_mailbox()
            repls[1].subscribe(HITS, box.self)
            assert (await box.receive(timeout=5)).value.value == 30
            await repls[0].update(HITS, lambda c: c.increment(5))
            msg = await box.receive(timeout=5)
            assert type(msg) is fabric.DataChanged and msg.key == "hits"
            assert msg.value.value == 35
        finally:
            await stop(nodes)

    run(main)


def test_unmet_level_raises_consistency_error_and_heals() -> None:
    async def main() -> None:
        nodes, repls = await cluster(3)
        try:
            await nodes[1].stop()
            await nodes[2].stop()
            await async_wait_until(lambda: nodes[0].nodes() == [], timeout=10)
            with pytest.raises(fabric.ConsistencyError, match="needs 2 of 3 replicas"):
                await repls[0].update(HITS, lambda c: c.increment(2), write=MAJORITY)
            assert repls[0].value(HITS) is not None  # applied here anyway
            # A fresh node run joins and gets the state through anti-entropy.
            again = fabric.Node(nodes[1].name, cookie="dd", **FAST)
            await again.start()
            nodes[1] = again
            repl = Replicator(again, members=[n.name for n in nodes], delta_interval=0.05)
            assert await again.connect(nodes[0].name)
            await async_wait_until(lambda: (v := repl.value(HITS)) is not None
                                   and v.value == 2, timeout=10)
        finally:
            await nodes[0].stop()
            await nodes[1].stop()

    run(main)


def test_durable_keys_come_back_after_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "ddata.sqlite")
    name = f"solo@127.0.0.1:{free_port()}"

    async def main() -> None:
        node = fabric.Node(name, cookie="dd", **FAST)
        await node.start()
        repl = Replicator(node, durable=["hits", "seen-*"], path=path)
        await repl.update(HITS, lambda c: c.increment(3))
        await repl.update(Key("seen-1", ORSet), lambda s: s.add(("t", 1)))
        await repl.update(Key("scratch", GCounter), lambda c: c.increment(1))
        await node.stop()
        repl.close()
        again = fabric.Node(name, cookie="dd", **FAST)
        await again.start()
        try:
            repl = Replicator(again, durable=["hits", "seen-*"], path=path)
            restored = repl.value(HITS)
            assert restored is not None and restored.value == 3
            seen = repl.value(Key("seen-1", ORSet))
            assert seen is not None and seen.value == {("t", 1)}
            assert repl.value(Key("scratch", GCounter)) is None  # not durable
            # The new run writes its own slot beside the old run's.
            after = await repl.update(HITS, lambda c: c.increment(1))
            assert after.value == 4 and len(after.entries) == 2
            repl.close()
        finally:
            await again.stop()
        with pytest.raises(fabric.ConfigError, match="sqlite file"):
            Replicator(again, durable=["x"])

    run(main)


def test_both_sides_of_a_block_write_and_converge_to_the_exact_sum() -> None:
    """Node.block cuts d0 off from d1 and d2 over real sockets: both sides keep writing
    (a majority write fails on d0's side only); after unblock every replica holds the sum
    of every increment and every element."""
    async def main() -> None:
        nodes, repls = await cluster(3)
        alone, others = nodes[0], nodes[1:]
        try:
            for node in others:
                assert alone.block(node.name, 60.0)
            await async_wait_until(lambda: alone.nodes() == [] and all(
                n.nodes() == [o.name for o in others if o is not n] for n in others),
                timeout=10)
            await repls[0].update(HITS, lambda c: c.increment(1))
            await repls[1].update(HITS, lambda c: c.increment(10))
            await repls[2].update(HITS, lambda c: c.increment(100))
            with pytest.raises(fabric.ConsistencyError, match="needs 2 of 3"):
                await repls[0].update(SEEN, lambda s: s.add("alone"), write=MAJORITY)
            await repls[1].update(SEEN, lambda s: s.add("together"), write=MAJORITY)
            seen = await repls[2].get(SEEN, read=MAJORITY)
            assert seen is not None and seen.value == {"together"}
            for node in others:
                alone.unblock(node.name)

            def converged() -> bool:
                return all((h := r.value(HITS)) is not None and h.value == 111
                           and (s := r.value(SEEN)) is not None
                           and s.value == {"alone", "together"} for r in repls)

            await async_wait_until(converged, timeout=10)
            assert all(len(n.nodes()) == 2 for n in nodes)
        finally:
            await stop(nodes)

    run(main)
