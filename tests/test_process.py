"""Process semantics across in-process nodes on 127.0.0.1 (DESIGN.md section 3).

Mailboxes and selective receive, sends to pids and names, monitors (exit reason, noproc,
stale creation, noconnection), links across nodes, remote spawn, ordering and bounded
memory under backpressure. Every wait has a deadline; nothing sleeps blindly.
"""

from __future__ import annotations

from typing import Any

import pytest
import zmq
from _exported import (
    COOKIE,
    async_test,
    cluster,
    collect,
    free_port,
    monitored_by,
    new_name,
    spawn_waiter,
    wait_until,
)

import fabric
from fabric import Down, Exit, Node, Pid, Process
from fabric.protocol.messages import K_SEND_TUPLE

pytestmark = pytest.mark.io  # in-process nodes on 127.0.0.1

# -- mailboxes ---------------------------------------------------------------------------


@async_test
async def test_selective_receive_keeps_unmatched_messages_in_order() -> None:
    async with cluster(1) as (a,):
        box = a.new_mailbox()
        for m in [1, "x", 2, "y", 3, ("t", 1)]:
            a.send(box.self, m)
        assert await box.receive(match=lambda m: m == "y", timeout=1) == "y"
        assert await box.receive(match=lambda m: isinstance(m, str), timeout=1) == "x"
        assert await box.receive(match=lambda m: type(m) is tuple, timeout=1) == ("t", 1)
        assert list(box.mailbox) == [1, 2, 3]
        # A message arriving while a receive waits is matched; the others stay in order.
        async def late() -> None:
            a.send(box.self, 4)
            a.send(box.self, "wanted")

        a.loop.call_soon(lambda: a.loop.create_task(late()))
        assert await box.receive(match=lambda m: m == "wanted", timeout=1) == "wanted"
        assert await collect(box, 4) == [1, 2, 3, 4]


@async_test
async def test_receive_timeout_raises_or_returns_default() -> None:
    async with cluster(1) as (a,):
        box = a.new_mailbox()
        a.send(box.self, "not this")
        with pytest.raises(fabric.ReceiveTimeout):
            await box.receive(match=lambda m: m == "that", timeout=0.05)
        assert await box.receive(match=lambda m: m == "that", timeout=0.05,
                                 default=None) is None
        assert await box.receive(timeout=0) == "not this"  # timeout 0 only looks
        assert await box.receive(timeout=0, default="empty") == "empty"
        with pytest.raises(TimeoutError):  # ReceiveTimeout is a TimeoutError
            await box.receive(timeout=0)


# -- sending and names ---------------------------------------------------------------------


@async_test
async def test_send_to_pid_local_name_and_name_node_across_nodes() -> None:
    async with cluster(2) as (a, b):
        box = a.new_mailbox()
        pid = await a.spawn_on(b.name, "_exported:echo")
        assert pid.node == b.name and pid.creation == b.creation
        b.register("echo", pid)
        a.send(pid, (box.self, "by pid"))
        a.send(("echo", b.name), (box.self, "by (name, node)"))
        b.send("echo", (box.self, "by local name"))
        got = await collect(box, 3)  # from two senders: no order between them
        assert sorted(got) == [("echo", "by (name, node)"), ("echo", "by local name"),
                               ("echo", "by pid")]
        # Tuples stay tuples and lists stay lists across the wire; pids survive.
        a.send(pid, (box.self, [1, (2, [3])]))
        assert await box.receive(timeout=2) == ("echo", [1, (2, [3])])
        with pytest.raises(fabric.LocalProtocolError):
            a.send(12345, "not an address")


@async_test
async def test_send_to_unknown_destinations_is_silent_and_counted() -> None:
    async with cluster(2) as (a, b):
        before = b.metrics["undeliverable"]
        a.send(("nobody", b.name), "lost")
        a.send(Pid(b.name, 10**9, b.creation), "lost")
        await wait_until(lambda: b.metrics["undeliverable"] == before + 2, what="counted")


