"""Erlang/OTP as a baseline in the same run: compile, start nodes, run one experiment, parse.

Theory of operation
-------------------
Issue 17: a fabric figure divided by an Erlang figure taken on another day, on another
load, with another experiment, says little. This module runs the Erlang side of each
benchmark (``bench/erlang/fabric_bench.erl``) as a function the bench scripts interleave
with their fabric runs (``h.run_interleaved``), so both see the same machine.

One measurement is one fresh cluster:

1. the ``.erl`` files are compiled once per Python process with ``erlc`` into a temporary
   directory (removed at exit);
2. a private ``epmd`` is started on a free port, in the foreground, so that it is our
   child and is ended by its pid afterwards (the machine's own epmd, if any, is never
   touched; ``ERL_EPMD_PORT`` points every node at ours);
3. the peer nodes (``erl -noshell -name pK_<tag>@127.0.0.1``) start, then the driver node
   with ``-run fabric_bench main <kind> <args> <peers>``; the driver connects to the peers
   (bounded), runs the experiment and prints ``@@erl <kind> key=value ...``;
4. every node and epmd are ended by pid (SIGTERM, then SIGKILL), in a ``finally``.

:func:`parse_result` turns the driver's output into a dict of floats (tested without
Erlang in ``tests/test_bench_harness.py``). :func:`available` says whether ``erl``,
``erlc`` and ``epmd`` are installed; scripts skip their Erlang rows when it is False.
"""

from __future__ import annotations

import atexit
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import _harness as h

ERLANG_SRC = Path(__file__).resolve().parent / "erlang"
MODULE = "fabric_bench"
#: The cookie of every Erlang bench node (explicit: no ~/.erlang.cookie is created or read).
COOKIE = "fabric_bench_cookie_not_a_secret"
HOST = "127.0.0.1"
#: Longest one experiment may take, start-up included.
RUN_TIMEOUT_S = 120.0
RESULT_TAG = "@@erl"
ERROR_TAG = "@@erl_error"
READY_TAG = "@@erl_ready"
#: How a ``/ Erlang`` row's note starts; the Erlang row's name follows it in quotes
#: (bench/summary.py reads it).
RATIO_NOTE = "per-round ratio to"

_compiled: Path | None = None


def available() -> bool:
    """True when erl, erlc and epmd are on PATH (Debian: ``apt-get install erlang-base``)."""
    return all(shutil.which(tool) for tool in ("erl", "erlc", "epmd"))


def parse_result(output: str, kind: str) -> dict[str, float]:
    """The figures of the driver's ``@@erl <kind> k=v ...`` line (the last one, if several).

    Raises :class:`bench._harness.BenchError` with the driver's own error line when it
    reported one, or when no result line for ``kind`` is there.
    """
    result: dict[str, float] | None = None
    for line in output.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == ERROR_TAG:
            raise h.BenchError(f"Erlang {kind} failed: {line[len(ERROR_TAG):].strip()}")
        if words[0] == RESULT_TAG and len(words) >= 2 and words[1] == kind:
            fields: dict[str, float] = {}
            for pair in words[2:]:
                key, sep, value = pair.partition("=")
                if not sep or not key:
                    raise h.BenchError(f"malformed Erlang result field {pair!r}")
                fields[key] = float(value)
            result = fields
    if result is None:
        raise h.BenchError(f"no Erlang result for {kind!r} in: {output[-500:]!r}")
    return result


def compiled_dir() -> Path:
    """Directory holding the compiled ``.beam`` files (compiled on first use)."""
    global _compiled
    if _compiled is None:
        out = Path(tempfile.mkdtemp(prefix="fabric-bench-erl-"))
        atexit.register(shutil.rmtree, out, True)
        sources = sorted(str(p) for p in ERLANG_SRC.glob("*.erl"))
        done = subprocess.run(["erlc", "-o", str(out), *sources], capture_output=True,
                              text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise h.BenchError(f"erlc failed: {done.stdout}{done.stderr}")
        _compiled = out
    return _compiled


def _stop(proc: subprocess.Popen[str]) -> None:
    """End one of our children by its pid: SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


class Cluster:
    """A private epmd and Erlang nodes, all our children, ended by pid on exit."""

    def __init__(self, node_args: Sequence[str] = ()) -> None:
        #: Extra ``erl`` arguments for every node (e.g. ``-kernel net_ticktime 1``).
        self.node_args = list(node_args)
        self.tag = uuid.uuid4().hex[:8]
        self.procs: list[subprocess.Popen[str]] = []
        self.env = dict(os.environ)
        self.peers: dict[str, subprocess.Popen[str]] = {}

    def __enter__(self) -> Cluster:
        port = h.free_port()
        self.env["ERL_EPMD_PORT"] = str(port)
        epmd = subprocess.Popen(["epmd", "-port", str(port), "-address", HOST],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                text=True)
        self.procs.append(epmd)
        # Wait until it listens: a node started earlier fails to register.
        _wait_port(port)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):  # nodes first, epmd last
            _stop(proc)

    def node(self, name: str) -> str:
        return f"{name}_{self.tag}@{HOST}"

    def _erl(self, name: str, extra: Sequence[str]) -> subprocess.Popen[str]:
        # -start_epmd false: our epmd is already listening (see the module doc).
        cmd = ["erl", "-noshell", "-noinput", "-start_epmd", "false", "-name", self.node(name),
               "-setcookie", COOKIE, "-pa", str(compiled_dir()),
               "-kernel", "start_pg", "true", *self.node_args, *extra]
        proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
        return proc

    def start_peer(self, name: str, extra: Sequence[str] = ()) -> str:
        """Start a peer node (idle unless ``extra`` says otherwise); its full node name."""
        self.peers[name] = self._erl(name, extra)
        return self.node(name)

    def run_driver(self, kind: str, args: Sequence[object],
                   on_line: Callable[[str], None] | None = None,
                   after_start: Callable[[], None] | None = None) -> dict[str, float]:
        """Run the driver node for ``kind``; ``on_line`` sees each output line as it comes,
        ``after_start`` runs once the driver's process is launched."""
        proc = self._erl("driver", ["-run", MODULE, "main", kind, *map(str, args)])
        if after_start is not None:
            after_start()
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = h.Deadline(RUN_TIMEOUT_S)
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.01, deadline.remaining()))
            if not ready:
                raise h.BenchError(f"Erlang {kind} timed out: {''.join(lines)[-500:]!r}")
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if on_line is not None:
                on_line(line)
        proc.wait(timeout=10)
        return parse_result("".join(lines), kind)


