"""The static strategy: a fixed list of node names (libcluster's Epmd strategy).

Theory of operation
-------------------
The list is reported once; the dial plan keeps dialling the names that are not connected
(with its capped backoff), which is all a static seed list needs.
"""

from __future__ import annotations

from fabric.discovery.config import StaticConfig
from fabric.discovery.source import Report

__all__ = ["StaticSource"]


class StaticSource:
    """Reports ``config.nodes`` once."""

    def __init__(self, config: StaticConfig) -> None:
        self.config = config

    async def run(self, report: Report) -> None:
        report(frozenset(self.config.nodes))
