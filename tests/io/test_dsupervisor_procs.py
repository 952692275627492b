"""A distributed supervisor across OS-process nodes (``fabric node --app``): kill -9 of
the node that holds the most children, and every child answers again, from a survivor,
under its global name."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

import fabric
from fabric import GlobalName, Node
from fabric.dsupervisor import SCOPE
from fabric.testing import NodeProcess, async_wait_until, free_port
from fabric.testing.cluster import DEFAULT_COOKIE

pytestmark = [pytest.mark.io, pytest.mark.procs]

KEYS = [f"session:{i}" for i in range(12)]
APP = ["--app", "_dsup_children:application"]


async def answers(client: Node, key: str) -> str | None:
    """The node the child ``key`` answers from (None: it does not answer now)."""
    try:
        node_name, _ = await fabric.call(client, GlobalName(key), "where", timeout=1.0)
    except fabric.FabricError as exc:
        LAST.setdefault("errors", {})[key] = repr(exc)
        return None
    return str(node_name)


@pytest.mark.parametrize("stop", ["kill -9", "SIGTERM"])
def test_children_of_a_stopped_node_all_run_again_on_the_survivors(
        arun: Callable[..., Any], stop: str) -> None:
    """kill -9: restarted afresh on the survivors. SIGTERM: ``fabric node`` stops the
    application first, whose member hands its children over with their state."""
    with NodeProcess("d1", extra_args=APP) as first:
        first.wait_ready()
        with NodeProcess("d2", connect=[first.name], extra_args=APP) as second, \
                NodeProcess("d3", connect=[first.name], extra_args=APP) as third:
            second.wait_ready()
            third.wait_ready()
            procs = {p.name: p for p in (first, second, third)}

            async def body() -> None:
                async with Node(f"client@127.0.0.1:{free_port()}", cookie=DEFAULT_COOKIE,
                                hidden=True) as client:
                    for name in procs:
                        assert await client.connect(name), client.last_connect_error(name)
                    inbox = client.new_mailbox()
                    await async_wait_until(  # the three members formed the group
                        lambda: {p.node for p in client.pg.get_members("sessions",
                                                                       scope=SCOPE)}
                        == set(procs), 15, message="the members' group")

                    async def started() -> Any:
                        # Retried until the three members see each other (bounded).
                        await client.spawn_on(first.name, "_dsup_children:start_counters",
                                              inbox.self, KEYS, stop == "SIGTERM")
                        reply = await inbox.receive(timeout=10)
                        return reply[1] if reply[0] == "started" else None

                    placed = dict(await async_wait_until(started, 15, interval=0.2))
                    homes = await async_wait_until(
                        lambda: _all_answer(client, KEYS, set(procs)), 15,
                        message=lambda: f"every child answering from a member: {LAST}")
                    victim_name, count = Counter(homes.values()).most_common(1)[0]
                    assert count > 0 and set(placed) == set(KEYS)
                    for key in KEYS:
                        assert await fabric.call(client, GlobalName(key), "incr") == 1
                    if stop == "kill -9":
                        procs[victim_name].kill()
                    else:
                        assert procs[victim_name].stop() == 0
                    survivors = set(procs) - {victim_name}
                    after = await async_wait_until(
                        lambda: _all_answer(client, KEYS, survivors), 15,
                        message=lambda: f"every child answering from a survivor: {LAST}")
                    assert set(after.values()) <= survivors
                    assert [k for k in KEYS if homes[k] != victim_name
                            and after[k] != homes[k]] == []  # the others did not move
                    counts = {k: (await fabric.call(client, GlobalName(k), "where"))[1]
                              for k in KEYS}
                    moved = [k for k in KEYS if homes[k] == victim_name]
                    # Restarted afresh after a kill; handed over with the state on SIGTERM.
                    expected = 0 if stop == "kill -9" else 1
                    assert {counts[k] for k in moved} == {expected}, counts
                    assert {counts[k] for k in KEYS if k not in moved} == {1}

            arun(body(), timeout=60)


LAST: dict[str, Any] = {}  # the last answers, for a failure's message


async def _all_answer(client: Node, keys: list[str], nodes: set[str]) -> dict[str, str] | None:
    """``key -> node`` if every child answers from one of ``nodes``, else None."""
    homes = dict(zip(keys, await asyncio.gather(*(answers(client, k) for k in keys)),
                     strict=True))
    LAST.update(homes=homes, names={k: client.global_.whereis_name(k) for k in keys})
    return homes if all(h in nodes for h in homes.values()) else None  # type: ignore[return-value]
