"""``global`` name registration on 3 nodes: registrations/s and p50/p99 latency.

Run:  python -m bench.bench_global [--quick] [--runs N] [--out PATH]
      (or python bench/bench_global.py)

Three fabric nodes ``g0``..``g2`` run as separate OS processes on 127.0.0.1, in a full
mesh.  On each, a worker process (locally registered as ``"gbench"``) registers names for
its own pid with ``await node.global_.register_name(name, pid)`` when the driver (the
worker on ``g0``) tells it to; every registration's latency is taken around that await
(``time.perf_counter_ns``).  One run is a fresh cluster and these phases, in order:

* ``warm-up``: 20 distinct names per node, concurrently (not reported).
* ``sequential``: N distinct names from ``g0``, one at a time: p50, p99 and
  registrations/s = N / the loop's duration.  This is the figure compared with Erlang's
  ``global:register_name`` (3 nodes, the same warm-up, N names one at a time, each for a
  process of its own: global takes one name per pid), run interleaved in the same
  session by ``bench/_erlang.py``; issue 17 aims at twice Erlang's rate.
* ``at commit A/B``: N more names from ``g0``, one at a time, in blocks of
  ``AB_BLOCK`` that alternate (ABBA order) ``register_name(..., wait_all=True)`` (the
  default: "yes" once every node applied the claim) and ``wait_all=False`` ("yes" at the
  commit, DECISIONS.md D16): p50, p99 and registrations/s of each side, both measured in
  the same cluster over the same stretch of time.
* ``concurrent``: each of the 3 nodes registers its own distinct names, one at a time
  per node, all starting at the same instant (a start time on CLOCK_MONOTONIC, shared
  by the processes): aggregate registrations/s = all registrations / (last finish -
  first start); p50 and p99 over all of them.  Every answer must be ``"yes"``.
* ``contended``: the 3 nodes register the *same* names, in the same order, one at a
  time per node, from the same instant, so they race for every name.  **Correctness
  check, asserted in every run**: exactly one ``"yes"`` per name over the three nodes,
  and afterwards every node's ``whereis_name`` shows that winner's pid for every name;
  otherwise the benchmark fails loudly (``BenchError``, exit status 1).  Reported: names
  settled per second (M names / duration), latency of all 3 M attempts, and how the
  wins were split.

Baseline: there is no raw-pyzmq equivalent of a cluster lock round.  The floor for one
registration is one round trip to the peers (any scheme that asks the others needs at
least that; the peers are asked in parallel), so the row "floor: raw asyncio round trip"
is ``baselines.roundtrip_raw_asyncio`` (pyzmq DEALER <-> ROUTER echo, msgpack, asyncio,
two processes), interleaved with the fabric runs; its rate is "registrations/s if one
took exactly one round trip".  fabric's protocol takes two sequential round trips to every
peer for a "yes" (lock request/grant, then claim/ack; see ``fabric/protocol/global_.py``),
so about 2x the floor is the design's own limit.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

if not __package__:  # started as `python bench/bench_global.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _erlang, baselines  # noqa: E402
from bench import _fabric as fb  # noqa: E402
from bench import _harness as h  # noqa: E402
from bench.baselines import RoundTrip  # noqa: E402

NODES = 3
#: The local name of the worker process on every node.
WORKER = "gbench"
WARMUP_NAMES = 20
#: Names per block of the at-commit A/B phase (blocks alternate wait_all True / False).
AB_BLOCK = 50
#: Delay from the driver's "go" to the shared start instant of a concurrent phase:
#: enough for the command to reach every node on a loaded machine.
START_DELAY_S = 0.05
#: Longest wait for any one step in a child (a stall means the benchmark is broken).
STALL_S = 30.0
#: Longest the parent waits for a child's result (the whole measurement).
CHILD_TIMEOUT_S = 90.0
#: Issue 17's goal: registrations/s at least this many times Erlang's, in the same run.
GOAL_VS_ERLANG = 2.0


# --------------------------------------------------------------------------- node side


async def _register_all(proc: Any, names: list[str], t_go: float,
                        wait_all: bool = True) -> dict[str, Any]:
    """Register each of ``names`` for ``proc`` in turn, from shared-clock instant ``t_go``
    (``wait_all``: see ``Global.register_name``)."""
    global_ = proc.node.global_

    async def register(name: str, me: Any, timeout: float) -> str:
        answer: str = await global_.register_name(name, me, wait_all=wait_all,
                                                  timeout=timeout)
        return answer

    me = proc.self
    delay = t_go - h.shared_clock()
    if delay > 0:
        await asyncio.sleep(delay)
    answers: list[str] = []
    lat_ns: list[int] = []
    clock = time.perf_counter_ns
    t0 = h.shared_clock()
    for name in names:
        start = clock()
        answers.append(await register(name, me, timeout=STALL_S))
        lat_ns.append(clock() - start)
    return {"answers": answers, "lat_ns": lat_ns, "t0": t0, "t1": h.shared_clock()}


async def _worker(proc: Any, index: int, done: asyncio.Future[None]) -> None:
    """Runs the driver's commands on its node until ``("stop",)``.

    ``("run", phase, names, t_go, reply_to, wait_all)`` -> ``("done", phase, index,
    result)``;
    ``("where", phase, names, reply_to)`` -> ``("done", phase, index, [pid or None])``.
    """
    try:
        while True:
            msg = await proc.receive(timeout=CHILD_TIMEOUT_S)
            if msg[0] == "stop":
                break
            if msg[0] == "run":
                _, phase, names, t_go, reply_to, wait_all = msg
                result: Any = await _register_all(proc, names, t_go, wait_all)
            elif msg[0] == "where":
                _, phase, names, reply_to = msg
                whereis = proc.node.global_.whereis_name
                result = [whereis(name) for name in names]
            else:
                raise h.BenchError(f"worker got {msg!r}")
            proc.send(reply_to, ("done", phase, index, result))
        done.set_result(None)
    except BaseException as exc:  # the node must hear about it, not wait out a timeout
        if not done.done():
            done.set_exception(exc)
        raise


async def _await_mesh(node: Any, peers: list[str]) -> None:
    """Connect to ``peers`` (already running) and wait until every one is up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STALL_S
    for peer in peers:
        if not await node.connect(peer, timeout=STALL_S):
            raise h.BenchError(f"cannot connect to {peer}: {node.last_connect_error(peer)}")
    while len(node.nodes()) < NODES - 1:
        if loop.time() > deadline:
            raise h.BenchError(f"{node.name} sees only {node.nodes()}")
        await asyncio.sleep(0.01)


