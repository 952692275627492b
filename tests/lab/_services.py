"""pg and global probes for the lab, loaded into a node through its REPL (``runpy``).

:func:`reporter` runs as a fabric process and prints, every ``interval`` seconds, what this
node sees of the group ``"lab"`` (pg) and of the global name ``"lab_name"`` as a
``lab_views`` JSON line, which the test reads like the node's own events. :func:`idle` is a
process that only exists (a pg member, a global name's owner); :func:`register` registers
the global name and prints the answer as ``lab_registered``.
"""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

emit = runpy.run_path(str(Path(__file__).with_name("_sender.py")))["emit"]

GROUP = "lab"
NAME = "lab_name"


async def idle(proc: Any) -> None:
    """Wait for ``"stop"`` (at most an hour: every loop in the lab is bounded)."""
    await proc.receive(timeout=3600.0, match=lambda m: m == "stop", default=None)


async def reporter(proc: Any, interval: float) -> None:
    """Print this node's pg and global views every ``interval`` s until ``"stop"``."""
    node = proc.node
    for _ in range(int(3600 / interval)):
        emit("lab_views", members=sorted(str(p) for p in node.pg.get_members(GROUP)),
             whereis=str(node.global_.whereis_name(NAME)), nodes=node.nodes())
        if await proc.receive(timeout=interval, default=None) == "stop":
            return


async def register(node: Any, pid: Any) -> None:
    """Register :data:`NAME` for ``pid`` and print the answer."""
    emit("lab_registered", result=await node.global_.register_name(NAME, pid),
         pid=str(pid))
