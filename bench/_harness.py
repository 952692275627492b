"""Shared harness for the ``bench/`` scripts: repeat, summarize, report, spawn children.

Every benchmark script runs its raw-pyzmq baseline in the same run and reports the
median of several runs (with min and max) and the ratio to that baseline, because the
ratio of two figures taken side by side, interleaved, on the same machine survives a
noisy machine and a bare number does not. A script looks like this
(``bench/bench_baselines.py`` is the complete, runnable template)::

    from bench import _harness as h
    from bench import baselines

    def main(argv: list[str] | None = None) -> int:
        args = h.parse_args(__doc__, argv)                 # --quick, --runs N, --out PATH
        n = h.sized(args, full=200_000, quick=50_000)       # work per run, bounded
        report = h.Report("bench_oneway", args)             # -> bench/results/bench_oneway.json
        got = h.run_interleaved({"raw": lambda: baselines.oneway_raw(n),
                                 "fabric": lambda: my_oneway(n)}, args.runs)
        report.add("oneway raw", "throughput", "msg/s", got["raw"])
        report.add("oneway fabric", "throughput", "msg/s", got["fabric"], baseline="oneway raw")
        report.finish()                                     # aligned table on stdout + JSON
        return 0

Measurements that need separate OS processes use :class:`Children`; the function a child
runs must be defined at module level in an importable module (``bench.*``)::

    with h.Children() as kids:                              # finally: terminate by pid
        port = h.free_port()
        rx = kids.function(_receiver, port=port, n=n)       # kwargs travel as JSON in argv
        tx = kids.function(_sender, port=port, n=n)
        done = rx.result(timeout=30)                        # what _receiver returned

A child reports to the parent by printing tagged JSON lines on stdout (:func:`emit`);
whatever the child function returns is emitted as its ``result``.  Times that are compared
across processes come from :func:`shared_clock` (CLOCK_MONOTONIC, one clock for the
whole machine).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")

#: The repository root: children get it on PYTHONPATH so that ``bench.*`` imports work
#: however the parent was started (``-m bench.x`` or ``python bench/x.py``).
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where :class:`Report` writes ``<script>.json`` unless ``--out`` says otherwise.
RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: Prefix of the stdout lines a child uses to talk to its parent; anything else a child
#: prints is kept for diagnostics and otherwise ignored.
_TAG = "@@bench"

DEFAULT_RUNS_FULL = 5
DEFAULT_RUNS_QUICK = 3


class BenchError(RuntimeError):
    """A measurement could not be taken (child failed, timed out, lost messages)."""


# --------------------------------------------------------------------------- clocks


def shared_clock() -> float:
    """Seconds on CLOCK_MONOTONIC.

    Used for any timestamp that is compared with one taken in another process: on Linux
    CLOCK_MONOTONIC is one clock for the whole machine, so "sender's first send" and
    "receiver's last receipt" can be subtracted.  (``time.perf_counter`` happens to use the
    same clock on Linux, but that is an implementation detail; this says it.)
    """
    return time.clock_gettime(time.CLOCK_MONOTONIC)


class Deadline:
    """A wall-clock budget, so that every wait loop has an end."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        """True once the budget is spent."""
        return time.monotonic() >= self._end


# --------------------------------------------------------------------------- statistics


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and number of runs of one metric."""
    if not values:
        raise ValueError("summarize() needs at least one value")
    return {
        "median": float(statistics.median(values)),
        "min": float(min(values)),
        "max": float(max(values)),
        "runs": len(values),
    }


