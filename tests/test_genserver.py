"""GenServer, call, cast and reply across in-process nodes on 127.0.0.1.

The contract of DESIGN.md section 3: ``call`` returns the reply, or raises RemoteError
(type name, message, traceback), CallTimeout, NodeDownError or ProcessDeadError; a late
reply never reaches the wrong call.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from _exported import COOKIE, async_test, cluster, new_name, wait_until

import fabric
from fabric import NOREPLY, Down, Exit, From, GenServer, Node, Pid, Process, call, cast, reply
from fabric import genserver as gs
from fabric.protocol.messages import K_CALL, K_REPLY
from fabric.testing import free_port
from fabric.types import Ref

pytestmark = pytest.mark.io  # in-process nodes on 127.0.0.1

# -- servers used by the tests ---------------------------------------------------------------


class Counter(GenServer):
    """call "get" / ("add", n) / ("sleep", s) / "crash" / "exit"; cast n; info ("inc", n)."""

    async def init(self, start: int = 0, events: list[Any] | None = None) -> None:
        self.n = start
        self.events = events if events is not None else []

    async def handle_call(self, request: Any, from_: From) -> Any:
        if request == "get":
            return self.n
        if request == "whoami":
            return (self.pid, from_.pid)
        if request == "crash":
            raise KeyError("no such key")
        if request == "exit":
            self.proc.exit("leaving")
        if request == "unencodable":
            return {1, 2}
        if type(request) is tuple and request[0] == "add":
            self.n += request[1]
            return self.n
        if type(request) is tuple and request[0] == "sleep":
            await asyncio.sleep(request[1])
            return "slept"
        if type(request) is tuple and request[0] == "later":
            # Reply from another task, after handle_call returned (Erlang's noreply).
            delay, value = request[1], request[2]
            asyncio.get_running_loop().call_later(delay, reply, from_, value)
            return NOREPLY
        raise ValueError(f"unknown request {request!r}")

    async def handle_cast(self, request: Any) -> None:
        self.n += request

    async def handle_info(self, message: Any) -> None:
        if type(message) is tuple and message[0] == "inc":
            self.n += message[1]
        else:
            self.events.append(message)

    async def terminate(self, reason: Any) -> None:
        self.events.append(("terminate", reason))


class Trapper(Counter):
    """A Counter that traps exits."""

    async def init(self, start: int = 0, events: list[Any] | None = None) -> None:
        await super().init(start, events)
        self.proc.trap_exits = True


class FailingInit(GenServer):
    async def init(self, *args: Any) -> None:
        raise RuntimeError(f"cannot start with {args!r}")


class Singleton(GenServer):
    """The seed's ClusterSingleton: one registered server that hands out unique ids."""

    async def init(self) -> None:
        self.next_id = 0
        self.holders: dict[int, Pid] = {}

    async def handle_call(self, request: Any, from_: From) -> Any:
        assert request == "next_id"
        self.next_id += 1
        self.holders[self.next_id] = from_.pid
        return (self.next_id, self.node.name)


# -- basics ------------------------------------------------------------------------------------


@async_test
async def test_call_cast_and_info_locally_and_across_nodes() -> None:
    async with cluster(2) as (a, b):
        pid = await Counter.start(b, 10, name="counter")
        assert b.whereis("counter") == pid
        ways: list[tuple[Any, Node]] = [(pid, b), ("counter", b), (("counter", b.name), b),
                                        (pid, a), (("counter", b.name), a)]
        for server, node in ways:
            before = await call(node, server, "get")
            assert await call(node, server, ("add", 1)) == before + 1
        cast(a, ("counter", b.name), 5)
        cast(b, "counter", 5)
        a.send(pid, ("inc", 100))
        # 10 + 5 adds, then two casts and the info: messages from one node arrive in
        # order, so a's cast and info precede a's call; b's cast was delivered at once.
        assert await call(a, pid, "get") == 15 + 5 + 5 + 100


@async_test
async def test_call_from_inside_a_process_uses_its_mailbox() -> None:
    async with cluster(2) as (a, b):
        pid = await Counter.start(b)
        results: list[Any] = []

        async def client(proc: Process) -> None:
            proc.send(proc.self, "unrelated")  # must stay in the mailbox, untouched
            results.append(await call(proc, pid, "whoami"))
            results.append(await proc.receive(timeout=1))
            with pytest.raises(fabric.LocalProtocolError):
                await call(proc, proc.self, "get")  # calling yourself would deadlock

        client_pid = a.spawn(client)
        watch = a.new_mailbox()
        ref = watch.monitor(client_pid)
        assert (await watch.receive(timeout=5)) == Down(ref, client_pid, "normal")
        assert results == [(pid, client_pid), "unrelated"]
        # The call's monitor is removed on the server's node too.
        await wait_until(lambda: not b.processes.get(pid).monitored_by, what="demonitor")


