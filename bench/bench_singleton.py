"""Cluster singletons: failover after kill -9, and calls lost during a graceful hand-over.

Run:  python -m bench.bench_singleton [--quick] [--runs N] [--out PATH]
      (or python bench/bench_singleton.py)

Three candidate nodes run as OS processes on 127.0.0.1 (``fabric node --run
nodes.demo_member:start_singleton_candidate``, default settings: heartbeat 0.2 s, timeout
1 s), each a candidate for the demo's singleton ``"tickets"`` (a counter); this process
runs a client node with an observer (``Singleton(node, name, None)``). Runs alternate
between:

* **kill -9**: SIGKILL to the host's process, then ``Singleton.call(retry_unsure=True)``
  until an instance answers. Reported: the time from the kill to the answer, next to the
  time from the kill to the new host's own ``nodedown`` of the old one (its stdout event,
  same CLOCK_MONOTONIC) in the same run, and their difference (the goal: under 20 ms).
* **graceful**: four callers call the singleton back to back; SIGTERM to the host (it
  drains and hands the instance over with its state). Reported: calls that failed (the
  goal: 0), whether the counter went on without a gap or a repeat, and the slowest call
  of the run next to the median call before the stop (the hand-over pause).

After each run the lost node is replaced by a fresh one, so every run has three
candidates. There is no raw pyzmq baseline: the rows compare to detection and to plain
calls measured in the same run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if not __package__:  # started as `python bench/bench_singleton.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fabric  # noqa: E402
from bench import _harness as h  # noqa: E402
from fabric.testing import NodeProcess, free_port  # noqa: E402
from fabric.testing.cluster import DEFAULT_COOKIE  # noqa: E402
from nodes.demo_member import SINGLETON as NAME  # noqa: E402

#: The demo's singleton (``"next"`` -> the next number, ``"where"`` -> its node; the number
#: moves with a hand-over), started once three candidates met.
CANDIDATE = "nodes.demo_member:start_singleton_candidate"

CANDIDATES = 3
CALLERS = 4
CALLS_AROUND_STOP = 200  # calls answered before the stop, and again after the hand-over
TIMEOUT_S = 30.0


class Cluster:
    """The candidate processes, replaced as they are killed or stopped."""

    def __init__(self, client: fabric.Node) -> None:
        self.client = client  # every candidate joins through it (it never stops)
        self.procs: list[NodeProcess] = []
        self._count = 0

    async def add(self) -> NodeProcess:
        proc = NodeProcess(f"cand{self._count}", connect=[self.client.name],
                           extra_args=["--run", CANDIDATE])
        self._count += 1
        proc.start()
        await asyncio.to_thread(proc.wait_ready, 20)
        self.procs.append(proc)
        deadline = time.monotonic() + TIMEOUT_S
        want = {p.name for p in self.procs}
        while not want <= set(self.client.nodes()) or any(
                set(p.nodes()) != want - {p.name} | {self.client.name} for p in self.procs):
            if time.monotonic() > deadline:
                raise h.BenchError(f"no full mesh with {proc.name}")
            await asyncio.sleep(0.05)
        return proc

    def by_name(self, name: str) -> NodeProcess:
        return next(p for p in self.procs if p.name == name)

    def remove(self, proc: NodeProcess) -> None:
        self.procs.remove(proc)
        proc.kill()
        proc.close()

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.close()


async def failover(cluster: Cluster, counter: fabric.Singleton) -> dict[str, float]:
    where = await counter.call("where", timeout=TIMEOUT_S)
    victim = cluster.by_name(where)
    await asyncio.sleep(0.3)  # a few heartbeats: a settled cluster
    t_kill = h.shared_clock()
    os.kill(victim.pid, signal.SIGKILL)
    new_where = await counter.call("where", timeout=TIMEOUT_S, retry_unsure=True)
    t_answer = h.shared_clock()
    assert new_where != where, "the answer came from the killed node"
    new_host = cluster.by_name(new_where)
    down = await asyncio.to_thread(new_host.wait_nodedown, where, TIMEOUT_S)
    cluster.remove(victim)
    return {"answer_ms": (t_answer - t_kill) * 1e3,
            "detect_ms": (float(down["t"]) - t_kill) * 1e3}


async def handover(cluster: Cluster, counter: fabric.Singleton) -> dict[str, float]:
    where = await counter.call("where", timeout=TIMEOUT_S)
    host = cluster.by_name(where)
    answers: list[int] = []
    latencies: list[tuple[float, float]] = []  # (started, seconds)
    failures: list[str] = []
    stop = asyncio.Event()

    async def caller() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                answers.append(await counter.call("next", timeout=TIMEOUT_S))
            except Exception as exc:  # every failure is a lost call
                failures.append(repr(exc))
            latencies.append((t0, time.monotonic() - t0))

    tasks = [asyncio.ensure_future(caller()) for _ in range(CALLERS)]
    deadline = time.monotonic() + TIMEOUT_S
    while len(answers) < CALLS_AROUND_STOP and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    t_stop = time.monotonic()
    before = [s for t, s in latencies if t < t_stop]
    os.kill(host.pid, signal.SIGTERM)
    at_stop = len(answers)
    while len(answers) < at_stop + CALLS_AROUND_STOP and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.gather(*tasks)
    await asyncio.to_thread(host.wait_exit, TIMEOUT_S)
    cluster.remove(host)
    first = min(answers)
    in_order = sorted(answers) == list(range(first, first + len(answers)))
    return {"lost": float(len(failures)), "calls": float(len(answers)),
            "counter_continuous": float(in_order),
            "median_call_ms": statistics.median(before) * 1e3,
            "slowest_call_ms": max(s for _, s in latencies) * 1e3}


async def run(runs: int) -> dict[str, list[dict[str, float]]]:
    got: dict[str, list[dict[str, float]]] = {"kill9": [], "graceful": []}
    async with fabric.Node(f"client@127.0.0.1:{free_port()}",
                           cookie=DEFAULT_COOKIE) as client:
        counter = await fabric.Singleton(client, NAME, None).start()
        cluster = Cluster(client)
        try:
            for _ in range(CANDIDATES):
                await cluster.add()
            for i in range(2 * runs):  # alternate A and B
                kind = "kill9" if i % 2 == 0 else "graceful"
                result = await (failover if kind == "kill9" else handover)(cluster, counter)
                print(f"  {kind}: {result}", file=sys.stderr, flush=True)
                got[kind].append(result)
                await cluster.add()
        finally:
            cluster.close()
    return got


def main(argv: Sequence[str] | None = None) -> int:
    args = h.parse_args(__doc__, argv)
    report = h.Report("bench_singleton", args)
    got = asyncio.run(run(args.runs))
    kills, graceful = got["kill9"], got["graceful"]
    report.add("kill -9 -> new host's nodedown", "failover", "ms",
               [r["detect_ms"] for r in kills])
    report.add("kill -9 -> new instance answers", "failover", "ms",
               [r["answer_ms"] for r in kills], baseline="kill -9 -> new host's nodedown")
    report.add("answer after detection", "failover", "ms",
               [r["answer_ms"] - r["detect_ms"] for r in kills], note="goal: under 20 ms")
    report.add("graceful hand-over", "lost calls", "count", [r["lost"] for r in graceful],
               note=f"of {sum(r['calls'] for r in graceful):g} calls by {CALLERS} callers; "
                    "goal 0")
    report.add("graceful hand-over", "counter continuous", "bool",
               [r["counter_continuous"] for r in graceful],
               note="1: no count lost or repeated (the state moved)")
    report.add("call before the stop", "latency", "ms",
               [r["median_call_ms"] for r in graceful])
    report.add("slowest call of the run", "latency", "ms",
               [r["slowest_call_ms"] for r in graceful], baseline="call before the stop",
               note="the hand-over pause a caller sees")
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