def percentile(sorted_samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of already sorted samples.

    Nearest-rank returns a sample that was actually observed, which is what a p99 of
    latencies should be (no interpolation between two calls).
    """
    if not sorted_samples:
        raise ValueError("percentile() needs at least one sample")
    rank = max(1, -(-len(sorted_samples) * q // 100))  # ceil(n*q/100), at least 1
    return float(sorted_samples[int(rank) - 1])


# --------------------------------------------------------------------------- repetition


def _progress(label: str, i: int, runs: int, value: object, seconds: float) -> None:
    # Progress goes to stderr so that stdout stays the table alone.
    if isinstance(value, float):
        shown = f"{value:.4g}"
    elif hasattr(value, "_asdict"):  # a NamedTuple of figures, e.g. RoundTrip
        shown = " ".join(f"{k}={v:.4g}" for k, v in value._asdict().items())
    else:
        shown = str(value)
    print(f"  {label}: run {i}/{runs} = {shown} ({seconds:.2f} s)", file=sys.stderr, flush=True)


def run_repeated(fn: Callable[[], T], runs: int, label: str = "", warmup: int = 0) -> list[T]:
    """Call ``fn()`` ``warmup`` times (discarded) and then ``runs`` times; return the results."""
    for _ in range(warmup):
        fn()
    out: list[T] = []
    for i in range(1, runs + 1):
        t0 = time.monotonic()
        value = fn()
        out.append(value)
        if label:
            _progress(label, i, runs, value, time.monotonic() - t0)
    return out


def run_interleaved(
    fns: Mapping[str, Callable[[], T]], runs: int, warmup: int = 0
) -> dict[str, list[T]]:
    """Run several measurements round-robin, ``runs`` rounds, and return results by name.

    Interleaving (A B A B ...) instead of A A B B gives every measurement the same share
    of whatever else the machine is doing, so the ratio between them is fair even when
    the machine's load drifts during the run.  The order is rotated every round so no
    measurement always runs right after the same other one.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    out: dict[str, list[T]] = {name: [] for name in names}
    for i in range(runs):
        order = names[i % len(names) :] + names[: i % len(names)] if names else []
        for name in order:
            t0 = time.monotonic()
            value = fns[name]()
            out[name].append(value)
            _progress(name, i + 1, runs, value, time.monotonic() - t0)
    return out


# --------------------------------------------------------------------------- arguments


def make_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The common options; a script may add its own before :func:`parse_args`."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer runs and messages (a smoke run, < 15 s)"
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help=f"runs per measurement (default {DEFAULT_RUNS_FULL}; {DEFAULT_RUNS_QUICK} if --quick)",
    )
    parser.add_argument(
        "--no-erlang", dest="erlang", action="store_false",
        help="skip the Erlang/OTP rows (they run when erl, erlc and epmd are installed)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON output path (default bench/results/<script>[.quick].json)",
    )
    return parser


def parse_args(
    description: str | None = None,
    argv: Sequence[str] | None = None,
    parser: argparse.ArgumentParser | None = None,
) -> argparse.Namespace:
    """Parse ``--quick``, ``--runs N``, ``--out PATH`` (plus a custom ``parser``'s options).

    ``args.runs`` is always an int afterwards (the default depends on ``--quick``).
    """
    parser = parser or make_parser(description)
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = DEFAULT_RUNS_QUICK if args.quick else DEFAULT_RUNS_FULL
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def sized(args: argparse.Namespace, full: int, quick: int) -> int:
    """Pick the amount of work per run: ``quick`` under ``--quick``, else ``full``."""
    return quick if args.quick else full


# --------------------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    """What the figures were measured on; stored with every JSON result."""
    import msgpack  # type: ignore[import-untyped,unused-ignore]  # local: the harness itself must import without these installed
    import zmq

    try:
        usable_cpus: int | None = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable_cpus = None
    try:
        load: list[float] | None = list(os.getloadavg())
    except OSError:
        load = None
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "loadavg_at_start": load,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(str(p) for p in msgpack.version),
        # The pure-Python fallback is ~10x slower; a figure taken with it is not comparable.
        "msgpack_c_extension": not msgpack.Packer.__module__.endswith("fallback"),
        "git_commit": commit,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    return f"{x:.3f}"


@dataclass
class Row:
    """One line of a report: a metric of a named measurement, summarized over runs."""

    name: str
    metric: str
    unit: str
    summary: dict[str, float]
    values: list[float]
    baseline: str | None = None
    #: median / baseline's median for the same metric (None without a baseline).
    ratio: float | None = None
    note: str = ""


