"""rpc.call and rpc.multicall: exported functions only, errors carried back precisely."""

from __future__ import annotations

import pytest
from _exported import COOKIE, async_test, cluster, new_name, wait_until

import fabric
from fabric import Node, rpc
from fabric.testing import free_port

pytestmark = pytest.mark.io  # in-process nodes on 127.0.0.1


@async_test
async def test_rpc_call_runs_sync_and_async_exported_functions() -> None:
    async with cluster(2) as (a, b):
        assert await rpc.call(a, b.name, "_exported:add", (2, 3)) == 5
        assert await rpc.call(a, b.name, "_exported:slow_double", [21, 0.01]) == 42
        assert await rpc.call(a, a.name, "_exported:add", (1, 1)) == 2  # to itself
        assert fabric.rpc is rpc
        # The worker processes are gone afterwards.
        assert a.processes.count() == 0 and b.processes.count() == 0


@async_test
async def test_rpc_remote_exception_becomes_remote_error() -> None:
    async with cluster(2) as (a, b):
        with pytest.raises(fabric.RemoteError) as info:
            await rpc.call(a, b.name, "_exported:boom", ("kaput",))
        assert info.value.type_name == "ValueError" and info.value.message == "kaput"
        assert ", in boom" in info.value.remote_traceback  # the remote frame is named
        with pytest.raises(fabric.RemoteError) as info:
            await rpc.call(a, b.name, "_exported:add", (1,))  # wrong arity: TypeError there
        assert info.value.type_name == "TypeError"


@pytest.mark.parametrize("spec", ["_exported:plain_function", "_exported:missing",
                                  "no_such_module_xyz:fn", "bad spec"])
@async_test
async def test_rpc_of_non_exported_function_raises_not_exported(spec: str) -> None:
    async with cluster(2) as (a, b):
        with pytest.raises(fabric.NotExportedError):
            await rpc.call(a, b.name, spec)


@async_test
async def test_rpc_follows_the_target_nodes_allowlist() -> None:
    async with cluster(1) as (a,):
        allowing = Node(new_name("b"), cookie=COOKIE,
                        allow_remote_spawn=frozenset({"_exported:allowlisted_only"}))
        await allowing.start()
        try:
            assert await rpc.call(a, allowing.name, "_exported:allowlisted_only") == "allowed"
            # a itself does not allow it: the rules of the node that runs it apply
            with pytest.raises(fabric.NotExportedError):
                await rpc.call(allowing, a.name, "_exported:allowlisted_only")
        finally:
            await allowing.stop()


@async_test
async def test_rpc_timeout_and_node_down() -> None:
    async with cluster(2, reconnect_window=0) as (a, b):
        with pytest.raises(fabric.CallTimeout):
            await rpc.call(a, b.name, "_exported:slow_double", (1, 2.0), timeout=0.05)
        fast = Node(new_name("c"), cookie=COOKIE, handshake_timeout=0.3)
        await fast.start()
        try:
            with pytest.raises(fabric.NodeDownError):
                await rpc.call(fast, f"ghost@127.0.0.1:{free_port()}", "_exported:add", (1, 2))
        finally:
            await fast.stop()
        # The node goes down while the function runs. (The worker of the timed-out call
        # above still runs; its monitor is removed asynchronously.)
        def monitored() -> bool:
            return any(p.monitored_by for p in b.processes.processes())

        await wait_until(lambda: not monitored(), what="old monitor removed")
        call = a.loop.create_task(
            rpc.call(a, b.name, "_exported:slow_double", (1, 3.0), timeout=5))
        await wait_until(monitored, what="worker running and monitored")
        a.disconnect(b.name)
        with pytest.raises(fabric.NodeDownError):
            await call


@async_test
async def test_multicall_returns_results_by_node_and_bad_nodes() -> None:
    async with cluster(3) as (a, b, c):
        ghost = f"ghost@127.0.0.1:{free_port()}"
        results, bad = await rpc.multicall(a, [a.name, b.name, c.name, ghost],
                                           "_exported:add", (20, 22), timeout=2)
        assert results == {a.name: 42, b.name: 42, c.name: 42}
        assert bad == [ghost]
        results, bad = await rpc.multicall(a, [b.name, c.name], "_exported:boom", ("x",))
        assert bad == [] and set(results) == {b.name, c.name}
        assert all(isinstance(r, fabric.RemoteError) for r in results.values())
        results, bad = await rpc.multicall(a, [b.name], "_exported:slow_double", (1, 1.0),
                                           timeout=0.05)
        assert results == {} and bad == [b.name]