@async_test
async def test_names_are_freed_when_their_process_ends() -> None:
    async with cluster(2) as (a, b):
        pid = spawn_waiter(b)
        b.register("svc", pid)
        assert b.whereis("svc") == pid and "svc" in b.registered()
        other = spawn_waiter(b)
        with pytest.raises(fabric.NameConflictError):
            b.register("svc", other)
        watcher = b.new_mailbox()
        ref = watcher.monitor(pid)
        b.send(pid, "stop")
        down = await watcher.receive(timeout=2)
        assert down == Down(ref, pid, "normal")
        assert b.whereis("svc") is None and "svc" not in b.registered()
        b.register("svc", other)  # the name is free again
        assert b.whereis("svc") == other
        a.send(other, "stop")
        await wait_until(lambda: b.whereis("svc") is None, what="name freed")


@async_test
async def test_ten_thousand_messages_arrive_in_order_across_nodes() -> None:
    count = 10_000
    async with cluster(2) as (a, b):
        sink = b.new_mailbox()

        async def sender(proc: Process) -> None:
            for i in range(count):
                await proc.send_wait(sink.self, ("m", i))  # waits only if the buffer is full
            proc.send(sink.self, "done")

        a.spawn(sender)
        got = [await sink.receive(timeout=5) for _ in range(count + 1)]
        assert got[-1] == "done"
        assert [m[1] for m in got[:-1]] == list(range(count))


class _QueuedRouter:
    """Stands in for a ROUTER holding ``frames`` (messages, read part by part): EVENTS
    shows input while any is left; ``looks`` counts the EVENTS reads."""

    def __init__(self, frames: list[list[bytes]]) -> None:
        self.frames = frames
        self.looks = 0
        self._parts: list[bytes] = []  # the rest of the message being read

    def getsockopt(self, option: int) -> int:
        if option == zmq.RCVMORE:
            return 1 if self._parts else 0
        self.looks += 1
        return zmq.POLLIN if self.frames or self._parts else 0

    def recv(self, flags: int = 0, copy: bool = True) -> bytes:
        if not self._parts:
            if not self.frames:
                raise zmq.Again()
            self._parts = list(self.frames.pop(0))
        return self._parts.pop(0)


@async_test
async def test_the_router_yields_after_a_wakeups_first_batch_then_drains_the_rest() -> None:
    # Latency first: a fresh wakeup reads without asking (input is all but certain), and
    # after the first batch the reader returns (True: look again soon) so the processes it
    # woke run before the readiness check that usually finds nothing; the re-run drains.
    async with cluster(2) as (a, b):
        sink = b.new_mailbox()
        identity = b.mesh.identity_of(a.name)
        frames = [[identity, b.codec.encode([[K_SEND_TUPLE, sink.self, "m", i]])]
                  for i in range(3)]
        assert b.reactor.on_router(_QueuedRouter([])) is False  # type: ignore[arg-type]  # idle
        router = _QueuedRouter(frames)
        assert b.reactor.on_router(router) is True  # type: ignore[arg-type]
        assert list(sink.mailbox) == [("m", 0)] and router.looks == 0
        assert b.reactor.on_router(router) is False  # type: ignore[arg-type]
        assert list(sink.mailbox) == [("m", 0), ("m", 1), ("m", 2)] and not router.frames
        assert router.looks == 3  # the re-run asks before each read
        # The next wakeup yields after its first batch again.
        router.frames.append([identity, b.codec.encode([[K_SEND_TUPLE, sink.self, "m", 3]])])
        assert b.reactor.on_router(router) is True  # type: ignore[arg-type]
        assert b.reactor.on_router(router) is False  # type: ignore[arg-type]
        assert len(sink.mailbox) == 4


# -- monitors ------------------------------------------------------------------------------


