"""The distributed supervisor on real in-process nodes (fabric.dsupervisor): placement on
every member, a crash restarted in place under the same global name, a stopped node's
children running again on the survivors, moves with state when a node joins and on a
graceful hand-off, deletes, failed starts, and a member inside a local supervision tree.
The placement decisions are tested purely in tests/protocol/test_dsupervision.py; the
kill -9 case with OS processes is tests/io/test_dsupervisor_procs.py."""

from __future__ import annotations

from typing import Any

import pytest
from _exported import COOKIE, async_test, cluster, new_name, wait_until

import fabric
from fabric import GlobalName, Node, Registry, Supervisor
from fabric.dsupervisor import DistributedChildSpec, DistributedSupervisor
from fabric.protocol.hashring import HashRing
from fabric.testing import async_wait_until

pytestmark = pytest.mark.io  # in-process nodes on 127.0.0.1

COUNTER = "_dsup_children:KeyedCounter"
WAIT = 15.0  # deadline of each wait: generous, for a loaded machine (a pass takes ~1 s)
KEYS = [f"user:{i}" for i in range(12)]


async def until(pred: Any, what: str = "") -> None:
    await wait_until(pred, timeout=WAIT, what=what)


def counter(key: str, **options: Any) -> DistributedChildSpec:
    return DistributedChildSpec(key, COUNTER, args=(key,), name=GlobalName(key),
                                registry_name=("counter", key), **options)


async def where(node: Node, key: str) -> tuple[str, int]:
    """The node and count of the counter registered globally as ``key``."""
    node_name, count = await fabric.call(node, GlobalName(key), "where")
    return node_name, count


async def start_members(nodes: list[Node], name: str = "sessions") -> list[DistributedSupervisor]:
    sups = [await DistributedSupervisor.start(n, name) for n in nodes]
    everyone = sorted(n.name for n in nodes)

    async def agreed() -> bool:
        return all([await s.members() == everyone for s in sups])

    await async_wait_until(agreed, WAIT, message="every member sees the whole group")
    return sups


async def all_know(sups: list[DistributedSupervisor], count: int) -> None:
    """Wait until every member's table lists ``count`` children, each with a pid, and
    the tables are the same (the last views are in the failure message)."""
    views: list[Any] = []

    async def agreed() -> bool:
        views[:] = [await s.which_children() for s in sups]
        return all(len(v) == count and all(p is not None for _, _, p in v)
                   and v == views[0] for v in views)

    await async_wait_until(agreed, WAIT, message=lambda: f"one table of {count}: {views}")


@async_test
async def test_children_spread_over_the_members_and_a_crash_restarts_in_place() -> None:
    async with cluster(3) as nodes:
        sups = await start_members(nodes)
        placed = {key: await sups[0].start_child(counter(key)) for key in KEYS}
        ring = HashRing(sorted(n.name for n in nodes))
        assert {k: n for k, (n, _) in placed.items()} == {k: ring.lookup(k) for k in KEYS}
        # start_child answers once every member holds the entry: no waiting here.
        for sup in sups:
            assert {k: (n, p) for k, n, p in await sup.which_children()} == placed
        with pytest.raises(ValueError):
            await sups[1].start_child(counter(KEYS[0]))  # the key is taken
        for key, (node_name, pid) in placed.items():
            assert await where(nodes[2], key) == (node_name, 0)
            assert nodes[0].global_.whereis_name(key) == pid
        key = KEYS[0]
        home, old = placed[key]
        assert await fabric.call(nodes[1], GlobalName(key), "incr") == 1
        with pytest.raises(fabric.RemoteError):
            await fabric.call(nodes[1], GlobalName(key), "crash")
        await until(lambda: nodes[1].global_.whereis_name(key) not in (None, old),
                         what="the restarted child's global name")
        assert await where(nodes[1], key) == (home, 0)  # same node, fresh state
        new = nodes[1].global_.whereis_name(key)
        await until(lambda: Registry(nodes[2]).lookup(("counter", key)) == [new],
                    what="the registry name follows the restart")
        await all_know(sups, len(KEYS))
        assert dict((k, (n, p)) for k, n, p in await sups[2].which_children())[key] == \
            (home, nodes[1].global_.whereis_name(key))


@async_test
async def test_a_stopped_nodes_children_all_run_again_on_the_survivors() -> None:
    async with cluster(3) as nodes:
        sups = await start_members(nodes)
        for key in KEYS:
            await sups[1].start_child(counter(key))
        await all_know(sups, len(KEYS))
        homes = [n for _, n, _ in await sups[0].which_children()]
        victim = max(nodes, key=lambda n: homes.count(n.name))  # it holds some
        await victim.stop()
        survivors = [n for n in nodes if n is not victim]
        sups = [s for s in sups if s.node is not victim]
        await until(lambda: all(survivors[0].global_.whereis_name(k) is not None
                                     and survivors[0].global_.whereis_name(k).node  # type: ignore[union-attr]
                                     != victim.name for k in KEYS), what="every name back")
        for key in KEYS:
            node_name, _ = await where(survivors[0], key)
            assert node_name in (survivors[0].name, survivors[1].name)
        await all_know(sups, len(KEYS))
        assert {n for _, n, _ in await sups[0].which_children()} <= \
            {survivors[0].name, survivors[1].name}