@async_test
async def test_a_remote_call_is_one_message_each_way_and_leaves_no_monitor_behind() -> None:
    # A remote call travels as one K_CALL message (monitor + request), and a server that
    # answers from its loop releases the monitor itself: no "mon" or "demon" control
    # message, and no monitor state left on either node, whichever way the call ends.
    async with cluster(2) as (a, b):
        pid = await Counter.start(b, name="counter")
        sent = a.channels.outbound(b.name)
        received = b.channels.outbound(a.name)

        def monitors_left() -> list[Any]:
            return [b.processes.get(pid).monitored_by, b.signals.watched_by(a.name),
                    a.signals.monitors_held_on(b.name)]

        before = (sent.sent_messages, received.sent_messages)
        for server in (pid, ("counter", b.name)):
            assert await call(a, server, ("add", 1)) in (1, 2)
        assert (sent.sent_messages - before[0], received.sent_messages - before[1]) == (2, 2)
        assert not any(monitors_left())
        # A reply sent later with reply() does not release it: the caller's demonitor does.
        assert await call(a, pid, ("later", 0.01, "deferred")) == "deferred"
        await wait_until(lambda: not any(monitors_left()), what="demonitor after reply()")
        # A timed-out call is demonitored too, and its late reply is dropped.
        with pytest.raises(fabric.CallTimeout):
            await call(a, pid, ("sleep", 0.3), timeout=0.05)
        await wait_until(lambda: not any(monitors_left()), what="demonitor after a timeout")
        # A call to a name nobody holds fails at once, and one to a crashing server
        # reports the crash; neither leaves a monitor.
        with pytest.raises(fabric.ProcessDeadError) as dead:
            await call(a, ("nobody", b.name), "get")
        assert dead.value.reason == "noproc"
        with pytest.raises(fabric.RemoteError):
            await call(a, pid, "crash")
        await wait_until(lambda: b.processes.get(pid) is None, what="server crashed")
        assert not b.signals.watched_by(a.name) and not a.signals.monitors_held_on(b.name)


@async_test
async def test_compact_call_and_reply_messages_are_checked_on_arrival() -> None:
    # K_CALL and K_REPLY carry the caller's pid and ref as integers: the receiver rebuilds
    # them from its peer's name (a call) or its own (a reply), and checks the run.
    async with cluster(2) as (a, b):
        pid = await Counter.start(b, name="counter")
        box = a.new_mailbox()
        now = a.loop.time()
        a.reactor.dispatch(b.name, [[K_REPLY, a.creation, box.self.id, 99, True, "v", True]], now)
        assert list(box.mailbox) == [("$reply", Ref(a.name, 99, a.creation), True, "v", True)]
        # A reply to a pid of another run (from before a restart) reaches nothing.
        undeliverable = a.metrics["undeliverable"]
        stale = [K_REPLY, a.creation + 1, box.self.id, 99, True, "v", True]
        a.reactor.dispatch(b.name, [stale], now)
        assert a.metrics["undeliverable"] == undeliverable + 1 and len(box.mailbox) == 1
        # Malformed: counted as bad input, and nothing delivered, monitored or answered.
        malformed = [
            [K_CALL, "counter", a.creation, "me", 1, "get"],  # caller not an integer
            [K_CALL, "counter", a.creation + 1, box.self.id, 1, "get"],  # another run
            [K_CALL, "counter", a.creation, -1, 1, "get"],  # ids are u64
            [K_CALL, "counter", a.creation, box.self.id, 1 << 64, "get"],
            [K_CALL, "counter", a.creation, box.self.id, 1],  # too short
            [K_REPLY, a.creation, float(box.self.id), 9, True, "v", True],
            [K_REPLY, a.creation, box.self.id, 9, 1, "v", True],  # ok is a bool
            [K_REPLY, a.creation, box.self.id, 1 << 64, True, "v", True],
        ]
        bad = b.metrics.get("bad_input", 0)
        b.reactor.dispatch(a.name, malformed, now)
        assert b.metrics["bad_input"] == bad + len(malformed)
        server = b.processes.get(pid)
        assert not server.monitored_by and not server.mailbox
        assert len(box.mailbox) == 1 and not b.channels.outbound(a.name).queue
        # A well-formed one installs the caller's monitor and delivers the request.
        b.reactor.dispatch(a.name, [[K_CALL, "counter", a.creation, box.self.id, 7, "get"]], now)
        ref = Ref(a.name, 7, a.creation)
        assert server.monitored_by == {ref: box.self}
        await wait_until(lambda: len(box.mailbox) == 2, what="the reply")
        assert box.mailbox[1] == ("$reply", ref, True, 0, True)
        # A real call's reply travels as K_REPLY.
        replies: list[Any] = []
        dispatch = a.reactor.dispatch

        def spy(peer: str, batch: list[Any], now: float) -> None:
            replies.extend(m for m in batch if m[0] in (K_CALL, K_REPLY))
            dispatch(peer, batch, now)

        a.reactor.dispatch = spy  # type: ignore[method-assign]
        assert await call(a, pid, "get") == 0
        assert [m[0] for m in replies] == [K_REPLY]


