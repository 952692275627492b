"""Testing your own code with fabric's pytest fixtures (an example the suite runs).

With fabric installed, pytest loads its plugin: ``fabric_run``, ``fabric_cluster``,
``fabric_sim`` and ``fabric_mesh_sim`` need no import and no conftest.py.
"""

from __future__ import annotations

from typing import Any

import pytest

import fabric
from fabric.protocol.pg import DEFAULT_SCOPE, PgCore
from fabric.testing import heal, partition


class Counter(fabric.GenServer):
    """The code under test: a counter that must survive a partition."""

    async def init(self) -> None:
        self.count = 0

    async def handle_call(self, request: Any, from_: fabric.From) -> Any:
        if request == "increment":
            self.count += 1
        return self.count


def test_counter_keeps_counting_through_a_partition(fabric_run, fabric_cluster) -> None:
    async def scenario() -> None:
        async with fabric_cluster(3) as (a, b, c):
            await Counter.start(a, name="counter")
            counter = ("counter", a.name)
            assert await fabric.call(b, counter, "increment") == 1

            await partition([a], [b, c])  # a on one side, b and c on the other
            with pytest.raises(fabric.NodeDownError):
                await fabric.call(b, counter, "increment")
            assert await fabric.call(a, "counter", "increment") == 2  # a goes on alone

            await heal([a], [b, c])
            assert await fabric.call(c, counter, "increment") == 3  # nothing was lost

    fabric_run(scenario())


def test_group_views_split_and_converge_in_the_simulator(fabric_sim) -> None:
    """The same kind of question, for a service core, on a virtual clock: no sockets,
    no waiting, the same result on every run."""
    names = ["a@sim:1", "b@sim:2", "c@sim:3"]
    sim = fabric_sim(PgCore, names)
    workers = {name: sim.spawn(name) for name in names}
    for name, pid in workers.items():
        sim.call(name, "join", DEFAULT_SCOPE, "workers", pid)
    sim.run()

    sim.partition(["a@sim:1"], ["b@sim:2", "c@sim:3"])
    sim.advance(5.0)  # past detection: each side drops the other's members
    assert sim.core("a@sim:1").get_members(DEFAULT_SCOPE, "workers") == [workers["a@sim:1"]]
    assert len(sim.core("b@sim:2").get_members(DEFAULT_SCOPE, "workers")) == 2

    sim.heal()
    sim.advance(5.0)
    for name in names:
        assert sorted(sim.core(name).get_members(DEFAULT_SCOPE, "workers")) == \
            sorted(workers.values())
