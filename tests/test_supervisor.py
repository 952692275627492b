"""Supervisors on a real in-process node (fabric.supervisor): restarts with new pids and
names, each strategy, the intensity reaching a parent supervisor, nested trees, failed
starts, the requests, and an orderly stop in reverse order within each child's shutdown.
The decisions themselves are tested purely in tests/protocol/test_supervision.py."""

from __future__ import annotations

from typing import Any

import pytest
from _exported import async_test, cluster, wait_until

import fabric
from fabric import ChildSpec, Down, Exit, GenServer, Node, Pid, Process, Supervisor

pytestmark = pytest.mark.io  # in-process nodes on 127.0.0.1


async def worker(proc: Process) -> None:
    """Runs until told "crash" (it raises) or "quit" (it ends normally)."""
    while True:
        msg = await proc.receive()
        if msg == "crash":
            raise RuntimeError("told to crash")
        if msg == "quit":
            return


async def stubborn(proc: Process) -> None:
    """Traps exits and ignores them: only a kill ends it."""
    proc.trap_exits = True
    while True:
        await proc.receive()


async def polite(proc: Process) -> None:
    """Traps exits and ends with the reason of the first exit signal."""
    proc.trap_exits = True
    msg = await proc.receive(match=lambda m: type(m) is Exit)
    proc.exit(msg.reason)


class Counter(GenServer):
    async def init(self, start: int) -> None:
        self.n = start

    async def handle_call(self, request: Any, from_: fabric.From) -> Any:
        if request == "crash":
            raise RuntimeError("told to crash")
        self.n += 1
        return self.n


class FailsInInit(GenServer):
    async def init(self) -> None:
        raise ValueError("cannot start")


def specs(*ids: str, **options: Any) -> list[ChildSpec]:
    return [ChildSpec(i, worker, name=i, **options) for i in ids]


def names(node: Node, *ids: str) -> dict[str, Pid | None]:
    return {i: node.whereis(i) for i in ids}


async def restarted(node: Node, before: dict[str, Pid | None], ids: tuple[str, ...]) -> None:
    """Wait until each child in ``ids`` is registered again under a new pid."""
    await wait_until(lambda: all(node.whereis(i) not in (None, before[i]) for i in ids),
                     what=f"{ids} restarted")


@async_test
async def test_crashing_child_is_restarted_with_a_new_pid_and_its_name() -> None:
    async with cluster(1) as (a,):
        sup = await Supervisor.start(a, specs("w1", "w2"), name="sup")
        assert a.whereis("sup") == sup
        before = names(a, "w1", "w2")
        assert await Supervisor.which_children(a, sup) == list(before.items())
        a.send("w1", "crash")
        await restarted(a, before, ("w1",))
        assert a.whereis("w2") == before["w2"]  # one_for_one: only the crashed one
        assert not a.is_alive(before["w1"])  # type: ignore[arg-type]
        assert (await Supervisor.which_children(a, sup))[0] == ("w1", a.whereis("w1"))


@async_test
async def test_genserver_child_is_restarted_and_answers_under_its_name() -> None:
    async with cluster(1) as (a,):
        await Supervisor.start(a, [ChildSpec("c", Counter, args=(10,), name="counter")])
        assert await fabric.call(a, "counter", "incr") == 11
        old = a.whereis("counter")
        with pytest.raises(fabric.RemoteError):
            await fabric.call(a, "counter", "crash")
        await wait_until(lambda: a.whereis("counter") not in (None, old), what="restart")
        assert await fabric.call(a, "counter", "incr") == 11  # init ran again


@pytest.mark.parametrize("strategy, restarting", [
    ("one_for_all", ("w1", "w2", "w3")),
    ("rest_for_one", ("w2", "w3")),
    ("one_for_one", ("w2",)),
])
@async_test
async def test_strategy_restarts_its_group_in_start_order(strategy: str,
                                                          restarting: tuple[str, ...]) -> None:
    async with cluster(1) as (a,):
        await Supervisor.start(a, specs("w1", "w2", "w3"), strategy=strategy)
        before = names(a, "w1", "w2", "w3")
        a.send("w2", "crash")
        await restarted(a, before, restarting)
        after = names(a, "w1", "w2", "w3")
        assert {i for i in after if after[i] == before[i]} == \
            {"w1", "w2", "w3"} - set(restarting)
        # Pids are numbered in spawn order: the group was started in its order.
        new_ids = [after[i][1] for i in restarting]  # type: ignore[index]
        assert new_ids == sorted(new_ids)


@async_test
async def test_transient_and_temporary_children_after_a_normal_exit() -> None:
    async with cluster(1) as (a,):
        sup = await Supervisor.start(a, [
            ChildSpec("t", worker, restart="transient", name="t"),
            ChildSpec("tmp", worker, restart="temporary", name="tmp"),
            ChildSpec("p", worker, name="p")])
        before = names(a, "t", "tmp", "p")
        for i in ("t", "tmp", "p"):
            a.send(i, "quit")
        await restarted(a, before, ("p",))
        await wait_until(lambda: a.whereis("t") is None and a.whereis("tmp") is None)
        children = await Supervisor.which_children(a, sup)
        assert [(i, p is None) for i, p in children] == [("t", True), ("p", False)]