class Flooder(GenServer):
    """Fills the caller's node's buffer, then replies; asked to, is killed first."""

    async def handle_call(self, request: Any, from_: From) -> Any:
        sink, count, die = request
        for i in range(count):  # one loop turn: all but the first wait in the queue
            self.node.send(sink, i)
        if die:
            self.node.exit(self.pid, "kill")  # takes effect at the next await
        return "done"


@async_test
async def test_a_reply_that_waits_for_room_keeps_the_monitor_until_it_is_queued() -> None:
    # The reply finds the caller's buffer full and waits for room. Meanwhile the server's
    # node keeps the call's monitor, so a server killed while waiting still sends Down
    # (the caller would otherwise wait for its timeout), and one that gets to send its
    # reply marks it not released, so the caller's demonitor cleans up both sides.
    limit = 50
    async with cluster(2, outbound_limit=limit) as (a, b):
        sink = a.new_mailbox()
        pid = await Flooder.start(b)
        out = b.channels.outbound(a.name)
        # The first send leaves at once and `limit` more fill the queue: the reply waits.
        assert await call(a, pid, (sink.self, limit + 1, False), timeout=5) == "done"
        refused = out.refused
        assert refused > 0
        await wait_until(lambda: not b.processes.get(pid).monitored_by
                         and not b.signals.watched_by(a.name)
                         and not a.signals.monitors_held_on(b.name), what="monitors gone")
        with pytest.raises(fabric.ProcessDeadError) as dead:
            await call(a, pid, (sink.self, limit + 1, True), timeout=5)
        assert dead.value.reason == "killed" and out.refused > refused
        await wait_until(lambda: len(sink.mailbox) == 2 * (limit + 1), what="the flood")


@async_test
async def test_start_waits_for_init_and_raises_its_exception() -> None:
    async with cluster(1) as (a,):
        events: list[Any] = []
        pid = await Counter.start(a, 7, events, name="c")
        assert await call(a, "c", "get") == 7  # init had run
        with pytest.raises(RuntimeError, match="cannot start with"):
            await FailingInit.start(a, 1, 2, name="failing")
        assert a.whereis("failing") is None
        with pytest.raises(fabric.NameConflictError):
            await Counter.start(a, name="c")
        assert a.whereis("c") == pid

        class SlowInit(GenServer):
            async def init(self) -> None:
                await asyncio.sleep(10)

        with pytest.raises(fabric.CallTimeout):
            await SlowInit.start(a, name="slow", timeout=0.05)
        await wait_until(lambda: a.whereis("slow") is None, what="slow server killed")
        # A linked starter does not also get killed by the failed init.
        survived: list[bool] = []

        async def starter(proc: Process) -> None:
            try:
                await FailingInit.start(proc.node, link_to=proc)
            except RuntimeError:
                survived.append(True)

        sp = a.spawn(starter)
        await wait_until(lambda: a.processes.get(sp) is None, what="starter done")
        assert survived == [True]


@async_test
async def test_stop_runs_terminate_and_waits_for_the_exit() -> None:
    async with cluster(2) as (a, b):
        events: list[Any] = []
        pid = await Counter.start(b, 0, events, name="c")
        await gs.stop(a, ("c", b.name), "bye")
        assert events == [("terminate", "bye")]
        assert b.whereis("c") is None and b.processes.get(pid) is None
        with pytest.raises(fabric.ProcessDeadError):
            await gs.stop(a, pid)


