"""Local restart of a crashed child by a supervisor, next to spawning a fresh process.

Run:  python -m bench.bench_supervisor [--quick] [--runs N] [--no-failover] [--out PATH]
      (or python bench/bench_supervisor.py)

One in-process node (no peers). A child process announces itself to a collector mailbox
as soon as it runs.

* restart: a ``one_for_one`` supervisor with one permanent child; the collector sends the
  child ``"crash"`` (it raises) and waits for the next incarnation's announcement. The
  figure is the time from the send to the announcement: the crash, the exit signal to the
  supervisor, the core's plan, the linked spawn with the name registered again, and the
  new process's first step.
* spawn: the baseline, in the same run, alternated: ``node.spawn`` of the same function
  and the time to its announcement.

Each run times N cycles and reports their p50 and p99; the table gives the medians over
the runs and the ratio restart / spawn (above 1: slower than a bare spawn). Logging is
set to "critical" in both, so the crash's two error log lines are not printed.

Distributed failover (``--no-failover`` skips it): three member nodes of a
:class:`~fabric.DistributedSupervisor` and a hidden observer node, each an OS process.
The observer has a member start a child (a GenServer registered globally) whose key the
hash ring gives to the victim, calls it once, and the parent sends the victim SIGKILL.
Two times from the kill, on one clock (CLOCK_MONOTONIC, shared by the processes):

* detection: until the observer's ``NodeDown`` for the victim (``connection_closed``);
* failover: until a call to the child's global name is answered from a survivor (the
  observer retries the call in a tight loop). The survivors detect the death as the
  observer does; the difference is what failover adds to detection: the pg leave, the
  takeover decision, the start, the global registration and the call.

Horde's distributed supervisor, for comparison, restarts after its CRDT sync has
propagated the death (docs/DECISIONS.md D28); the issue's target is detection plus
under 20 ms.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # started as `python bench/bench_supervisor.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fabric  # noqa: E402
from bench import _fabric as fb  # noqa: E402
from bench import _harness as h  # noqa: E402
from fabric.logs import configure_logging  # noqa: E402

#: Longest wait for one announcement before the run fails.
ANNOUNCE_TIMEOUT_S = 5.0


async def _announcing(proc: fabric.Process, collector: fabric.Pid) -> None:
    """Tell ``collector`` it runs; then crash on ``"crash"``, end on ``"quit"``."""
    proc.send(collector, ("up", proc.self))
    while True:
        msg = await proc.receive()
        if msg == "crash":
            raise RuntimeError("crash requested by the benchmark")
        if msg == "quit":
            return


async def _cycles(kind: str, n: int) -> dict[str, float]:
    async with fb.new_node("sup", h.free_port()) as node:
        collector = node.new_mailbox()
        spec = fabric.ChildSpec("w", _announcing, args=(collector.self,), name="w")
        if kind == "restart":
            await fabric.Supervisor.start(node, [spec], intensity=n + 1, period=3600)
            await collector.receive(timeout=ANNOUNCE_TIMEOUT_S)
        samples_ns: list[int] = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            if kind == "restart":
                node.send("w", "crash")
            else:
                node.spawn(_announcing, collector.self)
            _, pid = await collector.receive(timeout=ANNOUNCE_TIMEOUT_S)
            samples_ns.append(time.perf_counter_ns() - t0)
            if kind == "spawn":
                node.send(pid, "quit")  # untimed: the fresh processes do not pile up
        samples_ns.sort()
        return {"p50_us": h.percentile(samples_ns, 50) / 1000.0,
                "p99_us": h.percentile(samples_ns, 99) / 1000.0}


# -- distributed failover ---------------------------------------------------------------------

GROUP = "bench_dsup"
SETTLE_S = 15.0  # longest the members and the observer may take to come together


@fabric.export
class Pinger(fabric.GenServer):
    """The supervised child: answers ``"ping"`` with its node's name."""

    async def handle_call(self, request: Any, from_: fabric.From) -> Any:
        return self.node.name


@fabric.export
async def start_pinger(proc: fabric.Process, reply_to: fabric.Pid, key: str) -> None:
    """Start the child ``key`` from this node's member; send ``("started", node)``."""
    sup = fabric.DistributedSupervisor(proc.node, GROUP)
    spec = fabric.DistributedChildSpec(key, "bench.bench_supervisor:Pinger",
                                       name=fabric.GlobalName(key))
    node_name, _ = await sup.start_child(spec)
    proc.send(reply_to, ("started", node_name))


async def _member_main(index: int, port: int, seeds: list[str]) -> None:
    async with fb.new_node(f"m{index}", port) as node:  # a name is unique per host
        for seed in seeds:
            if not await node.connect(seed, timeout=SETTLE_S):
                raise h.BenchError(f"cannot connect: {node.last_connect_error(seed)}")
        await fabric.DistributedSupervisor.start(node, GROUP)
        h.emit("ready", node=node.name)
        await asyncio.sleep(SETTLE_S * 4)  # until killed, or the parent ends it


def _member(index: int, port: int, seeds: list[str]) -> None:
    """Child: a member node of the distributed supervisor (the parent ends it)."""
    fb.run_child(lambda: _member_main(index, port, seeds))