def _down_of(proc: Process, pid: Pid) -> Any:
    return proc.receive(match=lambda m: type(m) is Down and m.pid == pid, timeout=5)


@async_test
async def test_intensity_exceeded_stops_the_supervisor_and_its_parent_restarts_it() -> None:
    async with cluster(1) as (a,):
        inner = Supervisor.child_spec("inner", specs("w"), intensity=1, period=60,
                                      name="inner")
        top = await Supervisor.start(a, [ChildSpec("x", worker, name="x"), inner])
        watcher = a.new_mailbox()
        first = a.whereis("inner")
        assert first is not None
        watcher.monitor(first)
        before = names(a, "w")
        a.send("w", "crash")  # one restart: within the intensity
        await restarted(a, before, ("w",))
        w2 = a.whereis("w")
        a.send("w", "crash")  # the second within 60 s: too many
        assert (await _down_of(watcher, first)).reason == "shutdown"
        # The parent saw the exit and restarted the nested supervisor with its child.
        await wait_until(lambda: a.whereis("inner") not in (None, first), what="inner")
        await wait_until(lambda: a.whereis("w") not in (None, w2), what="w again")
        assert [i for i, _ in await Supervisor.which_children(a, top)] == ["x", "inner"]
        assert await Supervisor.which_children(a, "inner") == [("w", a.whereis("w"))]


@async_test
async def test_top_supervisor_exits_with_shutdown_when_intensity_is_exceeded() -> None:
    async with cluster(1) as (a,):
        sup = await Supervisor.start(a, specs("w1", "w2"), intensity=0)
        watcher = a.new_mailbox()
        watcher.monitor(sup)
        before = names(a, "w1", "w2")
        for pid in before.values():
            assert pid is not None
            watcher.monitor(pid)
        a.send("w1", "crash")
        downs = [await watcher.receive(timeout=5) for _ in range(3)]
        # w1 crashed, then w2 was stopped, then the supervisor ended.
        assert [(d.pid, d.reason) for d in downs][1:] == [(before["w2"], "shutdown"),
                                                         (sup, "shutdown")]


@async_test
async def test_stopping_the_supervisor_stops_children_in_reverse_within_shutdown() -> None:
    async with cluster(1) as (a,):
        sup = await Supervisor.start(a, [
            ChildSpec("first", polite, shutdown="infinity"),
            ChildSpec("stubborn", stubborn, shutdown=0.2),
            ChildSpec("brutal", stubborn, shutdown="brutal_kill"),
            ChildSpec("last", polite)])
        children = await Supervisor.which_children(a, sup)
        watcher = a.new_mailbox()
        for _, pid in children:
            assert pid is not None
            watcher.monitor(pid)
        watcher.monitor(sup)
        a.exit(sup, "normal")  # ignored, as by a process that does not trap exits
        assert await Supervisor.which_children(a, sup) == children
        a.exit(sup, "shutdown")
        downs = [await watcher.receive(timeout=5) for _ in range(5)]
        by_id = dict((pid, i) for i, pid in children)
        assert [(by_id.get(d.pid, "sup"), d.reason) for d in downs] == [
            ("last", "shutdown"), ("brutal", "killed"), ("stubborn", "killed"),
            ("first", "shutdown"), ("sup", "shutdown")]


class Trapping(GenServer):
    """Traps exits, and tells ``report_to`` the reason its ``terminate`` got."""

    async def init(self, report_to: Pid) -> None:
        self.proc.trap_exits = True
        self.report_to = report_to

    async def terminate(self, reason: Any) -> None:
        self.node.send(self.report_to, ("terminated", reason))


@async_test
async def test_a_trapping_genserver_child_is_stopped_through_its_terminate() -> None:
    async with cluster(1) as (a,):
        report = a.new_mailbox()
        sup = await Supervisor.start(a, [ChildSpec("t", Trapping, args=(report.self,),
                                                   shutdown=5, name="t")])
        report.monitor(a.whereis("t"))  # type: ignore[arg-type]
        a.exit(sup, "shutdown")
        assert await report.receive(timeout=5) == ("terminated", "shutdown")
        assert (await report.receive(timeout=5)).reason == "shutdown"  # not killed


@async_test
async def test_a_child_failing_at_start_fails_the_start_and_stops_the_started_ones() -> None:
    async with cluster(1) as (a,):
        with pytest.raises(ValueError, match="cannot start"):
            await Supervisor.start(a, [ChildSpec("w", worker, name="w"),
                                       ChildSpec("bad", FailsInInit)], name="sup")
        await wait_until(lambda: a.whereis("w") is None and a.whereis("sup") is None)
        with pytest.raises(ValueError):
            await Supervisor.start(a, specs("w"), strategy="one_for_some")