@async_test
async def test_monitor_fires_down_exactly_once_with_the_exit_reason() -> None:
    async with cluster(2) as (a, b):
        watcher = a.new_mailbox()
        pid = await a.spawn_on(b.name, "_exported:crash_on", "bad input")
        ref = watcher.monitor(pid)
        local_watcher = b.new_mailbox()
        local_ref = local_watcher.monitor(pid)
        a.send(pid, "go")
        down = await watcher.receive(timeout=2)
        assert down == Down(ref, pid, ("error", "ValueError", "bad input"))
        assert await local_watcher.receive(timeout=2) == Down(
            local_ref, pid, ("error", "ValueError", "bad input"))
        # A nodedown later must not produce a second Down for the same monitor.
        events = a.monitor_nodes()
        a.disconnect(b.name)
        assert isinstance(await events.next(timeout=2), fabric.NodeDown)
        assert await watcher.receive(timeout=0.05, default=None) is None
        assert not watcher.monitors


@async_test
async def test_monitor_normal_exit_and_demonitor() -> None:
    async with cluster(2) as (a, b):
        watcher = a.new_mailbox()
        pid = spawn_waiter(b)
        ref_kept = watcher.monitor(pid)
        ref_dropped = watcher.monitor(pid)
        watcher.demonitor(ref_dropped)
        # Sent after the monitor requests on the same ordered stream: they arrive first.
        a.send(pid, "stop")
        assert await watcher.receive(timeout=2) == Down(ref_kept, pid, "normal")
        assert await watcher.receive(timeout=0.05, default=None) is None


@async_test
async def test_monitor_of_a_dead_or_unknown_pid_is_noproc() -> None:
    async with cluster(2) as (a, b):
        watcher = a.new_mailbox()
        pid = spawn_waiter(b)
        probe = b.new_mailbox()
        probe.monitor(pid)
        b.send(pid, "stop")
        await probe.receive(timeout=2)  # it is gone
        ref = watcher.monitor(pid)
        assert await watcher.receive(timeout=2) == Down(ref, pid, "noproc")
        never = Pid(b.name, 10**9, b.creation)
        ref2 = watcher.monitor(never)
        assert await watcher.receive(timeout=2) == Down(ref2, never, "noproc")
        local_dead = Pid(a.name, 10**9, a.creation)
        ref3 = watcher.monitor(local_dead)
        assert await watcher.receive(timeout=0) == Down(ref3, local_dead, "noproc")


@async_test
async def test_monitor_by_registered_name_across_nodes() -> None:
    async with cluster(2) as (a, b):
        watcher = a.new_mailbox()
        ref = watcher.monitor(("nobody", b.name))
        down = await watcher.receive(timeout=2)
        assert down.ref == ref and down.reason == "noproc"
        pid = spawn_waiter(b)
        b.register("svc", pid)
        ref = watcher.monitor(("svc", b.name))
        a.send(pid, "stop")
        assert await watcher.receive(timeout=2) == Down(ref, pid, "normal")
        # demonitor by name reaches the remote side: no leftover monitor there
        pid2 = spawn_waiter(b)
        b.register("svc2", pid2)
        ref2 = watcher.monitor(("svc2", b.name))
        await wait_until(lambda: monitored_by(b, pid2) == 1, what="remote monitor")
        watcher.demonitor(ref2)
        await wait_until(lambda: monitored_by(b, pid2) == 0, what="remote demonitor")
        a.send(pid2, "stop")