async def _observer_main(port: int, members: list[str], victim: str) -> dict[str, Any]:
    from fabric.dsupervisor import SCOPE
    from fabric.protocol.hashring import HashRing

    async with fb.new_node("obs", port, hidden=True) as node:
        for m in members:
            if not await node.connect(m, timeout=SETTLE_S):
                raise h.BenchError(f"cannot connect: {node.last_connect_error(m)}")
        deadline = time.monotonic() + SETTLE_S
        while {p.node for p in node.pg.get_members(GROUP, scope=SCOPE)} != set(members):
            if time.monotonic() > deadline:
                raise h.BenchError("the members never formed the group")
            await asyncio.sleep(0.01)
        ring = HashRing(sorted(members))
        key = next(k for k in (f"k{i}" for i in range(10_000)) if ring.lookup(k) == victim)
        inbox = node.new_mailbox()
        await node.spawn_on(members[0], "bench.bench_supervisor:start_pinger", inbox.self, key)
        started = await inbox.receive(timeout=SETTLE_S)
        if started != ("started", victim):
            raise h.BenchError(f"the child started elsewhere: {started!r}")
        name = fabric.GlobalName(key)
        if await fabric.call(node, name, "ping") != victim:
            raise h.BenchError("the child does not answer from the victim")
        events = node.monitor_nodes()
        down: asyncio.Future[float] = asyncio.get_running_loop().create_future()

        async def watch() -> None:  # the detection, concurrently with the calls
            async for event in events:
                if isinstance(event, fabric.NodeDown) and event.node == victim:
                    down.set_result(h.shared_clock())
                    return

        watcher = asyncio.get_running_loop().create_task(watch())
        h.emit("armed")
        t_answer = None
        end = time.monotonic() + SETTLE_S
        while t_answer is None and time.monotonic() < end:
            try:
                where = await fabric.call(node, name, "ping", timeout=0.5)
            except fabric.FabricError:
                where = None
                await asyncio.sleep(0)  # the name is gone until the takeover registers it
            if where is not None and where != victim:
                t_answer = h.shared_clock()
        t_down = await asyncio.wait_for(down, SETTLE_S)
        watcher.cancel()
        events.close()
        if t_answer is None:
            raise h.BenchError("the child never answered from a survivor")
        return {"t_down": t_down, "t_answer": t_answer}


def _observer(port: int, members: list[str], victim: str) -> dict[str, Any]:
    """Child: the hidden observer; reports when it saw the victim down and the child back."""
    return fb.run_child(lambda: _observer_main(port, members, victim))


def failover() -> dict[str, float]:
    """One kill -9 of the member that holds the child: detection and failover, in ms."""
    with h.Children() as kids:
        first = kids.function(_member, index=0, port=fb.free_port(), seeds=[])
        names = [first.expect("ready", SETTLE_S)["node"]]
        others = [kids.function(_member, index=i, port=fb.free_port(), seeds=names)
                  for i in (1, 2)]
        names += [o.expect("ready", SETTLE_S)["node"] for o in others]
        members = [first, *others]
        victim = 1  # any member but the one the observer asks to start the child
        obs = kids.function(_observer, port=fb.free_port(), members=names,
                            victim=names[victim])
        obs.expect("armed", SETTLE_S * 2)
        t_kill = h.shared_clock()
        os.kill(members[victim].pid, signal.SIGKILL)
        got = obs.result(SETTLE_S * 2)
    return {"detect_ms": (got["t_down"] - t_kill) * 1000.0,
            "failover_ms": (got["t_answer"] - t_kill) * 1000.0}


def _run(kind: str, n: int) -> Any:
    # The crash is logged twice (process_crashed, child_terminated) at error level; the
    # figure is the supervision, not the terminal's speed at printing tracebacks.
    configure_logging("critical")
    return asyncio.run(_cycles(kind, n))


def main(argv: Sequence[str] | None = None) -> int:
    """Measure restart and spawn, alternated; print the table and write the JSON."""
    parser = h.make_parser(__doc__)
    parser.add_argument("--no-failover", action="store_true",
                        help="skip the distributed failover (OS processes)")
    args = h.parse_args(__doc__, argv, parser)
    n = h.sized(args, full=2_000, quick=300)
    report = h.Report("bench_supervisor", args)
    got = h.run_interleaved({"spawn": lambda: _run("spawn", n),
                             "restart": lambda: _run("restart", n)}, args.runs)
    for metric in ("p50", "p99"):
        key = f"{metric}_us"
        report.add("spawn fresh process", metric, "us", [r[key] for r in got["spawn"]])
        report.add("supervisor restart", metric, "us", [r[key] for r in got["restart"]],
                   baseline="spawn fresh process", note=f"{n} cycles per run")
    if not args.no_failover:
        runs = h.run_repeated(failover, args.runs, "failover")
        report.add("kill -9 -> NodeDown (detection)", "time", "ms",
                   [r["detect_ms"] for r in runs])
        report.add("kill -9 -> child answers on a survivor", "time", "ms",
                   [r["failover_ms"] for r in runs], note="1 child, 3 members")
        report.add("failover minus detection", "time", "ms",
                   [r["failover_ms"] - r["detect_ms"] for r in runs])
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
