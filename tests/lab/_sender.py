"""A traffic source for the lab, loaded into a node through its REPL (``runpy.run_path``).

:func:`sender` runs as a fabric process on one node: it sends ``(i, its pid)`` for
i = 0, 1, 2... to the ``"echo"`` process of another node at a fixed pace, and prints every
``("echo", i)`` that comes back as a JSON line on stdout, which the test reads like the
node's own events. It keeps sending whether or not the peer is reachable: a send never
blocks or raises for a node that is down (as in Erlang), and the messages sent meanwhile
may be lost, which is what the test wants to observe.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from fabric.errors import FabricError

GRACE = 1.0  # seconds to keep collecting echoes after "stop"


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout, in one write: the REPL thread writes its prompts to the same
    stream, and ``print`` writes the text and the newline separately."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def sender(proc: Any, target_node: str, interval: float) -> None:
    """Send numbered messages to ``("echo", target_node)`` every ``interval`` seconds until
    the message ``"stop"``; then collect late echoes for :data:`GRACE` seconds and print
    ``lab_sender_done`` with how many were sent and how many sends raised."""
    loop = proc.node.loop
    sent = errors = 0
    next_at = loop.time()
    stop_at: float | None = None
    while stop_at is None or loop.time() < stop_at:
        now = loop.time()
        if stop_at is None and now >= next_at:
            try:
                proc.send(("echo", target_node), (sent, proc.self))
            except FabricError:  # backpressure while the peer is unreachable: a gap
                errors += 1
            sent += 1
            next_at += interval
        wake = stop_at if stop_at is not None else next_at
        msg = await proc.receive(timeout=max(0.0, wake - loop.time()), default=None)
        if msg == "stop":
            stop_at = loop.time() + GRACE
        elif type(msg) is tuple and len(msg) == 2 and msg[0] == "echo":
            emit("lab_echo", n=msg[1])
    emit("lab_sender_done", sent=sent, errors=errors)
