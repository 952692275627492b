"""Replicated counter throughput on 3 nodes, and the time until the replicas agree.

Run:  python -m bench.bench_ddata [--quick] [--runs N] [--out PATH]
      (or python bench/bench_ddata.py)

Three fabric nodes ``d0``..``d2`` run as separate OS processes on 127.0.0.1, in a full
mesh, each with a :class:`fabric.ddata.Replicator` (delta interval :data:`DELTA` s). From
one start instant (CLOCK_MONOTONIC, shared by the processes) each node increments the
replicated counter ``"hits"`` at level local as fast as it can for :data:`DURATION` s
(yielding to the loop every 100 updates, so deltas can leave), then records its count in
the replicated map ``"done"`` and polls its own replica every millisecond until the
counter equals the sum of the three counts.

* updates/s: all updates / DURATION, against the same workload on one node without
  peers (the local cost of the replicator), interleaved run by run.
* agreement: the last replica's agreement instant minus the last write on any node, in
  ms and in delta intervals (issue 14's target: within two intervals).
* heal: two nodes in one child process (one event loop, real sockets on 127.0.0.1) share
  :data:`HEAL_KEYS` counter keys; ``Node.block`` cuts them apart; 1% of the keys change
  on one side; then ``unblock``. The time from the unblock until the other side holds
  every changed key, and from the session being up again until then (anti-entropy
  alone: it walks the digest tree and exchanges only the changed keys); the same for 10
  changed keys. The partition starts
  in the steady state, after periodic anti-entropy rounds (:data:`HEAL_GOSSIP`) hashed
  the freshly written keys; without them the first round after the heal hashes all of
  them (600 ms more for 20,000 keys on this machine). Bytes of the same
  exchange are counted in ``bench_crdt`` (in the simulator, exactly).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # started as `python bench/bench_ddata.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _fabric as fb  # noqa: E402
from bench import _harness as h  # noqa: E402
from fabric.ddata import GCounter, Key, PNCounterMap, Replicator  # noqa: E402

DELTA = 0.2
DURATION = 2.0
START_IN_S = 10.0  # children start, connect and wait for this instant
TIMEOUT_S = 60.0
HITS = Key("hits", GCounter)
DONE = Key("done", PNCounterMap)
HEAL_KEYS = 20_000
HEAL_GOSSIP = 0.5  # anti-entropy interval in the heal runs
FAST = {"heartbeat_interval": 0.05, "heartbeat_timeout": 1.0}


async def _node_main(index: int, ports: list[int], t_go: float) -> dict[str, Any]:
    names = [fb.node_name(f"d{i}", p) for i, p in enumerate(ports)]
    async with fb.new_node(f"d{index}", ports[index]) as node:
        repl = Replicator(node, members=names, delta_interval=DELTA)
        loop = asyncio.get_running_loop()
        # The children start together: retry until the earlier ones listen.
        for peer in names[:index]:
            while not await node.connect(peer, timeout=1.0):
                if h.shared_clock() > t_go:
                    raise h.BenchError(f"cannot connect to {peer}")
                await asyncio.sleep(0.05)
        while len(node.nodes()) < len(names) - 1:
            if h.shared_clock() > t_go:
                raise h.BenchError(f"{node.name} sees only {node.nodes()} at the start")
            await asyncio.sleep(0.01)
        await asyncio.sleep(max(0.0, t_go - h.shared_clock()))
        count, stop_at = 0, t_go + DURATION
        while h.shared_clock() < stop_at:
            for _ in range(100):
                await repl.update(HITS, lambda c: c.increment(1))
            count += 100
            await asyncio.sleep(0)
        t_last = h.shared_clock()
        await repl.update(DONE, lambda m: m.increment(str(index), count))
        deadline = loop.time() + TIMEOUT_S
        while True:
            hits, done = repl.value(HITS), repl.value(DONE)
            if (hits is not None and done is not None and len(done) == len(names)
                    and hits.value == sum(done.value.values())):
                break
            if loop.time() > deadline:
                raise h.BenchError(f"{node.name} never agreed: {hits} {done}")
            await asyncio.sleep(0.001)
        t_agree = h.shared_clock()
        await asyncio.sleep(2 * DELTA)  # let the others see our last batch before we stop
    return {"count": count, "t_last": t_last, "t_agree": t_agree}


def _ddata_node(index: int, ports: list[int], t_go: float) -> dict[str, Any]:
    """Child: node ``d<index>`` of the cluster on ``ports``."""
    return fb.run_child(lambda: _node_main(index, ports, t_go))


def run_cluster(n: int) -> dict[str, float]:
    """One run on ``n`` nodes: updates/s and agreement time in ms."""
    ports = fb.free_ports(n)
    t_go = h.shared_clock() + START_IN_S
    with h.Children() as kids:
        children = [kids.function(_ddata_node, name=f"d{i}", index=i, ports=ports, t_go=t_go)
                    for i in range(n)]
        got = [child.result(TIMEOUT_S) for child in children]
    last = max(g["t_last"] for g in got)
    return {"rate": sum(g["count"] for g in got) / DURATION,
            "agree_ms": (max(g["t_agree"] for g in got) - last) * 1000.0}


async def _wait(what: str, cond: Any, timeout: float = TIMEOUT_S) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise h.BenchError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


async def _heal_main(ports: list[int], changed: int) -> dict[str, float]:
    a_node, b_node = (fb.new_node(f"h{i}", port, **FAST) for i, port in enumerate(ports))
    async with a_node as a, b_node as b:
        repl_a = Replicator(a, delta_interval=DELTA, gossip_interval=HEAL_GOSSIP)
        repl_b = Replicator(b, delta_interval=DELTA, gossip_interval=HEAL_GOSSIP)
        if not await b.connect(a.name, timeout=5.0):
            raise h.BenchError("the two nodes did not connect")
        keys = [Key(f"k{i}", GCounter) for i in range(HEAL_KEYS)]
        for key in keys:
            await repl_a.update(key, lambda c: c.increment(1))

        def b_has(keys: list[Key[GCounter]], value: int) -> bool:
            return all((v := repl_b.value(k)) is not None and v.value == value for k in keys)

        await _wait("the keys to replicate", lambda: b_has(keys, 1))
        # Steady state: a periodic anti-entropy round each way since the keys were written
        # (it hashes every key that changed since the last round: 20,000 the first time).
        rounds = [r.core.stats["gossip_rounds"] for r in (repl_a, repl_b)]
        await _wait("a gossip round", lambda: all(
            r.core.stats["gossip_rounds"] > n + 1 for r, n in zip((repl_a, repl_b), rounds,
                                                                    strict=True)))
        a.block(b.name, TIMEOUT_S)
        await _wait("the partition", lambda: not a.nodes() and not b.nodes())
        for key in keys[:changed]:
            await repl_a.update(key, lambda c: c.increment(1))
        await asyncio.sleep(2 * DELTA)  # the delta batch is flushed (to nobody)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        a.unblock(b.name)
        await _wait("the session", lambda: a.nodes() and b.nodes())
        t_up = loop.time()
        await _wait("the heal", lambda: b_has(keys[:changed], 2))
        t_done = loop.time()
        return {"total": (t_done - t0) * 1000.0, "converge": (t_done - t_up) * 1000.0}


def _heal(ports: list[int], changed: int) -> dict[str, float]:
    """Child: ms from unblock until ``changed`` keys re-converged, and from the session
    being up again until then."""
    return fb.run_child(lambda: _heal_main(ports, changed))


def heal_ms(changed: int) -> dict[str, float]:
    with h.Children() as kids:
        child = kids.function(_heal, name="heal", ports=fb.free_ports(2), changed=changed)
        result: dict[str, float] = child.result(TIMEOUT_S)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = h.parse_args(__doc__, argv)
    report = h.Report("bench_ddata", args)
    got = h.run_interleaved({"one": lambda: run_cluster(1), "three": lambda: run_cluster(3),
                             "heal": lambda: heal_ms(HEAL_KEYS // 100),
                             "heal10": lambda: heal_ms(10)}, args.runs)
    report.add("1 node, no peers", "rate", "updates/s", [r["rate"] for r in got["one"]])
    report.add("3 nodes, all writing", "rate", "updates/s", [r["rate"] for r in got["three"]],
               baseline="1 node, no peers")
    report.add("3 nodes: last write -> all agree", "agreement", "ms",
               [r["agree_ms"] for r in got["three"]],
               note=f"delta interval {DELTA * 1000:.0f} ms")
    for what, runs in ((f"10 of {HEAL_KEYS} keys", got["heal10"]),
                       (f"1% of {HEAL_KEYS} keys", got["heal"])):
        report.add(f"heal, {what} changed: unblock -> converged", "heal", "ms",
                   [r["total"] for r in runs])
        report.add(f"heal, {what} changed: session up -> converged", "heal", "ms",
                   [r["converge"] for r in runs], note="anti-entropy alone")
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