async def _drive(proc: Any, nodes: list[str], n_seq: int, n_par: int, n_race: int
                 ) -> dict[str, Any]:
    """The driver (on ``g0``): run every phase on the workers, return the raw results."""
    workers = [(WORKER, node) for node in nodes]

    async def phase(name: str, plan: dict[int, list[str]], where: bool = False,
                    wait_all: bool = True) -> dict[int, Any]:
        t_go = h.shared_clock() + START_DELAY_S
        for index, names in plan.items():
            if where:
                proc.send(workers[index], ("where", name, names, proc.self))
            else:
                proc.send(workers[index], ("run", name, names, t_go, proc.self, wait_all))
        results: dict[int, Any] = {}
        while len(results) < len(plan):
            msg = await proc.receive(timeout=STALL_S + 60.0)
            if msg[0] == "done" and msg[1] == name:
                results[msg[2]] = msg[3]
        return results

    everyone = range(NODES)
    await phase("warmup", {i: [f"warm-{i}-{k}" for k in range(WARMUP_NAMES)] for i in everyone})
    seq = await phase("sequential", {0: [f"seq-{k}" for k in range(n_seq)]})
    # ABBA blocks: True False False True True False ...
    ab: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    for block in range(max(1, n_seq // AB_BLOCK)):
        for wait_all in ((True, False) if block % 2 == 0 else (False, True)):
            names = [f"ab-{wait_all}-{block}-{k}" for k in range(AB_BLOCK)]
            got = await phase(f"ab-{wait_all}-{block}", {0: names}, wait_all=wait_all)
            ab[wait_all].append(got[0])
    par = await phase("concurrent", {i: [f"par-{i}-{k}" for k in range(n_par)]
                                     for i in everyone})
    race_names = [f"race-{k}" for k in range(n_race)]
    race = await phase("contended", {i: race_names for i in everyone})
    # Read every node's view only once all three are done with the race.
    where = await phase("where", {i: race_names for i in everyone}, where=True)
    for worker in workers:
        proc.send(worker, ("stop",))
    return {
        "sequential": seq[0],
        "ab": {"wait_all": ab[True], "at_commit": ab[False]},
        "concurrent": [par[i] for i in everyone],
        "contended": [race[i] for i in everyone],
        "race_names": race_names,
        # pids as JSON: [node, id, creation] or None
        "where": [[fb.pid_to_json(p) if p is not None else None for p in where[i]]
                  for i in everyone],
    }


async def _node_main(index: int, ports: list[int], n_seq: int, n_par: int,
                     n_race: int) -> dict[str, Any]:
    names = [fb.node_name(f"g{i}", p) for i, p in enumerate(ports)]
    async with fb.new_node(f"g{index}", ports[index]) as node:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        worker = node.spawn(_worker, index, done, name=WORKER)
        # The parent starts the nodes in order: connect to those before this one, then
        # wait for the others to connect to us (full mesh before anything is measured).
        h.emit("started", node=node.name)
        await _await_mesh(node, names[:index])
        watch = fb.LoopWatch(node)
        h.emit("ready", node=node.name, worker=fb.pid_to_json(worker))
        result: dict[str, Any] = {}
        if index == 0:
            drive = asyncio.ensure_future(
                _drive(node.new_mailbox(), names, n_seq, n_par, n_race))
            result["driver"] = await watch.wait(drive, CHILD_TIMEOUT_S)
            drive.cancel()
        await watch.wait(done, CHILD_TIMEOUT_S)
        result.update(watch.close())
    return result


def _global_node(index: int, ports: list[int], n_seq: int, n_par: int,
                 n_race: int) -> dict[str, Any]:
    """Child: node ``g<index>`` with a worker; ``g0`` also drives the phases."""
    return fb.run_child(lambda: _node_main(index, ports, n_seq, n_par, n_race))


# --------------------------------------------------------------------------- measurement


class Phase(NamedTuple):
    """Figures of one phase of one run."""

    p50_us: float
    p99_us: float
    rate: float  #: registrations/s (sequential, concurrent) or names settled/s (contended)


@dataclass(frozen=True)
class GlobalRun:
    """One fabric run: the three phases plus what is needed to trust them.

    A dataclass, not a NamedTuple: the harness prints a NamedTuple's fields as numbers,
    and these are nested; :meth:`__str__` is the progress line instead.
    """

    sequential: Phase
    #: the alternating blocks: default (wait_all=True) and answer at the commit
    ab_wait_all: Phase
    ab_at_commit: Phase
    concurrent: Phase
    contended: Phase
    #: wins per node in the contended phase (sorted by node index)
    race_wins: list[int]
    max_stall_ms: float

    def __str__(self) -> str:
        return " ".join(
            f"{k}: p50={v.p50_us:.0f}us p99={v.p99_us:.0f}us {v.rate:.0f}/s;"
            for k, v in (("seq", self.sequential), ("ab-wait", self.ab_wait_all),
                         ("ab-commit", self.ab_at_commit), ("par", self.concurrent),
                         ("race", self.contended))
        ) + f" wins={self.race_wins} stall={self.max_stall_ms:.0f}ms"


def _latency(lat_ns: list[int]) -> tuple[float, float]:
    ordered = sorted(lat_ns)
    return h.percentile(ordered, 50) / 1000.0, h.percentile(ordered, 99) / 1000.0


def _check_race(driver: dict[str, Any], workers: list[list[Any]]) -> list[int]:
    """Exactly one "yes" per name, and every node shows that winner; wins per node.

    Raises:
        BenchError: the correctness check failed (with the first offending names).
    """
    names: list[str] = driver["race_names"]
    answers = [r["answers"] for r in driver["contended"]]
    where = driver["where"]
    wins = [0] * NODES
    problems: list[str] = []
    for k, name in enumerate(names):
        yes = [i for i in range(NODES) if answers[i][k] == "yes"]
        bad = [a for i in range(NODES) if (a := answers[i][k]) not in ("yes", "no")]
        if len(yes) != 1 or bad:
            problems.append(f"{name}: yes from nodes {yes}, answers "
                            f"{[answers[i][k] for i in range(NODES)]}")
            continue
        wins[yes[0]] += 1
        seen = {tuple(where[i][k]) if where[i][k] is not None else None for i in range(NODES)}
        if seen != {tuple(workers[yes[0]])}:
            problems.append(f"{name}: won by g{yes[0]} {workers[yes[0]]} but whereis_name "
                            f"shows {[where[i][k] for i in range(NODES)]}")
    if problems:
        raise h.BenchError(f"global correctness check FAILED for {len(problems)} of "
                           f"{len(names)} names: " + "; ".join(problems[:5]))
    return wins


def global_fabric(n_seq: int, n_par: int, n_race: int) -> GlobalRun:
    """One run: a fresh 3-node cluster through every phase (see the module doc)."""
    if min(n_seq, n_par, n_race) < 1:
        raise ValueError("every phase needs at least one name")
    ports = fb.free_ports(NODES)
    with h.Children() as kids:
        nodes = []
        for i in range(NODES):
            # One at a time, each connecting to the ones before: no simultaneous connects.
            child = kids.function(_global_node, name=f"g{i}", index=i, ports=ports,
                                  n_seq=n_seq, n_par=n_par, n_race=n_race)
            child.expect("started", STALL_S)
            nodes.append(child)
        workers = [child.expect("ready", STALL_S)["worker"] for child in nodes]
        got = [child.result(CHILD_TIMEOUT_S) for child in nodes]
    downs = sum(g["downs"] for g in got)
    driver = got[0].get("driver")
    if downs or driver is None:
        raise h.BenchError(f"run cut short: events {[g['events'] for g in got]}")
    # The correctness check comes first: a wrong answer voids every figure.
    wins = _check_race(driver, workers)

    seq = driver["sequential"]
    p50, p99 = _latency(seq["lat_ns"])
    sequential = Phase(p50, p99, len(seq["answers"]) / (seq["t1"] - seq["t0"]))

    def blocks(results: list[dict[str, Any]]) -> Phase:
        if any(a != "yes" for r in results for a in r["answers"]):
            raise h.BenchError("at-commit A/B phase: a distinct name was refused")
        p50, p99 = _latency([x for r in results for x in r["lat_ns"]])
        busy = sum(r["t1"] - r["t0"] for r in results)
        return Phase(p50, p99, sum(len(r["answers"]) for r in results) / busy)

    ab_wait_all = blocks(driver["ab"]["wait_all"])
    ab_at_commit = blocks(driver["ab"]["at_commit"])

    par = driver["concurrent"]
    refused = [a for r in par for a in r["answers"] if a != "yes"]
    if refused:
        raise h.BenchError(f"concurrent phase: {len(refused)} distinct names refused")
    p50, p99 = _latency([x for r in par for x in r["lat_ns"]])
    span = max(r["t1"] for r in par) - min(r["t0"] for r in par)
    concurrent = Phase(p50, p99, sum(len(r["answers"]) for r in par) / span)

    race = driver["contended"]
    p50, p99 = _latency([x for r in race for x in r["lat_ns"]])
    span = max(r["t1"] for r in race) - min(r["t0"] for r in race)
    contended = Phase(p50, p99, len(driver["race_names"]) / span)
    return GlobalRun(sequential, ab_wait_all, ab_at_commit, concurrent, contended, wins,
                     max(float(g["max_stall_ms"]) for g in got))


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Measure global registrations next to the raw round-trip floor; print and write JSON."""
    args = h.parse_args(__doc__, argv)
    n_seq = h.sized(args, full=500, quick=150)
    n_par = h.sized(args, full=300, quick=100)
    n_race = h.sized(args, full=200, quick=60)
    n_rt = h.sized(args, full=2_000, quick=500)

    report = fb.Report("bench_global", args)
    with_erlang = args.erlang and _erlang.available()
    report.extra = {
        "goal": f"sequential registrations/s at least {GOAL_VS_ERLANG:g}x Erlang's (issue 17)",
        "erlang_measured": with_erlang,
        "baseline_note": (
            "No raw-pyzmq equivalent of a cluster lock round exists. The floor row is "
            "baselines.roundtrip_raw_asyncio: one registration needs at least one round "
            "trip to the peers (asked in parallel); its rate is 1/round-trip time. "
            "fabric's register_name takes two sequential round trips to every peer for a "
            "'yes' (lock req/grant, claim/ack), so ~2x the floor is the protocol's limit."),
        "phases": {"sequential": n_seq, "at_commit_ab_per_side": n_seq,
                   "concurrent_per_node": n_par,
                   "contended_names": n_race, "warmup_per_node": WARMUP_NAMES},
        "contended_check": "asserted every run: exactly one 'yes' per name over the 3 "
                           "nodes, and every node's whereis_name shows the winner",
    }
    measurements: dict[str, Callable[[], object]] = {
        "floor": lambda: baselines.roundtrip_raw_asyncio(n_rt),
        "global": lambda: global_fabric(n_seq, n_par, n_race),
    }
    if with_erlang:
        # Same experiment: 3 nodes, WARMUP_NAMES per node concurrently, then n_seq names
        # one at a time from the first node.
        measurements["erlang"] = lambda: _erlang.global_sequential(n_seq, WARMUP_NAMES)
    got = h.run_interleaved(measurements, args.runs)
    floor = cast(list[RoundTrip], got["floor"])
    runs = cast(list[GlobalRun], got["global"])

    floor_name = "floor: raw asyncio round trip"
    note = f"zmq.asyncio DEALER<->ROUTER echo, {n_rt} calls; lower bound of one registration"
    report.add(floor_name, "p50", "us", [r.p50_us for r in floor], note=note)
    report.add(floor_name, "p99", "us", [r.p99_us for r in floor], note=note)
    report.add(floor_name, "rate", "ops/s", [r.calls_per_s for r in floor],
               note="round trips/s = registrations/s at one round trip each")

    def col(phase: str, attr: str) -> list[float]:
        return [float(getattr(getattr(r, phase), attr)) for r in runs]

    labels = {
        "sequential": ("global sequential, 1 node", f"{n_seq} names from g0, one at a time"),
        "ab_wait_all": ("global sequential A/B: wait_all=True (default)",
                        f"{n_seq} names from g0 in blocks of {AB_BLOCK}, alternating ABBA "
                        "with wait_all=False"),
        "ab_at_commit": ("global sequential A/B: wait_all=False (yes at commit)",
                         f"{n_seq} names from g0 in blocks of {AB_BLOCK}, alternating ABBA "
                         "with wait_all=True"),
        "concurrent": ("global concurrent, 3 nodes",
                       f"{n_par} distinct names per node, one at a time per node"),
        "contended": ("global contended, 3 nodes",
                      f"{n_race} names raced by all 3 nodes; exactly one yes each (checked)"),
    }
    for phase, (name, what) in labels.items():
        p50 = col(phase, "p50_us")
        rate = col(phase, "rate")
        p50_note = what
        rate_note = what + ("; registrations/s" if phase != "contended"
                            else "; names settled/s (3 attempts each)")
        if phase == "contended":
            # Below the floor: a node that is behind finds the winner's claim already
            # applied and answers "no" locally, without asking anyone.
            p50_note += "; most losing attempts are answered 'no' locally, no round trip"
        report.add(name, "p50", "us", p50, baseline=floor_name, note=p50_note)
        report.add(name, "p99", "us", col(phase, "p99_us"), baseline=floor_name, note=what)
        report.add(name, "rate", "ops/s", rate, baseline=floor_name, note=rate_note)
    if with_erlang:
        erlang_runs = cast(list[dict[str, float]], got["erlang"])
        for phase in ("sequential", "ab_at_commit"):
            for metric, unit, key, attr in (("p50", "us", "p50_us", "p50_us"),
                                            ("p99", "us", "p99_us", "p99_us"),
                                            ("rate", "ops/s", "calls_per_s", "rate")):
                _erlang.add_rows(report, "erlang global:register_name", labels[phase][0],
                                 metric, unit, [r[key] for r in erlang_runs], col(phase, attr),
                                 note=f"Erlang/OTP, 3 nodes, {WARMUP_NAMES} names per node "
                                      f"warm-up, {n_seq} names one at a time")
    wins = Counter[int]()
    for r in runs:
        wins.update(dict(enumerate(r.race_wins)))
    report.add("global contended, 3 nodes", "wins of g0", "names",
               [float(r.race_wins[0]) for r in runs],
               note=f"wins over all runs by node: {[wins[i] for i in range(NODES)]}")
    report.add("global cluster", "loop stall", "ms", [r.max_stall_ms for r in runs],
               note="longest event-loop stall over the 3 nodes (whole run)")
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
