"""Every timeout fabric raises is a FabricTimeout: a builtin TimeoutError on every Python.

Before 3.11, ``asyncio.TimeoutError`` and ``concurrent.futures.TimeoutError`` are not the
builtin, so these tests check for :class:`fabric.FabricTimeout` (which fails on a raw
asyncio timeout on any Python) and that it is caught by ``except TimeoutError``.
"""

from __future__ import annotations

import asyncio

import pytest
from _exported import COOKIE, async_test, cluster, new_name, spawn_waiter

import fabric
from fabric import Node

pytestmark = pytest.mark.io


def test_every_fabric_timeout_is_a_builtin_timeout_error() -> None:
    for cls in (fabric.FabricTimeout, fabric.CallTimeout, fabric.ReceiveTimeout,
                fabric.SpawnTimeout, fabric.OutcomeUnknown):
        assert issubclass(cls, TimeoutError) and issubclass(cls, fabric.FabricError)


@async_test
async def test_node_monitor_next_times_out_with_a_fabric_timeout() -> None:
    async with Node(new_name("lone"), cookie=COOKIE) as node:
        events = node.monitor_nodes()
        with pytest.raises(fabric.FabricTimeout, match="NodeMonitor.next"):
            await events.next(timeout=0.05)


@async_test
async def test_global_register_name_times_out_with_a_fabric_timeout() -> None:
    async with cluster(2) as (a, _b):
        pid = spawn_waiter(a)
        # The peer must answer before the name is granted: zero time cannot be enough. A
        # name operation's timeout is an OutcomeUnknown (a FabricTimeout): it stays in flight.
        with pytest.raises(fabric.OutcomeUnknown, match="outcome is unknown"):
            await a.global_.register_name("late", pid, timeout=0)


@async_test
async def test_global_set_lock_times_out_with_a_fabric_timeout() -> None:
    async with Node(new_name("lone"), cookie=COOKIE) as node:
        holder, waiter = spawn_waiter(node), spawn_waiter(node)
        assert await node.global_.set_lock("res", holder, timeout=5)
        with pytest.raises(TimeoutError):  # the builtin catches it, on every Python
            await node.global_.set_lock("res", waiter, timeout=0.1)


@async_test
async def test_spawn_on_an_up_node_that_does_not_answer_in_time_is_a_timeout() -> None:
    async with cluster(2) as (a, b):
        with pytest.raises(fabric.SpawnTimeout) as caught:
            await a.spawn_on(b.name, "_exported:echo", timeout=0)
        assert not isinstance(caught.value, fabric.NodeDownError)
        assert b.name in a.nodes()  # the node was up all along


def test_sync_node_run_times_out_with_a_fabric_timeout() -> None:
    with fabric.SyncNode(new_name("s"), cookie=COOKIE) as node, \
            pytest.raises(fabric.FabricTimeout, match="SyncNode.run"):
        node.run(asyncio.sleep(5), timeout=0.05)


def test_wait_future_returns_the_result_times_out_and_cancels() -> None:
    from fabric.timeouts import wait_future

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.call_soon(done.set_result, "yes")
        assert await wait_future(done, 5.0, "answer") == "yes"
        assert await wait_future(done, None, "answer") == "yes"  # already done

        never = loop.create_future()
        with pytest.raises(fabric.OutcomeUnknown, match="register"):
            await wait_future(never, 0.01, "register", fabric.OutcomeUnknown)
        assert never.cancelled()  # nobody is left waiting on it

        # The caller cancelled: the future is cancelled, and it is not a timeout.
        pending = loop.create_future()
        task = asyncio.ensure_future(wait_future(pending, 5.0, "answer"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pending.cancelled()

    asyncio.run(scenario())
