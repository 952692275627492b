"""Dynamic supervisors (fabric.dynamic_supervisor) and auto-shutdown on real in-process
nodes: children started at run time from a spec or a template (also from another node),
max_children, terminate by pid, ended children forgotten, restarts within the intensity;
a significant child ending the supervisor."""

from __future__ import annotations

import pytest
from _exported import async_test, cluster, wait_until
from test_supervisor import worker

from fabric import ChildSpec, Down, Supervisor
from fabric.dynamic_supervisor import DynamicSupervisor

pytestmark = pytest.mark.io  # in-process nodes on 127.0.0.1


@async_test
async def test_children_by_spec_and_by_template_restart_and_are_forgotten() -> None:
    async with cluster(2) as (a, b):
        jobs = await DynamicSupervisor.start(a, max_children=2, name="jobs")
        p1 = await DynamicSupervisor.start_child(a, jobs, ChildSpec("x", worker))
        p2 = await DynamicSupervisor.start_child(a, jobs, ChildSpec("x", worker,
                                                                    restart="temporary"))
        assert await DynamicSupervisor.which_children(a, jobs) == [p1, p2]  # ids are its own
        with pytest.raises(ValueError, match="max_children"):
            await DynamicSupervisor.start_child(a, jobs, ChildSpec("y", worker))
        a.send(p1, "crash")  # permanent: restarted, with a new pid
        await wait_until(lambda: a.is_alive(p2) and not a.is_alive(p1))
        pids = await DynamicSupervisor.which_children(a, jobs)
        assert len(pids) == 2 and pids[1] == p2 and pids[0] != p1
        a.send(p2, "quit")  # temporary: forgotten, which frees a place
        await wait_until(lambda: not a.is_alive(p2))
        assert await DynamicSupervisor.count_children(a, jobs) == 1
        p3 = await DynamicSupervisor.start_child(a, jobs, ChildSpec("y", worker))
        await DynamicSupervisor.terminate_child(a, jobs, p3)
        assert not a.is_alive(p3) and await DynamicSupervisor.count_children(a, jobs) == 1
        with pytest.raises(KeyError):
            await DynamicSupervisor.terminate_child(a, jobs, p3)
        with pytest.raises(ValueError):
            await DynamicSupervisor.start_child(a, jobs, ("no", "template"))

        # A template: a request carries arguments only, so another node can make it.
        pool = await DynamicSupervisor.start(a, template=ChildSpec("w", worker))
        started = [await DynamicSupervisor.start_child(b, pool, ()) for _ in range(3)]
        assert {p.node for p in started} == {a.name}
        assert await DynamicSupervisor.which_children(b, pool) == started
        with pytest.raises(ValueError):
            await DynamicSupervisor.start_child(a, pool, ChildSpec("s", worker))


@async_test
async def test_a_significant_child_ending_stops_its_supervisor() -> None:
    async with cluster(1) as (a,):
        sup = await Supervisor.start(a, [
            ChildSpec("keep", worker, name="keep"),
            ChildSpec("job", worker, restart="transient", significant=True, name="job")],
            auto_shutdown="any_significant")
        watcher = a.new_mailbox()
        ref = watcher.monitor(sup)
        a.send("job", "quit")  # ends normally: not restarted, and it is significant
        down = await watcher.receive(lambda m: type(m) is Down and m.ref == ref, timeout=5)
        assert down.reason == "shutdown" and a.whereis("keep") is None
        with pytest.raises(ValueError):
            await Supervisor.start(a, [ChildSpec("p", worker, significant=True)],
                                   auto_shutdown="any_significant")  # permanent
