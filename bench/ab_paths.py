"""A/B of the node's per-message Python paths, on two checkouts, alternating.

Run:  python bench/ab_paths.py --base DIR [--rounds N] [--msgs N]
      e.g. git worktree add /tmp/ab-base eb5570d
           python bench/ab_paths.py --base /tmp/ab-base --rounds 12

Theory of operation
-------------------
``bench_core`` times the receive and send paths on each checkout's own terms (before the
composed node, on a node that was never started), so its figures from two commits do not
compare the same thing. This script runs one identical measurement against either
checkout's ``fabric``: each run is a child Python with ``PYTHONPATH`` set to that
checkout, started alternately for A (``--base``) and B (this checkout), the order flipped
every round. The child starts an idle node on 127.0.0.1 (no peer: its sockets stay
quiet) and times, best of several repeats:

* receive: decode a batch frame of 1000 ``[K_SEND, pid, message]`` for one of its
  mailboxes, hand it to the node's batch dispatcher, and take every message with
  ``await proc.receive()``; per message;
* send: ``node.send`` of 1000 messages to a remote pid whose channel is an
  :class:`~fabric.outbound.Outbound` on a stub socket, then the flush; per message.

The dispatcher and the channel table have different names before and after the
composed node (D14), so the child looks both up by name (``getattr``), the only place
where the benchmark knows the old names.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def child(n_msgs: int) -> dict[str, float]:
    """The measurement, on whatever ``fabric`` this Python imports."""
    # The checkout on PYTHONPATH provides both fabric and the timing helpers (the same in
    # both trees).
    import fabric
    from bench.bench_core import BATCH, _StubSocket, best_us_per
    from fabric.outbound import Outbound
    from fabric.protocol.messages import K_SEND

    loop = asyncio.new_event_loop()
    node = fabric.Node("rx@127.0.0.1", cookie="ab-paths")
    loop.run_until_complete(node.start())
    try:
        proc = node.new_mailbox()
        reactor = getattr(node, "reactor", None)
        dispatch = reactor.dispatch if reactor is not None else getattr(node, "_dispatch", None)
        src = fabric.Pid("tx@127.0.0.1:40000", 1, 0x12345678)
        message = ("msg", src, 42, "hello")
        frame = node.codec.encode([[K_SEND, proc.self, message] for _ in range(BATCH)])
        decode = node.codec.decode

        async def drain() -> None:
            receive = proc.receive
            for _ in range(BATCH):
                await receive()

        def receive_path() -> None:
            dispatch(src.node, decode(frame), 0.0)
            loop.run_until_complete(drain())

        loops = max(1, n_msgs // BATCH)
        rx = best_us_per(receive_path, BATCH, loops)
        out = Outbound(loop, src.node, _StubSocket(), node.codec.encode,  # type: ignore[arg-type]
                       10 * BATCH, lambda: None)
        out.open = True
        channel = type("Channel", (), {"out": out})()
        channels = getattr(node, "channels", None)
        table = channels.by_peer if channels is not None else getattr(node, "_channels", {})
        table[src.node] = channel
        send = node.send

        async def send_batch() -> None:
            for _ in range(BATCH):
                send(src, message)
            await asyncio.sleep(0)  # the flush scheduled by the first send runs here

        tx = best_us_per(lambda: loop.run_until_complete(send_batch()), BATCH, loops)
        del table[src.node]
        return {"receive_us": rx, "send_us": tx}
    finally:
        loop.run_until_complete(node.stop())
        loop.close()


def run_child(tree: Path, n_msgs: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child",
                           "--msgs", str(n_msgs)], env=env, cwd="/", capture_output=True,
                          text=True, timeout=600, check=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, help="checkout of commit A")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--msgs", type=int, default=20_000, help="messages per timing")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.msgs)))
        return 0
    if args.base is None:
        parser.error("--base is required")
    trees = {"A": args.base.resolve(), "B": HERE}
    got: dict[str, dict[str, list[float]]] = {"A": {}, "B": {}}
    for rnd in range(args.rounds):
        for side in (("A", "B") if rnd % 2 == 0 else ("B", "A")):
            for key, value in run_child(trees[side], args.msgs).items():
                got[side].setdefault(key, []).append(value)
        print(f"round {rnd + 1}/{args.rounds}", flush=True)
    for key in got["A"]:
        a, b = got["A"][key], got["B"][key]
        print(f"{key:12} median A {statistics.median(a):.3f} B {statistics.median(b):.3f} "
              f"B/A {statistics.median(b) / statistics.median(a):.2f}   "
              f"best A {min(a):.3f} B {min(b):.3f} B/A {min(b) / min(a):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
