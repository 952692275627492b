"""A graceful stop drains: new work from other nodes is refused, names and groups go
first, calls in flight are answered, drain hooks run, then the goodbye."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
from _exported import COOKIE, async_test, cluster, start_slow_worker, wait_until

import fabric
from fabric import Node, NodeDrainingError
from fabric.testing import NodeProcess, free_port
from fabric.testing.cluster import DEFAULT_COOKIE

pytestmark = pytest.mark.io


@async_test
async def test_calls_in_flight_at_stop_are_answered_and_new_ones_refused() -> None:
    async with cluster(2, stop_grace=10.0) as (server, client):
        await start_slow_worker(server)
        await wait_until(lambda: client.global_.whereis_name("worker") is not None
                         and client.pg.get_members("workers") != [], what="worker seen")
        events: list[str] = []
        watcher = client.new_mailbox()

        async def hook() -> None:
            # Runs once the calls in flight were answered, before the goodbye.
            events.append(f"hook:{server.signals.calls_in_flight()}:{client.nodes()}")

        server.on_drain(hook)
        calls = [asyncio.ensure_future(fabric.call(
            client, ("worker", server.name), ("work", i, watcher.self, 0.3), timeout=10))
            for i in range(5)]
        assert await watcher.receive(timeout=5) == ("started", 0)
        stopping = asyncio.ensure_future(server.stop())
        await wait_until(lambda: server.draining, what="draining")
        with pytest.raises(NodeDrainingError) as refused:
            await fabric.call(client, ("worker", server.name), ("work", 9, watcher.self, 0),
                              timeout=5)
        assert refused.value.node == server.name and refused.value.reason == "draining"
        with pytest.raises(NodeDrainingError):
            await client.spawn_on(server.name, "_exported:echo")
        # Peers stop routing here while the calls are still being served.
        await wait_until(lambda: client.global_.whereis_name("worker") is None
                         and client.pg.get_members("workers") == [], what="deregistered")
        assert not all(c.done() for c in calls)
        assert await asyncio.gather(*calls) == [("done", i) for i in range(5)]
        await stopping
        assert events == [f"hook:0:{[server.name]}"]


class LateReplier(fabric.GenServer):
    """Answers each call later, from a task (NOREPLY, then reply())."""

    async def handle_call(self, request: Any, from_: fabric.From) -> Any:
        async def later() -> None:
            await asyncio.sleep(request)
            fabric.reply(from_, ("late", request))

        asyncio.ensure_future(later())
        return fabric.NOREPLY


@async_test
async def test_a_call_answered_later_with_reply_is_waited_for() -> None:
    async with cluster(2) as (server, client):
        pid = await LateReplier.start(server, name="late")
        call = asyncio.ensure_future(fabric.call(client, pid, 0.3, timeout=10))
        await wait_until(lambda: server.signals.calls_in_flight() == 1, what="in flight")
        await server.stop()
        assert call.done() and call.result() == ("late", 0.3)


@async_test
async def test_a_hook_that_fails_or_hangs_does_not_keep_the_node_from_stopping() -> None:
    async with Node(f"h@127.0.0.1:{free_port()}", cookie=COOKIE, stop_grace=0.5) as node:
        ran: list[str] = []

        async def broken() -> None:
            raise RuntimeError("hook bug")

        async def hangs() -> None:
            ran.append("hangs")
            try:
                await asyncio.sleep(60)  # never ends by itself within the test's deadline
            except asyncio.CancelledError:
                ran.append("cancelled at the grace's end")
                raise

        async def removed() -> None:
            ran.append("removed")

        node.on_drain(broken)
        node.on_drain(hangs)
        node.on_drain(removed)()  # registered, then removed at once
        await node.stop()
        # The hanging hook was cut off by stop_grace, not waited out; the removed one
        # never ran.
        assert ran == ["hangs", "cancelled at the grace's end"] and node.stopped


@async_test
async def test_a_second_stop_waits_for_the_first() -> None:
    node = Node(f"s@127.0.0.1:{free_port()}", cookie=COOKIE)
    await node.start()
    gate = asyncio.Event()

    async def slow_hook() -> None:
        await gate.wait()

    node.on_drain(slow_hook)
    ended: list[str] = []
    first = asyncio.ensure_future(node.stop())
    first.add_done_callback(lambda _: ended.append("first"))
    await wait_until(lambda: node.draining, what="draining")
    second = asyncio.ensure_future(node.stop())
    second.add_done_callback(lambda _: ended.append("second"))
    for _ in range(50):  # many loop turns: a stop that did not wait would end in these
        await asyncio.sleep(0)
    assert ended == [] and not first.done()
    gate.set()
    await asyncio.gather(first, second)
    assert ended == ["first", "second"] and node.stopped


async def _candidate(proc: fabric.Process, group: str,
                     elected: list[tuple[float, fabric.Pid, int]]) -> None:
    """Stands for ``group`` and notes each LeaderElected with the loop's time."""
    proc.node.global_.stand(group, proc.self)
    loop = asyncio.get_running_loop()
    while (msg := await proc.receive(timeout=30)) != "stop":
        if isinstance(msg, fabric.LeaderElected):
            elected.append((loop.time(), msg.leader, msg.term))