@async_test
async def test_pid_of_a_previous_creation_is_noproc_and_reaches_nothing() -> None:
    port = free_port()
    async with cluster(1) as (a,):
        b1 = Node(f"b@127.0.0.1:{port}", cookie=COOKIE)
        await b1.start()
        assert await a.connect(b1.name)
        old = await a.spawn_on(b1.name, "_exported:echo")
        events = a.monitor_nodes()
        await b1.stop()
        down = await events.next(timeout=5)
        assert isinstance(down, fabric.NodeDown) and down.reason == "shutdown"
        b2 = Node(f"b@127.0.0.1:{port}", cookie=COOKIE)
        await b2.start()
        try:
            assert b2.name == b1.name and b2.creation != b1.creation
            assert await a.connect(b2.name)
            fresh = await a.spawn_on(b2.name, "_exported:echo")
            # Same node name and maybe the same process number, but another creation.
            assert fresh != old
            stale = Pid(b2.name, fresh.id, b1.creation)  # same id, previous creation
            box = a.new_mailbox()
            ref = box.monitor(stale)
            assert await box.receive(timeout=2) == Down(ref, stale, "noproc")
            before = b2.metrics["undeliverable"]
            a.send(stale, (box.self, "to the past"))
            a.send(fresh, (box.self, "to the present"))
            assert await box.receive(timeout=2) == ("echo", "to the present")
            assert b2.metrics["undeliverable"] == before + 1
            assert await box.receive(timeout=0.05, default=None) is None
        finally:
            await b2.stop()


@pytest.mark.parametrize("how", ["stop", "disconnect"])
@async_test
async def test_monitor_fires_noconnection_when_the_node_goes_down(how: str) -> None:
    async with cluster(1) as (a,):
        b = Node(new_name("b"), cookie=COOKIE, reconnect_window=0)
        await b.start()
        try:
            assert await a.connect(b.name)
            watcher = a.new_mailbox()
            pid = await a.spawn_on(b.name, "_exported:echo")
            ref = watcher.monitor(pid)
            remote_watcher = b.new_mailbox()
            local_pid = spawn_waiter(a)
            remote_ref = remote_watcher.monitor(local_pid)
            await wait_until(lambda: monitored_by(b, pid) == 1 and monitored_by(a, local_pid) == 1,
                             what="monitors in place on both sides")
            if how == "stop":
                # A graceful stop ends b's processes first: the monitor sees their reason.
                await b.stop()
                assert await watcher.receive(timeout=5) == Down(ref, pid, "shutdown")
            else:
                a.disconnect(b.name)
                assert await watcher.receive(timeout=5) == Down(ref, pid, "noconnection")
                assert await remote_watcher.receive(timeout=5) == Down(
                    remote_ref, local_pid, "noconnection")
            # Monitoring a pid on a node that is down is noconnection at once.
            ref2 = watcher.monitor(pid)
            assert await watcher.receive(timeout=0) == Down(ref2, pid, "noconnection")
            a.send(local_pid, "stop")
        finally:
            await b.stop()


# -- links ---------------------------------------------------------------------------------


async def _linked_pair(a: Node, b: Node, trap: bool) -> tuple[Process, Pid, Pid]:
    """A process on ``a`` (spawned there) linked to one on ``b``; returns a reporting
    mailbox on ``a``, the pid on ``a`` and the pid on ``b``."""
    report = a.new_mailbox()
    target = spawn_waiter(b)  # exits normally on "stop"
    pid_a = await a.spawn_on(a.name, "_exported:linker", target, trap, report.self)
    msg = await report.receive(timeout=2)
    assert msg == ("linked", pid_a)
    await wait_until(lambda: pid_a in b.processes.get(target).links, what="link on b")
    return report, pid_a, target


@async_test
async def test_abnormal_exit_propagates_through_a_link_both_ways_across_nodes() -> None:
    async with cluster(2) as (a, b):
        # b's process dies abnormally -> a's linked process dies with the same reason
        report, pid_a, target = await _linked_pair(a, b, trap=False)
        watch = a.new_mailbox()
        ref = watch.monitor(pid_a)
        b.exit(target, "boom")
        assert await watch.receive(timeout=2) == Down(ref, pid_a, "boom")
        # a's process crashes -> b's linked process dies with the crash reason
        report, pid_a, target = await _linked_pair(a, b, trap=False)
        watch_b = b.new_mailbox()
        ref_b = watch_b.monitor(target)
        a.send(pid_a, "crash")
        down = await watch_b.receive(timeout=2)
        assert down == Down(ref_b, target, ("error", "RuntimeError", "asked to crash"))


