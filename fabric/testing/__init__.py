"""Test helpers shipped to users: simulators with a virtual clock and real-node fixtures."""

from fabric.testing.cluster import (
    LocalCluster,
    NodeProcess,
    ProcessCluster,
    async_wait_until,
    child_pythonpath,
    free_port,
    free_ports,
    kill_leftovers,
    process_memory,
    wait_until,
)
from fabric.testing.servicesim import ServiceSim

__all__ = [
    "LocalCluster",
    "NodeProcess",
    "ProcessCluster",
    "ServiceSim",
    "async_wait_until",
    "child_pythonpath",
    "free_port",
    "free_ports",
    "kill_leftovers",
    "process_memory",
    "wait_until",
]