@async_test
async def test_trap_exits_in_a_genserver_goes_to_handle_info() -> None:
    async with cluster(1) as (a,):
        events: list[Any] = []

        pid = await Trapper.start(a, 0, events)

        async def doomed(proc: Process) -> None:
            proc.link(pid)
            raise ValueError("doomed")

        d = a.spawn(doomed)
        await wait_until(lambda: len(events) == 1, what="Exit delivered")
        assert events == [Exit(d, ("error", "ValueError", "doomed"))]
        assert await call(a, pid, "get") == 0  # alive


@async_test
async def test_a_trapping_genserver_ends_with_its_parents_reason() -> None:
    # OTP: a gen_server that traps exits terminates with its parent's reason when the
    # parent (the process it was started linked to) exits; another linked process's exit
    # is still a message for handle_info.
    async with cluster(1) as (a,):
        events: list[Any] = []

        started: list[fabric.Pid] = []

        async def parent(proc: Process) -> None:
            started.append(await Trapper.start(a, 0, events, link_to=proc))
            await proc.receive(match=lambda m: m == "go")
            proc.exit("shutdown")

        p = a.spawn(parent)
        await wait_until(lambda: len(started) == 1, what="server started")
        server = started[0]

        async def neighbour(proc: Process) -> None:
            proc.link(server)
            raise ValueError("not the parent")

        n = a.spawn(neighbour)
        await wait_until(lambda: len(events) == 1, what="the neighbour's Exit handled")
        assert events == [Exit(n, ("error", "ValueError", "not the parent"))]
        a.send(p, "go")
        await wait_until(lambda: not a.is_alive(server), what="the server ended")
        assert events[1:] == [("terminate", "shutdown")]


# -- errors --------------------------------------------------------------------------------------


@async_test
async def test_call_timeout() -> None:
    async with cluster(2) as (a, b):
        pid = await Counter.start(b)
        with pytest.raises(fabric.CallTimeout):
            await call(a, pid, ("sleep", 1.0), timeout=0.05)
        with pytest.raises(TimeoutError):  # CallTimeout is a TimeoutError
            await call(a, pid, ("later", 5.0, "x"), timeout=0.05)


@async_test
async def test_process_dead_error_for_missing_or_exiting_servers() -> None:
    async with cluster(2) as (a, b):
        with pytest.raises(fabric.ProcessDeadError) as info:
            await call(a, "nobody", "get")
        assert info.value.reason == "noproc"
        with pytest.raises(fabric.ProcessDeadError) as info:
            await call(a, ("nobody", b.name), "get")
        assert info.value.reason == "noproc"
        with pytest.raises(fabric.ProcessDeadError) as info:
            await call(a, Pid(b.name, 10**9, b.creation), "get")
        assert info.value.reason == "noproc"
        pid = await Counter.start(b, name="c")
        with pytest.raises(fabric.ProcessDeadError) as info:
            await call(a, ("c", b.name), "exit")  # the server exits without replying
        assert info.value.reason == "leaving"
        with pytest.raises(fabric.ProcessDeadError) as info:
            await call(a, pid, "get")  # and is gone for good
        assert info.value.reason == "noproc"


@async_test
async def test_remote_error_carries_type_message_traceback_and_crashes_server() -> None:
    async with cluster(2) as (a, b):
        pid = await Counter.start(b)
        watch = a.new_mailbox()
        ref = watch.monitor(pid)
        with pytest.raises(fabric.RemoteError) as info:
            await call(a, pid, "crash")
        err = info.value
        assert err.type_name == "KeyError" and err.message == "'no such key'"
        assert "handle_call" in err.remote_traceback and "KeyError" in err.remote_traceback
        assert "KeyError: 'no such key'" in str(err)
        # Like Erlang, the server crashed with the exception as its reason.
        assert await watch.receive(timeout=2) == Down(
            ref, pid, ("error", "KeyError", "'no such key'"))


@async_test
async def test_node_down_error_when_the_node_goes_down_or_is_unreachable() -> None:
    async with cluster(2, reconnect_window=0) as (a, b):
        pid = await Counter.start(b)

        async def cut() -> None:
            await wait_until(lambda: len(b.processes.get(pid).monitored_by) == 1, what="call")
            a.disconnect(b.name)

        task = asyncio.get_running_loop().create_task(cut())
        with pytest.raises(fabric.NodeDownError) as info:
            await call(a, pid, ("sleep", 2.0), timeout=5)
        assert info.value.node == b.name and info.value.reason == "noconnection"
        await task
        fast = Node(new_name("c"), cookie=COOKIE, handshake_timeout=0.3)
        await fast.start()
        try:
            with pytest.raises(fabric.NodeDownError):
                await call(fast, ("svc", f"ghost@127.0.0.1:{free_port()}"), "get", timeout=3)
        finally:
            await fast.stop()


