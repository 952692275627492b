"""fabric.cache over real sockets: nodes in one process on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import fabric
from fabric.cache import Cache, caches_of
from fabric.errors import CacheError, CacheUnavailableError, CacheValueError
from fabric.testing import async_wait_until, free_port

pytestmark = pytest.mark.io

FAST = dict(heartbeat_interval=0.05, heartbeat_timeout=0.5)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


async def cluster(n: int, **options: object) -> tuple[list[fabric.Node], list[Cache]]:
    nodes = [fabric.Node(f"c{i}@127.0.0.1:{free_port()}", cookie="cc", **FAST)  # type: ignore[arg-type]
             for i in range(n)]
    for node in nodes:
        await node.start()
    for node in nodes[1:]:
        assert await node.connect(nodes[0].name)
    caches = [Cache(node, "t", **options) for node in nodes]  # type: ignore[arg-type]
    await async_wait_until(lambda: all(len(c.owners("k")) == min(2, n) and
                                       len(c.core.placement) == n for c in caches),
                           timeout=10, message="every node sees every owner")
    return nodes, caches


async def reader_of(nodes: list[fabric.Node], **options: object) -> tuple[fabric.Node, Cache]:
    """A node that joins ``nodes`` and uses the cache without owning keys."""
    node = fabric.Node(f"r@127.0.0.1:{free_port()}", cookie="cc", **FAST)  # type: ignore[arg-type]
    await node.start()
    nodes.append(node)  # stopped with the others
    assert await node.connect(nodes[0].name)
    reader = Cache(node, "t", owner=False, **options)  # type: ignore[arg-type]
    await async_wait_until(lambda: len(reader.core.placement) == len(nodes) - 1,
                           timeout=10, message="the reader sees the owners")
    return node, reader


async def stop(nodes: list[fabric.Node]) -> None:
    for node in nodes:
        if not node.stopped:
            await node.stop()


async def a_flight_in_the_air(caches: list[Cache]) -> tuple[
        asyncio.Event, Callable[[], Awaitable[str]], asyncio.Future[Any]]:
    """Node 0 leads a single flight for key "k" whose computation waits for the event:
    (the event, the computation, the leader's future) once the flight has begun."""
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "computed"

    leader = asyncio.ensure_future(caches[0].get_or_compute("k", slow))
    await async_wait_until(lambda: caches[0].stats()["misses"] +
                           caches[1].stats()["misses"] > 0, timeout=10,
                           message="the leader is computing")
    return release, slow, leader


def test_operations_across_nodes() -> None:
    async def body() -> None:
        nodes, caches = await cluster(3)
        try:
            a, b, c = caches
            await a.put("user:1", {"name": "ada"})
            assert await b.get("user:1") == {"name": "ada"}
            assert await c.get("nope", "dflt") == "dflt"
            assert await a.put_new("n", 1) and not await b.put_new("n", 2)
            assert await c.incr("n", 4) == 5 and await a.incr("fresh") == 1
            assert await b.delete("n") and not await b.delete("n")
            await a.put_many({f"k{i}": i for i in range(50)})
            assert await c.get_many([f"k{i}" for i in range(55)]) == {f"k{i}": i
                                                                       for i in range(50)}
            assert await b.get("k7", repair=True) == 7
            with pytest.raises(CacheValueError):
                await a.put("bad", object())
            with pytest.raises(CacheValueError):
                await a.put("big", b"x" * (2 << 20))
            with pytest.raises(TypeError):
                await a.get(("tuple", "key"))
            with pytest.raises(ValueError):
                await a.put("k", 1, ttl=0)
            with pytest.raises(CacheError):
                Cache(nodes[0], "t")  # one per name per node
            with pytest.raises(CacheError):
                Cache(fabric.Node("unstarted@127.0.0.1:1", cookie="cc"), "t")
            counters = caches_of(nodes[0])["t"]
            assert counters["entries"] > 0 and {"hits", "misses", "evictions", "expirations",
                                                 "handoffs"} <= set(counters)
        finally:
            await stop(nodes)

    run(body)


def test_a_ttl_expires_on_every_node() -> None:
    async def body() -> None:
        nodes, caches = await cluster(2)
        try:
            await caches[0].put("t", "v", ttl=0.3)
            assert await caches[1].get("t") == "v"
            await async_wait_until(lambda: caches[0].stats()["entries"] == 0
                                   and caches[1].stats()["entries"] == 0,
                                   timeout=10, message="the sweep dropped both copies")
            assert await caches[1].get("t") is None and await caches[0].get("t") is None
        finally:
            await stop(nodes)

    run(body)


def test_get_or_compute_computes_once_across_the_cluster() -> None:
    async def body() -> None:
        nodes, caches = await cluster(3)
        calls = 0

        async def compute() -> str:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.2)
            return "computed"

        async def failing() -> str:
            raise RuntimeError("boom")

        try:
            got = await asyncio.gather(*(caches[i % 3].get_or_compute("g", compute, ttl=30)
                                         for i in range(12)))
            assert got == ["computed"] * 12 and calls == 1
            with pytest.raises(RuntimeError):
                await caches[1].get_or_compute("f", failing)
            assert await caches[2].get_or_compute("f", lambda: 42) == 42
        finally:
            await stop(nodes)

    run(body)


