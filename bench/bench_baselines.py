"""Raw pyzmq + msgpack baselines, on their own: the floor fabric is measured against.

Run:  python -m bench.bench_baselines [--quick] [--runs N] [--out PATH]
      (or python bench/bench_baselines.py)

Prints a table (median of --runs runs, with min and max) and writes
bench/results/bench_baselines.json.  Default mode takes about 30 s on 2 cores, --quick
under 15 s.

This is also the template for fabric benchmarks: copy it, add the fabric measurement
next to the baseline in the same ``run_interleaved`` call, and ``report.add`` the fabric
row with ``baseline=`` the raw row's name, so the table shows the ratio.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

if not __package__:  # started as `python bench/bench_baselines.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _harness as h  # noqa: E402
from bench import baselines  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every baseline, print the table and write the JSON."""
    args = h.parse_args(__doc__, argv)
    # Work per run: large enough that process start-up and connection setup (outside
    # the timed interval anyway) are small next to it, small enough for the time budget.
    n_oneway = h.sized(args, full=200_000, quick=50_000)
    n_batched = h.sized(args, full=1_000_000, quick=200_000)
    n_calls_sync = h.sized(args, full=10_000, quick=2_000)
    n_calls_async = h.sized(args, full=5_000, quick=2_000)
    n_pubsub = h.sized(args, full=200_000, quick=30_000)
    n_codec = h.sized(args, full=200_000, quick=50_000)

    report = h.Report("bench_baselines", args)  # first: it records machine and start time
    measurements: dict[str, Callable[[], object]] = {
        "oneway": lambda: baselines.oneway_raw(n_oneway),
        "oneway64": lambda: baselines.oneway_raw(n_batched, batch=baselines.BATCH),
        "rt_sync": lambda: baselines.roundtrip_raw_sync(n_calls_sync),
        "rt_async": lambda: baselines.roundtrip_raw_asyncio(n_calls_async),
        "pubsub": lambda: baselines.pubsub_fanout_raw(n_pubsub, subscribers=3, members_per_sub=10),
        "codec": lambda: baselines.codec_raw(n_codec),
    }
    got = h.run_interleaved(measurements, args.runs)

    def num(key: str) -> list[float]:
        return cast(list[float], got[key])

    def rt(key: str, field: str) -> list[float]:
        return [getattr(r, field) for r in got[key]]

    report.add(
        "oneway raw",
        "throughput",
        "msg/s",
        num("oneway"),
        note=f"DEALER->ROUTER, 1 msgpack msg/frame, {n_oneway} msgs",
    )
    report.add(
        "oneway raw batch=64",
        "throughput",
        "msg/s",
        num("oneway64"),
        baseline="oneway raw",
        note=f"64 msgs/frame, {n_batched} msgs",
    )
    for key, name, n in (
        ("rt_sync", "roundtrip raw sync", n_calls_sync),
        ("rt_async", "roundtrip raw asyncio", n_calls_async),
    ):
        base = None if key == "rt_sync" else "roundtrip raw sync"
        note = f"DEALER<->ROUTER echo, {n} calls"
        report.add(name, "p50", "us", rt(key, "p50_us"), baseline=base, note=note)
        report.add(name, "p99", "us", rt(key, "p99_us"), baseline=base, note=note)
        report.add(name, "rate", "calls/s", rt(key, "calls_per_s"), baseline=base, note=note)
    report.add(
        "pubsub fanout raw",
        "deliveries",
        "deliveries/s",
        num("pubsub"),
        note=f"1 PUB -> 3 SUB x 10 members, {n_pubsub} msgs",
    )
    report.add("codec raw", "pack+unpack", "us/msg", num("codec"), note="msgpack, in-process")
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
