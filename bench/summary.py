"""The fabric / Erlang summary table of docs/PERFORMANCE.md, generated from result JSON.

Run:  python -m bench.summary [--results DIR] [FILE.json ...]

Theory of operation
-------------------
A summary table copied by hand drifts: rows from other commits, other loads, runs whose
JSON was not kept (issue 17). This script prints the table from the JSON files alone
(``bench/results/*.json`` by default, or the files given): for every ``<fabric row> /
Erlang`` row that :func:`bench._erlang.add_rows` wrote, one line (named after its file)
with fabric's median, Erlang's median (same run, interleaved), and the per-round ratio's
median and range, the number of rounds, the load average when the script started and
the commit. A file
without Erlang rows contributes nothing. Paste the output into PERFORMANCE.md with the
command that produced the JSON; keep the JSON in git.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # started as `python bench/summary.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._erlang import RATIO_NOTE  # noqa: E402
from bench._harness import RESULTS_DIR  # noqa: E402

SUFFIX = " / Erlang"
_ERLANG_NAME = re.compile(re.escape(RATIO_NOTE) + r" '([^']+)'")


def _fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if abs(value) >= 1000:
        return f"{value:,.0f} {unit}"
    return f"{value:.3g} {unit}"


def rows_of(doc: dict[str, Any], source: str) -> list[list[str]]:
    """The table lines one result document contributes; ``source`` names its file."""
    rows = {(r["name"], r["metric"]): r for r in doc.get("rows", [])}
    machine = doc.get("machine", {})
    load = machine.get("loadavg_at_start") or [float("nan")]
    out = []
    for (name, metric), ratio in rows.items():
        if not name.endswith(SUFFIX):
            continue
        found = _ERLANG_NAME.search(ratio.get("note", ""))
        fabric_row = rows.get((name[: -len(SUFFIX)], metric))
        erlang_row = rows.get((found.group(1), metric)) if found else None
        if fabric_row is None or erlang_row is None:
            continue
        out.append([
            f"{name[: -len(SUFFIX)]} ({source})", metric,
            _fmt(fabric_row["median"], fabric_row["unit"]),
            _fmt(erlang_row["median"], erlang_row["unit"]),
            f"**{ratio['median']:.2f}x** [{ratio['min']:.2f}..{ratio['max']:.2f}]",
            str(int(ratio["runs"])), f"{load[0]:.1f}", str(machine.get("git_commit")),
        ])
    return out


def table(paths: Sequence[Path]) -> str:
    """The markdown table for these result files."""
    lines = ["| measurement | metric | fabric | Erlang/OTP | fabric / Erlang per round, "
             "median [min..max] | rounds | load at start | commit |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for path in paths:
        for row in rows_of(json.loads(path.read_text()), path.stem):
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    paths = args.files or sorted(p for p in args.results.glob("bench_*.json")
                                 if not p.name.endswith(".quick.json"))
    print(table(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
