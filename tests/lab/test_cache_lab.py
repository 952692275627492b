"""The distributed cache under a real partition and a kill -9: three owners in three
namespaces, two copies per key, writes acknowledged by both.

Nodes 1 and 2 write unique keys all along. The lab isolates node 1 (whose writes must be
refused: one owner cannot make two copies), heals, and at once kills node 3 with SIGKILL
while the hand-off that follows the heal may still be under way. Every write that was
acknowledged must then read back with its value on both survivors.
"""

from __future__ import annotations

import logging
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

WORKER = Path(__file__).with_name("_cache_worker.py")


@pytest.fixture(scope="module")
def lab3() -> Iterator[labkit.Lab]:
    with labkit.lab_of(3, "fc", 197) as made:
        yield made


@pytest.fixture
def nodes(lab3: labkit.Lab) -> Iterator[list[labkit.LabNode]]:
    with labkit.meshed_repl_nodes(lab3, 3, 7800 + secrets.randbelow(500)) as started:
        yield started


def last_event(node: labkit.LabNode, mark: int, kind: str) -> dict[str, Any] | None:
    found = [e for e in node.events[mark:] if e["event"] == kind]
    return found[-1] if found else None


def test_no_acknowledged_write_is_lost_to_a_partition_and_a_kill(
        lab3: labkit.Lab, nodes: list[labkit.LabNode]) -> None:
    for node in nodes:
        node.send_line(f"_cw = __import__('runpy').run_path({str(WORKER)!r})")
        node.send_line("_work = _cw['start'](node, 0.005, 3)")
    wait_until(lambda: all(last_event(n, 0, "cache_ready") for n in nodes), 20,
               interval=0.05, message="every node sees three owners")
    writers, victim = nodes[:2], nodes[2]
    for node in writers:
        node.send_line("_work['write'] = True")
    time.sleep(1.0)  # the workload: both writers write for a second
    marks = [len(n.events) for n in nodes]
    lab3.split("1", "2,3")
    # Node 1 sees both peers go (however long detection takes on a loaded machine), then
    # writes on alone for a while: with one live owner its writes are refused.
    for peer in nodes[1:]:
        nodes[0].wait_nodedown(peer.name, 20, marks[0])
    time.sleep(0.5)  # the workload on the minority side
    lab3.heal()
    labkit.wait_views(nodes, labkit.full_mesh(nodes), 20)
    victim.kill()  # SIGKILL right after the heal: the hand-off may be under way
    time.sleep(1.0)
    for node in writers:
        node.send_line("_work['stop'] = True")
    labkit.wait_views(writers, labkit.full_mesh(writers), 20)

    def states() -> list[dict[str, Any]] | None:
        marks = [len(n.events) for n in writers]
        for node in writers:
            node.send_line("_cw['check'](_work)")
        wait_until(lambda: all(last_event(n, m, "cache_state")
                               for n, m in zip(writers, marks, strict=True)), 10,
                   interval=0.05, message="every writer reports")
        got = [last_event(n, m, "cache_state") for n, m in zip(writers, marks, strict=True)]
        good = [s for s in got if s is not None]
        return good if all(s["done"] and len(s["owners"]) == 2 for s in good) else None

    final = wait_until(states, 30, interval=0.5,
                       message=lambda: "\n".join(n.describe(5) for n in nodes))
    for state in final:
        log.info("cache lab: %d acknowledged, %d refused, wrong %s", state["acked"],
                 state["refused"], state["wrong"][:5])
        assert state["acked"] > 0
        assert state["wrong"] == []
    assert final[0]["refused"] > 0  # node 1 alone could not make two copies
