"""Mesh formation: from launching N node processes to every node seeing all others; RSS.

Run:  python -m bench.bench_mesh [--quick] [--full] [--runs N] [--out PATH]
      (or python bench/bench_mesh.py)

N fabric nodes are launched as separate OS processes on 127.0.0.1, as fast as the parent
can start them, each given one seed: the first node.  The figure is the time from just
before the first launch to the moment every node's membership lists all N-1 others
(the full mesh forms transitively: each node learns the others from the seed's peer
lists).  Membership is read from each node's ``--status-file`` (rewritten atomically by
the node on every change), polled every :data:`POLL_S` s, so the figure's resolution is
that period.  Then the resident set size of every node (``VmRSS`` in
``/proc/<pid>/status``) is read: median and max per node.  A mesh still incomplete after
``15 s + 1 s per node`` is counted (``incomplete runs``, ``missing links``) and left out
of the formation figure.

Sizes: N = 8, 16 with ``--quick``; 8, 16, 32 by default; 64 as well with ``--full``.

Bytecode: this machine's environment sets ``PYTHONDONTWRITEBYTECODE=1``, so every new
Python compiles fabric from source (about a quarter of a second of CPU per process here),
which an installed fabric never does.  By default the children therefore run with the
variable removed and ``PYTHONPYCACHEPREFIX`` pointing at a temporary directory warmed up
once before measuring (nothing is written into the checkout); ``--cold`` keeps the
environment as it is and measures compile-on-every-launch.

Nodes are ``python -m nodes.node --no-repl --log-level warning`` when that program exists
(it is the real node program), else a small child function (:func:`_member`) doing the
same with :class:`fabric.Node`.

Baseline: there is no raw-pyzmq equivalent of a mesh, so the row's baseline is the
launch floor: N Python processes started the same way that import fabric and exit
(``launch floor``).  The ratio says how much of the formation time is fabric's own
handshakes rather than interpreter start-up on a 2-core machine.  Erlang/OTP runs in the
same rounds for N up to :data:`ERLANG_MAX_N` (``bench/_erlang.py``; ``--no-erlang`` skips
it): N ``erl`` nodes launched together, each peer given the first node as its seed,
until every node sees the N-1 others; the ``/ Erlang`` rows are per-round ratios.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if not __package__:  # started as `python bench/bench_mesh.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fabric  # noqa: E402
from bench import _erlang  # noqa: E402
from bench import _fabric as fb  # noqa: E402
from bench import _harness as h  # noqa: E402

#: Status-file poll period in the parent (the figure's resolution).
POLL_S = 0.02
#: A mesh not complete after ``FORM_TIMEOUT_BASE_S + FORM_TIMEOUT_PER_NODE_S * N`` seconds
#: counts as incomplete: more than 10x the goal, and links that are missing by then are
#: not coming (nothing retries them).
FORM_TIMEOUT_BASE_S = 15.0
FORM_TIMEOUT_PER_NODE_S = 1.0
#: How long the floor children may take to start.
FLOOR_TIMEOUT_S = 120.0
#: How long a node keeps retrying its seed (the seed may start after it).
SEED_TIMEOUT_S = 60.0
#: fabric's goals (seconds from launch).
GOAL_MESH_S: dict[int, float] = {16: 3.2, 64: 15.0}
#: Erlang/OTP runs in the same session for the sizes up to this one (bench/_erlang.py).
ERLANG_MAX_N = 16


def node_program_available() -> bool:
    """True when ``nodes/node.py`` (the node program) exists in this checkout."""
    return importlib.util.find_spec("nodes.node") is not None


# --------------------------------------------------------------------------- children


async def _member_main(full_name: str, seed: str | None, status: str, lifetime: float) -> None:
    node = fabric.Node(full_name, cookie=fb.COOKIE)
    async with node:
        path = Path(status)

        def write() -> None:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"name": node.name, "nodes": node.nodes()}))
            tmp.replace(path)  # atomic: the parent never reads half a file

        write()
        end = time.monotonic() + lifetime
        if seed is not None:
            seed_deadline = time.monotonic() + SEED_TIMEOUT_S
            while time.monotonic() < seed_deadline:
                if await node.connect(seed, timeout=5.0):
                    break
                await asyncio.sleep(0.05)
        while time.monotonic() < end:  # the parent terminates us long before this
            write()
            await asyncio.sleep(0.05)


def _member(full_name: str, seed: str | None, status: str, lifetime: float) -> None:
    """Child (fallback when nodes/node.py is missing): a node that writes its membership."""
    fb.run_child(lambda: _member_main(full_name, seed, status, lifetime))


def _import_only() -> float:
    """Child: the launch floor; importing this module imported fabric already."""
    return h.shared_clock()


# --------------------------------------------------------------------------- measurement


def _read_nodes(path: Path) -> list[str] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # not written yet
    nodes = data.get("nodes")
    return nodes if isinstance(nodes, list) else None


def form_mesh(n_nodes: int, use_program: bool, discovery: str | None = None
              ) -> dict[str, float]:
    """Launch ``n_nodes`` nodes with the first as everyone's seed; time the full mesh.

    With ``discovery`` (a spec, needs the node program) no node gets a seed: each runs
    ``--discovery discovery`` instead (bench/bench_discovery.py).

    Returns seconds (NaN when the mesh did not complete within the timeout), the number
    of links still missing then (each counted once per side that misses it), and RSS.
    """
    form_timeout = FORM_TIMEOUT_BASE_S + FORM_TIMEOUT_PER_NODE_S * n_nodes
    names = [fb.node_name(f"m{i}", port) for i, port in enumerate(fb.free_ports(n_nodes))]
    with tempfile.TemporaryDirectory(prefix="fabric-mesh-") as tmp, h.Children() as kids:
        statuses = [Path(tmp) / f"m{i}.json" for i in range(n_nodes)]
        t0 = h.shared_clock()
        for i, (name, status) in enumerate(zip(names, statuses, strict=True)):
            seed = None if i == 0 or discovery is not None else names[0]
            if use_program:
                argv = ["--no-repl", "--name", name, "--cookie", fb.COOKIE,
                        "--status-file", str(status), "--seed-timeout", str(SEED_TIMEOUT_S),
                        "--log-level", "warning"]
                if seed is not None:
                    argv += ["--connect", seed]
                if discovery is not None:
                    argv += ["--discovery", discovery]
                kids.module("nodes.node", *argv, name=name)
            else:
                kids.function(_member, name=name, full_name=name, seed=seed, status=str(status),
                              lifetime=form_timeout + 30.0)
        t_launched = h.shared_clock()
        want = set(names)
        pending = set(range(n_nodes))
        deadline = h.Deadline(form_timeout)
        missing = 0
        while pending:
            for i in list(pending):
                seen = _read_nodes(statuses[i])
                if seen is not None and set(seen) == want - {names[i]}:
                    pending.discard(i)
            if not pending:
                break
            for kid in kids.children:
                if kid.proc.poll() is not None:
                    # Same package as the harness: its error carries the child's stderr.
                    raise kid._fail("exited while the mesh was forming")
            if deadline.expired():
                # Not an exception: an incomplete mesh is a result (counted and shown).
                missing = sum(len(want - {names[i]} - set(_read_nodes(statuses[i]) or []))
                              for i in pending)
                print(f"  incomplete mesh: {len(pending)} of {n_nodes} nodes miss "
                      f"{missing} links after {form_timeout:g} s", file=sys.stderr)
                break
            time.sleep(POLL_S)
        t_full = h.shared_clock()
        rss = [fb.vm_rss_kib(kid.pid) or 0 for kid in kids.children]
    return {
        "seconds": float("nan") if pending else t_full - t0,
        "missing_links": float(missing),
        "launch_s": t_launched - t0,
        "rss_median_mib": statistics.median(rss) / 1024.0,
        "rss_max_mib": max(rss) / 1024.0,
    }


def launch_floor(n_procs: int) -> float:
    """Seconds from launching ``n_procs`` Pythons that import fabric to the last one ready."""
    with h.Children() as kids:
        t0 = h.shared_clock()
        for i in range(n_procs):
            kids.function(_import_only, name=f"floor{i}")
        ready = [kid.result(FLOOR_TIMEOUT_S) for kid in list(kids.children)]
    return float(max(ready)) - t0


def use_bytecode_cache(cache_dir: Path) -> None:
    """Let every child from now on read and write bytecode under ``cache_dir``, warmed up.

    Changes this process's environment, which :class:`bench._harness.Children` copies
    into every child; the checkout gets no ``__pycache__``.
    """
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(cache_dir)
    # One interpreter compiles and writes everything a node and a floor child import.
    subprocess.run(
        [sys.executable, "-c", "import nodes.node, bench.bench_mesh"
         if node_program_available() else "import bench.bench_mesh"],
        cwd=h.REPO_ROOT, env={**os.environ, "PYTHONPATH": str(h.REPO_ROOT)},
        check=True, timeout=120,
    )


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Measure mesh formation for each size; print the table and write the JSON."""
    parser = h.make_parser(__doc__)
    parser.add_argument("--full", action="store_true", help="also N = 64")
    parser.add_argument("--cold", action="store_true",
                        help="no bytecode cache: every node compiles fabric (see above)")
    args = h.parse_args(__doc__, argv, parser)
    sizes = [8, 16] if args.quick else [8, 16, 32] + ([64] if args.full else [])
    use_program = node_program_available()
    cache = None if args.cold else tempfile.TemporaryDirectory(prefix="fabric-bench-pyc-")
    if cache is not None:
        use_bytecode_cache(Path(cache.name))

    report = fb.Report("bench_mesh", args)
    with_erlang = args.erlang and _erlang.available()
    report.extra = {
        "goal_full_mesh_s": GOAL_MESH_S,
        "erlang_measured_up_to_n": ERLANG_MAX_N if with_erlang else 0,
        "node_program": "python -m nodes.node" if use_program else "bench.bench_mesh:_member",
        "poll_s": POLL_S,
        "sizes": sizes,
        "bytecode": "compiled on every launch" if args.cold else "cached (warm)",
    }
    for n in sizes:
        measurements: dict[str, Callable[[], Any]] = {
            "floor": functools.partial(launch_floor, n),
            "mesh": functools.partial(form_mesh, n, use_program),
        }
        if with_erlang and n <= ERLANG_MAX_N:
            measurements["erlang"] = functools.partial(_erlang.mesh, n)
        got = h.run_interleaved(measurements, args.runs)
        floor_name = f"launch floor N={n}"
        report.add(floor_name, "formation", "s", got["floor"],
                   note=f"{n} Pythons importing fabric, to the last one ready")
        mesh = got["mesh"]
        secs = [m["seconds"] for m in mesh if not math.isnan(m["seconds"])]
        incomplete = len(mesh) - len(secs)
        note = f"{n} nodes, one seed each"
        if incomplete:
            note += f"; {incomplete} of {len(mesh)} runs never completed (not in the figure)"
        if secs:
            report.add(f"full mesh N={n}", "formation", "s", secs, baseline=floor_name,
                       note=note)
        if "erlang" in got:
            # Rounds where fabric's mesh never completed have no ratio.
            pairs = [(m["seconds"], e) for m, e in zip(mesh, got["erlang"], strict=True)
                     if not math.isnan(m["seconds"])]
            if pairs:
                _erlang.add_rows(report, f"erlang full mesh N={n}", f"full mesh N={n}",
                                 "formation", "s", [e for _, e in pairs],
                                 [f for f, _ in pairs],
                                 note=f"Erlang/OTP: {n} nodes launched together, each peer "
                                      "given the first as its seed, until all see N-1")
        report.add(f"full mesh N={n}", "incomplete runs", "count", [float(incomplete)],
                   note=f"of {len(mesh)}; see the formation row's note" if incomplete else
                   f"of {len(mesh)}")
        report.add(f"full mesh N={n}", "missing links", "count",
                   [m["missing_links"] for m in mesh],
                   note="node-side links missing at the timeout, per run")
        report.add(f"full mesh N={n}", "RSS per node", "MiB",
                   [m["rss_median_mib"] for m in mesh], note="median node VmRSS after forming")
        report.add(f"full mesh N={n}", "max RSS", "MiB", [m["rss_max_mib"] for m in mesh],
                   note="largest node (the seed usually)")
    report.finish()
    if cache is not None:
        cache.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
