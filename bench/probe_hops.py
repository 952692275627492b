"""Probe: where a remote round trip's time goes, hop by hop (issue 17, D31).

Run:  python -m bench.probe_hops [--calls N] [--env NAME=VALUE ...]
      e.g. python -m bench.probe_hops --env FABRIC_UVLOOP=0 --env FABRIC_IO_SCHED_BATCH=0

Not part of ``run_all``: it prints a table. Two nodes run ``bench_call``'s echo
experiment (N sequential round trips after 200 warm-ups) with probes wrapped around
four of fabric's functions in both processes, each appending a CLOCK_MONOTONIC
timestamp (one clock for the machine) to a list:

* ``sent``: after ``Outbound._write`` returns (the frame is in ZeroMQ's hands);
* ``wake``: when a ``Reader`` is called by the selector (kept as the last one);
* ``dispatch``: when ``Reactor.dispatch`` is handed a batch (with the last wake);
* ``recv``: when a process's ``receive()`` returns.

The parent merges both processes' events in time order and walks them as one call:
client sent -> server dispatch -> server recv -> server sent -> client dispatch -> client
recv, and prints the median and mean of each hop, plus sent -> wake and wake -> dispatch
on each side. The probes cost a few microseconds themselves, so the total is a little
above ``bench_call``'s echo figure; read the hops relative to each other.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # started as `python bench/probe_hops.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _fabric as fb  # noqa: E402
from bench import _harness as h  # noqa: E402
from bench import bench_call  # noqa: E402

_EVENTS: dict[str, list[int]] = {"wake": [], "dispatch": [], "sent": [], "recv": []}
_last_wake = [0]
#: One call, hop by hop: (side, event) in order.
SEQUENCE = (("C", "sent"), ("S", "dispatch"), ("S", "recv"), ("S", "sent"),
            ("C", "dispatch"), ("C", "recv"))


def _install_probes() -> None:
    """Wrap the four functions (see the module doc) in this process."""
    import fabric.node.reactor as reactor
    import fabric.outbound as outbound
    import fabric.process as process
    import fabric.transport.zeromq as transport

    clock = time.perf_counter_ns  # CLOCK_MONOTONIC on Linux, as h.shared_clock
    wake, dispatch = transport.Reader._wake, reactor.Reactor.dispatch
    write, receive = outbound.Outbound._write, process.Process.receive

    def probed_wake(self: Any) -> None:
        _last_wake[0] = clock()
        wake(self)

    def probed_dispatch(self: Any, peer: str, batch: list[Any], now: float) -> None:
        _EVENTS["wake"].append(_last_wake[0])
        _EVENTS["dispatch"].append(clock())
        dispatch(self, peer, batch, now)

    def probed_write(self: Any, frame: bytes | None = None) -> bool:
        done = write(self, frame)
        _EVENTS["sent"].append(clock())
        return done

    async def probed_receive(self: Any, *args: Any, **kwargs: Any) -> Any:
        msg = await receive(self, *args, **kwargs)
        _EVENTS["recv"].append(clock())
        return msg

    transport.Reader._wake = probed_wake  # type: ignore[method-assign]
    reactor.Reactor.dispatch = probed_dispatch  # type: ignore[method-assign]
    outbound.Outbound._write = probed_write  # type: ignore[method-assign]
    process.Process.receive = probed_receive  # type: ignore[method-assign]


def _srv(port: int) -> dict[str, list[int]]:
    """Child: bench_call's echo server node, probed."""
    _install_probes()
    bench_call._srv(port, "echo")
    return _EVENTS


def _cli(port: int, server_node: str, server_pid: list[Any], n_calls: int) -> dict[str, Any]:
    """Child: bench_call's echo client node, probed."""
    _install_probes()
    got = bench_call._cli(port, server_node, server_pid, "echo", n_calls,
                          bench_call.WARMUP_CALLS)
    return {"events": _EVENTS, "p50_us": got["p50_us"]}


def hops(client: dict[str, list[int]], server: dict[str, list[int]]) -> dict[str, list[float]]:
    """Microseconds per hop for every complete call found in the merged events."""
    events: list[tuple[int, str, str]] = []
    for side, rec in (("C", client), ("S", server)):
        for kind in ("dispatch", "sent", "recv"):
            events += [(t, side, kind) for t in rec[kind]]
    wakes = {"C": dict(zip(client["dispatch"], client["wake"], strict=True)),
             "S": dict(zip(server["dispatch"], server["wake"], strict=True))}
    events.sort()
    names = [f"{a[0]}.{a[1]} -> {b[0]}.{b[1]}"
             for a, b in zip(SEQUENCE, SEQUENCE[1:], strict=False)]
    out: dict[str, list[float]] = {name: [] for name in names}
    out.update({"S sent -> wake": [], "S wake -> dispatch": [], "C sent -> wake": [],
                "C wake -> dispatch": []})
    step, times = 0, [0] * len(SEQUENCE)
    for t, side, kind in events:
        if (side, kind) == SEQUENCE[step]:
            times[step] = t
            step += 1
        elif (side, kind) == SEQUENCE[0]:  # a call restarted (e.g. a control message)
            times[0], step = t, 1
        if step == len(SEQUENCE):
            for i, name in enumerate(names):
                out[name].append((times[i + 1] - times[i]) / 1000)
            for s, sent_i, disp_i in (("S", 0, 1), ("C", 3, 4)):
                wake = wakes[s][times[disp_i]]
                if wake > times[sent_i]:  # the dispatch followed a selector wakeup
                    out[f"{s} sent -> wake"].append((wake - times[sent_i]) / 1000)
                    out[f"{s} wake -> dispatch"].append((times[disp_i] - wake) / 1000)
            step = 0
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment of both nodes (repeatable)")
    args = parser.parse_args(argv)
    env = dict(pair.split("=", 1) for pair in args.env)
    with h.Children() as kids:
        srv = kids.function(_srv, env=env, port=fb.free_port())
        ready = srv.expect("ready", bench_call.STALL_S)
        cli = kids.function(_cli, env=env, port=fb.free_port(), server_node=ready["node"],
                            server_pid=ready["pid"], n_calls=args.calls)
        got = cli.result(bench_call.CHILD_TIMEOUT_S)
        server = srv.result(bench_call.CHILD_TIMEOUT_S)
    table = hops(got["events"], server)
    complete = len(next(iter(table.values())))
    print(f"{complete} complete calls; the client's own p50 (probed): {got['p50_us']:.1f} us")
    for name, values in table.items():
        if values:
            print(f"  {name:24} p50 {statistics.median(values):7.1f} us   "
                  f"mean {statistics.mean(values):7.1f} us")
    total = [sum(table[n][i] for n in list(table)[:len(SEQUENCE) - 1]) for i in range(complete)]
    if total:
        print(f"  {'round trip (sum)':24} p50 {statistics.median(total):7.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
