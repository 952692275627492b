"""Failure detection: kill -9 and SIGSTOP to NodeDown, and false NodeDowns on a busy machine.

Run:  python -m bench.bench_failure [--quick] [--runs N] [--soak SECONDS] [--out PATH]
      (or python bench/bench_failure.py)

Two fabric nodes, ``a`` and ``b``, run as separate OS processes on 127.0.0.1 with the
default settings (heartbeat every 0.2 s, ``heartbeat_timeout`` 1 s).  Node ``a`` watches
``b`` with ``node.monitor_nodes()``.

* kill -9: the parent reads CLOCK_MONOTONIC and sends SIGKILL to ``b``'s process; ``a``
  reads the same clock when ``NodeDown(b, "connection_closed")`` comes out of its monitor.
  The figure is the difference (the kernel closes the TCP connection, the ZeroMQ socket
  monitor reports it).
* SIGSTOP: the same with SIGSTOP: sockets stay open, only the heartbeats stop, so ``a``
  must notice the silence (``NodeDown(b, "heartbeat_timeout")``).
* soak: ``a`` and ``b`` exchange a ping every 5 ms (and heartbeats) for ``--soak`` seconds
  (default 30, 10 with ``--quick``) while :data:`BURNERS` busy-loop processes
  (``while True: pass`` with a deadline) saturate both cores.  Every NodeDown either side
  sees is a false one; the pings that got no reply within 5 s are counted too.  The soak
  is one long run (runs = 1 in its rows).

There is no raw pyzmq baseline for detection (ZeroMQ itself declares nothing down), so
the rows have no ratio and the JSON says ``"baseline": null``. Erlang/OTP runs in the
same session (``bench/_erlang.py``; ``--no-erlang`` skips it): kill -9 at its defaults,
SIGSTOP at ``net_ticktime`` 1 s (comparable to fabric's 1 s timeout; at its default of
60 s Erlang takes about a minute); the ``/ Erlang`` rows are per-round ratios.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if not __package__:  # started as `python bench/bench_failure.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fabric  # noqa: E402
from bench import _erlang  # noqa: E402
from bench import _fabric as fb  # noqa: E402
from bench import _harness as h  # noqa: E402

STALL_S = 15.0
#: Busy-loop processes during the soak: 2 per core keeps both cores saturated even when a
#: node process is runnable.
BURNERS = 4
#: Ping period and reply timeout during the soak.
PING_EVERY_S = 0.005
PING_TIMEOUT_S = 5.0
#: Longest the watching node waits for a NodeDown after the signal.
DETECT_TIMEOUT_S = 10.0

#: Erlang's tick for the SIGSTOP comparison at equal settings: net_ticktime 1 s declares a
#: silent node down after about 1 s, as fabric's default heartbeat_timeout does.
ERLANG_TICKTIME_S = 1


# --------------------------------------------------------------------------- children


async def _echo(proc: Any) -> None:
    """Echo ``(seq, pid)`` back as ``(seq,)`` forever (the node's end ends it)."""
    while True:
        msg = await proc.receive()
        proc.send(msg[1], (msg[0],))


async def _target_main(port: int, duration: float) -> dict[str, Any]:
    async with fb.new_node("b", port) as node:
        watch = fb.LoopWatch(node)
        pid = node.spawn(_echo)
        h.emit("ready", node=node.name, pid=fb.pid_to_json(pid), os_pid=os.getpid())
        # Until the peer stops (soak) or the deadline: a killed or stopped target never
        # gets here, which is the point.
        stop = asyncio.get_running_loop().create_future()

        async def until_peer_stops() -> None:
            async for event in node.monitor_nodes():
                if isinstance(event, fabric.NodeDown) and event.reason == "shutdown":
                    stop.set_result(None)
                    return

        task = asyncio.get_running_loop().create_task(until_peer_stops())
        try:
            await asyncio.wait_for(stop, duration)
        except asyncio.TimeoutError:
            pass
        task.cancel()
        return watch.close()


def _target(port: int, duration: float) -> dict[str, Any]:
    """Child: node ``b`` with an echo process; the parent kills or stops it."""
    return fb.run_child(lambda: _target_main(port, duration))


async def _watcher_main(port: int, target: str) -> dict[str, Any]:
    async with fb.new_node("a", port) as node:
        if not await node.connect(target, timeout=STALL_S):
            raise h.BenchError(f"cannot connect: {node.last_connect_error(target)}")
        events = node.monitor_nodes()
        h.emit("connected")
        deadline = time.monotonic() + STALL_S + DETECT_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                event = await events.next(timeout=max(0.01, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
            if isinstance(event, fabric.NodeDown) and event.node == target:
                t_down = h.shared_clock()
                events.close()
                return {"t_down": t_down, "reason": event.reason}
        events.close()
    raise h.BenchError("no NodeDown for the target")


def _watcher(port: int, target: str) -> dict[str, Any]:
    """Child: node ``a``; connects to ``target`` and reports when it sees it go down."""
    return fb.run_child(lambda: _watcher_main(port, target))


async def _soak_main(port: int, target: str, echo_pid: list[Any], seconds: float) -> dict[str, Any]:
    async with fb.new_node("a", port) as node:
        if not await node.connect(target, timeout=STALL_S):
            raise h.BenchError(f"cannot connect: {node.last_connect_error(target)}")
        watch = fb.LoopWatch(node)
        echo = fb.pid_from_json(echo_pid)
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        async def pinger(proc: Any) -> None:
            sent = answered = 0
            worst_ns = 0
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                t0 = time.perf_counter_ns()
                proc.send(echo, (sent, proc.self))
                sent += 1
                reply = await proc.receive(timeout=PING_TIMEOUT_S, default=None)
                if reply is not None:
                    answered += 1
                    worst_ns = max(worst_ns, time.perf_counter_ns() - t0)
                await asyncio.sleep(PING_EVERY_S)
            done.set_result({"pings": sent, "answered": answered, "worst_rtt_ms": worst_ns / 1e6})

        node.spawn(pinger)
        h.emit("soaking")
        result = await asyncio.wait_for(done, seconds + 2 * PING_TIMEOUT_S + STALL_S)
        result.update(watch.close())
    return result


def _soak(port: int, target: str, echo_pid: list[Any], seconds: float) -> dict[str, Any]:
    """Child: node ``a`` pinging ``b``'s echo process for ``seconds``; reports NodeDowns."""
    return fb.run_child(lambda: _soak_main(port, target, echo_pid, seconds))


def _burn(seconds: float) -> int:
    """Child: spin for ``seconds`` (the parent also kills it by pid at the end)."""
    end = time.monotonic() + seconds
    spins = 0
    while time.monotonic() < end:
        spins += 1
    return spins


# --------------------------------------------------------------------------- measurements


def detect(sig: int) -> dict[str, Any]:
    """Send ``sig`` to node b's process; ms until node a saw NodeDown, and the reason."""
    with h.Children() as kids:
        b = kids.function(_target, port=fb.free_port(), duration=STALL_S + DETECT_TIMEOUT_S)
        ready = b.expect("ready", STALL_S)
        a = kids.function(_watcher, port=fb.free_port(), target=ready["node"])
        a.expect("connected", STALL_S)
        time.sleep(0.5)  # let the session settle: a few heartbeats each way
        t_signal = h.shared_clock()
        os.kill(b.pid, sig)
        try:
            got = a.result(DETECT_TIMEOUT_S + STALL_S)
        finally:
            if sig == signal.SIGSTOP:
                # A stopped process ignores SIGTERM until continued: kill it outright.
                os.kill(b.pid, signal.SIGKILL)
    return {"ms": (got["t_down"] - t_signal) * 1000.0, "reason": got["reason"]}


def soak(seconds: float, burners: int = BURNERS) -> dict[str, Any]:
    """Run a and b under ``burners`` busy loops for ``seconds``; count false NodeDowns."""
    with h.Children() as kids:
        b = kids.function(_target, port=fb.free_port(), duration=seconds + 60.0)
        ready = b.expect("ready", STALL_S)
        for i in range(burners):
            kids.function(_burn, name=f"burner{i}", seconds=seconds + 5.0)
        a = kids.function(
            _soak, port=fb.free_port(), target=ready["node"], echo_pid=ready["pid"],
            seconds=seconds,
        )
        got = a.result(seconds + 60.0)
        target = b.result(STALL_S)
    return {
        "downs_a": got["downs"],
        "downs_b": target["downs"],
        "events_a": got["events"],
        "events_b": target["events"],
        "pings": got["pings"],
        "unanswered": got["pings"] - got["answered"],
        "worst_rtt_ms": got["worst_rtt_ms"],
        "stall_a_ms": got["max_stall_ms"],
        "stall_b_ms": target["max_stall_ms"],
    }


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Measure detection times and the soak; print the table and write the JSON."""
    parser = h.make_parser(__doc__)
    parser.add_argument("--soak", type=float, default=None,
                        help="soak seconds (default 30; 10 with --quick)")
    args = h.parse_args(__doc__, argv, parser)
    soak_s = args.soak if args.soak is not None else (10.0 if args.quick else 30.0)
    defaults = fabric.NodeConfig()

    with_erlang = args.erlang and _erlang.available()
    report = fb.Report("bench_failure", args)
    report.extra = {
        "baseline": None,
        "baseline_note": "no raw pyzmq baseline applies: ZeroMQ itself detects no failure",
        "erlang_measured": with_erlang,
        "erlang_sigstop_net_ticktime_s": ERLANG_TICKTIME_S,
        "settings": {
            "heartbeat_interval_s": defaults.heartbeat_interval,
            "heartbeat_timeout_s": defaults.heartbeat_timeout,
            "soak_s": soak_s,
            "burners": BURNERS,
            "cpus": os.cpu_count(),
        },
    }
    measurements: dict[str, Callable[[], Any]] = {
        "kill9": lambda: detect(signal.SIGKILL), "sigstop": lambda: detect(signal.SIGSTOP)}
    if with_erlang:
        # kill -9 at Erlang's defaults; SIGSTOP at a tick comparable to fabric's timeout
        # (at its default net_ticktime of 60 s Erlang takes about a minute).
        measurements["erlang_kill9"] = lambda: _erlang.nodedown_after(signal.SIGKILL)
        measurements["erlang_sigstop"] = lambda: _erlang.nodedown_after(
            signal.SIGSTOP, ERLANG_TICKTIME_S)
    got = h.run_interleaved(measurements, args.runs)
    for key, name, expected in (
        ("kill9", "kill -9 -> NodeDown", "connection_closed"),
        ("sigstop", "SIGSTOP -> NodeDown", "heartbeat_timeout"),
    ):
        reasons = sorted({r["reason"] for r in got[key]})
        wrong = [r for r in reasons if r != expected]
        report.add(name, "detection", "ms", [r["ms"] for r in got[key]],
                   note=f"reason {', '.join(reasons)}" + (f" (expected {expected})" if wrong
                                                         else ""))
    if with_erlang:
        for key, name, erlang_name, setting in (
            ("kill9", "kill -9 -> NodeDown", "erlang kill -9 -> nodedown", "defaults"),
            ("sigstop", "SIGSTOP -> NodeDown", "erlang SIGSTOP -> nodedown",
             f"net_ticktime {ERLANG_TICKTIME_S} s"),
        ):
            _erlang.add_rows(report, erlang_name, name, "detection", "ms",
                             [float(v) for v in got[f"erlang_{key}"]],
                             [float(r["ms"]) for r in got[key]],
                             note=f"Erlang/OTP, 2 nodes, {setting}")
    print(f"  soak: {soak_s:g} s under {BURNERS} busy loops ...", file=sys.stderr, flush=True)
    s = soak(soak_s)
    report.extra["soak_events"] = {"a": s["events_a"], "b": s["events_b"]}
    name = f"soak {soak_s:g} s, {BURNERS} busy loops"
    report.add(name, "false NodeDowns", "count", [s["downs_a"] + s["downs_b"]],
               note=f"a saw {s['downs_a']}, b saw {s['downs_b']}; goal 0")
    report.add(name, "unanswered pings", "count", [s["unanswered"]],
               note=f"of {s['pings']} pings every {PING_EVERY_S * 1000:g} ms")
    report.add(name, "worst ping RTT", "ms", [s["worst_rtt_ms"]])
    report.add(name, "worst loop stall", "ms", [max(s["stall_a_ms"], s["stall_b_ms"])],
               note="longest event-loop stall on either node")
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
