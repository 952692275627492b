"""Fixtures for the lab tests: real network partitions between Linux network namespaces.

One lab (three namespaces, see :mod:`labkit`) per test module, torn down in the fixture's
finalizer even when a test fails (netlab's ``teardown`` also ends every process left in the
lab namespaces). Each test's finalizer heals every partition, thaws frozen nodes and kills
its nodes by pid, so one failed test cannot leave a cut or a SIGSTOPped node to the next.

The tests skip, with the reason, unless we are root, ``netlab.sh`` exists, a network
namespace can actually be created (containers without ``CAP_SYS_ADMIN`` cannot) and
``nft`` and ``iptables`` are installed (CI installs them; see ``.ci/run``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import subprocess
from collections.abc import Callable, Iterable, Iterator

import pytest
from labkit import (
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    N_NODES,
    Lab,
    LabNode,
    full_mesh,
    lab_of,
    session_events_settled,
    wait_views,
)

from fabric.testing import kill_leftovers, wait_until

log = logging.getLogger("fabric.lab")


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """A 3-node netlab, torn down at the end of the module whatever happens."""
    with lab_of(N_NODES, "fl", 199) as made:
        yield made


_ports = itertools.count(7100)


@pytest.fixture
def cluster(lab: Lab) -> Iterator[Callable[..., list[LabNode]]]:
    """Start :data:`N_NODES` nodes, one per namespace, and wait for their full mesh.

    Call it as ``cluster(repl=(1,))`` to give node 1 a REPL on stdin (for driving it), and
    ``cluster(env={"FABRIC_...": ...})`` to set node options through the environment.
    Every node runs the ``"echo"`` process. The finalizer heals the lab, thaws every node
    and kills the nodes by pid.
    """
    started: list[LabNode] = []

    def start(repl: Iterable[int] = (), env: dict[str, str] | None = None) -> list[LabNode]:
        # A fresh port (hence fresh node names) per test: nothing a previous test's nodes
        # left in flight can be mistaken for this test's traffic.
        port = next(_ports)
        with_repl = set(repl)
        for i in range(1, N_NODES + 1):
            name = f"n{i}@{lab.addr(i)}:{port}"
            seeds = [] if i == 1 else [f"n1@{lab.addr(1)}:{port}"]  # the rest is transitive
            started.append(LabNode(
                lab.namespace(i), name, connect=seeds, spawn_echo=True,
                heartbeat_interval=HEARTBEAT_INTERVAL, heartbeat_timeout=HEARTBEAT_TIMEOUT,
                repl=i in with_repl, env=env))
        for node in started:
            node.start()
        for node in started:
            node.wait_ready(15)
        took = wait_views(started, full_mesh(started), 15)
        wait_until(lambda: session_events_settled(started), 15, interval=0.02,
                   message=lambda: "every node printed nodeup for the others: "
                                   + repr([n.events for n in started]))
        log.info("lab cluster: full mesh of %d in %.2f s", len(started), took)
        return list(started)

    try:
        yield start
    finally:
        # Heal and thaw first: a node that is killed while frozen still dies, but the
        # next test must start on an intact network.
        if lab.is_up:
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                lab.heal()
            for i in range(1, N_NODES + 1):
                with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                    lab.thaw_node(i)
        for node in started:
            node.kill()
            node.close()
        kill_leftovers()
