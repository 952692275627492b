"""Cluster singletons on real nodes: one instance, calls from any node, a graceful stop
that hands the state over and loses no call, and failover after kill -9."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from _exported import async_test, cluster, wait_until

import fabric
from fabric import Node, Pid, Singleton
from fabric.testing import NodeProcess, free_port
from fabric.testing.cluster import DEFAULT_COOKIE
from nodes.demo_member import SINGLETON, Tickets

pytestmark = pytest.mark.io


async def start_everywhere(nodes: list[Node]) -> tuple[list[Singleton], Pid]:
    """A candidate on every node; once all agree on one instance: them, and its pid."""
    singletons = [await Singleton(n, SINGLETON, Tickets, margin=0.3).start() for n in nodes]
    await wait_until(lambda: all(s.host() is not None for s in singletons)
                     and len({s.host() for s in singletons}) == 1, 10, "one instance")
    host = singletons[0].host()
    assert host is not None
    return singletons, host


@async_test
async def test_one_instance_serves_calls_from_every_node() -> None:
    async with cluster(3) as nodes:
        singletons, host = await start_everywhere(nodes)
        counts = [await s.call("next") for s in singletons]
        assert counts == [1, 2, 3]
        where = fabric.GlobalName(("$singleton", SINGLETON))
        assert await fabric.call(nodes[1], where, "where") == host.node
        assert [n.name for n in nodes if n.is_alive(host)] == [host.node]


@async_test
async def test_a_graceful_stop_of_the_host_loses_no_call_and_keeps_the_state() -> None:
    async with cluster(3) as nodes:
        singletons, host = await start_everywhere(nodes)
        host_node = next(n for n in nodes if n.name == host.node)
        caller = next(s for s in singletons if s.node is not host_node)
        answers: list[int] = []
        errors: list[BaseException] = []
        stop = asyncio.Event()

        async def keep_calling() -> None:
            while not stop.is_set():
                try:
                    answers.append(await caller.call("next", timeout=10))
                except Exception as exc:  # any failure is a lost call
                    errors.append(exc)

        loop_task = asyncio.ensure_future(keep_calling())
        await wait_until(lambda: len(answers) >= 20, 10, "calls flowing")
        await host_node.stop()
        count_at_stop = len(answers)
        await wait_until(lambda: len(answers) >= count_at_stop + 20, 10, "calls resume")
        stop.set()
        await loop_task
        assert errors == []
        # The count went on from where it was: the state moved, no call was served twice.
        assert answers == list(range(1, len(answers) + 1))
        new_host = caller.host()
        assert new_host is not None and new_host.node != host_node.name


@pytest.mark.procs
def test_kill_9_of_the_host_runs_it_again_on_a_survivor(arun: Callable[..., Any]) -> None:
    first = NodeProcess("s0", extra_args=["--run", "_exported:start_counter_singleton"])
    with first:
        seed = first.wait_ready()
        others = [NodeProcess(f"s{i}", connect=[seed],
                              extra_args=["--run", "_exported:start_counter_singleton"])
                  for i in (1, 2)]
        procs = [first, *others]
        try:
            for proc in others:
                proc.start()
                proc.wait_ready()

            async def body() -> None:
                async with Node(f"client@127.0.0.1:{free_port()}",
                                cookie=DEFAULT_COOKIE) as client:
                    assert await client.connect(seed)
                    counter = await Singleton(client, SINGLETON, None).start()
                    where = await counter.call("where", timeout=20)
                    victim = next(p for p in procs if p.name == where)
                    victim.kill()
                    try:
                        answer = await counter.call("where", timeout=20, retry_unsure=True)
                    except fabric.CallTimeout:
                        raise AssertionError("\n".join(p.describe(40) for p in procs)) from None
                    assert answer != where and answer in {p.name for p in procs}

            arun(body())
        finally:
            for proc in others:
                proc.kill()
                proc.close()


@async_test
async def test_leaving_hands_the_instance_over_while_the_node_stays_up() -> None:
    async with cluster(2) as nodes:
        singletons, host = await start_everywhere(nodes)
        assert await singletons[0].call("next") == 1
        leaver = next(s for s in singletons if s.node.name == host.node)
        other = next(s for s in singletons if s is not leaver)
        await leaver.stop()
        await wait_until(lambda: other.host() not in (None, host), 10, "a new instance")
        new = other.host()
        assert new is not None and new.node == other.node.name
        assert await other.call("next") == 2  # the count moved with it
        assert not any(n.is_alive(host) for n in nodes)