FAIL_INIT = {"on": False}  # FlakyInit's init fails while this is set


class FlakyInit(GenServer):
    async def init(self) -> None:
        if FAIL_INIT["on"]:
            raise ValueError("cannot start now")

    async def handle_call(self, request: Any, from_: fabric.From) -> Any:
        raise RuntimeError("told to crash")


@async_test
async def test_a_child_that_cannot_restart_spends_the_intensity() -> None:
    async with cluster(1) as (a,):
        FAIL_INIT["on"] = False
        sup = await Supervisor.start(a, [ChildSpec("f", FlakyInit, name="f")], intensity=2)
        watcher = a.new_mailbox()
        watcher.monitor(sup)
        FAIL_INIT["on"] = True
        try:
            with pytest.raises(fabric.RemoteError):
                await fabric.call(a, "f", "crash")
            # One restart for the crash, one for each failed start: the third is too many.
            assert (await watcher.receive(timeout=5)).reason == "shutdown"
        finally:
            FAIL_INIT["on"] = False


@async_test
async def test_requests_terminate_restart_start_and_delete_children() -> None:
    async with cluster(1) as (a,):
        sup = await Supervisor.start(a, specs("w1", "w2"), name="sup")
        w1 = a.whereis("w1")
        await Supervisor.terminate_child(a, "sup", "w1")
        assert a.whereis("w1") is None and not a.is_alive(w1)  # type: ignore[arg-type]
        assert (await Supervisor.which_children(a, sup))[0] == ("w1", None)
        with pytest.raises(ValueError):
            await Supervisor.restart_child(a, sup, "w2")  # running
        new = await Supervisor.restart_child(a, sup, "w1")
        assert a.whereis("w1") == new != w1
        dyn = await Supervisor.start_child(a, sup, ChildSpec("w3", worker, name="w3"))
        assert a.whereis("w3") == dyn
        with pytest.raises(ValueError):
            await Supervisor.start_child(a, sup, ChildSpec("w3", worker))  # id taken
        with pytest.raises(RuntimeError, match="cannot start"):
            await Supervisor.start_child(a, sup, ChildSpec("bad", FailsInInit))
        with pytest.raises(KeyError):
            await Supervisor.terminate_child(a, sup, "bad")  # a failed dynamic child is gone
        with pytest.raises(ValueError):
            await Supervisor.delete_child(a, sup, "w3")  # running
        await Supervisor.terminate_child(a, sup, "w3")
        await Supervisor.delete_child(a, sup, "w3")
        assert [i for i, _ in await Supervisor.which_children(a, sup)] == ["w1", "w2"]
        # The dynamic child was started last, so it was stopped first: checked by order
        # of the ids above; a crash of w2 still restarts it.
        before = names(a, "w2")
        a.send("w2", "crash")
        await restarted(a, before, ("w2",))


@async_test
async def test_dynamic_temporary_children_are_forgotten_when_they_end() -> None:
    async with cluster(1) as (a,):
        sup = await Supervisor.start(a, [])  # children only at run time
        for round_ in range(3):  # the same ids again: nothing of the ended ones is kept
            pids = [await Supervisor.start_child(
                a, sup, ChildSpec(f"job{i}", worker, restart="temporary"))
                for i in range(3)]
            assert [p for _, p in await Supervisor.which_children(a, sup)] == pids
            a.send(pids[0], "quit")
            a.send(pids[1], "crash")
            await Supervisor.terminate_child(a, sup, "job2")
            await wait_until(lambda pids=pids: not any(a.is_alive(p) for p in pids),  # type: ignore[misc]
                             what="ended")
            assert await Supervisor.which_children(a, sup) == [], round_


@async_test
async def test_the_parents_exit_stops_the_tree_and_a_kill_takes_the_children_along() -> None:
    async with cluster(1) as (a,):
        watcher = a.new_mailbox()

        async def parent(proc: Process) -> None:
            sup = await Supervisor.start(a, specs("w1"), name="sup", link_to=proc)
            watcher.send(watcher.self, ("sup", sup))
            await proc.receive(match=lambda m: m == "go")
            proc.exit("parent_gone")

        parent_pid = a.spawn(parent)
        _, sup = await watcher.receive(timeout=5)
        watcher.monitor(sup)
        watcher.monitor(a.whereis("w1"))  # type: ignore[arg-type]
        a.send(parent_pid, "go")
        downs = [await watcher.receive(timeout=5) for _ in range(2)]
        assert [d.reason for d in downs] == ["shutdown", "parent_gone"]  # w1, then sup
        assert downs[1].pid == sup

        sup = await Supervisor.start(a, specs("w1", "w2"))
        children = [pid for _, pid in await Supervisor.which_children(a, sup)]
        for pid in children:
            watcher.monitor(pid)  # type: ignore[arg-type]
        a.exit(sup, "kill")  # no orderly stop: the links take the children down
        assert sorted((d.pid, d.reason) for d in
                      [await watcher.receive(timeout=5) for _ in range(2)]) == \
            sorted((pid, "killed") for pid in children)
