"""Call round trip to a remote process: p50, p99 and calls/s, next to raw pyzmq round trips.

Run:  python -m bench.bench_call [--quick] [--runs N] [--out PATH]
      (or python bench/bench_call.py)

Two fabric nodes run as separate OS processes on 127.0.0.1.  A client process on node
``cli`` makes N sequential calls (one in flight) to node ``srv``; each call's latency is
taken in the client around send + receive of the reply (``time.perf_counter_ns``), after
untimed warm-up calls; calls/s is N over the whole timed loop.  Two servers:

* ``echo``: a plain process that takes ``(seq, client_pid)`` with ``await receive()`` and
  sends ``(seq,)`` back; the client waits with ``await proc.receive()`` and checks the
  sequence number.  This is fabric's messaging floor for a request/reply.
* ``genserver``: a :class:`fabric.GenServer` whose ``handle_call`` returns the request,
  called with ``fabric.genserver.call(proc, (name, node), request)`` (a monitor, a tagged
  send and a selective receive per call, as Erlang's ``gen:call``).  Skipped, with a
  note in the JSON, when ``fabric.genserver`` is not importable.

* ``paired``: one server node hosts both, and one client alternates blocks of
  ``PAIR_BLOCK`` echo round trips and GenServer calls (the order flips every block). Both
  share the same two processes, sockets and moment, so their ratio is the cost of the
  call itself with the machine's swings (run to run, +-30% here) taken out.

Baselines, in the same run: raw pyzmq DEALER <-> ROUTER echo with msgpack, blocking
(``roundtrip raw sync``) and on asyncio (``roundtrip raw asyncio``, the fair comparison:
fabric runs on asyncio too).  Ratios are median / baseline median: above 1 is slower for
latencies, faster for calls/s.

Erlang/OTP in the same run (``bench/_erlang.py``, when erl is installed; ``--no-erlang``
skips it): ``gen_server:call`` and a plain echo process on a second node,
the same warm-up and count, one call in flight; the ``/ Erlang`` rows are per-round
ratios (fabric's run i / Erlang's run i, taken in the same round).

The nodes run on :func:`fabric.loop.run`'s loop (uvloop when installed). When it is,
``fabric GenServer call, asyncio loop`` measures the same call with ``FABRIC_UVLOOP=0``
in the same rounds (D31).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if not __package__:  # started as `python bench/bench_call.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fabric.loop  # noqa: E402
from bench import _erlang, baselines  # noqa: E402
from bench import _fabric as fb  # noqa: E402
from bench import _harness as h  # noqa: E402
from bench.baselines import RoundTrip  # noqa: E402

#: Longest wait for any one reply or step in a child: a stall means a broken benchmark.
STALL_S = 10.0
CHILD_TIMEOUT_S = 90.0
WARMUP_CALLS = 200
#: The registered name of the GenServer on the server node.
SERVER_NAME = "bench_echo"
#: Issue 17's goal: call p50 and p99 at most this many times Erlang's, in the same run.
GOAL_VS_ERLANG = 2.0

KINDS = ("echo", "genserver", "paired")
#: Round trips per block in the paired measurement (blocks alternate echo / GenServer).
PAIR_BLOCK = 250


def genserver_available() -> bool:
    """True when fabric has its GenServer module (it is being written in parallel)."""
    return importlib.util.find_spec("fabric.genserver") is not None


# --------------------------------------------------------------------------- server node


async def _echo(proc: Any) -> None:
    """The raw echo server: ``(seq, pid)`` in, ``(seq,)`` back, until ``("stop",)``."""
    receive, send = proc.receive, proc.send
    while True:
        msg = await receive()
        if msg[0] == "stop":
            return
        send(msg[1], (msg[0],))


def _echo_server_class() -> Any:
    # Defined on demand: fabric.genserver may not exist yet (see module doc).
    import fabric.genserver as gs

    class Echo(gs.GenServer):  # type: ignore[misc,name-defined,unused-ignore]
        """Replies with the request."""

        async def handle_call(self, request: Any, from_: Any) -> Any:
            return request

    return Echo


async def _srv_main(port: int, kind: str) -> dict[str, Any]:
    async with fb.new_node("srv", port) as node:
        if kind in ("genserver", "paired"):
            await _echo_server_class().start(node, name=SERVER_NAME)
        if kind == "genserver":
            pid = node.whereis(SERVER_NAME)
        else:
            pid = node.spawn(_echo)
        h.emit("ready", node=node.name, pid=fb.pid_to_json(pid))
        # Serve until the client node says goodbye (it stops when done), bounded.
        events = node.monitor_nodes()
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                event = await events.next(timeout=max(0.1, deadline - time.monotonic()))
            except asyncio.TimeoutError:  # an alias of TimeoutError only from 3.11
                break
            if type(event).__name__ == "NodeDown":
                break
        events.close()
    return {"stopped": True}


def _srv(port: int, kind: str) -> dict[str, Any]:
    """Child: node ``srv`` running the echo process or the echo GenServer."""
    return fb.run_child(lambda: _srv_main(port, kind))


# --------------------------------------------------------------------------- client node


async def _client_echo(proc: Any, server: Any, n_calls: int, warmup: int) -> dict[str, float]:
    receive, send, me = proc.receive, proc.send, proc.self
    clock = time.perf_counter_ns
    for i in range(warmup):
        send(server, (i, me))
        await receive(timeout=STALL_S)
    samples = [0] * n_calls
    t0 = time.perf_counter()
    for i in range(n_calls):
        start = clock()
        send(server, (i, me))
        reply = await receive(timeout=STALL_S)
        samples[i] = clock() - start
        if reply[0] != i:  # a crossed reply would make every figure meaningless
            raise h.BenchError(f"reply {reply!r} to call {i}")
    elapsed = time.perf_counter() - t0
    return _figures(samples, elapsed)


async def _client_genserver(
    proc: Any, server: Any, n_calls: int, warmup: int
) -> dict[str, float]:
    from fabric.genserver import call

    clock = time.perf_counter_ns
    for i in range(warmup):
        await call(proc, server, ("ping", i), STALL_S)
    samples = [0] * n_calls
    t0 = time.perf_counter()
    for i in range(n_calls):
        start = clock()
        reply = await call(proc, server, ("ping", i), STALL_S)
        samples[i] = clock() - start
        if reply != ("ping", i):
            raise h.BenchError(f"reply {reply!r} to call {i}")
    elapsed = time.perf_counter() - t0
    return _figures(samples, elapsed)


async def _client_paired(
    proc: Any, echo: Any, server: Any, n_calls: int, warmup: int
) -> dict[str, Any]:
    from fabric.genserver import call

    receive, send, me = proc.receive, proc.send, proc.self
    clock = time.perf_counter_ns
    for i in range(warmup):
        send(echo, (i, me))
        await receive(timeout=STALL_S)
        await call(proc, server, ("ping", i), STALL_S)
    samples: dict[str, list[int]] = {"echo": [], "genserver": []}
    elapsed = {"echo": 0.0, "genserver": 0.0}
    blocks = max(2, n_calls // PAIR_BLOCK)
    for block in range(blocks):
        for kind in (("echo", "genserver") if block % 2 == 0 else ("genserver", "echo")):
            got = samples[kind]
            t0 = time.perf_counter()
            for i in range(PAIR_BLOCK):
                start = clock()
                if kind == "echo":
                    send(echo, (i, me))
                    reply = await receive(timeout=STALL_S)
                    ok = reply[0] == i
                else:
                    ok = await call(proc, server, ("ping", i), STALL_S) == ("ping", i)
                got.append(clock() - start)
                if not ok:
                    raise h.BenchError(f"crossed reply in the paired {kind} block {block}")
            elapsed[kind] += time.perf_counter() - t0
    send(echo, ("stop",))
    return {kind: _figures(samples[kind], elapsed[kind]) for kind in samples}


def _figures(samples_ns: list[int], elapsed_s: float) -> dict[str, float]:
    samples_ns.sort()
    return {
        "p50_us": h.percentile(samples_ns, 50) / 1000.0,
        "p99_us": h.percentile(samples_ns, 99) / 1000.0,
        "calls_per_s": len(samples_ns) / elapsed_s,
    }


async def _cli_main(
    port: int, server_node: str, server_pid: list[Any], kind: str, n_calls: int, warmup: int
) -> dict[str, Any]:
    async with fb.new_node("cli", port) as node:
        if not await node.connect(server_node, timeout=STALL_S):
            raise h.BenchError(f"cannot connect: {node.last_connect_error(server_node)}")
        watch = fb.LoopWatch(node)
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        async def client(proc: Any) -> None:
            try:
                if kind == "genserver":
                    # By registered name on the remote node, as a user would address it.
                    target: Any = (SERVER_NAME, server_node)
                    got = await _client_genserver(proc, target, n_calls, warmup)
                elif kind == "paired":
                    got = await _client_paired(proc, fb.pid_from_json(server_pid),
                                               (SERVER_NAME, server_node), n_calls, warmup)
                else:
                    target = fb.pid_from_json(server_pid)
                    got = await _client_echo(proc, target, n_calls, warmup)
                    proc.send(target, ("stop",))
                done.set_result(got)
            except BaseException as exc:
                if not done.done():
                    done.set_exception(exc)
                raise

        node.spawn(client)
        result = await watch.wait(done, CHILD_TIMEOUT_S)
        info = watch.close()
    if result is None:
        raise h.BenchError(f"server node went down during the calls: {info['events']}")
    result.update(info)
    return result


def _cli(
    port: int, server_node: str, server_pid: list[Any], kind: str, n_calls: int, warmup: int
) -> dict[str, Any]:
    """Child: node ``cli`` with one client process making sequential calls."""
    return fb.run_child(lambda: _cli_main(port, server_node, server_pid, kind, n_calls, warmup))


# --------------------------------------------------------------------------- measurement


def _run_pair(kind: str, n_calls: int, warmup: int,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """Start node srv (serving ``kind``) and node cli (calling it); the client's result.
    ``env``: extra environment of both nodes (e.g. ``FABRIC_UVLOOP=0``)."""
    with h.Children() as kids:
        srv = kids.function(_srv, env=env, port=fb.free_port(), kind=kind)
        ready = srv.expect("ready", STALL_S)
        cli = kids.function(
            _cli,
            env=env,
            port=fb.free_port(),
            server_node=ready["node"],
            server_pid=ready["pid"],
            kind=kind,
            n_calls=n_calls,
            warmup=warmup,
        )
        got: dict[str, Any] = cli.result(CHILD_TIMEOUT_S)
        srv.result(CHILD_TIMEOUT_S)
    return got


def _round_trip(got: dict[str, float]) -> RoundTrip:
    return RoundTrip(got["p50_us"], got["p99_us"], got["calls_per_s"])


def roundtrip_fabric(n_calls: int, kind: str = "echo", warmup: int = WARMUP_CALLS,
                     env: dict[str, str] | None = None) -> RoundTrip:
    """One measurement of ``n_calls`` sequential calls from node cli to node srv."""
    if kind not in ("echo", "genserver"):
        raise ValueError("kind must be echo or genserver (see roundtrip_paired)")
    return _round_trip(_run_pair(kind, n_calls, warmup, env))


def roundtrip_paired(n_calls: int, warmup: int = WARMUP_CALLS) -> tuple[RoundTrip, RoundTrip]:
    """Echo and GenServer round trips in alternating blocks on one node pair:
    ``(echo, genserver)``, ``n_calls`` of each."""
    got = _run_pair("paired", n_calls, warmup)
    return _round_trip(got["echo"]), _round_trip(got["genserver"])


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Measure fabric call round trips next to the raw baselines; print and write JSON."""
    args = h.parse_args(__doc__, argv)
    n = h.sized(args, full=5_000, quick=2_000)
    n_sync = h.sized(args, full=10_000, quick=2_000)
    with_genserver = genserver_available()

    report = fb.Report("bench_call", args)
    with_erlang = args.erlang and _erlang.available()
    report.extra = {
        "goal": f"GenServer call p50 and p99 at most {GOAL_VS_ERLANG:g}x Erlang's (issue 17)",
        "erlang_measured": with_erlang,
        "genserver_measured": with_genserver,
    }
    measurements: dict[str, Callable[[], Any]] = {
        "rt_sync": lambda: baselines.roundtrip_raw_sync(n_sync),
        "rt_async": lambda: baselines.roundtrip_raw_asyncio(n),
        "echo": lambda: roundtrip_fabric(n, "echo"),
    }
    if with_genserver:
        measurements["genserver"] = lambda: roundtrip_fabric(n, "genserver")
        measurements["paired"] = lambda: roundtrip_paired(n)
    else:
        # TODO(bench): fabric.genserver is not importable here; only the raw-echo
        # variant ran.  The GenServer row appears by itself once the module exists.
        report.extra["todo"] = "fabric.genserver missing: GenServer call not measured"
    with_uvloop = fabric.loop.uvloop_module() is not None
    report.extra["uvloop"] = with_uvloop
    if with_genserver and with_uvloop:
        # The nodes run on uvloop (fabric.loop); this measures the same call on asyncio's
        # own loop, in the same rounds (D31).
        measurements["genserver_asyncio"] = lambda: roundtrip_fabric(
            n, "genserver", env={fabric.loop.ENV_VAR: "0"})
    if with_erlang:
        # Same experiment: WARMUP_CALLS untimed, n timed, one call in flight, 2 nodes.
        measurements["erlang"] = lambda: _erlang.call(n, WARMUP_CALLS)
    got = h.run_interleaved(measurements, args.runs)

    def col(key: str, name: str) -> list[float]:
        return [float(getattr(r, name)) for r in got[key]]

    rows = (("p50", "us", "p50_us"), ("p99", "us", "p99_us"), ("rate", "calls/s", "calls_per_s"))
    for metric, unit, attr in rows:
        report.add("roundtrip raw sync", metric, unit, col("rt_sync", attr),
                   note=f"blocking DEALER<->ROUTER echo, {n_sync} calls")
    for metric, unit, attr in rows:
        report.add("roundtrip raw asyncio", metric, unit, col("rt_async", attr),
                   baseline="roundtrip raw sync", note=f"zmq.asyncio echo, {n} calls")
    names = {"echo": "fabric echo process", "genserver": "fabric GenServer call"}
    erlang_names = {"echo": ("erlang echo process", "echo_"),
                    "genserver": ("erlang gen_server:call", "")}
    for kind in (k for k in ("echo", "genserver") if k in got):
        for metric, unit, attr in rows:
            report.add(names[kind], metric, unit, col(kind, attr),
                       baseline="roundtrip raw asyncio", note=f"{n} sequential calls")
        if with_erlang:
            erlang_name, prefix = erlang_names[kind]
            for metric, unit, attr in rows:
                _erlang.add_rows(report, erlang_name, names[kind], metric, unit,
                                 [float(r[prefix + attr]) for r in got["erlang"]],
                                 col(kind, attr),
                                 note=f"Erlang/OTP, 2 nodes, {WARMUP_CALLS} + {n} calls")
    if "genserver_asyncio" in got:
        for metric, unit, attr in rows:
            report.add("fabric GenServer call, asyncio loop", metric, unit,
                       col("genserver_asyncio", attr), baseline="fabric GenServer call",
                       note="FABRIC_UVLOOP=0: asyncio's own loop instead of uvloop; the "
                            "ratio is asyncio / uvloop")
    if "paired" in got:
        pairs: list[Any] = got["paired"]
        for metric, unit, attr in rows:
            report.add("paired: echo process", metric, unit,
                       [float(getattr(echo, attr)) for echo, _ in pairs],
                       baseline="roundtrip raw asyncio",
                       note=f"alternating blocks of {PAIR_BLOCK} with the GenServer call")
        for metric, unit, attr in rows:
            report.add("paired: GenServer call", metric, unit,
                       [float(getattr(gen, attr)) for _, gen in pairs],
                       baseline="paired: echo process",
                       note="same node pair and moment as the paired echo: the ratio is "
                            "the call's own cost")
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
