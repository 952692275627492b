"""Probe: the per-message cost of delivery, in one process, for A/B runs of two trees.

Run:  python -m bench.probe_delivery   (or PYTHONPATH=<tree> python bench/probe_delivery.py)
      python -m bench.probe_delivery --paths   (one tree: old and new delivery paths)

Not part of ``run_all``: it prints one JSON line, the best of 7 repetitions in
microseconds per message of a local ``node.send`` to a mailbox (``local_send_us``), of
``node.reactor.dispatch`` of a 1000-message ``K_SEND_TUPLE`` batch (``dispatch_us``: the
receiving node's side of a remote send, without the socket), and of a remote
``node.send`` with the flush of each turn's 1000 messages (``remote_send_us``). Run it
alternately in two checkouts to compare them (docs/PERFORMANCE.md, D23). The mailboxes
get a bound far above what the probe queues where the tree has one.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import timeit
from pathlib import Path
from typing import Any

if not __package__:  # started as a script: import the tree it sits in
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fabric import Node  # noqa: E402
from fabric.protocol.messages import K_SEND_TUPLE  # noqa: E402
from fabric.testing import free_port  # noqa: E402

ROUNDS = 7


def _mailbox(node: Node) -> Any:
    try:
        return node.new_mailbox(mailbox_limit=10**9)  # type: ignore[call-arg,unused-ignore]
    except TypeError:  # a tree without the mailbox bound
        return node.new_mailbox()


async def _probe() -> dict[str, float]:
    a = Node(f"a@127.0.0.1:{free_port()}", cookie="probe")
    b = Node(f"b@127.0.0.1:{free_port()}", cookie="probe")
    await a.start()
    await b.start()
    try:
        assert await a.connect(b.name)
        box_a, box_b = _mailbox(a), _mailbox(b)
        msg = ("msg", box_a.self, 42, "hello")
        batch = [[K_SEND_TUPLE, box_b.self, "msg", 1, 42, "hello"] for _ in range(1000)]
        best = {"local_send_us": float("inf"), "dispatch_us": float("inf"),
                "remote_send_us": float("inf")}
        for _ in range(ROUNDS):
            t = time.perf_counter()
            for _ in range(20):
                for _ in range(4000):
                    a.send(box_a.self, msg)
                box_a.mailbox.clear()
            best["local_send_us"] = min(best["local_send_us"],
                                        (time.perf_counter() - t) / 80_000 * 1e6)
            t = time.perf_counter()
            for _ in range(80):
                b.reactor.dispatch(a.name, batch, 0.0)
                box_b.mailbox.clear()
            best["dispatch_us"] = min(best["dispatch_us"],
                                      (time.perf_counter() - t) / 80_000 * 1e6)
            t = time.perf_counter()
            for _ in range(40):
                for _ in range(1000):
                    a.send(box_b.self, msg)
                await asyncio.sleep(0)
            best["remote_send_us"] = min(best["remote_send_us"],
                                         (time.perf_counter() - t) / 40_000 * 1e6)
            await asyncio.sleep(0.2)  # let b take the round's messages
            box_b.mailbox.clear()
        return best
    finally:
        await a.stop()
        await b.stop()


async def _paths() -> dict[str, float]:
    """In a tree with the bound, in one process: the unbounded delivery the node still
    uses for its own messages (``ProcessTable.deliver_pid``, the old path of every
    message) against the bounded ones, timeit's best of 15, us per message."""
    node = Node(f"a@127.0.0.1:{free_port()}", cookie="probe")
    await node.start()
    try:
        box = node.new_mailbox(mailbox_limit=10**9)  # type: ignore[call-arg,unused-ignore]
        pid, msg, clear = box.self, ("msg", 1), box.mailbox.clear
        paths = {"deliver_pid_us": lambda: node.processes.deliver_pid(pid, msg),
                 "deliver_remote_us": lambda: node.mailboxes.deliver_remote("p", pid, msg),
                 "send_local_us": lambda: node.mailboxes.send_local(pid, msg)}
        best = dict.fromkeys(paths, float("inf"))
        for _ in range(3):
            for name, call in paths.items():
                def run(call: Any = call) -> None:
                    for _ in range(1000):
                        call()
                    clear()
                t = min(timeit.repeat(run, number=20, repeat=15)) / 20_000 * 1e6
                best[name] = min(best[name], t)
        return best
    finally:
        await node.stop()


def main() -> int:
    probe = _paths if "--paths" in sys.argv[1:] else _probe
    print(json.dumps(asyncio.run(probe())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