def _wait_port(port: int, seconds: float = 10.0) -> None:
    import socket

    deadline = h.Deadline(seconds)
    while not deadline.expired():
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.01)
    raise h.BenchError(f"epmd did not listen on {port}")


# --------------------------------------------------------------------------- experiments


def oneway(n_msgs: int) -> float:
    """Messages/s from a process on one node to a process on another (first send to last
    receipt, as ``bench_oneway``)."""
    with Cluster() as c:
        peer = c.start_peer("tx")
        return c.run_driver("oneway", [n_msgs, peer])["msg_s"]


def call(n_calls: int, warmup: int) -> dict[str, float]:
    """Remote ``gen_server:call`` and plain echo round trips: ``p50_us``, ``p99_us``,
    ``calls_per_s`` and the same with an ``echo_`` prefix."""
    with Cluster() as c:
        peer = c.start_peer("srv")
        return c.run_driver("call", [n_calls, warmup, peer])


def broadcast(n_msgs: int, member_nodes: int = 3) -> float:
    """pg deliveries/s: a sender node without members, ``member_nodes`` x 10 members."""
    with Cluster() as c:
        peers = [c.start_peer(f"m{i}") for i in range(member_nodes)]
        return c.run_driver("broadcast", [n_msgs, *peers])["deliveries_s"]


def global_sequential(n_names: int, warmup: int) -> dict[str, float]:
    """``global:register_name`` on 3 nodes, ``n_names`` one at a time from the driver."""
    with Cluster() as c:
        peers = [c.start_peer(f"g{i}") for i in (1, 2)]
        return c.run_driver("global", [n_names, warmup, *peers])


def mesh(n_nodes: int) -> float:
    """Seconds from just before the first launch until every one of ``n_nodes`` nodes
    sees all the others (each peer is given the driver node as its only seed)."""
    with Cluster() as c:
        driver = c.node("driver")

        def launch_peers() -> None:
            for i in range(1, n_nodes):
                c.start_peer(f"m{i}", ["-run", MODULE, "mesh_member", driver, str(n_nodes)])

        t_launch = time.time_ns()  # CLOCK_REALTIME, as os:system_time
        got = c.run_driver("mesh", [n_nodes], after_start=launch_peers)
        return (got["t_full_ns"] - t_launch) / 1e9


def nodedown_after(sig: signal.Signals = signal.SIGKILL,
                   net_ticktime: int | None = None) -> float:
    """Milliseconds from sending ``sig`` to a peer to ``{nodedown, Peer}`` at the driver.

    ``SIGKILL``: the kernel closes the connection. ``SIGSTOP``: only the ticks stop, so
    detection takes about ``net_ticktime`` (Erlang's default is 60 s: pass a small one).
    """
    node_args = [] if net_ticktime is None else ["-kernel", "net_ticktime", str(net_ticktime)]
    with Cluster(node_args) as c:
        peer_name = c.start_peer("victim")
        victim = c.peers["victim"]
        signalled_at: list[int] = []

        def on_line(line: str) -> None:
            if line.startswith(READY_TAG):
                signalled_at.append(time.time_ns())  # CLOCK_REALTIME, as os:system_time
                os.kill(victim.pid, sig)

        try:
            got = c.run_driver("nodedown", [peer_name], on_line)
        finally:
            if signalled_at and sig != signal.SIGKILL:
                os.kill(victim.pid, signal.SIGKILL)  # a stopped node would ignore SIGTERM
        if not signalled_at:
            raise h.BenchError("the driver never got ready")
        return (got["t_down_ns"] - signalled_at[0]) / 1e6


# --------------------------------------------------------------------------- report rows


def add_rows(report: h.Report, erlang_name: str, fabric_name: str, metric: str, unit: str,
             erlang_values: Sequence[float], fabric_values: Sequence[float],
             note: str = "") -> None:
    """Add the Erlang row and a ``<fabric_name> / Erlang`` row of per-round ratios.

    ``run_interleaved`` takes run i of every measurement in the same round, so fabric's
    run i divided by Erlang's run i is a ratio taken side by side; the row's median, min
    and max are the ratio's median and spread over the rounds (for a latency above 1 is
    slower than Erlang, for a rate above 1 is faster).
    """
    if len(erlang_values) != len(fabric_values):
        raise ValueError("one Erlang value per fabric value (same rounds)")
    if report.find(erlang_name, metric) is None:
        report.add(erlang_name, metric, unit, erlang_values, note=note)
    report.add(f"{fabric_name} / Erlang", metric, "x",
               [f / e for f, e in zip(fabric_values, erlang_values, strict=True)],
               note=f"{RATIO_NOTE} '{erlang_name}': fabric run i / Erlang run i, taken in "
                    "the same round")
