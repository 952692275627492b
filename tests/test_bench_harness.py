"""Tests of the benchmark harness (bench/_harness.py) and the raw baselines, on tiny sizes.

These check that the machinery works and stays bounded, not how fast anything is.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `bench` is not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from bench import _harness as h  # noqa: E402
from bench import baselines, bench_baselines, bench_cache  # noqa: E402

# Children import the helper functions below from this module by name.
CHILD_ENV = {"PYTHONPATH": str(Path(__file__).resolve().parent)}


def child_add(a: int, b: int) -> int:
    """Child helper: returns a value."""
    return a + b


def child_fail() -> None:
    """Child helper: raises."""
    raise ValueError("boom from child")


def child_hang(seconds: float) -> None:
    """Child helper: emits ready, then sleeps (to be stopped by the parent)."""
    h.emit("ready", pid=os.getpid())
    time.sleep(seconds)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_summarize_and_percentile() -> None:
    assert h.summarize([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "runs": 3}
    samples = list(range(1, 101))
    assert h.percentile(samples, 50) == 50
    assert h.percentile(samples, 99) == 99
    assert h.percentile(samples, 100) == 100
    assert h.percentile([7], 99) == 7
    with pytest.raises(ValueError):
        h.summarize([])


def test_parse_args_defaults() -> None:
    assert h.parse_args(None, []).runs == h.DEFAULT_RUNS_FULL
    quick = h.parse_args(None, ["--quick"])
    assert quick.runs == h.DEFAULT_RUNS_QUICK and quick.quick
    assert h.parse_args(None, ["--quick", "--runs", "7"]).runs == 7
    assert h.sized(quick, full=100, quick=10) == 10


def test_run_interleaved_rotates_and_counts() -> None:
    calls: list[str] = []

    def make(name: str) -> Callable[[], float]:
        def fn() -> float:
            calls.append(name)
            return 1.0

        return fn

    got = h.run_interleaved({"a": make("a"), "b": make("b")}, runs=2)
    assert got == {"a": [1.0, 1.0], "b": [1.0, 1.0]}
    assert calls == ["a", "b", "b", "a"]
    assert h.run_repeated(lambda: 2.0, runs=3) == [2.0, 2.0, 2.0]


@pytest.mark.procs
def test_report_ratio_table_and_json(tmp_path: Path) -> None:
    args = h.parse_args(None, ["--quick", "--out", str(tmp_path / "r.json")])
    report = h.Report("bench_test", args)
    report.add("raw", "throughput", "msg/s", [100.0, 200.0, 300.0])
    row = report.add("fabric", "throughput", "msg/s", [50.0, 100.0, 150.0], baseline="raw")
    assert row.ratio == pytest.approx(0.5)
    with pytest.raises(KeyError):
        report.add("x", "p50", "us", [1.0], baseline="raw")  # no "raw" p50 row
    with pytest.raises(ValueError):
        report.add("y", "throughput", "B/s", [1.0], baseline="raw")  # unit mismatch
    table = report.table()
    assert "0.50x raw" in table and "measurement" in table.splitlines()[0]
    path = report.write()
    data = json.loads(path.read_text())
    assert data["quick"] is True and data["script"] == "bench_test"
    assert {"cpu_count", "python", "pyzmq", "libzmq", "date"} <= set(data["machine"])
    assert data["rows"][1]["ratio"] == pytest.approx(0.5)
    assert data["rows"][1]["median"] == 100.0


@pytest.mark.procs
@pytest.mark.io
def test_children_result_error_and_stop() -> None:
    with h.Children() as kids:
        child = kids.function(child_add, env=CHILD_ENV, a=2, b=3)
        assert child.result(timeout=30) == 5

        failing = kids.function(child_fail, env=CHILD_ENV)
        with pytest.raises(h.BenchError, match="boom from child"):
            failing.result(timeout=30)

        hanging = kids.function(child_hang, env=CHILD_ENV, seconds=60)
        pid = hanging.expect("ready", timeout=30)["pid"]
        assert pid == hanging.pid
        with pytest.raises(h.BenchError, match="within"):
            hanging.result(timeout=0.2)
    # The with-block terminated the hanging child by pid and reaped it.
    assert hanging.proc.returncode is not None
    assert not _alive(pid)


@pytest.mark.procs
@pytest.mark.io
def test_baselines_tiny() -> None:
    assert baselines.oneway_raw(2000) > 0
    assert baselines.oneway_raw(1000, batch=64) > 0  # 15 full frames + a partial one
    for rt in (baselines.roundtrip_raw_sync(200, 10), baselines.roundtrip_raw_asyncio(200, 10)):
        assert 0 < rt.p50_us <= rt.p99_us
        assert rt.calls_per_s > 0
    assert baselines.pubsub_fanout_raw(2000, subscribers=2, members_per_sub=3) > 0
    assert baselines.codec_raw(1000) > 0


@pytest.mark.procs
@pytest.mark.io
def test_bench_baselines_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b.json"
    assert bench_baselines.main(["--quick", "--runs", "1", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    names = {r["name"] for r in data["rows"]}
    assert {"oneway raw", "roundtrip raw asyncio", "pubsub fanout raw", "codec raw"} <= names
    assert "oneway raw batch=64" in capsys.readouterr().out


def test_bench_cache_without_redis_server_skips_cleanly(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    monkeypatch.setattr(bench_cache.shutil, "which", lambda name: None)
    out = tmp_path / "cache.json"
    assert bench_cache.main(["--quick", "--runs", "1", "--out", str(out)]) == 0
    assert "bench_cache: skipped, redis-server is not installed" in capsys.readouterr().out
    assert not out.exists()  # no figures without the baseline


# --------------------------------------------------------------------------- Erlang


def test_erlang_parse_result() -> None:
    from bench import _erlang

    out = ("noise\n@@erl call p50_us=1.5 calls_per_s=200\n"
           "@@erl call p50_us=2.000 calls_per_s=300\n@@erl oneway msg_s=9\n")
    assert _erlang.parse_result(out, "call") == {"p50_us": 2.0, "calls_per_s": 300.0}
    assert _erlang.parse_result(out, "oneway") == {"msg_s": 9.0}
    with pytest.raises(h.BenchError, match="no Erlang result"):
        _erlang.parse_result(out, "global")
    with pytest.raises(h.BenchError, match="badmatch"):
        _erlang.parse_result("@@erl_error error:{badmatch,no} []\n", "global")
    with pytest.raises(h.BenchError, match="malformed"):
        _erlang.parse_result("@@erl call p50_us\n", "call")


@pytest.mark.procs
def test_erlang_add_rows_per_round_ratios(tmp_path: Path) -> None:
    from bench import _erlang

    report = h.Report("bench_test", h.parse_args(None, ["--out", str(tmp_path / "r.json")]))
    _erlang.add_rows(report, "erlang call", "fabric call", "p50", "us",
                     [10.0, 20.0, 40.0], [30.0, 40.0, 40.0])
    ratio = report.find("fabric call / Erlang", "p50")
    assert ratio is not None and ratio.unit == "x"
    assert ratio.values == [3.0, 2.0, 1.0] and ratio.summary["median"] == 2.0
    with pytest.raises(ValueError):
        _erlang.add_rows(report, "erlang call", "fabric call", "p99", "us", [1.0], [])


@pytest.mark.procs
def test_erlang_cluster_runs_and_cleans_up() -> None:
    import signal

    from bench import _erlang

    if not _erlang.available():
        pytest.skip("erl, erlc or epmd not installed (Debian: apt-get install erlang-base)")
    got = _erlang.call(20, 5)
    assert {"p50_us", "p99_us", "calls_per_s", "echo_p50_us"} <= set(got)
    assert 0 < got["p50_us"] <= got["p99_us"]
    with _erlang.Cluster() as cluster:
        peer = cluster.start_peer("p")
        assert cluster.run_driver("oneway", [100, peer])["msg_s"] > 0
        procs = list(cluster.procs)
    assert all(p.poll() is not None for p in procs)  # every node and epmd ended
    assert _erlang.nodedown_after(signal.SIGKILL) > 0


@pytest.mark.procs
def test_summary_table_from_result_json(tmp_path: Path) -> None:
    from bench import _erlang, summary

    report = h.Report("bench_x", h.parse_args(None, ["--out", str(tmp_path / "x.json")]))
    report.add("fabric call", "p50", "us", [30.0, 40.0, 40.0])
    report.add("fabric other", "p50", "us", [1.0, 1.0, 1.0])
    _erlang.add_rows(report, "erlang call", "fabric call", "p50", "us",
                     [10.0, 20.0, 40.0], [30.0, 40.0, 40.0])
    text = summary.table([report.write()])
    lines = text.splitlines()
    assert len(lines) == 3  # header, rule, the one fabric / Erlang row
    assert "fabric call (x)" in lines[2] and "**2.00x** [1.00..3.00]" in lines[2]
    assert "| 40 us | 20 us |" in lines[2]
