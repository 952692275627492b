"""The slow consumer of tests/io/test_slow_consumer.py, spawned by name on a node that
runs in another OS process (``"tests._slow_consumer:gated_sink"``)."""

from __future__ import annotations

from typing import Any

import fabric
from fabric import Down, Pid, Process


@fabric.export
async def gated_sink(proc: Process, gate: Pid, report_to: Pid) -> None:
    """Read nothing until ``gate`` ends (its ``Down`` is a signal, which the bound never
    refuses); then take every message until ``"end"`` and report ``("drained", count,
    counters)``: how many it took, and its node's mailbox counters."""
    ref = proc.monitor(gate)
    await proc.receive(match=lambda m: type(m) is Down and m.ref == ref)
    count = 0
    while True:
        msg: Any = await proc.receive()
        if msg == "end":
            break
        count += 1
    metrics = proc.node.metrics
    proc.send(report_to, ("drained", count, {
        k: metrics[k] for k in ("mailbox_dropped", "busy_sent", "bad_input")}))
