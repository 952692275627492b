"""Test helpers shipped to users: simulators with a virtual clock and real-node fixtures."""

from fabric.testing.servicesim import ServiceSim

__all__ = ["ServiceSim"]