@async_test
async def test_a_graceful_stop_moves_handoff_children_with_their_state() -> None:
    # node.stop() itself (no application, no explicit handoff): the member's drain hook
    # moves its children before the node leaves the group, so their state survives.
    async with cluster(3) as nodes:
        sups = await start_members(nodes)
        for key in KEYS:
            await sups[0].start_child(counter(key, handoff=True))
            assert await fabric.call(nodes[0], GlobalName(key), "incr") == 1
        await all_know(sups, len(KEYS))
        homes = [n for _, n, _ in await sups[0].which_children()]
        victim = max(nodes, key=lambda n: homes.count(n.name))
        assert homes.count(victim.name) > 0
        await victim.stop()
        survivors = [n for n in nodes if n is not victim]
        await all_know([s for s in sups if s.node is not victim], len(KEYS))
        for key in KEYS:
            node_name, count = await where(survivors[0], key)
            assert node_name != victim.name and count == 1, (key, node_name, count)


@async_test
async def test_handoff_children_move_with_their_state_to_a_joining_node_and_away() -> None:
    async with cluster(2) as nodes:
        sups = await start_members(nodes)
        joiner = Node(new_name("n9"), cookie=COOKIE)
        # Keys the ring will give the joiner (6) and keep on the first two (6).
        ring = HashRing(sorted([nodes[0].name, nodes[1].name, joiner.name]))
        candidates = [f"user:{i}" for i in range(1000)]
        expected = [k for k in candidates if ring.lookup(k) == joiner.name][:6]
        keys = expected + [k for k in candidates if ring.lookup(k) != joiner.name][:6]
        for key in keys:
            await sups[0].start_child(counter(key, handoff=True))
            assert await fabric.call(nodes[0], GlobalName(key), "incr") == 1
        await all_know(sups, len(keys))
        await joiner.start()
        try:
            assert await joiner.connect(nodes[0].name)
            await until(lambda: len(joiner.nodes()) == 2, what="joined")
            sups.append(await DistributedSupervisor.start(joiner, "sessions"))
            await until(lambda: all(
                (p := nodes[0].global_.whereis_name(k)) is not None and p.node == joiner.name
                for k in expected), what="the joiner's keys moved to it")
            await all_know(sups, len(keys))
            moved = [k for k, n, _ in await sups[2].which_children() if n == joiner.name]
            assert sorted(moved) == sorted(expected)
            for key in moved:  # the state came along
                assert await where(nodes[0], key) == (joiner.name, 1)
            # A graceful hand-off: the joiner's children go back, with their state.
            assert await sups[2].handoff() == len(moved)
            await all_know(sups[:2], len(keys))
            assert {n for _, n, _ in await sups[0].which_children()} <= \
                {nodes[0].name, nodes[1].name}
            for key in keys:
                assert (await where(nodes[1], key))[1] == 1
        finally:
            await joiner.stop()


@async_test
async def test_terminate_delete_ended_children_and_failed_starts() -> None:
    async with cluster(2) as nodes:
        sups = await start_members(nodes)
        for i in range(6):
            await sups[0].start_child(DistributedChildSpec(
                f"job{i}", "_dsup_children:idle", restart="transient", name=f"job{i}"))
        await all_know(sups, 6)
        await sups[1].terminate_child("job0")  # wherever it runs: forwarded
        with pytest.raises(KeyError):
            await sups[0].terminate_child("job0")
        node_name, pid = next((n, p) for k, n, p in await sups[0].which_children()
                              if k == "job1")
        nodes[0].send(pid, "quit")  # a transient child that ends normally is deleted
        await all_know(sups, 4)
        assert {k for k, _, _ in await sups[1].which_children()} == \
            {"job2", "job3", "job4", "job5"}
        with pytest.raises(RuntimeError, match="cannot start"):
            await sups[1].start_child(DistributedChildSpec("bad",
                                                           "_dsup_children:FailsInInit"))
        with pytest.raises(RuntimeError, match="not exported|cannot be found"):
            await sups[1].start_child(DistributedChildSpec("x", "_dsup_children:nothing"))
        await all_know(sups, 4)
        with pytest.raises(ValueError):
            await sups[0].start_child(DistributedChildSpec("", "m:f"))


@async_test
async def test_a_member_in_a_local_supervision_tree() -> None:
    async with cluster(2) as nodes:
        tops = [await Supervisor.start(n, [DistributedSupervisor.child_spec("jobs")])
                for n in nodes]
        sups = [DistributedSupervisor(n, "jobs") for n in nodes]
        await until(lambda: all(s.pid is not None for s in sups))
        node_name, _ = await sups[0].start_child(counter("c1"))
        owner = 0 if node_name == nodes[0].name else 1
        member, old = sups[owner].pid, nodes[0].global_.whereis_name("c1")
        assert member is not None and old is not None
        nodes[owner].exit(member, "kill")  # the tree restarts the member ...
        await until(lambda: sups[owner].pid not in (None, member), what="member back")
        # ... the other member took c1 over meanwhile (its member left the group), or
        # the restarted member found c1 still placed on its node and restarted it (both
        # can happen for a moment: the higher version keeps running, the other stops).
        async def answers() -> str | None:
            try:
                home, _ = await where(nodes[1], "c1")
                return home
            except fabric.ProcessDeadError:
                return None

        home = await async_wait_until(answers, WAIT, message="c1 answers again")
        assert home in (nodes[0].name, nodes[1].name)
        assert nodes[1].global_.whereis_name("c1") != old
        for top, n in zip(tops, nodes, strict=True):
            assert [i for i, _ in await Supervisor.which_children(n, top)] == ["jobs"]
