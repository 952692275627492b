"""What every discovery strategy is to the runner: a source of node-name snapshots.

Theory of operation
-------------------
A source's ``run(report)`` calls ``report(names)`` with the complete set of names it knows
whenever that set may have changed (at least once), and returns or runs until cancelled.
Sources know nothing of nodes or the mesh; :mod:`fabric.discovery.runner` turns snapshots
into dials. Counters a source keeps (errors, refused beacons) go into the ``counters``
dict it is given, under its own prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["Report", "Source"]

Report = Callable[[frozenset[str]], None]


class Source(Protocol):
    async def run(self, report: Report) -> None: ...


def count(counters: dict[str, int], key: str, n: int = 1) -> None:
    counters[key] = counters.get(key, 0) + n
