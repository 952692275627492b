"""Discovery: launch to full mesh with gossip vs static seeds; DNS: record to session.

Run:  python -m bench.bench_discovery [--quick] [--runs N] [--out PATH]

1. Gossip. 8 node processes (``python -m nodes.node``) are launched at once, each with
   ``--discovery gossip`` on loopback multicast (TTL 0, ``IP_MULTICAST_IF`` 127.0.0.1, a
   free port, the default 1 s beacon interval) and no names given. The figure is the time
   from just before the first launch to every node listing the 7 others, and the part of
   it after the last launch. Baseline, alternated with it in the same run: the same 8
   nodes each given the first as a static seed (``--connect``), which is
   :func:`bench.bench_mesh.form_mesh` unchanged. Goal (issue 13): within 1.2x the
   static-seed time and under 1 s after the last launch. As the interpreters' start-up
   (about 2.5 s for 8 on 2 cores) is inside "after last launch" for both, a third row
   starts 8 ``fabric.Node`` with gossip in one process and times the full mesh from the
   last ``start()``.
2. DNS. A dnsmasq child serves an A record; node A polls it (``dns`` strategy, interval
   :data:`DNS_INTERVAL_S`); each run starts a node B at a new address without discovery,
   adds it to the record (a rewrite of dnsmasq's hosts file and a SIGHUP) and times until
   A lists B, then stops B and removes it from the record.
   Goal: at most the polling interval plus 100 ms. Skipped when dnsmasq is missing.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if not __package__:  # started as `python bench/bench_discovery.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fabric  # noqa: E402
from bench import _fabric as fb  # noqa: E402
from bench import _harness as h  # noqa: E402
from bench.bench_mesh import form_mesh, node_program_available, use_bytecode_cache  # noqa: E402
from fabric.testing.dnsmasq import Dnsmasq, dnsmasq_path  # noqa: E402

N_NODES = 8
DNS_INTERVAL_S = 0.5
GOAL_RATIO = 1.2
GOAL_AFTER_LAUNCH_S = 1.0


def gossip_spec() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"gossip:port={port},ttl=0,if_addr=127.0.0.1"


def gossip_mesh() -> dict[str, float]:
    return form_mesh(N_NODES, True, discovery=gossip_spec())


async def _in_process_gossip() -> float:
    """Seconds from the last of 8 in-process nodes started with gossip to a full mesh
    (what is left of the launch time without interpreter start-up)."""
    spec = gossip_spec()
    nodes = [fabric.Node(f"g{i}@127.0.0.1:{port}", fb.COOKIE, discovery=spec)
             for i, port in enumerate(fb.free_ports(N_NODES))]
    try:
        for node in nodes:
            await node.start()
        t_last = time.monotonic()
        deadline = t_last + 30
        while any(len(n.nodes()) < N_NODES - 1 for n in nodes):
            if time.monotonic() > deadline:
                raise h.BenchError("in-process gossip nodes never formed a full mesh")
            await asyncio.sleep(0.002)
        return time.monotonic() - t_last
    finally:
        for node in nodes:
            await node.stop()


async def _dns_runs(server: Dnsmasq, runs: int) -> list[float]:
    service = "app.fabric.test"
    port = fb.free_ports(1)[0]
    spec = (f"dns:name={service},basename=app,port={port},resolver=127.0.0.1,"
            f"resolver_port={server.port},interval={DNS_INTERVAL_S}")
    server.set_hosts([("127.0.0.41", service)])
    a = fabric.Node(f"app@127.0.0.41:{port}", fb.COOKIE, discovery=spec)
    await a.start()
    took = []
    try:
        for i in range(runs):
            # A new pod each run (a new address), stopped gracefully afterwards.
            address = f"127.0.0.{42 + i}"
            b = fabric.Node(f"app@{address}:{port}", fb.COOKIE)
            await b.start()
            await asyncio.sleep(DNS_INTERVAL_S * 0.37 * i % DNS_INTERVAL_S)  # vary the phase
            t0 = time.monotonic()
            server.set_hosts([("127.0.0.41", service), (address, service)])
            deadline = t0 + 10 * DNS_INTERVAL_S + 5
            try:
                while b.name not in a.nodes():
                    if time.monotonic() > deadline:
                        raise h.BenchError("the node added to the record was never connected")
                    await asyncio.sleep(0.002)
                took.append(time.monotonic() - t0)
            finally:
                server.set_hosts([("127.0.0.41", service)])
                await b.stop()
    finally:
        await a.stop()
    return took


def main(argv: Sequence[str] | None = None) -> int:
    args = h.parse_args(__doc__, argv)
    if not node_program_available():
        print("bench_discovery needs nodes/node.py", file=sys.stderr)
        return 1
    cache = tempfile.TemporaryDirectory(prefix="fabric-bench-pyc-")
    use_bytecode_cache(Path(cache.name))
    report = fb.Report("bench_discovery", args)
    report.extra = {"goal": {"gossip_vs_static": GOAL_RATIO,
                             "gossip_after_last_launch_s": GOAL_AFTER_LAUNCH_S,
                             "dns_within_s": DNS_INTERVAL_S + 0.1},
                    "nodes": N_NODES, "dns_interval_s": DNS_INTERVAL_S}
    measurements: dict[str, Callable[[], Any]] = {
        "static": functools.partial(form_mesh, N_NODES, True),
        "gossip": gossip_mesh,
    }
    got = h.run_interleaved(measurements, args.runs)
    for label in ("static", "gossip"):
        done = [m for m in got[label] if m["seconds"] == m["seconds"]]  # not NaN
        if len(done) < len(got[label]):
            print(f"  {label}: {len(got[label]) - len(done)} runs never formed a full mesh",
                  file=sys.stderr)
        row = f"full mesh N={N_NODES} {label}"
        base = None if label == "static" else f"full mesh N={N_NODES} static"
        report.add(row, "formation", "s", [m["seconds"] for m in done], baseline=base,
                   note="launch of the first node to full mesh")
        report.add(row, "after last launch", "s",
                   [m["seconds"] - m["launch_s"] for m in done], baseline=base)
    report.add(f"full mesh N={N_NODES} gossip in-process", "after last start", "s",
               [asyncio.run(_in_process_gossip()) for _ in range(args.runs)],
               note="8 fabric.Node in one process; no interpreter start-up")
    exe = dnsmasq_path()
    if exe is None:
        print("dnsmasq not installed: DNS part skipped", file=sys.stderr)
    else:
        with Dnsmasq("fabric.test") as server:
            took = asyncio.run(_dns_runs(server, max(args.runs, 5)))
        report.add("dns record to session", "latency", "s", took,
                   note=f"poll interval {DNS_INTERVAL_S} s; goal <= {DNS_INTERVAL_S + 0.1} s")
    report.finish()
    cache.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
