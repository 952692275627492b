"""A CRDT workload for the lab, loaded into a node through its REPL (``runpy.run_path``).

:func:`start` creates the node's :class:`fabric.ddata.Replicator` and a task that, until
told to stop, increments the counter ``"hits"`` (level local: applied and acknowledged
here at once) and adds a unique element to the set ``"seen"`` at level majority,
remembering which adds were acknowledged. :func:`report` prints the node's current values
and its tallies as one JSON line on stdout, which the test reads like the node's events.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from fabric.ddata import MAJORITY, GCounter, Key, ORSet, Replicator
from fabric.errors import ConsistencyError

HITS = Key("hits", GCounter)
SEEN = Key("seen", ORSet)


def _line(event: str, **fields: Any) -> None:
    # One write per line: the REPL thread writes its prompts to the same stream.
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def start(node: Any, members: list[str], interval: float) -> dict[str, Any]:
    repl = Replicator(node, members=members, delta_interval=0.1, gossip_interval=0.5)
    work: dict[str, Any] = {"repl": repl, "stop": False, "increments": 0, "tried": [],
                            "acked": [], "done": False}

    async def run() -> None:
        i = 0
        while not work["stop"]:
            await repl.update(HITS, lambda c: c.increment(1))
            work["increments"] += 1
            element = f"{node.name}#{i}"
            work["tried"].append(element)
            try:
                await repl.update(SEEN, lambda s, e=element: s.add(e), write=MAJORITY,
                                  timeout=1.0)
                work["acked"].append(element)
            except ConsistencyError:
                pass  # applied here, spreads later; just not acknowledged by a majority
            i += 1
            await asyncio.sleep(interval)
        work["done"] = True

    work["task"] = node.loop.create_task(run())
    return work


def report(work: dict[str, Any]) -> None:
    repl = work["repl"]
    hits, seen = repl.value(HITS), repl.value(SEEN)
    _line("dd_state", done=work["done"], increments=work["increments"],
          tried=work["tried"], acked=work["acked"],
          hits=None if hits is None else hits.value,
          seen=None if seen is None else sorted(seen.value))
