"""node.pg, the registry and routers over real sockets (nodes in one process, 127.0.0.1)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import fabric
from fabric.errors import LocalProtocolError
from fabric.process import Process
from fabric.registry import Registry
from fabric.testing import free_port
from fabric.workers import Router

pytestmark = pytest.mark.io  # in-process nodes on 127.0.0.1

# No test here needs heartbeat detection (stops say goodbye): a generous timeout keeps a
# loaded machine's stalled loop from ending sessions in the middle of a test.
FAST = dict(heartbeat_interval=0.1, heartbeat_timeout=3.0)
_STARTED: list[fabric.Node] = []  # every node cluster() started, stopped by run()


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


async def cluster(n: int) -> list[fabric.Node]:
    nodes = [fabric.Node(f"p{i}@127.0.0.1:{free_port()}", cookie="pg", **FAST) for i in range(n)]
    for node in nodes:
        await node.start()
        _STARTED.append(node)
    for node in nodes[1:]:
        assert await node.connect(nodes[0].name)
    await until(lambda: all(len(x.nodes()) == n - 1 for x in nodes))
    return nodes


async def echo(proc: Process, tag: str) -> None:
    while True:
        msg = await proc.receive()
        if msg == "stop":
            return
        proc.send(msg[1], (tag, msg[0]))


def run(test: Callable[[], Awaitable[None]]) -> None:
    """Run a test's coroutine, then stop every node it started, even when it failed (a
    node left running would be closed by the garbage collector at some later test)."""
    async def main() -> None:
        try:
            await asyncio.wait_for(test(), 30)
        finally:
            while _STARTED:
                node = _STARTED.pop()
                if not node.stopped:
                    await node.stop()

    asyncio.run(main())


async def _members_everywhere(nodes: list[fabric.Node], group: Any, count: int) -> None:
    await until(lambda: all(len(n.pg.get_members(group)) == count for n in nodes))


def test_broadcast_reaches_every_member_on_three_nodes() -> None:
    async def main() -> None:
        nodes = await cluster(3)
        for i, node in enumerate(nodes):
            for j in range(10):
                node.pg.join("room", node.spawn(echo, f"{i}.{j}"))
        await _members_everywhere(nodes, "room", 30)
        box = nodes[0].new_mailbox()
        # best effort: subscriptions propagate asynchronously, so retry a probe until
        # every member answered once, then count one clean broadcast
        expected = {f"{i}.{j}" for i in range(3) for j in range(10)}
        seen: set[str] = set()
        for attempt in range(100):
            nodes[0].pg.broadcast("room", (f"probe{attempt}", box.self))
            while (m := await box.receive(timeout=0.05, default=None)) is not None:
                seen.add(m[0])
            if seen == expected:
                break
        assert seen == expected
        nodes[0].pg.broadcast("room", ("go", box.self))
        got = [await box.receive(match=lambda m: m[1] == "go", timeout=5) for _ in range(30)]
        assert sorted(g[0] for g in got) == sorted(expected)
        nodes[1].pg.broadcast_reliable("room", ("rel", box.self))
        got = [await box.receive(match=lambda m: m[1] == "rel", timeout=5) for _ in range(30)]
        assert sorted(g[0] for g in got) == sorted(expected)
        for node in nodes:
            await node.stop()

    run(main)


def test_members_of_a_stopped_node_vanish_everywhere() -> None:
    async def main() -> None:
        nodes = await cluster(3)
        for node in nodes:
            node.pg.join("g", [node.spawn(echo, "x") for _ in range(3)])
        await _members_everywhere(nodes, "g", 9)
        await nodes[2].stop()
        await _members_everywhere(nodes[:2], "g", 6)
        assert all(p.node != nodes[2].name for p in nodes[0].pg.get_members("g"))
        for node in nodes[:2]:
            await node.stop()

    run(main)


def test_members_leave_on_exit_and_leave() -> None:
    async def main() -> None:
        nodes = await cluster(2)
        a, b = nodes
        p1, p2 = a.spawn(echo, "1"), a.spawn(echo, "2")
        a.pg.join("g", [p1, p2])
        await _members_everywhere(nodes, "g", 2)
        a.send(p1, "stop")
        await _members_everywhere(nodes, "g", 1)
        assert a.pg.leave("g", p2) is True
        assert a.pg.leave("g", p2) is False
        await _members_everywhere(nodes, "g", 0)
        assert b.pg.which_groups() == []
        for node in nodes:
            await node.stop()

    run(main)


def test_subscriptions_follow_local_membership() -> None:
    async def main() -> None:
        nodes = await cluster(2)
        a, b = nodes
        box = b.new_mailbox()
        a.pg.join("t", a.spawn(echo, "a"))
        await _members_everywhere(nodes, "t", 1)
        # b has no local member: its SUB is not subscribed, so no group traffic reaches
        # b's node at all, while a's member gets every broadcast
        for _ in range(20):
            a.pg.broadcast("t", ("x", box.self))
        for _ in range(20):
            assert await box.receive(timeout=5) == ("a", "x")
        assert b.metrics.get("topic_in", 0) == 0
        # once b has a member, b subscribes and receives the group's publishes
        member_b = b.spawn(echo, "b")
        b.pg.join("t", member_b)
        await _members_everywhere(nodes, "t", 2)
        for _ in range(200):
            a.pg.broadcast("t", ("y", box.self))
            if b.metrics.get("topic_in", 0) > 0:
                break
            await asyncio.sleep(0.01)
        assert b.metrics.get("topic_in", 0) > 0
        # after its last local member leaves, b unsubscribes again
        assert b.pg.leave("t", member_b)
        await _members_everywhere(nodes, "t", 1)
        # the unsubscription travels to a's PUB asynchronously: probe until a round trip
        # to a's member passes with no publish reaching b (bounded)
        for _ in range(100):
            before = b.metrics["topic_in"]
            a.pg.broadcast("t", ("probe", box.self))
            assert await box.receive(match=lambda m: m[1] == "probe", timeout=5) == (
                "a", "probe")
            if b.metrics["topic_in"] == before:
                break
        before = b.metrics["topic_in"]
        for _ in range(20):
            a.pg.broadcast("t", ("z", box.self))
        await until(lambda: sum(1 for m in box.mailbox if m == ("a", "z")) == 20)
        assert b.metrics["topic_in"] == before
        for node in nodes:
            await node.stop()

    run(main)


def test_join_checks_pids() -> None:
    async def main() -> None:
        a, b = await cluster(2)
        remote = b.spawn(echo, "r")
        with pytest.raises(LocalProtocolError):
            a.pg.join("g", remote)
        dead = a.new_mailbox()
        a.close_mailbox(dead)
        with pytest.raises(LocalProtocolError):
            a.pg.join("g", dead.self)
        await a.stop()
        await b.stop()

    run(main)


def test_monitor_reports_joins_and_leaves() -> None:
    async def main() -> None:
        a, b = await cluster(2)
        watcher = a.new_mailbox()
        token, members = a.pg.monitor("m", watcher.self)
        assert members == []
        p = b.spawn(echo, "m")
        b.pg.join("m", p)
        msg = await watcher.receive(timeout=5)
        assert msg == fabric.PgJoin(token, "default", "m", [p])
        b.send(p, "stop")
        msg = await watcher.receive(timeout=5)
        assert msg == fabric.PgLeave(token, "default", "m", [p])
        await a.stop()
        await b.stop()

    run(main)


def test_registry_and_router() -> None:
    async def main() -> None:
        a, b = await cluster(2)
        reg_a, reg_b = Registry(a), Registry(b)
        pa, pb1, pb2 = a.spawn(echo, "a"), b.spawn(echo, "b1"), b.spawn(echo, "b2")
        reg_a.register("svc", pa)
        reg_b.register("svc", pb1)
        reg_b.register("svc", pb2)
        await until(lambda: len(reg_a.lookup("svc")) == 3 and len(reg_b.lookup("svc")) == 3)
        assert reg_a.whereis("svc") == pa  # local first
        assert reg_b.lookup_local("svc") == sorted([pb1, pb2])
        box = a.new_mailbox()
        reg_a.broadcast("svc", ("hi", box.self))
        got = sorted([(await box.receive(timeout=5))[0] for _ in range(3)])
        assert got == ["a", "b1", "b2"]
        router = Router(a, "svc", strategy="hash",
                        scope="fabric.registry")
        first = router.pick(key="user-42")
        assert all(router.pick(key="user-42") == first for _ in range(10))
        rr = Router(a, "svc", strategy="round_robin", scope="fabric.registry")
        assert len({rr.pick() for _ in range(3)}) == 3
        assert reg_b.unregister("svc", pb2) is True
        await until(lambda: len(reg_a.lookup("svc")) == 2)
        await a.stop()
        await b.stop()

    run(main)
