"""Bounded mailboxes (DECISIONS D23) with in-process nodes on 127.0.0.1: local sends
refused or waiting at the bound, messages from another node dropped, counted and
reported through busy/room notices, what is never refused, and what releases a sender.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from _exported import async_test, cluster, spawn_waiter, wait_until

import fabric
from fabric import Down, MailboxFullError, Node, Pid, Process
from fabric.errors import BackpressureError, CallTimeout, ConfigError
from fabric.protocol.flow import BUSY, high_water
from fabric.protocol.messages import K_CTRL

pytestmark = pytest.mark.io  # in-process nodes on 127.0.0.1


async def idle(proc: Process) -> None:
    """A process that never reads its mailbox."""
    await asyncio.Event().wait()


def mailbox_len(node: Node, pid: Pid) -> int:
    proc = node.processes.get(pid)
    assert proc is not None, f"{pid!r} is gone"
    return len(proc.mailbox)


async def gated_sink(proc: Process, gate: Pid, got: list[Any]) -> None:
    """Read nothing until ``gate`` ends (its ``Down`` is a signal: never refused), then
    take every message into ``got``."""
    ref = proc.monitor(gate)
    await proc.receive(match=lambda m: type(m) is Down and m.ref == ref)
    while True:
        got.append(await proc.receive())


# -- local senders --------------------------------------------------------------------------


@async_test
async def test_a_local_send_to_a_full_mailbox_raises_and_signals_still_arrive() -> None:
    async with cluster(1) as (a,):
        pid = a.spawn(idle, mailbox_limit=3, name="idle")
        for i in range(3):
            a.send(pid, i)
        with pytest.raises(MailboxFullError) as info:
            a.send(pid, 3)
        err = info.value
        assert isinstance(err, BackpressureError)
        assert (err.dest, err.node, err.queued) == (pid, a.name, 3)
        with pytest.raises(MailboxFullError) as by_name:
            a.send("idle", 3)
        assert by_name.value.dest == "idle"
        with pytest.raises(MailboxFullError):
            a.send(("idle", a.name), 3)
        assert a.metrics["mailbox_refused"] == 3
        assert a.mailboxes.is_congested(pid) and a.mailboxes.is_congested("idle")
        # Never refused: a call's reply, a stop request, and signals the node delivers.
        a.send(pid, ("$reply", a.make_ref(), True, 1, True))
        a.send(pid, ("$stop", "normal"))
        watcher = a.processes.get(pid)
        assert watcher is not None
        gone = spawn_waiter(a)
        ref = watcher.monitor(gone)
        a.send(gone, "stop")
        await wait_until(lambda: mailbox_len(a, pid) == 6, what="the Down past the bound")
        assert watcher.mailbox[-1] == Down(ref, gone, "normal")


@async_test
async def test_send_wait_waits_until_the_mailbox_is_down_to_half() -> None:
    async with cluster(1) as (a,):
        box = a.new_mailbox(mailbox_limit=10)
        for i in range(10):
            a.send(box.self, i)
        waiting = asyncio.ensure_future(a.send_wait(box.self, "late"))
        await asyncio.sleep(0)
        for _ in range(4):  # down to 6: still above half the limit
            await box.receive()
            await asyncio.sleep(0)
        assert not waiting.done()
        await box.receive()  # 5 = half: room
        await asyncio.wait_for(waiting, 5)
        assert list(box.mailbox) == [5, 6, 7, 8, 9, "late"]


@async_test
async def test_send_wait_to_a_global_name_waits_on_the_process_it_names() -> None:
    async with cluster(1) as (a,):
        box = a.new_mailbox(mailbox_limit=2)
        assert await a.global_.register_name("box", box.self) == "yes"
        name = fabric.GlobalName("box")
        a.send(name, 1)
        a.send(name, 2)
        with pytest.raises(MailboxFullError) as info:
            a.send(name, 3)
        assert info.value.dest == box.self
        waiting = asyncio.ensure_future(a.send_wait(name, 3))
        # Suspended on the pid the name names (a waiter that spun instead would starve
        # this wait, and refuse more than once).
        await wait_until(lambda: a.mailboxes.waiting_for_room(box.self) == 1, 5, "waiting")
        assert not waiting.done() and a.metrics["mailbox_refused"] == 2
        assert await box.receive() == 1
        await asyncio.wait_for(waiting, 5)
        assert list(box.mailbox) == [2, 3]


@async_test
async def test_a_local_call_to_a_full_server_waits_within_its_timeout() -> None:
    class Echo(fabric.GenServer):
        async def handle_call(self, request: Any, from_: fabric.From) -> Any:
            return request

    async with cluster(1) as (a,):
        pid = await Echo.start(a, mailbox_limit=2)
        server = a.processes.get(pid)
        assert server is not None and server.mailbox_limit == 2
        # Fill the mailbox while the server cannot run (no await in between).
        a.send(pid, "info-1")
        a.send(pid, "info-2")
        assert await fabric.call(a, pid, "hello", timeout=5) == "hello"


def test_a_bound_must_be_a_positive_int() -> None:
    with pytest.raises(ConfigError):
        fabric.NodeConfig(mailbox_limit=0)

    async def body() -> None:
        async with cluster(1) as (a,):
            with pytest.raises(ConfigError):
                a.spawn(idle, mailbox_limit=0)
            with pytest.raises(ConfigError):
                a.new_mailbox(mailbox_limit=-1)
            assert a.new_mailbox().mailbox_limit == a.config.mailbox_limit == 10_000

    async_test(body)()


# -- senders on another node -------------------------------------------------------------------


@async_test
async def test_a_flood_from_another_node_is_bounded_counted_and_reported() -> None:
    """A process that does not read while a peer sends flat out with send_wait: its
    mailbox never exceeds the bound, the sender is refused and waits, every message is
    either received or dropped and counted on both sides, another process of that node
    keeps answering, and the session stays up."""
    limit, total = 200, 20_000
    async with cluster(2) as (a, b):
        events = a.monitor_nodes()
        gate = spawn_waiter(b)
        got: list[Any] = []
        sink = b.spawn(gated_sink, gate, got, mailbox_limit=limit)
        echo = b.spawn(echo_server)
        box = a.new_mailbox()
        sent = 0

        async def flood() -> None:
            nonlocal sent
            for i in range(total):
                await a.send_wait(sink, i)
                sent += 1

        sender = asyncio.ensure_future(flood())
        peak = 0

        def congested() -> bool:
            nonlocal peak
            peak = max(peak, mailbox_len(b, sink))
            return a.mailboxes.is_congested(sink)

        await wait_until(congested, 10, "the sender's node to hear 'busy'")
        assert b.metrics["busy_sent"] >= 1 and a.metrics["busy_received"] >= 1
        with pytest.raises(MailboxFullError) as info:
            a.send(sink, "refused")
        assert info.value.node == b.name and info.value.queued == -1
        # The sender is held: its count stops moving while the sink does not read.
        stalled = sent
        for n in range(5):  # another process of b answers meanwhile, promptly
            a.send(echo, (box.self, n))
            assert await box.receive(timeout=5) == ("echo", n)
            peak = max(peak, mailbox_len(b, sink))
        assert sent == stalled and not sender.done()
        assert peak <= limit
        b.send(gate, "stop")  # the sink starts reading: room, and the sender resumes
        await asyncio.wait_for(sender, 15)
        await wait_until(lambda: len(got) + b.metrics["mailbox_dropped"] == total, 10,
                         "every message received or dropped")
        assert got == sorted(got)  # gaps where messages were dropped, never a reorder
        dropped = b.metrics["mailbox_dropped"]
        assert dropped > 0  # the flood overran the bound: some were in flight
        await wait_until(lambda: a.metrics["dropped_by_peers"] == dropped, 10,
                         "the drops reported to the sender's node")
        assert not a.mailboxes.is_congested(sink)
        assert a.nodes() == [b.name]
        with pytest.raises(TimeoutError):
            await events.next(timeout=0)  # no NodeDown (nor anything else) meanwhile


async def echo_server(proc: Process) -> None:
    while True:
        reply_to, payload = await proc.receive()
        proc.send(reply_to, ("echo", payload))


@async_test
async def test_a_named_destination_is_told_by_name_and_released_when_it_ends() -> None:
    async with cluster(2) as (a, b):
        pid = b.spawn(idle, name="idle", mailbox_limit=4)
        dest = ("idle", b.name)
        for i in range(high_water(4) + 1):
            a.send(dest, i)  # the fourth finds 3 = high water: told, still delivered
        await wait_until(lambda: a.mailboxes.is_congested(dest), 5, "busy for the name")
        assert mailbox_len(b, pid) == 4
        assert not a.mailboxes.is_congested(pid)  # the pid was never addressed
        with pytest.raises(MailboxFullError):
            a.send(dest, "refused")
        waiting = asyncio.ensure_future(a.send_wait(dest, "after"))
        await wait_until(lambda: a.mailboxes.waiting_for_room(dest) == 1, 5, "waiting")
        assert not waiting.done()
        b.exit(pid, "kill")  # its end is room too: nobody will ever read it
        await asyncio.wait_for(waiting, 5)  # then sent and, the name gone, undeliverable
        assert not a.mailboxes.is_congested(dest)


@async_test
async def test_a_remote_call_to_a_busy_server_waits_for_room_or_times_out() -> None:
    unblock = asyncio.Event()

    class Slow(fabric.GenServer):
        async def handle_call(self, request: Any, from_: fabric.From) -> Any:
            return request

        async def handle_info(self, msg: Any) -> None:
            await unblock.wait()  # stuck until the test lets it go on

    async with cluster(2) as (a, b):
        pid = await Slow.start(b, mailbox_limit=4)
        for i in range(6):
            a.send(pid, i)  # from 3 queued: busy; from 4: dropped (one is then stuck)
        await wait_until(lambda: a.mailboxes.is_congested(pid), 5, "busy")
        with pytest.raises(CallTimeout):
            await fabric.call(a, pid, "ping", timeout=0.2)  # never sent: it waited
        pending = asyncio.ensure_future(fabric.call(a, pid, "pong", timeout=5))
        await wait_until(lambda: a.mailboxes.waiting_for_room(pid) == 1, 5, "waiting")
        assert not pending.done()
        unblock.set()  # the server reads again: room, and the waiting call goes out
        assert await asyncio.wait_for(pending, 5) == "pong"
        assert not a.mailboxes.is_congested(pid)
        assert a.metrics["dropped_by_peers"] == b.metrics["mailbox_dropped"] >= 1


@async_test
async def test_a_nodedown_releases_what_that_node_reported_busy() -> None:
    async with cluster(2) as (a, b):
        pid = b.spawn(idle, mailbox_limit=2)
        for i in range(3):
            a.send(pid, i)
        await wait_until(lambda: a.mailboxes.is_congested(pid), 5, "busy")
        waiting = asyncio.ensure_future(a.send_wait(pid, "after"))
        await wait_until(lambda: a.mailboxes.waiting_for_room(pid) == 1, 5, "waiting")
        assert not waiting.done()
        a.disconnect(b.name)
        await asyncio.wait_for(waiting, 5)
        assert not a.mailboxes.is_congested(pid) and a.mailboxes.waiting_for_room(pid) == 0


@async_test
async def test_malformed_or_foreign_busy_notices_are_counted_and_ignored() -> None:
    async with cluster(2) as (a, b):
        bad = a.metrics["bad_input"]
        other = Pid(a.name, 1, a.creation)  # b may not speak for a's own processes
        batch: list[Any] = [[K_CTRL, BUSY, other, 0], [K_CTRL, BUSY, "x", -1],
                            [K_CTRL, BUSY, [1], 0], [K_CTRL, "room"]]
        a.reactor.dispatch(b.name, batch, a.loop.time())
        assert a.metrics["bad_input"] == bad + 4
        assert not a.mailboxes.is_congested(other)
        assert a.nodes() == [b.name]


@async_test
async def test_group_broadcasts_to_a_full_mailbox_are_dropped_and_counted() -> None:
    async with cluster(1) as (a,):
        pid = a.spawn(idle, mailbox_limit=2)
        a.pg.join("g", pid)
        for i in range(5):
            a.pg.broadcast("g", i)
        assert mailbox_len(a, pid) == 2
        assert a.metrics["broadcast_dropped"] == 3