def test_a_dead_owner_fails_over_and_a_read_only_node_sees_unavailable() -> None:
    async def body() -> None:
        nodes, caches = await cluster(3)
        try:
            _, reader = await reader_of(nodes)
            for i in range(100):
                await reader.put(f"k{i}", i)
            assert reader.stats()["entries"] == 0  # a reader holds nothing
            await nodes[2].stop()
            assert [await reader.get(f"k{i}") for i in range(100)] == list(range(100))
            await nodes[1].stop()
            await nodes[0].stop()
            await async_wait_until(lambda: len(reader.core.placement) == 0, timeout=10,
                                   message="no owners left")
            with pytest.raises(CacheUnavailableError):
                await reader.get("k1")
        finally:
            await stop(nodes)

    run(body)


def test_a_joining_node_takes_keys_and_a_leaving_one_hands_them_off() -> None:
    async def body() -> None:
        nodes, caches = await cluster(3)
        extra = fabric.Node(f"x@127.0.0.1:{free_port()}", cookie="cc", **FAST)  # type: ignore[arg-type]
        await extra.start()
        try:
            await caches[0].put_many({f"k{i}": i for i in range(1000)})
            assert await extra.connect(nodes[0].name)
            newcomer = Cache(extra, "t")
            await async_wait_until(lambda: all(len(c.core.placement) == 4
                                               for c in [*caches, newcomer]),
                                   timeout=10, message="four owners")
            await async_wait_until(
                lambda: all(c.stats()["handoff_pending"] == 0 for c in caches)
                and newcomer.stats()["entries"] == sum(c.stats()["handoffs"]
                                                       for c in caches) > 0,
                timeout=10, message="the hand-off to the newcomer")
            moved = newcomer.stats()["entries"] / 2000
            assert 0.25 / 1.2 <= moved <= 0.25 * 1.2
            assert await caches[1].get_many([f"k{i}" for i in range(1000)]) == {
                f"k{i}": i for i in range(1000)}
            await caches[2].handoff()
            assert caches[2].stats()["entries"] == 0
            await nodes[2].stop()
            assert [await newcomer.get(f"k{i}") for i in range(1000)] == list(range(1000))
        finally:
            await stop([*nodes, extra])

    run(body)


def test_a_graceful_stop_hands_the_keys_off_by_itself() -> None:
    async def body() -> None:
        nodes, caches = await cluster(3)
        try:
            await caches[0].put_many({f"k{i}": i for i in range(300)})
            held = caches[2].stats()["entries"]
            assert held > 0
            await nodes[2].stop()  # no handoff() call: the drain hook does it
            assert caches[2].stats()["entries"] == 0
            assert caches[2].stats()["handoffs"] >= held // 2
            assert await caches[0].get_many([f"k{i}" for i in range(300)]) == {
                f"k{i}": i for i in range(300)}
        finally:
            await stop(nodes)

    run(body)


