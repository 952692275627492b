"""Process semantics against a node in another OS process (issue 3's real-socket list)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import fabric
from fabric.errors import CallTimeout, NodeDownError, RemoteError
from fabric.genserver import call
from fabric.testing.cluster import LocalCluster, NodeProcess

FAST = dict(heartbeat_interval=0.1, heartbeat_timeout=0.6)


def run(body: Callable[[], Any]) -> None:
    asyncio.run(asyncio.wait_for(body(), 60))


@pytest.mark.procs
@pytest.mark.io
def test_monitor_fires_noconnection_on_kill_9() -> None:
    with NodeProcess("victim", spawn_echo=True, **FAST) as victim:
        victim.wait_ready()

        async def body() -> None:
            async with LocalCluster(1, **FAST) as (local,):
                box = local.new_mailbox()
                assert await local.connect(victim.name)
                ref = box.monitor(("echo", victim.name))
                local.send(("echo", victim.name), ("ping", box.self))
                assert await box.receive(timeout=5) == ("echo", "ping")
                victim.kill()
                down = await box.receive(match=lambda m: isinstance(m, fabric.Down),
                                         timeout=5)
                assert down.ref == ref and down.reason == "noconnection"

        run(body)


@pytest.mark.procs
@pytest.mark.io
def test_remote_spawn_link_and_exit_across_processes() -> None:
    with NodeProcess("remote", **FAST) as remote:
        remote.wait_ready()

        async def body() -> None:
            async with LocalCluster(1, **FAST) as (local,):
                assert await local.connect(remote.name)
                box = local.new_mailbox()
                pid = await local.spawn_on(remote.name, "tests._exported:crash_on", "boom")
                ref = box.monitor(pid)
                local.send(pid, "hello")  # not the crash message: it keeps running
                local.send(pid, "boom")
                down = await box.receive(match=lambda m: isinstance(m, fabric.Down),
                                         timeout=5)
                assert down.ref == ref and down.pid == pid
                assert down.reason[0] == "error"
                with pytest.raises(fabric.NotExportedError):
                    await local.spawn_on(remote.name, "tests._exported:not_exported")

        run(body)


@pytest.mark.procs
@pytest.mark.io
def test_stale_creation_pid_is_noproc_after_restart() -> None:
    with NodeProcess("phoenix", **FAST) as first:
        first.wait_ready()
        name = first.name

        async def before() -> fabric.Pid:
            async with LocalCluster(1, **FAST) as (local,):
                pid: fabric.Pid = await local.spawn_on(name, "tests._exported:echo")
                return pid

        old = asyncio.run(asyncio.wait_for(before(), 30))
        first.stop()
    with NodeProcess(name, **FAST) as second:
        second.wait_ready()

        async def after() -> None:
            async with LocalCluster(1, **FAST) as (local,):
                assert await local.connect(name)
                new = await local.spawn_on(name, "tests._exported:echo")
                assert new.id == old.id and new.creation != old.creation
                box = local.new_mailbox()
                local.send(old, (box.self, "to the old run"))  # reaches nothing
                local.send(new, (box.self, "to the new run"))
                ref = box.monitor(old)
                down = await box.receive(match=lambda m: isinstance(m, fabric.Down),
                                         timeout=5)
                assert down.ref == ref and down.reason == "noproc"
                # the echo of the new run answered; the old pid's message went nowhere
                assert await box.receive(timeout=5) == ("echo", "to the new run")
                assert await box.receive(timeout=0.2, default=None) is None

        run(after)


@pytest.mark.procs
@pytest.mark.io
def test_rpc_errors_and_timeouts_across_processes() -> None:
    with NodeProcess("rpcd", **FAST) as remote:
        remote.wait_ready()

        async def body() -> None:
            async with LocalCluster(1, **FAST) as (local,):
                assert await fabric.rpc.call(local, remote.name, "tests._exported:add",
                                             [2, 3]) == 5
                with pytest.raises(RemoteError) as err:
                    await fabric.rpc.call(local, remote.name, "tests._exported:boom", ["x"])
                assert err.value.type_name == "ValueError"
                assert err.value.message == "x"
                with pytest.raises(CallTimeout):
                    await fabric.rpc.call(local, remote.name, "tests._exported:slow_double",
                                          [1, 5.0], timeout=0.2)
                # a call to a process that never answers times out
                box = local.new_mailbox()
                with pytest.raises(CallTimeout):
                    await call(local, box.self, "anyone?", timeout=0.2)
                remote.kill()
                with pytest.raises(NodeDownError):
                    await fabric.rpc.call(local, remote.name, "tests._exported:add", [1, 1],
                                          timeout=3)

        run(body)
