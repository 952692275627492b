"""A/B: the same benchmark scripts on two checkouts, alternating, in one session.

Run:  python -m bench.ab --base DIR [--rounds N] [--only bench_oneway ...] [SCRIPT ARGS]
      e.g. git worktree add /tmp/ab-base eb5570d
           python -m bench.ab --base /tmp/ab-base --rounds 4 --quick --runs 1

Theory of operation
-------------------
The machine's speed swings by tens of percent from minute to minute (other work shares
its cores), so a figure measured on commit A an hour before commit B says little. This
driver runs each script on A (the ``--base`` checkout) and on B (this checkout) back to
back, round after round, flipping which goes first every round, so both see the same
machine. Each run is ``python -m bench.<script>`` in that checkout (its own fabric and its
own copy of the script, as the script's child nodes import from their parent's path),
writing its JSON to a temporary folder. At the end every (measurement, metric) row that
both sides report is listed with A's and B's median over the rounds (each round's value
being that run's median) and B/A, and the best round of each side (the lowest latency,
the highest rate: noise only ever slows a run down) and its B/A; for latencies below 1
is better, for rates above 1.
Arguments not known here (``--quick``, ``--runs N``...) are passed to every script.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
HERE = BENCH_DIR.parent
LOWER_IS_BETTER = ("us", "ms", "s", "MiB", "count")  # units (before any "/msg")
DEFAULT_SCRIPTS = ("bench_oneway", "bench_call", "bench_broadcast", "bench_global",
                   "bench_failure")


def run_one(tree: Path, script: str, passed: list[str], out: Path, timeout: float) -> bool:
    """Run ``script`` in checkout ``tree``; True if it wrote its JSON."""
    cmd = [sys.executable, "-m", f"bench.{script}", *passed, "--out", str(out)]
    try:
        done = subprocess.run(cmd, cwd=tree, timeout=timeout, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        print(f"  {script} in {tree}: timed out", flush=True)
        return False
    if done.returncode != 0 or not out.exists():
        print(f"  {script} in {tree}: exit {done.returncode}\n{done.stderr[-2000:]}",
              flush=True)
        return False
    return True


def medians(path: Path) -> dict[tuple[str, str, str], float]:
    """``(name, metric, unit) -> median`` of every row of one result file."""
    data = json.loads(path.read_text())
    return {(r["name"], r["metric"], r["unit"]): float(r["median"]) for r in data["rows"]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="checkout of commit A")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="+", default=list(DEFAULT_SCRIPTS), metavar="NAME")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument("--json", type=Path, default=None, help="write the table here too")
    args, passed = parser.parse_known_args(argv)
    trees = {"A": args.base.resolve(), "B": HERE}
    values: dict[str, dict[str, dict[tuple[str, str, str], list[float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="fabric-ab-") as tmp:
        for rnd in range(args.rounds):
            order = ("A", "B") if rnd % 2 == 0 else ("B", "A")
            for script in args.only:
                for side in order:
                    out = Path(tmp) / f"{script}.{side}.{rnd}.json"
                    print(f"round {rnd + 1}/{args.rounds} {script} {side}", flush=True)
                    if run_one(trees[side], script, passed, out, args.timeout):
                        per = values.setdefault(script, {}).setdefault(side, {})
                        for key, value in medians(out).items():
                            per.setdefault(key, []).append(value)
    table: list[dict[str, Any]] = []
    for script, sides in values.items():
        for key, a_vals in sides.get("A", {}).items():
            b_vals = sides.get("B", {}).get(key)
            if not b_vals:
                continue
            a, b = statistics.median(a_vals), statistics.median(b_vals)
            table.append({"script": script, "name": key[0], "metric": key[1],
                          "unit": key[2], "A": a, "B": b, "B/A": b / a if a else None,
                          "A_runs": a_vals, "B_runs": b_vals})
    for row in table:
        # Noise only ever slows a run down: the best round is the other figure to read.
        best = min if row["unit"].split("/")[0] in LOWER_IS_BETTER else max
        row["A_best"], row["B_best"] = best(row["A_runs"]), best(row["B_runs"])
        ratio = "" if row["B/A"] is None else f"{row['B/A']:.2f}"
        best_ratio = f"{row['B_best'] / row['A_best']:.2f}" if row["A_best"] else ""
        print(f"{row['script']:16} {row['name'][:40]:40} {row['metric'][:18]:18} "
              f"{row['unit']:6} median A {row['A']:>10.4g} B {row['B']:>10.4g} B/A {ratio:5}"
              f"  best A {row['A_best']:>10.4g} B {row['B_best']:>10.4g} B/A {best_ratio}")
    if args.json is not None:
        args.json.write_text(json.dumps({"base": str(trees["A"]), "rounds": args.rounds,
                                         "passed": passed, "rows": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
