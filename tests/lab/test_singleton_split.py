"""Cluster singletons across a real 2|3 network split, one test per split-brain policy.

Five nodes, one per lab namespace (heartbeat every 0.1 s, 0.6 s timeout), each a
candidate for the singleton "observed" (``_exported.start_observed_singleton``), whose
instance prints ``instance_started`` and ``instance_stopped`` with ``time.monotonic()``
(one clock for every process of the machine, so the intervals of different nodes can be
compared). The oldest node, n1, hosts it; ``split 1,2 3,4,5`` puts the host in the
minority. Each policy's promise is checked on the intervals: keep-majority and static
quorum never run two at once (the minority stops, the majority starts after its margin);
keep-oldest keeps it on n1's side and starts none on the other; availability runs one on
each side. After ``heal``: exactly one, and it stays one.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator

import pytest
from labkit import (
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    Lab,
    LabNode,
    full_mesh,
    heal_and_kill,
    lab_of,
    wait_views,
)

from fabric.testing import wait_until

pytestmark = pytest.mark.lab

log = logging.getLogger("fabric.lab")

N = 5
TIMEOUT = 20.0  # correctness bounds for a loaded machine, not speeds
MARGIN = HEARTBEAT_TIMEOUT + 2 * HEARTBEAT_INTERVAL  # the singleton's default margin


_ports = itertools.count(7300)


@pytest.fixture(scope="module")
def lab5() -> Iterator[Lab]:
    with lab_of(N, "fs", 197) as made:
        yield made


@pytest.fixture
def nodes(lab5: Lab, request: pytest.FixtureRequest) -> Iterator[list[LabNode]]:
    """Five candidates with the policy ``request.param``, started oldest first."""
    port = next(_ports)  # fresh names per test: nothing in flight is mistaken for ours
    started: list[LabNode] = []
    try:
        for i in range(1, N + 1):
            node = LabNode(
                lab5.namespace(i), f"n{i}@{lab5.addr(i)}:{port}",
                connect=[] if i == 1 else [f"n1@{lab5.addr(1)}:{port}"],
                heartbeat_interval=HEARTBEAT_INTERVAL, heartbeat_timeout=HEARTBEAT_TIMEOUT,
                extra_args=["--run", "_exported:start_observed_singleton"],
                env={"SINGLETON_POLICY": request.param, "SINGLETON_MIN_MEMBERS": str(N)})
            started.append(node)
            node.start()
            node.wait_ready(15)  # one after the other: n1 is the oldest candidate
        wait_views(started, full_mesh(started), 15)
        yield started
    finally:
        heal_and_kill(lab5, started)


Interval = tuple[str, float, float]  # node, started, stopped (inf: still runs)


def intervals(nodes: list[LabNode]) -> list[Interval]:
    """Every instance's life, from the nodes' events."""
    out: list[Interval] = []
    for node in nodes:
        began: dict[str, float] = {}
        for e in node.events:
            if e["event"] == "instance_started":
                began[e["pid"]] = e["t"]
            elif e["event"] == "instance_stopped" and e["pid"] in began:
                out.append((node.name, began.pop(e["pid"]), e["t"]))
        out += [(node.name, t, float("inf")) for t in began.values()]
    return sorted(out, key=lambda i: i[1])


def running(nodes: list[LabNode]) -> list[str]:
    return sorted(name for name, _, stopped in intervals(nodes) if stopped == float("inf"))


def max_concurrent(spans: list[Interval]) -> int:
    edges = sorted([(s, 1) for _, s, _ in spans] + [(e, -1) for _, _, e in spans])
    level = most = 0
    for _, step in edges:  # at equal times the stop (-1) sorts first
        level += step
        most = max(most, level)
    return most


def resets(nodes: list[LabNode]) -> list[tuple[str, str, str]]:
    """Sessions that ended other than by a heartbeat timeout (node, peer, reason): what
    a failure needs to be read (D36: a reset at the heal once started a second one)."""
    return [(n.name, e["node"], e["reason"]) for n in nodes for e in n.events
            if e["event"] == "nodedown" and e.get("reason") != "heartbeat_timeout"]


def hold_one(nodes: list[LabNode], expected: list[str], seconds: float) -> None:
    """``expected`` runs now and still after ``seconds`` (no churn, no second start)."""
    wait_until(lambda: running(nodes) == expected, TIMEOUT,
               message=lambda: f"running == {expected}: {intervals(nodes)} {resets(nodes)}")
    time.sleep(seconds)
    assert running(nodes) == expected, (intervals(nodes), resets(nodes))


@pytest.mark.parametrize("nodes", ["keep_majority", "static_quorum:3", "keep_oldest",
                                   "availability"], indirect=True)
def test_split_2_3_then_heal(lab5: Lab, nodes: list[LabNode]) -> None:
    policy = nodes[0].extra_env["SINGLETON_POLICY"]
    n1 = nodes[0].name
    hold_one(nodes, [n1], 2 * MARGIN)  # the oldest hosts it, once all five met
    t_split = time.monotonic()
    lab5.split("1,2", "3,4,5")
    majority_host = nodes[2].name  # n3: the oldest of the majority side

    if policy in ("keep_majority", "static_quorum:3"):
        hold_one(nodes, [majority_host], 4 * MARGIN)
        spans = intervals(nodes)
        assert max_concurrent(spans) == 1, spans
        stop_n1 = next(e for name, _, e in spans if name == n1)
        start_n3 = next(s for name, s, _ in spans if name == majority_host)
        log.info("%s: n1 stopped %.2f s after the split, n3 started %.2f s after it",
                 policy, stop_n1 - t_split, start_n3 - t_split)
    elif policy == "keep_oldest":
        wait_until(lambda: all(n.nodes() == [m.name for m in nodes[2:] if m is not n]
                               for n in nodes[2:]), TIMEOUT, message="the split seen")
        hold_one(nodes, [n1], 4 * MARGIN)  # nothing starts on the side without n1
        assert len(intervals(nodes)) == 1
    else:
        hold_one(nodes, sorted([n1, majority_host]), 2 * MARGIN)  # one on each side

    lab5.heal()
    wait_views(nodes, full_mesh(nodes), TIMEOUT)
    hold_one(nodes, [n1], 4 * MARGIN)  # exactly one after the heal: back on the oldest
    log.info("%s: sessions reset or closed: %s", policy, resets(nodes))
    if policy != "availability":
        assert max_concurrent(intervals(nodes)) == 1, (intervals(nodes), resets(nodes))