@async_test
async def test_a_draining_leader_resigns_so_a_successor_is_elected_before_its_goodbye() -> None:
    async with cluster(3, stop_grace=10.0) as nodes:
        elected: dict[str, list[tuple[float, fabric.Pid, int]]] = {n.name: [] for n in nodes}
        candidates = {n.name: n.spawn(_candidate, "sched", elected[n.name]) for n in nodes}
        await wait_until(lambda: None not in (views := [n.global_.leader("sched") for n in nodes])
                         and len(set(views)) == 1, what="one leader")
        leader = nodes[0].global_.leader("sched")
        assert leader is not None
        old = next(n for n in nodes if n.name == leader[0].node)
        rest = [n for n in nodes if n is not old]

        def led_elsewhere() -> bool:
            views = [n.global_.leader("sched") for n in rest]
            return (None not in views and len(set(views)) == 1
                    and views[0] is not None and views[0][0].node != old.name)

        during_drain: list[object] = []

        async def hook() -> None:
            # The last step before the goodbye: the others must already have elected a
            # successor (before, the old leader kept the name until its node went).
            await wait_until(led_elsewhere, timeout=5, what="a successor during the drain")
            during_drain.append(sorted(old.nodes()))
            old.global_.stand("sched", candidates[old.name])  # ignored: the node drains
            during_drain.append(old.global_.leaders.candidates("sched"))

        old.on_drain(hook)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await old.stop()
        assert during_drain == [sorted(n.name for n in rest), []]  # connected, resigned
        new = rest[0].global_.leader("sched")
        assert new is not None and new[1] > leader[1] and new[0].node != old.name
        # Each survivor's candidates were told of the successor after the stop began.
        for n in rest:
            assert any(t >= began and pid == new[0] for t, pid, _ in elected[n.name])


@pytest.mark.procs
@pytest.mark.parametrize("start", [["--run", "_exported:start_slow_worker"],
                                   ["--app", "_exported:slow_app"]], ids=["run", "app"])
def test_sigterm_with_calls_in_flight_fails_none(arun: Callable[..., Any],
                                                 start: list[str]) -> None:
    # With --app the worker is a child of the application's tree, which the drain stops
    # (in order) only after the calls from other nodes were answered.
    with NodeProcess("worker", extra_args=start) as proc:
        proc.wait_ready()

        async def body() -> None:
            async with Node(f"client@127.0.0.1:{free_port()}",
                            cookie=DEFAULT_COOKIE) as client:
                assert await client.connect(proc.name)
                watcher = client.new_mailbox()
                calls = [asyncio.ensure_future(fabric.call(
                    client, ("worker", proc.name), ("work", i, watcher.self, 0.2),
                    timeout=15)) for i in range(8)]
                assert await watcher.receive(timeout=10) == ("started", 0)
                # The drain keeps its promise for calls that reached the node before the
                # SIGTERM (a call that races it is refused: NodeDrainingError, nothing
                # done). A ping rides the same ordered stream behind the calls: its pong
                # says the worker's node has taken all eight in.
                assert await client.ping(proc.name) == "pong"
                os.kill(proc.pid, signal.SIGTERM)  # a graceful stop, while they run
                assert await asyncio.gather(*calls) == [("done", i) for i in range(8)]

        arun(body())
        assert proc.wait_exit(20) == 0
