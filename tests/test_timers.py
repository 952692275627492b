"""Timers for processes (send_after, cancel_timer, read_timer) and rpc.current_node()."""

from __future__ import annotations

import pytest
from _exported import async_test, cluster

import fabric
from fabric import rpc

pytestmark = pytest.mark.io  # in-process nodes on 127.0.0.1


@async_test
async def test_send_after_delivers_once_after_the_delay() -> None:
    async with cluster(1) as (a,):
        box = a.new_mailbox()
        start = a.loop.time()
        ref = a.send_after(box.self, "tick", 0.05)
        assert isinstance(ref, fabric.Ref)
        assert await box.receive(timeout=5) == "tick"
        assert a.loop.time() - start >= 0.05
        assert a.cancel_timer(ref) is None  # fired: nothing to cancel (Erlang's false)
        assert a.read_timer(ref) is None
        assert await box.receive(timeout=0, default=None) is None  # once


@async_test
async def test_cancel_timer_returns_the_time_left_and_the_message_never_comes() -> None:
    async with cluster(1) as (a,):
        box = a.new_mailbox()
        ref = a.send_after(box.self, "late", 30.0)
        left = a.read_timer(ref)
        assert left is not None and 29.0 < left <= 30.0
        left = a.cancel_timer(ref)
        assert left is not None and 0.0 < left <= 30.0
        assert a.cancel_timer(ref) is None  # a second cancel finds nothing
        # A later timer to the same mailbox comes alone: the cancelled one never fires.
        a.send_after(box.self, "marker", 0.0)
        assert await box.receive(timeout=5) == "marker"
        assert await box.receive(timeout=0, default=None) is None


@async_test
async def test_a_process_sends_itself_a_timeout_and_names_resolve_when_fired() -> None:
    async with cluster(2) as (a, b):
        box = b.new_mailbox()
        b.register("later", box.self)
        report = a.new_mailbox()

        async def worker(proc: fabric.Process) -> None:
            proc.send_after(proc.self, "wake", 0.01)
            proc.send_after(("later", b.name), ("from", proc.self), 0.01)  # another node
            ref = proc.send_after(proc.self, "never", 10)
            woke = await proc.receive(timeout=5)
            proc.send(report.self, (woke, proc.cancel_timer(ref)))

        pid = a.spawn(worker)
        assert await box.receive(timeout=5) == ("from", pid)
        woke, left = await report.receive(timeout=5)
        assert woke == "wake" and left is not None and 0.0 < left <= 10

        # The name is looked up when the timer fires, not when it is set.
        a.send_after("not_yet", "found", 0.05)
        a.register("not_yet", report.self)
        assert await report.receive(timeout=5) == "found"


@async_test
async def test_a_negative_delay_is_refused_and_timers_need_a_running_node() -> None:
    async with cluster(1) as (a,):
        box = a.new_mailbox()
        with pytest.raises(fabric.LocalProtocolError):
            a.send_after(box.self, "x", -1)
        a.send_after(box.self, "x", 30.0)
    with pytest.raises(fabric.ConfigError):  # a stopped node has no timers to read
        a.read_timer(a.make_ref())


@async_test
async def test_rpc_function_reads_its_node_from_current_node() -> None:
    async with cluster(2) as (a, b):
        assert await rpc.call(a, b.name, "_exported:where_am_i") == b.name
        assert await rpc.call(a, a.name, "_exported:where_am_i") == a.name
    with pytest.raises(fabric.LocalProtocolError):
        rpc.current_node()  # outside an rpc function or a GenServer
