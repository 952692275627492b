"""Run every benchmark script in sequence: ``python -m bench.run_all [--quick] [--runs N]``.

Each ``bench/bench_*.py`` runs as its own subprocess (``python -m bench.<name>``), so one
that crashes or hangs cannot take the others down; a script that fails is reported and
the rest still run.  The exit status is non-zero if any failed.  ``tox -e bench`` calls
``python -m bench.run_all --quick``.

Options other than ``--only``/``--timeout`` (``--quick``, ``--runs N``) are passed to
every script.  Each script writes its own JSON under ``bench/results/``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
#: Per-script wall-clock limit in seconds (default mode; --quick uses a quarter).  The
#: largest default run (bench_mesh) takes a few minutes on 2 loaded cores.
TIMEOUT_S = 1200.0
#: Before each script, wait (at most SETTLE_MAX_S) for the 1-minute load average to fall
#: below SETTLE_LOAD, so that one script's tail (a 32-node mesh) does not load the next
#: one's figures; the load each script started at is printed in the summary.
SETTLE_LOAD = 2.0
SETTLE_MAX_S = 90.0


def settle(max_load: float = SETTLE_LOAD, max_wait: float = SETTLE_MAX_S) -> float:
    """Wait until the 1-minute load average is below ``max_load``, bounded; the load then."""
    deadline = time.monotonic() + max_wait
    load = os.getloadavg()[0]
    while load >= max_load and time.monotonic() < deadline:
        time.sleep(1.0)
        load = os.getloadavg()[0]
    return load


def scripts() -> list[str]:
    """Module names of the benchmark scripts, in a stable order (baselines first)."""
    names = sorted(p.stem for p in BENCH_DIR.glob("bench_*.py"))
    if "bench_baselines" in names:  # the floor first: it is the reference for the rest
        names.remove("bench_baselines")
        names.insert(0, "bench_baselines")
    return names


def run_script(name: str, passed: list[str], timeout: float) -> str:
    """Run ``python -m bench.<name>``; "ok", or why not.

    The script gets a session (process group) of its own, so that on a timeout the whole
    group (the script and the node processes it started) is ended by its group id, not
    only the script: killing just the script would orphan its children.
    """
    # Output goes straight through: the tables are the point.
    proc = subprocess.Popen([sys.executable, "-m", f"bench.{name}", *passed],
                            cwd=REPO_ROOT, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        return f"timed out after {timeout:g} s"
    return "ok" if rc == 0 else f"failed (exit {rc})"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scripts; print a summary; return 1 if any failed."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="passed to every script")
    parser.add_argument("--runs", type=int, default=None, help="passed to every script")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="run only these scripts (e.g. bench_oneway)")
    parser.add_argument("--timeout", type=float, default=None,
                        help=f"seconds per script (default {TIMEOUT_S:g}, a quarter "
                             "with --quick)")
    args = parser.parse_args(argv)
    passed: list[str] = []
    if args.quick:
        passed.append("--quick")
    if args.runs is not None:
        passed += ["--runs", str(args.runs)]
    timeout = args.timeout or (TIMEOUT_S / 4 if args.quick else TIMEOUT_S)
    names = scripts()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"unknown scripts: {', '.join(unknown)} (have {', '.join(names)})")
        names = [n for n in names if n in args.only]

    outcome: list[tuple[str, str, float, float]] = []
    for name in names:
        load = settle(max_wait=0.0 if args.quick else SETTLE_MAX_S)
        print(f"\n=== bench.{name} {' '.join(passed)} (load {load:.2f})", flush=True)
        t0 = time.monotonic()
        status = run_script(name, passed, timeout)
        outcome.append((name, status, time.monotonic() - t0, load))

    print("\n=== summary")
    for name, status, seconds, load in outcome:
        print(f"  {name:20s} {status:24s} {seconds:7.1f} s  started at load {load:.2f}")
    failed = [name for name, status, _, _ in outcome if status != "ok"]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
