"""Test helpers shipped to users: simulators with a virtual clock and real-node fixtures.

The pytest fixtures built on them are in :mod:`fabric.testing.plugin` (loaded by pytest
through fabric's ``pytest11`` entry point).
"""

from fabric.testing.cluster import (
    LocalCluster,
    NodeProcess,
    ProcessCluster,
    async_wait_until,
    child_pythonpath,
    free_port,
    free_ports,
    heal,
    kill_leftovers,
    partition,
    process_memory,
    wait_until,
)
from fabric.testing.logcapture import capture_logs
from fabric.testing.meshsim import MeshSim
from fabric.testing.processsim import ProcessSim
from fabric.testing.servicesim import ServiceSim
from fabric.testing.singletonsim import SingletonSim

__all__ = [
    "LocalCluster",
    "MeshSim",
    "NodeProcess",
    "ProcessCluster",
    "ProcessSim",
    "ServiceSim",
    "SingletonSim",
    "async_wait_until",
    "capture_logs",
    "child_pythonpath",
    "free_port",
    "free_ports",
    "heal",
    "kill_leftovers",
    "partition",
    "process_memory",
    "wait_until",
]
