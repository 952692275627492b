"""node.global_ over real sockets: names, conflicts, locks, leaders (nodes in one process)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import fabric
from fabric.errors import LocalProtocolError, ProcessDeadError
from fabric.genserver import GenServer, call
from fabric.process import Process
from fabric.testing.cluster import LocalCluster
from fabric.types import GlobalName, Pid

pytestmark = pytest.mark.io  # in-process nodes on 127.0.0.1

FAST = dict(heartbeat_interval=0.05, heartbeat_timeout=0.3)


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


async def idle(proc: Process) -> None:
    while await proc.receive() != "stop":
        pass


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


def test_concurrent_registration_has_exactly_one_winner() -> None:
    async def main() -> None:
        async with LocalCluster(3, **FAST) as nodes:
            for round_ in range(10):
                pids = [n.spawn(idle) for n in nodes for _ in range(2)]
                owners = [n for n in nodes for _ in range(2)]
                answers = await asyncio.gather(*[
                    n.global_.register_name(f"name{round_}", p) for n, p in zip(owners, pids,
                                                                                  strict=True)])
                assert sorted(answers) == ["no"] * 5 + ["yes"]
                winner = pids[answers.index("yes")]
                assert [n.global_.whereis_name(f"name{round_}") for n in nodes] == [winner] * 3

    run(main)


def test_yes_at_commit_is_shown_here_and_before_any_later_message_on_peers() -> None:
    """register_name(wait_all=False): the answer may come before a peer applied the claim,
    but the claim travels ahead of anything the registering node sends afterwards."""

    async def main() -> None:
        async with LocalCluster(3, **FAST) as nodes:
            a = nodes[0]
            seen: list[tuple[str, Any, Any]] = []

            async def looker(proc: Process) -> None:
                name = await proc.receive()
                seen.append((proc.node.name, name, proc.node.global_.whereis_name(name)))

            lookers = [n.spawn(looker) for n in nodes[1:]]
            for round_ in range(20):
                pid = a.spawn(idle)
                name = f"early{round_}"
                assert await a.global_.register_name(name, pid, wait_all=False) == "yes"
                assert a.global_.whereis_name(name) == pid
                if round_ == 19:
                    for looker_pid in lookers:
                        a.send(looker_pid, name)
                    await until(lambda: len(seen) == 2)
                    assert sorted(seen) == sorted((n.name, name, pid) for n in nodes[1:])
            await until(lambda: all(n.global_.whereis_name("early0") is not None
                                    for n in nodes))

    run(main)


def test_name_vanishes_on_exit_and_on_nodedown() -> None:
    async def main() -> None:
        async with LocalCluster(3, **FAST) as nodes:
            a, b, c = nodes
            pa = a.spawn(idle)
            assert await a.global_.register_name("svc", pa) == "yes"
            await until(lambda: c.global_.whereis_name("svc") == pa)
            a.send(pa, "stop")
            await until(lambda: all(n.global_.whereis_name("svc") is None for n in nodes))
            pc = c.spawn(idle)
            assert await c.global_.register_name("svc", pc) == "yes"
            await until(lambda: a.global_.whereis_name("svc") == pc)
            await c.stop()
            await until(lambda: a.global_.whereis_name("svc") is None
                        and b.global_.whereis_name("svc") is None)
            pb = b.spawn(idle)
            assert await b.global_.register_name("svc", pb) == "yes"

    run(main)


def test_split_brain_heals_to_one_owner_and_the_loser_is_told() -> None:
    async def main() -> None:
        async with LocalCluster(2, **FAST) as (a, b):
            a.disconnect(b.name)
            await until(lambda: not a.nodes() and not b.nodes())
            box_a, box_b = a.new_mailbox(), b.new_mailbox()
            assert await a.global_.register_name("leader", box_a.self) == "yes"
            assert await b.global_.register_name("leader", box_b.self) == "yes"
            assert await a.connect(b.name)
            await until(lambda: a.global_.whereis_name("leader")
                        == b.global_.whereis_name("leader") is not None)
            winner = a.global_.whereis_name("leader")
            assert winner == box_a.self  # the earlier registration wins by default
            msg = await box_b.receive(timeout=5)
            assert msg == fabric.GlobalNameConflict("leader", box_a.self)
            assert box_b.alive  # told, not killed

    run(main)


def test_send_and_call_by_global_name() -> None:
    class Counter(GenServer):
        async def init(self) -> None:
            self.n = 0

        async def handle_call(self, request: Any, from_: Any) -> Any:
            self.n += request
            return self.n

    async def main() -> None:
        async with LocalCluster(2, **FAST) as (a, b):
            pid = await Counter.start(a)
            assert await a.global_.register_name("counter", pid) == "yes"
            await until(lambda: b.global_.whereis_name("counter") == pid)
            assert await call(b, GlobalName("counter"), 5) == 5
            assert await call(b, GlobalName("counter"), 2) == 7
            with pytest.raises(ProcessDeadError):
                b.global_.send("nobody", "x")
            with pytest.raises(LocalProtocolError):
                await b.global_.register_name("remote", pid)

    run(main)


def test_locks_exclude_each_other() -> None:
    async def main() -> None:
        async with LocalCluster(2, **FAST) as (a, b):
            pa, pb = a.spawn(idle), b.spawn(idle)
            assert await a.global_.set_lock("res", pa)
            assert await b.global_.set_lock("res", pb, retries=2) is False
            a.global_.del_lock("res", pa)
            assert await b.global_.set_lock("res", pb)
            inside: list[str] = []

            async def critical() -> str:
                inside.append("a")
                return "done"

            b.send(pb, "stop")  # its lock goes with it
            await until(lambda: not a.global_.core.lock_holders("res"))
            assert await a.global_.trans("res", pa, critical) == "done"
            assert inside == ["a"]

    run(main)


def test_leader_killed_new_leader_with_higher_term() -> None:
    async def candidate(proc: Process, group: str) -> None:
        proc.node.global_.stand(group, proc.self)
        while await proc.receive(timeout=30) != "stop":
            pass

    async def main() -> None:
        async with LocalCluster(3, **FAST) as nodes:
            for n in nodes:
                n.spawn(candidate, "sched")
            await until(lambda: all(n.global_.leader("sched") is not None for n in nodes)
                        and len({n.global_.leader("sched") for n in nodes}) == 1)
            leader_pid, term = nodes[0].global_.leader("sched")  # type: ignore[misc]
            owner = next(n for n in nodes if n.name == leader_pid.node)
            rest = [n for n in nodes if n is not owner]
            await owner.stop()
            await until(lambda: all(
                (lt := n.global_.leader("sched")) is not None and lt[0].node != owner.name
                for n in rest), timeout=10)
            new_pid, new_term = rest[0].global_.leader("sched")  # type: ignore[misc]
            assert new_term > term
            assert rest[1].global_.leader("sched") == (new_pid, new_term)

    run(main)


def test_unknown_resolver_method_is_refused() -> None:
    async def main() -> None:
        async with LocalCluster(1, **FAST) as (a,):
            with pytest.raises(LocalProtocolError):
                await a.global_.register_name("x", a.spawn(idle), method="nope")
            assert await a.global_.register_name("x", a.spawn(idle),
                                                  method="random_exit") == "yes"

    run(main)


def test_global_name_as_a_call_and_send_destination() -> None:
    class Echo(GenServer):
        async def handle_call(self, request: Any, from_: Any) -> Any:
            return ("echo", request)

    async def main() -> None:
        async with LocalCluster(2, **FAST) as (a, b):
            pid = await Echo.start(a)
            assert await a.global_.register_name("echo", pid) == "yes"
            await until(lambda: b.global_.whereis_name("echo") == pid)
            assert await call(b, GlobalName("echo"), 1) == ("echo", 1)
            b.send(GlobalName("nobody"), "lost")  # undeliverable, counted, no error
            assert b.metrics["undeliverable"] >= 1
            with pytest.raises(ProcessDeadError):
                await call(b, GlobalName("nobody"), 1, timeout=1)

    run(main)


def test_send_to_an_unreachable_attempt_is_not_held() -> None:
    async def main() -> None:
        async with LocalCluster(1, **FAST) as (a,):
            a.mesh.stopping = True  # every new attempt now fails at once ("stopping")
            before = a.metrics["undeliverable"]
            a.send(Pid("ghost@127.0.0.1:1", 1, 1), ("hello",))
            assert a.metrics["undeliverable"] == before + 1
            assert a.channels.waiting("ghost@127.0.0.1:1") == 0
            a.mesh.stopping = False

    run(main)
