"""A node with durable replicated keys, run as an OS process by
tests/test_ddata_durability.py (``python -m tests._ddata_durable NAME PATH MODE``).

``write``: increment the counter ``hits`` and add ``i`` to the set ``seen`` (both durable),
one local write at a time, and print ``acked <i>`` after each write returned (it is
acknowledged: its state is committed to sqlite); until killed, or 60 s.
``read``: print the restored values as one JSON line, write once more, print again, exit.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import fabric
from fabric.ddata import GCounter, Key, ORSet, Replicator

HITS = Key("hits", GCounter)
SEEN = Key("seen", ORSet)
DURABLE = ["hits", "seen"]


def state(repl: Replicator) -> dict[str, object]:
    hits, seen = repl.value(HITS), repl.value(SEEN)
    return {"hits": None if hits is None else hits.value,
            "entries": 0 if hits is None else len(hits.entries),
            "seen": [] if seen is None else sorted(seen.value)}


async def main(name: str, path: str, mode: str) -> None:
    node = fabric.Node(name, cookie="durable-test")
    await node.start()
    repl = Replicator(node, durable=DURABLE, path=path)
    try:
        if mode == "write":
            end = time.monotonic() + 60.0
            i = 0
            while time.monotonic() < end:
                await repl.update(HITS, lambda c: c.increment(1))
                await repl.update(SEEN, lambda s, i=i: s.add(i))
                print(f"acked {i}", flush=True)
                i += 1
        else:
            print(json.dumps(state(repl)), flush=True)
            await repl.update(HITS, lambda c: c.increment(1))
            print(json.dumps(state(repl)), flush=True)
    finally:
        await node.stop()
        repl.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
