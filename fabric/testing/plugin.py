"""fabric's pytest plugin: fixtures for testing your own code against a cluster.

Installed with fabric (the ``pytest11`` entry point ``fabric``), so the fixtures are there
in any project that has fabric and pytest; nothing else is needed (no pytest-asyncio).

Theory of operation
-------------------
Two kinds of cluster, for two kinds of test:

* Real nodes in the test's process (:class:`~fabric.testing.LocalCluster`): real sockets on
  127.0.0.1 and fabric's real runtime, so your processes and GenServers run as in
  production. ``fabric_cluster(n, **options)`` builds one; enter it with ``async with``
  inside a coroutine that ``fabric_run`` runs on a fresh event loop with a deadline (a hung
  test fails instead of hanging the run). :func:`~fabric.testing.partition` and
  :func:`~fabric.testing.heal` cut and restore the sessions between groups of nodes.
* The deterministic simulators (:class:`~fabric.testing.ServiceSim` for service cores,
  :class:`~fabric.testing.MeshSim` for the mesh itself): a virtual clock and a scripted
  network, no sockets, no waiting. ``fabric_sim`` and ``fabric_mesh_sim`` build them with a
  seed derived from the test's id, so a run is reproducible and each test gets its own.

Every fixture cleans up after the test (nodes are stopped by ``async with``; nothing else
holds resources).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

import pytest

from fabric.protocol.service import ServiceCore
from fabric.testing.cluster import DEFAULT_COOKIE, LocalCluster
from fabric.testing.meshsim import MeshSim
from fabric.testing.servicesim import ServiceSim

__all__ = ["fabric_cluster", "fabric_mesh_sim", "fabric_run", "fabric_seed", "fabric_sim"]

T = TypeVar("T")


@pytest.fixture
def fabric_run() -> Callable[..., Any]:
    """``fabric_run(coro, timeout=30.0)``: run ``coro`` on a new event loop and return its
    result; fail the test with ``TimeoutError`` after ``timeout`` seconds."""

    def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run(asyncio.wait_for(coro, timeout))

    return run


@pytest.fixture
def fabric_cluster() -> Callable[..., LocalCluster]:
    """``fabric_cluster(n, cookie=..., **options)``: an unstarted
    :class:`~fabric.testing.LocalCluster` of ``n`` real nodes; ``async with`` it (in
    ``fabric_run``) to get the started, fully meshed nodes. ``options`` are
    :class:`fabric.NodeConfig` fields, e.g. ``heartbeat_timeout=0.6``."""

    def make(n: int, cookie: str = DEFAULT_COOKIE, **options: Any) -> LocalCluster:
        return LocalCluster(n, cookie, **options)

    return make


@pytest.fixture
def fabric_seed(request: pytest.FixtureRequest) -> int:
    """A seed that is stable for a test (a CRC of its id) and differs between tests."""
    return zlib.crc32(request.node.nodeid.encode())


@pytest.fixture
def fabric_sim(fabric_seed: int) -> Callable[..., ServiceSim]:
    """``fabric_sim(factory, names, **options)``: a :class:`~fabric.testing.ServiceSim`
    hosting ``factory(node_name, creation)`` (a service core) on each node, seeded with
    :func:`fabric_seed` unless ``seed=`` is given."""

    def make(factory: Callable[[str, int], ServiceCore], names: Iterable[str],
             **options: Any) -> ServiceSim:
        options.setdefault("seed", fabric_seed)
        return ServiceSim(factory, names, **options)

    return make


@pytest.fixture
def fabric_mesh_sim(fabric_seed: int) -> Callable[..., MeshSim]:
    """``fabric_mesh_sim(names, **options)``: a :class:`~fabric.testing.MeshSim` of mesh
    cores (handshakes, heartbeats, partitions, freezes), seeded like :func:`fabric_sim`."""

    def make(names: list[str], **options: Any) -> MeshSim:
        options.setdefault("seed", fabric_seed)
        return MeshSim(names, **options)

    return make