@dataclass
class Report:
    """Collects rows, prints them as an aligned table and writes them as JSON.

    Create it before measuring: it records the machine, load and start time then.

    ``ratio`` is always ``median / baseline median`` of the same metric: above 1 is better
    for a throughput, worse for a latency; the unit tells which.
    """

    script: str
    args: argparse.Namespace
    rows: list[Row] = field(default_factory=list)
    #: Taken when the report is created, which is why a script creates it before measuring:
    #: the load average and date then describe the run, not its end.
    machine: dict[str, Any] = field(default_factory=machine_info)
    _t0: float = field(default_factory=time.monotonic, repr=False)

    def add(
        self,
        name: str,
        metric: str,
        unit: str,
        values: Iterable[float],
        *,
        baseline: str | None = None,
        note: str = "",
    ) -> Row:
        """Add a row; ``baseline`` names an earlier row with the same ``metric``."""
        vals = [float(v) for v in values]
        row = Row(name, metric, unit, summarize(vals), vals, baseline, None, note)
        if baseline is not None:
            base = self.find(baseline, metric)
            if base is None:
                # Fail at add() time, in the script's own code, not after the table is lost.
                raise KeyError(f"baseline row {baseline!r} / {metric!r} must be added first")
            if base.unit != unit:
                raise ValueError(f"unit {unit!r} differs from baseline's {base.unit!r}")
            if base.summary["median"]:
                row.ratio = row.summary["median"] / base.summary["median"]
        self.rows.append(row)
        return row

    def find(self, name: str, metric: str) -> Row | None:
        """The row with this name and metric, if added."""
        for row in self.rows:
            if row.name == name and row.metric == metric:
                return row
        return None

    def table(self) -> str:
        """The rows as an aligned text table."""
        header = ["measurement", "metric", "unit", "median", "min", "max", "runs", "vs baseline"]
        lines = [header]
        for r in self.rows:
            vs = f"{r.ratio:.2f}x {r.baseline}" if r.ratio is not None else ""
            lines.append(
                [
                    r.name,
                    r.metric,
                    r.unit,
                    _fmt(r.summary["median"]),
                    _fmt(r.summary["min"]),
                    _fmt(r.summary["max"]),
                    str(int(r.summary["runs"])),
                    vs,
                ]
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        numeric = {3, 4, 5, 6}  # right-align numbers so digits line up

        def render(cells: list[str]) -> str:
            out = [
                c.rjust(w) if i in numeric else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ]
            return "  ".join(out).rstrip()

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([render(lines[0]), rule, *(render(line) for line in lines[1:])])

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-able dict (machine info, options, rows)."""
        return {
            "script": self.script,
            "quick": bool(self.args.quick),
            "runs": self.args.runs,
            "argv": sys.argv[1:],
            "duration_s": round(time.monotonic() - self._t0, 3),
            "machine": self.machine,
            "rows": [
                {
                    "name": r.name,
                    "metric": r.metric,
                    "unit": r.unit,
                    **r.summary,
                    "values": r.values,
                    "baseline": r.baseline,
                    "ratio": r.ratio,
                    "note": r.note,
                }
                for r in self.rows
            ],
        }

    def write(self, path: Path | None = None) -> Path:
        """Write the JSON to ``path``, else ``--out``, else ``bench/results/<script>.json``.

        A ``--quick`` run defaults to ``<script>.quick.json`` instead, so that a smoke run
        never overwrites the full-run figures kept on record.
        """
        default = RESULTS_DIR / f"{self.script}{'.quick' if self.args.quick else ''}.json"
        path = path or getattr(self.args, "out", None) or default
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    def finish(self) -> Path:
        """Print the table to stdout, write the JSON, and return its path."""
        quick = " (quick)" if self.args.quick else ""
        title = f"{self.script}{quick}: median of {self.args.runs} runs"
        print(title)
        print(self.table())
        path = self.write()
        print(f"wrote {path}")
        return path


# --------------------------------------------------------------------------- children


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then closed).

    There is a small race (someone else may take it before the child binds it); a
    child that binds can avoid it by binding ``tcp://127.0.0.1:*`` and emitting its port.
    """
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def emit(tag: str, **data: Any) -> None:
    """Child side: send one tagged JSON record to the parent (read by :meth:`Child.expect`)."""
    sys.stdout.write(f"{_TAG} {tag} {json.dumps(data)}\n")
    sys.stdout.flush()


def _child_main() -> None:
    """Entry point of a child started by :meth:`Children.function` (argv: module, name, kwargs)."""
    module, qualname, kwargs_json = sys.argv[1:4]
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    value = target(**json.loads(kwargs_json))
    emit("result", value=value)


def _importable_name(func: Callable[..., Any]) -> tuple[str, str]:
    """(module, qualname) a child can import ``func`` by, even if it lives in ``__main__``."""
    module = func.__module__
    qualname = func.__qualname__
    if "<locals>" in qualname or "<lambda>" in qualname:
        raise ValueError(f"{qualname} is not importable: define it at module level")
    if module == "__main__":
        main = sys.modules["__main__"]
        spec = getattr(main, "__spec__", None)
        if spec is not None and spec.name:  # started with -m bench.x
            module = spec.name
        else:  # started as python bench/x.py
            rel = Path(main.__file__ or "").resolve().relative_to(REPO_ROOT).with_suffix("")
            module = ".".join(rel.parts)
    return module, qualname


class Child:
    """One child OS process started by :class:`Children`; talk to it with :meth:`expect`."""

    def __init__(self, proc: subprocess.Popen[bytes], name: str, stderr: IO[bytes]) -> None:
        self.proc = proc
        self.name = name
        self._stderr = stderr
        self._buf = b""
        self._eof = False
        self._records: list[tuple[str, Any]] = []
        #: Untagged stdout lines, kept for error messages.
        self.output: list[str] = []

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def _stderr_tail(self, limit: int = 2000) -> str:
        try:
            self._stderr.flush()
            self._stderr.seek(0)
            text = self._stderr.read().decode(errors="replace")
        except (OSError, ValueError):
            return ""
        return text[-limit:]

    def _fail(self, why: str) -> BenchError:
        tail = self._stderr_tail()
        out = "\n".join(self.output[-10:])
        return BenchError(
            f"child {self.name} (pid {self.pid}) {why}; exit={self.proc.poll()}"
            + (f"\n--- stdout ---\n{out}" if out else "")
            + (f"\n--- stderr ---\n{tail}" if tail else "")
        )

    def _read_some(self, timeout: float) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return
        chunk = os.read(fd, 65536)
        if not chunk:
            self._eof = True
            return
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace")
            if line.startswith(_TAG + " "):
                _, tag, payload = line.split(" ", 2)
                self._records.append((tag, json.loads(payload)))
            else:
                self.output.append(line)

    def expect(self, tag: str, timeout: float) -> dict[str, Any]:
        """Wait at most ``timeout`` s for the child's next record with ``tag``; return its data."""
        deadline = Deadline(timeout)
        while True:
            for i, (t, data) in enumerate(self._records):
                if t == tag:
                    del self._records[i]
                    result: dict[str, Any] = data
                    return result
            if self._eof:
                self.proc.wait(timeout=5)  # reap, so the exit code is in the error
                raise self._fail(f"exited before sending {tag!r}")
            if deadline.expired():
                raise self._fail(f"sent no {tag!r} within {timeout:.1f} s")
            self._read_some(min(0.5, deadline.remaining()))

    def result(self, timeout: float) -> Any:
        """What the child's function returned (waits at most ``timeout`` s)."""
        return self.expect("result", timeout)["value"]

    def stop(self, grace: float = 2.0) -> None:
        """Terminate this child by pid (SIGTERM, then SIGKILL after ``grace`` s) and reap it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=grace)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


class Children:
    """Starts child Python processes and always stops them (by pid) when the block ends."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def _env(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        env = dict(os.environ)
        if extra:
            env.update(extra)
        # Children must import bench.* (and fabric) from this checkout whatever the cwd;
        # a PYTHONPATH given in `extra` is kept, after the checkout.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        return env

    def _start(self, argv: list[str], name: str, env: Mapping[str, str] | None) -> Child:
        # stderr goes to a file, not a pipe: an unread pipe that fills up would block the
        # child mid-measurement.
        # The Child owns the file and closes it in stop(), hence no `with` here.
        stderr = tempfile.TemporaryFile()  # noqa: SIM115
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=self._env(env),
            cwd=REPO_ROOT,
            bufsize=0,
        )
        child = Child(proc, name, stderr)
        self.children.append(child)
        return child

    def function(
        self,
        func: Callable[..., Any],
        /,
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> Child:
        """Run module-level ``func(**kwargs)`` in a new ``python -c`` process.

        ``kwargs`` must be JSON-able; the return value must be JSON-able too and is read
        with :meth:`Child.result`.
        """
        module, qualname = _importable_name(func)
        argv = [
            sys.executable,
            "-c",
            "from bench._harness import _child_main; _child_main()",
            module,
            qualname,
            json.dumps(kwargs),
        ]
        return self._start(argv, name or qualname, env)

    def module(
        self,
        module: str,
        *args: str,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Child:
        """Run ``python -m module *args`` (for example a fabric node) as a child."""
        return self._start([sys.executable, "-m", module, *args], name or module, env)

    def stop_all(self, grace: float = 2.0) -> None:
        """Terminate every child still running; SIGTERM all first so they stop in parallel."""
        for child in self.children:
            if child.proc.poll() is None:
                child.proc.terminate()
        for child in self.children:
            child.stop(grace)
        self.children.clear()
