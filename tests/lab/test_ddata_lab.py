"""Replicated CRDTs under real partitions, Jepsen-style: five nodes in five namespaces.

Every node increments a counter (level local) and adds unique elements to a set (level
majority) while ``netlab.sh nemesis halves`` splits the network at random; then the lab
heals and the workload stops. Afterwards every node must hold the same values: the counter
equals the sum of every node's increments (all were acknowledged locally, none may be
lost or counted twice), and the set holds every add a majority acknowledged and nothing
that was never tried.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import labkit
import pytest

from fabric.testing import wait_until

pytestmark = pytest.mark.lab

log = logging.getLogger("fabric.lab")

N = 5
WORKER = Path(__file__).with_name("_ddata_worker.py")
ROUNDS = 6  # random splits, each held for a while, then healed


@pytest.fixture(scope="module")
def lab5() -> Iterator[labkit.Lab]:
    with labkit.lab_of(N, "fd", 198) as made:
        yield made


@pytest.fixture
def nodes(lab5: labkit.Lab) -> Iterator[list[labkit.LabNode]]:
    with labkit.meshed_repl_nodes(lab5, N, 7300 + secrets.randbelow(500)) as started:
        yield started


def latest_states(nodes: list[labkit.LabNode], since: list[int]) -> list[dict[str, Any] | None]:
    out: list[dict[str, Any] | None] = []
    for node, mark in zip(nodes, since, strict=True):
        states = [e for e in node.events[mark:] if e["event"] == "dd_state"]
        out.append(states[-1] if states else None)
    return out


def test_counters_and_sets_converge_after_random_partitions(lab5: labkit.Lab,
                                                            nodes: list[labkit.LabNode]) -> None:
    members = [n.name for n in nodes]
    for node in nodes:
        node.send_line(f"_dd = __import__('runpy').run_path({str(WORKER)!r})")
        node.send_line(f"_work = _dd['start'](node, {json.dumps(members)}, 0.02)")
    rng = random.Random(secrets.randbits(32))
    for _ in range(ROUNDS):
        time.sleep(rng.uniform(0.5, 1.5))
        lab5.run("nemesis", "halves", str(rng.randrange(1 << 30)))
        time.sleep(rng.uniform(1.0, 2.5))
        lab5.heal()
    for node in nodes:
        node.send_line("_work['stop'] = True")
    labkit.wait_views(nodes, labkit.full_mesh(nodes), 20)

    def converged() -> bool:
        since = [len(n.events) for n in nodes]
        for node in nodes:
            node.send_line("_dd['report'](_work)")
        wait_until(lambda: all(s is not None for s in latest_states(nodes, since)), 10,
                   interval=0.05, message="every node reports")
        states = latest_states(nodes, since)
        assert all(s is not None for s in states)
        good = [s for s in states if s is not None]
        first = good[0]
        return all(s["done"] for s in good) and all(
            s["hits"] == first["hits"] and s["seen"] == first["seen"] for s in good)

    wait_until(converged, 60, interval=0.5,
               message=lambda: "\n".join(n.describe(5) for n in nodes))
    since = [len(n.events) for n in nodes]
    for node in nodes:
        node.send_line("_dd['report'](_work)")
    wait_until(lambda: all(s is not None for s in latest_states(nodes, since)), 10,
               interval=0.05, message="final reports")
    states = [s for s in latest_states(nodes, since) if s is not None]
    increments = sum(s["increments"] for s in states)
    acked = {e for s in states for e in s["acked"]}
    tried = {e for s in states for e in s["tried"]}
    seen = set(states[0]["seen"])
    log.info("ddata lab: %d increments, %d adds tried, %d acknowledged by a majority",
             increments, len(tried), len(acked))
    assert states[0]["hits"] == increments
    assert acked <= seen <= tried
    assert seen == tried  # every add was applied locally and spread after the heal
    assert 0 < len(acked) < len(tried)  # the splits did refuse some majority writes