@async_test
async def test_unencodable_request_or_reply_is_reported_not_lost() -> None:
    async with cluster(2) as (a, b):
        pid = await Counter.start(b)
        with pytest.raises(fabric.LocalProtocolError):
            await call(a, pid, {"a set": {1, 2}})
        # Not the first message of its loop turn: the request is checked on its own.
        a.send(pid, ("inc", 1))
        with pytest.raises(fabric.LocalProtocolError):
            await call(a, pid, {"a set": {1, 2}})
        with pytest.raises(fabric.LocalProtocolError):
            cast(a, pid, {1, 2})
        with pytest.raises(fabric.RemoteError) as info:
            await call(a, pid, "unencodable")
        assert info.value.type_name == "LocalProtocolError"
        assert await call(a, pid, "get") == 1  # the server and the channel are fine
        assert await call(b, pid, "unencodable") == {1, 2}  # locally nothing is encoded
        assert not a.signals.monitors_held_on(b.name)  # a refused call leaves no monitor


# -- replies ---------------------------------------------------------------------------------------


@async_test
async def test_reply_later_with_reply_from() -> None:
    async with cluster(2) as (a, b):
        pid = await Counter.start(b)
        assert await call(a, pid, ("later", 0.01, "deferred")) == "deferred"
        # Calls are served while a deferred reply is pending.
        slow = asyncio.get_running_loop().create_task(call(a, pid, ("later", 0.2, "slow")))
        assert await call(a, pid, ("add", 2)) == 2
        assert await slow == "slow"


@async_test
async def test_reply_from_another_process_on_another_node() -> None:
    async with cluster(3) as (a, b, c):

        class Delegator(GenServer):
            async def handle_call(self, request: Any, from_: From) -> Any:
                self.node.send(("helper", c.name), (request, from_))
                return NOREPLY

        async def helper(proc: Process) -> None:
            while True:
                request, from_ = await proc.receive()
                reply(from_, ("helped", request), node=proc)

        c.spawn(helper, name="helper")
        pid = await Delegator.start(b)
        assert await call(a, pid, "x") == ("helped", "x")
        with pytest.raises(fabric.LocalProtocolError):
            reply(From(pid, a.make_ref()), "outside any server")


@pytest.mark.parametrize("inside_process", [False, True])
@async_test
async def test_a_late_reply_never_reaches_a_later_call(inside_process: bool) -> None:
    async with cluster(2) as (a, b):
        pid = await Counter.start(b)
        results: list[Any] = []

        async def client(proc: Process | Node) -> None:
            with pytest.raises(fabric.CallTimeout):
                await call(proc, pid, ("later", 0.15, "late"), timeout=0.05)
            # The late reply arrives while this call waits; it must not be taken.
            results.append(await call(proc, pid, ("later", 0.3, "mine"), timeout=2))
            results.append(await call(proc, pid, "get"))

        if inside_process:
            box = a.new_mailbox()

            async def run(proc: Process) -> None:
                await client(proc)
                # The stray late reply sits in this mailbox; no call ever matched it.
                results.append(await proc.receive(timeout=1))
                proc.send(box.self, "done")

            a.spawn(run)
            assert await box.receive(timeout=5) == "done"
            stray = results.pop()
            assert stray[0] == "$reply" and stray[3] == "late"
        else:
            await client(a)
            await wait_until(lambda: a.metrics["undeliverable"] >= 1, what="late reply dropped")
        assert results == ["mine", 0]


# -- the seed's examples ---------------------------------------------------------------------------


@async_test
async def test_cluster_singleton_called_from_other_nodes() -> None:
    async with cluster(3) as (a, b, c):
        await Singleton.start(b, name="singleton")
        where = ("singleton", b.name)
        ids = await asyncio.gather(*(call(n, where, "next_id") for n in (a, c, a, c, b)))
        assert sorted(i for i, _ in ids) == [1, 2, 3, 4, 5]
        assert {node for _, node in ids} == {b.name}

        async def client(proc: Process) -> None:
            got = await call(proc, where, "next_id")
            proc.send(("results", a.name), got)

        box = a.new_mailbox()
        a.register("results", box.self)
        c.spawn(client)
        assert await box.receive(timeout=2) == (6, b.name)