@async_test
async def test_trap_exits_turns_exit_signals_into_messages() -> None:
    async with cluster(2) as (a, b):
        report, pid_a, target = await _linked_pair(a, b, trap=True)
        b.exit(target, "boom")
        assert await report.receive(timeout=2) == Exit(target, "boom")
        a.send(pid_a, "still alive?")
        assert await report.receive(timeout=2) == "still alive?"
        a.send(pid_a, "stop")


@async_test
async def test_an_exit_sent_from_a_process_names_its_sender_locally_and_across_nodes() -> None:
    # Erlang's exit/2: the trapping target's Exit names the process that sent it.
    async with cluster(2) as (a, b):
        seen: list[Any] = []
        trapping: list[fabric.Pid] = []

        async def trapper(proc: Process) -> None:
            proc.trap_exits = True
            trapping.append(proc.self)
            seen.append(await proc.receive())

        async def sender(proc: Process, target: fabric.Pid) -> None:
            proc.node.exit(target, "go away")

        local, remote = a.spawn(trapper), b.spawn(trapper)
        await wait_until(lambda: len(trapping) == 2, what="both trapping")
        s1 = a.spawn(sender, local)
        s2 = a.spawn(sender, remote)
        await wait_until(lambda: len(seen) == 2, what="both Exits received")
        assert sorted(seen, key=repr) == sorted([Exit(s1, "go away"), Exit(s2, "go away")],
                                                key=repr)
        # From no process, the target itself is named (as before).
        target = a.spawn(trapper)
        await wait_until(lambda: len(trapping) == 3, what="the third trapping")
        a.exit(target, "from outside")
        await wait_until(lambda: len(seen) == 3, what="the outside Exit received")
        assert seen[2] == Exit(target, "from outside")


@async_test
async def test_a_kill_before_the_first_run_ends_the_process() -> None:
    async with cluster(1) as (a,):
        watcher = a.new_mailbox()
        pid = spawn_waiter(a)  # its task has not run a step yet
        ref = watcher.monitor(pid)
        a.exit(pid, "kill")
        assert await watcher.receive(timeout=2) == Down(ref, pid, "killed")
        assert not a.is_alive(pid) and a.processes.get(pid) is None


@async_test
async def test_a_spawn_under_a_taken_name_leaves_no_process_behind() -> None:
    async with cluster(1) as (a,):
        holder = spawn_waiter(a)
        a.register("taken", holder)
        before = a.processes.count()
        with pytest.raises(fabric.NameConflictError):
            a.spawn(_idle, name="taken")
        assert a.processes.count() == before
        assert a.whereis("taken") == holder


async def _idle(proc: Process) -> None:
    await proc.receive()


@async_test
async def test_normal_exit_does_not_kill_linked_processes() -> None:
    async with cluster(2) as (a, b):
        report, pid_a, target = await _linked_pair(a, b, trap=False)
        b.send(target, "stop")  # exits normally
        await wait_until(lambda: b.processes.get(target) is None, what="target gone")
        a.send(pid_a, "ping")
        assert await report.receive(timeout=2) == "ping"  # still alive
        # with trap_exits the normal exit is visible as a message
        report, pid_a, target = await _linked_pair(a, b, trap=True)
        b.send(target, "stop")
        assert await report.receive(timeout=2) == Exit(target, "normal")
        a.send(pid_a, "stop")


@async_test
async def test_links_break_with_noconnection_on_nodedown() -> None:
    async with cluster(2, reconnect_window=0) as (a, b):
        report, pid_a, target = await _linked_pair(a, b, trap=True)
        a.disconnect(b.name)
        assert await report.receive(timeout=5) == Exit(target, "noconnection")
        report2 = a.new_mailbox()
        watch = a.new_mailbox()
        # without trapping, the nodedown kills the linked process
        assert await a.connect(b.name)
        target2 = spawn_waiter(b)
        pid2 = await a.spawn_on(a.name, "_exported:linker", target2, False, report2.self)
        await report2.receive(timeout=2)
        ref = watch.monitor(pid2)
        a.disconnect(b.name)
        assert await watch.receive(timeout=5) == Down(ref, pid2, "noconnection")


