"""Applications (fabric.application) on one in-process node: the root supervisor is
started under APP from a "module:function" that returns child specs (plain or awaited),
a bad spec or a bad return value is refused before anything starts, a child that fails
to start fails the start, and stop_application ends the tree and reports it."""

from __future__ import annotations

import asyncio

import pytest
from _dsup_children import FailsInInit, idle
from _exported import TEST_TIMEOUT, async_test, cluster

import fabric
from fabric.application import APP, start_application, stop_application
from fabric.dsupervisor import SCOPE

pytestmark = pytest.mark.io  # an in-process node on 127.0.0.1

THIS = __name__  # pytest puts tests/ on sys.path: the nodes import this module by name


def two_workers(node: fabric.Node) -> list[fabric.ChildSpec]:
    return [fabric.ChildSpec("a", idle, name="worker_a"),
            fabric.ChildSpec("b", idle, name="worker_b")]


async def one_worker_later(node: fabric.Node) -> fabric.ChildSpec:
    return fabric.ChildSpec("a", idle, name="worker_a")


def not_specs(node: fabric.Node) -> list[str]:
    return ["a"]


def fails_to_start(node: fabric.Node) -> list[fabric.ChildSpec]:
    return [fabric.ChildSpec("bad", FailsInInit)]


@async_test
async def test_the_tree_starts_under_app_and_stops_with_stop_application() -> None:
    async with cluster(1) as (node,):
        root = await start_application(node, f"{THIS}:two_workers")
        assert node.whereis(APP) == root
        assert [i for i, _ in await fabric.Supervisor.which_children(node, root)] == \
            ["a", "b"]
        worker = node.whereis("worker_b")
        assert worker is not None and node.is_alive(worker)
        assert await stop_application(node, timeout=10)
        assert node.whereis(APP) is None and not node.is_alive(root)
        assert not node.is_alive(worker)
        assert await stop_application(node, timeout=10)  # nothing running: still true


@async_test
async def test_an_async_function_returning_one_spec_is_awaited() -> None:
    async with cluster(1) as (node,):
        root = await start_application(node, f"{THIS}:one_worker_later")
        assert [i for i, _ in await fabric.Supervisor.which_children(node, root)] == ["a"]
        assert await stop_application(node, timeout=10)


@pytest.mark.parametrize("spec", ["no_colon", ":two_workers", f"{THIS}:"])
@async_test
async def test_a_spec_that_is_not_module_colon_function_is_refused(spec: str) -> None:
    async with cluster(1) as (node,):
        with pytest.raises(ValueError, match="module:function"):
            await start_application(node, spec)
        assert node.whereis(APP) is None


@async_test
async def test_a_function_that_returns_no_child_specs_is_refused() -> None:
    async with cluster(1) as (node,):
        with pytest.raises(ValueError, match="must return a list of ChildSpec"):
            await start_application(node, f"{THIS}:not_specs")
        assert node.whereis(APP) is None


@async_test
async def test_a_child_that_fails_to_start_fails_the_start() -> None:
    async with cluster(1) as (node,):
        with pytest.raises(Exception, match="cannot start"):
            await start_application(node, f"{THIS}:fails_to_start")
        assert node.whereis(APP) is None


@async_test
async def test_stop_application_is_bounded_by_its_timeout_when_a_hand_off_hangs() -> None:
    async with cluster(1) as (node,):
        root = await start_application(node, f"{THIS}:two_workers")
        # A distributed supervisor member that never answers its hand-off request.
        stuck = node.new_mailbox()
        node.register("stuck_members", stuck.self)
        node.pg.join("stuck_members", stuck.self, scope=SCOPE)
        stopping = asyncio.ensure_future(stop_application(node, timeout=1.0))
        # Without a bound the hand-off waits forever and the test's own deadline fails it.
        assert await asyncio.wait_for(stopping, TEST_TIMEOUT / 2)
        assert not node.is_alive(root)
