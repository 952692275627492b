"""Local restart of a crashed child by a supervisor, next to spawning a fresh process.

Run:  python -m bench.bench_supervisor [--quick] [--runs N] [--out PATH]
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
"""

from __future__ import annotations

import asyncio
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


def _run(kind: str, n: int) -> Any:
    # The crash is logged twice (process_crashed, child_terminated) at error level; the
    # figure is the supervision, not the terminal's speed at printing tracebacks.
    configure_logging("critical")
    return asyncio.run(_cycles(kind, n))


def main(argv: Sequence[str] | None = None) -> int:
    """Measure restart and spawn, alternated; print the table and write the JSON."""
    args = h.parse_args(__doc__, argv)
    n = h.sized(args, full=2_000, quick=300)
    report = h.Report("bench_supervisor", args)
    got = h.run_interleaved({"spawn": lambda: _run("spawn", n),
                             "restart": lambda: _run("restart", n)}, args.runs)
    for metric in ("p50", "p99"):
        key = f"{metric}_us"
        report.add("spawn fresh process", metric, "us", [r[key] for r in got["spawn"]])
        report.add("supervisor restart", metric, "us", [r[key] for r in got["restart"]],
                   baseline="spawn fresh process", note=f"{n} cycles per run")
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
