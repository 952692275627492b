"""Profile the one-way benchmark's sender and receiver nodes with py-spy.

Run:  python -m bench.profile_oneway [--quick] [--mode send|send_wait] [--top N]
      (needs ``py-spy`` on PATH: ``python -m pip install py-spy``; ptrace must be allowed)

Runs one ``bench_oneway`` measurement with ``py-spy record`` attached to both node
processes (sampling, so the figures under the profiler are only a little slower), then
prints, for each side, the functions with the most samples: *self* (the function itself
was running, including C code it called such as msgpack, which py-spy cannot see into
without --native) and *total* (the function was on the stack).  Percentages are of the
samples where the process was busy (py-spy drops idle samples by default).  Writes
``bench/results/profile_oneway[.quick].json`` with the tables and the raw stack counts'
location.  Not part of ``run_all``: profiles are for reading, not for tracking.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

if not __package__:  # started as `python bench/profile_oneway.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _harness as h  # noqa: E402
from bench import bench_oneway  # noqa: E402

#: Samples per second; py-spy's default is 100, more gives steadier percentages.
RATE = 250
#: Held back before the first send so that py-spy is attached when the work starts.
ATTACH_DELAY_S = 1.0

_LINE_NO = re.compile(r":\d+\)$")


def _function(frame: str) -> str:
    # "Node._on_router (fabric/node.py:446)" -> "Node._on_router (fabric/node.py)":
    # aggregate a function's lines.
    return _LINE_NO.sub(")", frame)


def summarize_raw(path: Path, top: int) -> dict[str, Any]:
    """Self and total sample shares per function from a py-spy ``--format raw`` file."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(f) for f in stack.split(";")]
        samples += count
        self_counts[frames[-1]] += count
        for fn in set(frames):
            total_counts[fn] += count

    def table(counts: Counter[str]) -> list[dict[str, Any]]:
        # Frames on (nearly) every stack are the loop and the child harness: no news.
        rows = [
            {"function": fn, "samples": c, "pct": round(100.0 * c / samples, 1)}
            for fn, c in counts.most_common()
            if c < 0.97 * samples
        ]
        return rows[:top]

    if not samples:
        return {"samples": 0, "self": [], "total": []}
    return {"samples": samples, "self": table(self_counts), "total": table(total_counts)}


def main(argv: list[str] | None = None) -> int:
    """Profile one run, print the hot spots, write the JSON."""
    parser = h.make_parser(__doc__)
    parser.add_argument("--mode", choices=bench_oneway.MODES, default="send")
    parser.add_argument("--top", type=int, default=15, help="functions listed per table")
    parser.add_argument("--messages", type=int, default=None, help="messages in the run")
    args = h.parse_args(__doc__, argv, parser)
    if shutil.which("py-spy") is None:
        print("py-spy is not on PATH: python -m pip install py-spy", file=sys.stderr)
        return 2
    n = args.messages or h.sized(args, full=400_000, quick=100_000)
    workdir = Path(tempfile.mkdtemp(prefix="fabric-profile-"))
    spies: dict[str, subprocess.Popen[bytes]] = {}

    def attach(pids: dict[str, int]) -> None:
        for role, pid in pids.items():
            spies[role] = subprocess.Popen(
                ["py-spy", "record", "--pid", str(pid), "--rate", str(RATE),
                 "--format", "raw", "--output", str(workdir / f"{role}.txt")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    try:
        run = bench_oneway.oneway_fabric(n, args.mode, on_ready=attach, delay_s=ATTACH_DELAY_S)
    finally:
        for spy in spies.values():  # py-spy ends when its target exits; bounded anyway
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(timeout=5)
    result: dict[str, Any] = {
        "script": "profile_oneway",
        "mode": args.mode,
        "messages": n,
        "msg_s_under_profiler": round(run.msg_s),
        "rate_hz": RATE,
        "machine": h.machine_info(),
        "raw_profiles": str(workdir),
    }
    for role in ("rx", "tx"):
        raw = workdir / f"{role}.txt"
        result[role] = summarize_raw(raw, args.top) if raw.exists() else {"samples": 0}
        print(f"\n{role} ({'receiver' if role == 'rx' else 'sender'}) node, "
              f"{result[role]['samples']} busy samples, mode={args.mode}, "
              f"{run.msg_s:,.0f} msg/s under the profiler")
        for kind in ("self", "total"):
            print(f"  {kind:5s}  %    function")
            for row in result[role].get(kind, []):
                print(f"        {row['pct']:5.1f}  {row['function']}")
    out = args.out or h.RESULTS_DIR / f"profile_oneway{'.quick' if args.quick else ''}.json"
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out} (raw stacks in {workdir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
