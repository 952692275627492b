"""Gossip discovery between network namespaces on the lab's bridge (real multicast and
broadcast between "machines"), and a partition longer than the mesh's reconnect window
healed by discovery.

Each test starts three nodes, one per lab namespace, with no names given: only
``--discovery``. See ``labkit.py`` and ``conftest.py`` for the lab.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest
from labkit import (
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    N_NODES,
    Lab,
    LabNode,
    full_mesh,
    heal_and_kill,
    views,
    wait_views,
)

pytestmark = pytest.mark.lab

_ports = itertools.count(7600)
_udp_ports = itertools.count(45900)
PARTITION_S = 3.0


@pytest.fixture
def nodes(lab: Lab) -> Iterator[list[LabNode]]:
    started: list[LabNode] = []
    yield started
    heal_and_kill(lab, started)


def start(lab: Lab, nodes: list[LabNode], spec_for: dict[int, str],
          env: dict[str, str] | None = None) -> list[LabNode]:
    port = next(_ports)
    for i in range(1, N_NODES + 1):
        nodes.append(LabNode(
            lab.namespace(i), f"d{i}@{lab.addr(i)}:{port}", extra_args=["--discovery",
                                                                        spec_for[i]],
            heartbeat_interval=HEARTBEAT_INTERVAL, heartbeat_timeout=HEARTBEAT_TIMEOUT,
            env=env))
    for node in nodes:
        node.start()
    for node in nodes:
        node.wait_ready(15)
    return nodes


def test_gossip_on_the_bridge_forms_a_full_mesh(lab: Lab, nodes: list[LabNode]) -> None:
    udp = next(_udp_ports)
    start(lab, nodes, {i: f"gossip:port={udp},if_addr={lab.addr(i)},interval=0.3,expire=2"
                       for i in range(1, N_NODES + 1)})
    wait_views(nodes, full_mesh(nodes), 20)


def test_broadcast_only_gossip_forms_a_full_mesh(lab: Lab, nodes: list[LabNode]) -> None:
    udp = next(_udp_ports)
    spec = f"gossip:port={udp},broadcast_only=true,broadcast_addr={lab.net}.255,interval=0.3"
    start(lab, nodes, {i: spec for i in range(1, N_NODES + 1)})
    wait_views(nodes, full_mesh(nodes), 20)


def test_a_partition_longer_than_the_reconnect_window_heals_through_discovery(
        lab: Lab, nodes: list[LabNode]) -> None:
    udp = next(_udp_ports)
    # The mesh gives up on a lost peer after 0.5 s: only discovery can bring it back.
    start(lab, nodes, {i: f"gossip:port={udp},if_addr={lab.addr(i)},interval=0.3,expire=2"
                       for i in range(1, N_NODES + 1)},
          env={"FABRIC_RECONNECT_WINDOW": "0.5"})
    wait_views(nodes, full_mesh(nodes), 20)
    n1, n2, n3 = nodes
    lab.split("1", "2,3")
    wait_views(nodes, {n1.name: [], n2.name: [n3.name], n3.name: [n2.name]}, 20)
    # The partition lasts longer than the reconnect window (0.5 s) and gossip's expiry
    # (2 s): the mesh has given up and n1's name is forgotten on the other side.
    time.sleep(PARTITION_S)  # the fault's length, not a wait for a condition
    assert views(nodes) == {n1.name: [], n2.name: [n3.name], n3.name: [n2.name]}
    lab.heal()
    wait_views(nodes, full_mesh(nodes), 30)