def test_a_near_cache_on_a_reader_is_invalidated_by_the_owners() -> None:
    async def body() -> None:
        nodes, caches = await cluster(2)
        try:
            _, reader = await reader_of(nodes, near_entries=1000, near_ttl=30)
            await caches[0].put("k", "v1")
            assert await reader.get("k") == "v1"
            assert await reader.get("k") == "v1"
            assert reader.stats()["near_hits"] == 1  # the second read sent nothing
            await caches[1].put("k", "v2")
            await async_wait_until(lambda: reader.stats()["near_entries"] == 0, timeout=10,
                                   message="the owners invalidated the reader's copy")
            assert await reader.get("k") == "v2"
        finally:
            await stop(nodes)

    run(body)


def test_get_many_reads_and_fills_the_near_cache() -> None:
    async def body() -> None:
        nodes, caches = await cluster(2)
        try:
            _, reader = await reader_of(nodes, near_entries=1000, near_ttl=30)
            items = {f"k{i}": i for i in range(20)}
            await caches[0].put_many(items)
            assert await reader.get_many([*items, "absent"]) == items
            assert reader.stats()["near_entries"] == 20  # kept near, readers registered
            assert await reader.get_many(items) == items
            assert reader.stats()["near_hits"] == 20  # the second call sent nothing
            await caches[1].put("k3", "changed")  # the owners invalidate what mget sent
            await async_wait_until(lambda: reader.stats()["near_entries"] == 19, timeout=10,
                                   message="the owners invalidated the reader's copy")
            assert (await reader.get_many(["k3", "k4"])) == {"k3": "changed", "k4": 4}
        finally:
            await stop(nodes)

    run(body)


def test_the_cache_counters_reach_the_metrics_snapshot() -> None:
    from fabric.metrics import take_snapshot

    async def body() -> None:
        nodes, caches = await cluster(2)
        try:
            await caches[0].put("k", "v")
            await caches[0].delete("k")
            snap = take_snapshot(nodes[0])  # on the node's loop, as the exporter takes it
            assert snap.caches == caches_of(nodes[0])
            assert snap.caches["t"]["tombstones"] == 1  # this node owns k: its tombstone
        finally:
            await stop(nodes)

    run(body)


def test_requests_that_get_no_answer_time_out_and_the_rest_go_on() -> None:
    async def body() -> None:
        nodes, caches = await cluster(2, timeout=0.5)
        try:
            release, slow, leader = await a_flight_in_the_air(caches)
            # Waiters on the flight get no answer until the leader fills it.
            waiters = [asyncio.ensure_future(caches[1].get_or_compute("k", slow))
                       for _ in range(3)]
            for waiter in waiters:
                with pytest.raises(fabric.FabricTimeout):
                    await waiter
            await caches[1].put("other", 1)  # later requests are not affected
            assert await caches[1].get("other") == 1
            release.set()
            assert await leader == "computed"
        finally:
            await stop(nodes)

    run(body)


def test_a_cancelled_caller_leaves_no_request_behind() -> None:
    # Waiters on a single flight get no answer until its leader fills it: cancel them
    # (as asyncio.wait_for around a get would) and the core forgets their requests.
    async def body() -> None:
        nodes, caches = await cluster(2)
        try:
            release, slow, leader = await a_flight_in_the_air(caches)
            waiters = [asyncio.ensure_future(caches[1].get_or_compute("k", slow))
                       for _ in range(3)]
            await async_wait_until(lambda: caches[1].core.in_flight() == 3, timeout=10,
                                   message="three requests wait for the flight")
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
            assert caches[1].core.in_flight() == 0
            release.set()
            assert await leader == "computed"
        finally:
            await stop(nodes)

    run(body)