# -- remote spawn ----------------------------------------------------------------------------


@async_test
async def test_remote_spawn_of_exported_function_and_hello_world_round_trip() -> None:
    async with cluster(2) as (a, b):
        me = a.new_mailbox()
        pid = await a.spawn_on(b.name, "_exported:hello_world")
        assert pid.node == b.name
        a.send(pid, ("hello", me.self))
        assert await me.receive(timeout=2) == ("world", b.name)


@async_test
async def test_a_requester_killed_during_a_linked_spawn_on_takes_the_child_down() -> None:
    async with cluster(2) as (a, b):

        async def requester(proc: Process) -> None:
            await a.spawn_on(b.name, "_exported:echo", link_to=proc)
            await proc.receive()  # linked to the child, until killed

        req = a.spawn(requester)
        await wait_until(lambda: b.processes.count() == 1, what="the child on b")
        (child,) = b.processes.pids()
        a.exit(req, "kill")  # the spawn_reply is on its way, or just arrived
        # Either way the child does not outlive its requester with half a link.
        await wait_until(lambda: not b.is_alive(child), what="the child killed")
        await wait_until(lambda: b.signals.links_with(a.name) == 0
                         and a.signals.links_with(b.name) == 0, what="no link left")


@pytest.mark.parametrize("spec", ["_exported:not_exported", "_exported:missing",
                                  "no_such_module_xyz:fn", "not a spec"])
@async_test
async def test_remote_spawn_of_non_exported_function_fails_on_the_caller(spec: str) -> None:
    async with cluster(2) as (a, b):
        with pytest.raises(fabric.NotExportedError):
            await a.spawn_on(b.name, spec)
        assert b.processes.count() == 0  # nothing was started there


@async_test
async def test_remote_spawn_allowlist_and_unreachable_node() -> None:
    async with cluster(2, allow_remote_spawn=frozenset({"_exported:not_exported"})) as (a, b):
        pid = await a.spawn_on(b.name, "_exported:not_exported")
        assert pid.node == b.name
        fast = Node(new_name("c"), cookie=COOKIE, handshake_timeout=0.3)
        await fast.start()
        try:
            with pytest.raises(fabric.NodeDownError):
                await fast.spawn_on(f"ghost@127.0.0.1:{free_port()}", "_exported:echo")
        finally:
            await fast.stop()


# -- backpressure ----------------------------------------------------------------------------


@async_test
async def test_bounded_memory_under_a_slow_receiver() -> None:
    limit = 1000
    async with cluster(2, outbound_limit=limit) as (a, b):
        sink = b.new_mailbox()
        out = a.channels.outbound(b.name)
        max_queued = 0
        accepted: list[int] = []
        # 1. Plain sends within one loop turn fill the buffer; past the limit they raise.
        # (The first message of a turn leaves at once: limit more fit in the queue.)
        with pytest.raises(fabric.BackpressureError) as info:
            for i in range(limit + 2):
                a.send(sink.self, i)
                accepted.append(i)
        assert info.value.node == b.name and info.value.queued == limit
        assert accepted == list(range(limit + 1)) and len(out.queue) == limit
        # 2. send_wait suspends instead, and completes as the receiver drains.
        waits = 0
        for i in range(limit, 6 * limit):
            full = len(out.queue) >= limit
            await a.send_wait(sink.self, i)
            waits += full
            accepted.append(i)
            max_queued = max(max_queued, len(out.queue))
        assert waits > 0, "send_wait never had to wait: the test did not exercise it"
        assert max_queued <= limit
        assert out.refused >= 1 + waits
        # 3. Nothing was lost or reordered: the receiver gets everything accepted, in order.
        got: list[Any] = [await sink.receive(timeout=5) for _ in accepted]
        assert got == accepted
        assert await sink.receive(timeout=0.05, default=None) is None
