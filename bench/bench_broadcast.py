"""Group broadcast to 3 nodes x 10 members: deliveries/s, next to raw PUB/SUB fan-out.

Run:  python -m bench.bench_broadcast [--quick] [--runs N] [--out PATH]
      (or python bench/bench_broadcast.py)

Topology (issue 6 item 3, issue 4's goal): three *member nodes* ``m0``..``m2``, separate
OS processes on 127.0.0.1, each with 10 processes joined to the group ``"bench"`` (30
members), and a fourth node ``tx`` with the sending process and no member.  The sender
is on a node of its own so that the topology is the raw baseline's exactly (one
publisher process, three subscriber processes that each deliver to 10 mailboxes) and
so that the sender's CPU is not counted twice against a member node.

What one fabric run measures, for each mode on the same cluster (the order of the modes
alternates from run to run):

* ``broadcast``: ``node.pg.broadcast(group, msg)``, best effort: one publish on the
  sender's PUB socket per message; each member node's SUB delivers to its 10 members.
  PUB/SUB drops at its high-water marks and before a subscription has propagated, so
  **drops** (expected - delivered deliveries) are counted and reported, never hidden.
* ``broadcast_reliable``: ``node.pg.broadcast_reliable(group, msg)``: one message per
  member node over the ordered mesh (batched with other direct traffic); a lost
  delivery fails the run.

The message is the issue's ``("msg", sender_pid, 42, "hello")``.  Before each mode the
sender repeats a probe broadcast (``("probe", round, seq, sender_pid)``, every 20 ms, at
most 10 s) until each of the 30 members has acknowledged one over the mesh: the
slow-joiner guard, so that no message is lost to a subscription still in flight and
every member is running.  Then the sender broadcasts N messages, yielding to the loop
(``asyncio.sleep(0)``) every :data:`YIELD_EVERY` broadcasts so the node's readers,
flushes and heartbeats run (as a real sender on a shared loop must; in reliable mode
it is also what lets a batch leave).  Each member counts ``"msg"`` messages taken with
``await proc.receive()`` until it has N, or, when some were dropped, until nothing
arrived for :data:`QUIET_S` (its last delivery is then taken as the time of that last
wait's start); it reports ``(count, t_last)`` to the sender over the mesh.

deliveries/s = total deliveries counted at the members / (``t_last`` of the last
member - the sender's first data send), on CLOCK_MONOTONIC across processes, as the
raw baseline counts (``bench/baselines.py``): cluster start, mesh formation and probes
are excluded; pipeline fill and drain are included.

Baseline, interleaved in the same run: ``baselines.pubsub_fanout_raw`` with 3
subscribers x 10 members (pyzmq PUB -> 3 SUB processes, msgpack, each message appended
to 10 lists; high-water marks unlimited, so the raw figure never drops).

Erlang/OTP in the same run (``bench/_erlang.py``, when erl is installed; ``--no-erlang``
skips it): the same topology (a sender node without members, 3 nodes x 10
members of a pg group), N messages each sent to every member (``pg:get_members`` and
``!``), timed the same way; the ``/ Erlang`` rows are per-round ratios.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

if not __package__:  # started as `python bench/bench_broadcast.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fabric  # noqa: E402
from bench import _erlang, baselines  # noqa: E402
from bench import _fabric as fb  # noqa: E402
from bench import _harness as h  # noqa: E402

GROUP = "bench"
MEMBER_NODES = 3
MEMBERS_PER_NODE = 10
MEMBERS = MEMBER_NODES * MEMBERS_PER_NODE
MODES = ("broadcast", "broadcast_reliable")

#: Broadcasts between two yields to the event loop on the sending node.
YIELD_EVERY = 500
#: A member that has had nothing for this long after its first message counts the rest
#: as dropped (best effort only; in reliable mode that is a failure).
QUIET_S = 0.5
#: Slow-joiner guard: probe period and the bound on the whole probing.
PROBE_INTERVAL_S = 0.02
PROBE_WAIT_S = 10.0
#: Longest wait for any one step in a child (a stall means the benchmark is broken).
STALL_S = 30.0
#: Longest the parent waits for a child's result (the whole measurement).
CHILD_TIMEOUT_S = 90.0


# --------------------------------------------------------------------------- member nodes


async def _member(proc: Any, n_msgs: int, rounds: int, done: asyncio.Future[None]) -> None:
    """A group member: per round, ack the first probe, count data, report to the sender."""
    try:
        receive = proc.receive
        clock = h.shared_clock
        for rnd in range(rounds):
            # The first probe of this round names the collector (the sender process).
            # Anything else seen here is a late probe of an earlier round.
            while True:
                msg = await receive(timeout=STALL_S)
                if msg[0] == "probe" and msg[1] == rnd:
                    break
            collector = msg[3]
            proc.send(collector, ("ack", rnd, proc.self))
            count = 0
            late_probes = 0
            t_last = 0.0
            # The loop under test: one awaited receive per delivery, as user code would.
            # The first data message may take a while (the sender waits for all acks).
            while count < n_msgs:
                try:
                    msg = await receive(timeout=QUIET_S if count else STALL_S)
                except fabric.ReceiveTimeout:
                    # The rest was dropped (best effort).  The wait began right after the
                    # last delivery, so that delivery happened QUIET_S ago (plus the
                    # timer's lateness, a millisecond on an idle loop).
                    t_last = clock() - QUIET_S
                    break
                if msg[0] != "msg":  # a probe sent before the sender saw every ack
                    late_probes += 1
                    continue
                count += 1
            else:
                t_last = clock()
            proc.send(collector, ("count", rnd, proc.self, count, t_last, late_probes))
        done.set_result(None)
    except BaseException as exc:  # the node must hear about it, not wait out a timeout
        if not done.done():
            done.set_exception(exc)
        raise


async def _member_node_main(port: int, n_msgs: int, rounds: int) -> dict[str, Any]:
    async with fb.new_node(f"m{port}", port) as node:
        watch = fb.LoopWatch(node)
        loop = asyncio.get_running_loop()
        dones: list[asyncio.Future[None]] = []
        for _ in range(MEMBERS_PER_NODE):
            done: asyncio.Future[None] = loop.create_future()
            node.pg.join(GROUP, node.spawn(_member, n_msgs, rounds, done))
            dones.append(done)
        h.emit("ready", node=node.name)
        all_done = asyncio.ensure_future(asyncio.gather(*dones))
        try:
            ok = await watch.wait(all_done, CHILD_TIMEOUT_S)
        finally:
            all_done.cancel()
        result: dict[str, Any] = {"complete": ok is not None}
        result.update(watch.close())
        # Group traffic this node's SUB took in (probes + data of best-effort rounds).
        result["topic_in"] = int(node.metrics.get("topic_in", 0))
    return result


def _member_node(port: int, n_msgs: int, rounds: int) -> dict[str, Any]:
    """Child: a member node with :data:`MEMBERS_PER_NODE` members of :data:`GROUP`."""
    return fb.run_child(lambda: _member_node_main(port, n_msgs, rounds))


# --------------------------------------------------------------------------- sender node


async def _probe(proc: Any, bcast: Callable[[str, Any], None], rnd: int) -> int:
    """Broadcast probes until every member acked one; returns the number of probes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PROBE_WAIT_S
    acked: set[Any] = set()
    seq = 0
    while len(acked) < MEMBERS:
        if loop.time() > deadline:
            raise h.BenchError(f"round {rnd}: only {len(acked)}/{MEMBERS} members acked a probe")
        bcast(GROUP, ("probe", rnd, seq, proc.self))
        seq += 1
        # Collect acks until a probe interval passes without one.
        while (m := await proc.receive(timeout=PROBE_INTERVAL_S, default=None)) is not None:
            if m[0] == "ack" and m[1] == rnd:
                acked.add(m[2])
    return seq


async def _drive(proc: Any, modes: list[str], n_msgs: int,
                 done: asyncio.Future[list[dict[str, Any]]]) -> None:
    """The sender process: per mode, probe, broadcast ``n_msgs``, collect the counts."""
    try:
        pg = proc.node.pg
        results: list[dict[str, Any]] = []
        msg = ("msg", proc.self, 42, "hello")
        full, rest = divmod(n_msgs, YIELD_EVERY)
        chunks = [YIELD_EVERY] * full + ([rest] if rest else [])
        for rnd, mode in enumerate(modes):
            bcast = pg.broadcast if mode == "broadcast" else pg.broadcast_reliable
            probes = await _probe(proc, bcast, rnd)
            t_start = h.shared_clock()
            for chunk in chunks:
                for _ in range(chunk):
                    bcast(GROUP, msg)
                await asyncio.sleep(0)  # let readers, flushes and heartbeats run
            t_sent = h.shared_clock()
            counts: dict[Any, tuple[int, float, int]] = {}
            while len(counts) < MEMBERS:
                m = await proc.receive(timeout=STALL_S + QUIET_S)
                if m[0] == "count" and m[1] == rnd:
                    counts[m[2]] = (m[3], m[4], m[5])
                # anything else: a late ack of this round's probes
            delivered = sum(c[0] for c in counts.values())
            results.append({
                "mode": mode,
                "t_start": t_start,
                "t_sent": t_sent,
                "t_last": max(c[1] for c in counts.values()),
                "delivered": delivered,
                "expected": n_msgs * MEMBERS,
                "short_members": sum(1 for c in counts.values() if c[0] < n_msgs),
                "probes": probes,
                "late_probes": sum(c[2] for c in counts.values()),
            })
        done.set_result(results)
    except BaseException as exc:
        if not done.done():
            done.set_exception(exc)
        raise


async def _sender_node_main(port: int, members: list[str], n_msgs: int,
                            modes: list[str]) -> dict[str, Any]:
    async with fb.new_node("tx", port) as node:
        for peer in members:
            if not await node.connect(peer, timeout=STALL_S):
                raise h.BenchError(f"cannot connect to {peer}: {node.last_connect_error(peer)}")
        # broadcast_reliable sends to the member nodes in this node's view: wait for all.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STALL_S
        while len(node.pg.get_members(GROUP)) < MEMBERS:
            if loop.time() > deadline:
                raise h.BenchError(f"saw {len(node.pg.get_members(GROUP))}/{MEMBERS} members")
            await asyncio.sleep(0.01)
        watch = fb.LoopWatch(node)
        done: asyncio.Future[list[dict[str, Any]]] = loop.create_future()
        node.spawn(_drive, modes, n_msgs, done)
        rounds = await watch.wait(done, CHILD_TIMEOUT_S)
        result: dict[str, Any] = {"rounds": rounds}
        result.update(watch.close())
        result["publish_dropped"] = int(node.metrics.get("publish_dropped", 0))
    return result


def _sender_node(port: int, members: list[str], n_msgs: int, modes: list[str]) -> dict[str, Any]:
    """Child: node ``tx`` with the sending process (no member of the group)."""
    return fb.run_child(lambda: _sender_node_main(port, members, n_msgs, modes))


# --------------------------------------------------------------------------- measurement


class Fanout(NamedTuple):
    """One mode of one run: the figure plus what is needed to trust it."""

    deliveries_s: float  #: deliveries counted at members / (last delivery - first send)
    drops: float  #: expected - delivered deliveries
    send_s: float  #: broadcasts/s the sender managed (first to last send)
    probes: float  #: probe broadcasts before all 30 members had acked one
    member_stall_ms: float  #: longest event-loop stall over the member nodes
    tx_stall_ms: float  #: the sending node's longest event-loop stall


def broadcast_fabric(n_msgs: int, modes: Sequence[str]) -> dict[str, Fanout]:
    """One fabric run: a fresh 4-node cluster, each of ``modes`` measured in that order."""
    if n_msgs < 1 or not modes or any(m not in MODES for m in modes):
        raise ValueError(f"n_msgs must be >= 1 and modes a sequence of {MODES}")
    ports = fb.free_ports(MEMBER_NODES + 1)
    with h.Children() as kids:
        nodes = [
            kids.function(_member_node, name=f"m{i}", port=ports[i], n_msgs=n_msgs,
                          rounds=len(modes))
            for i in range(MEMBER_NODES)
        ]
        names = [child.expect("ready", STALL_S)["node"] for child in nodes]
        tx = kids.function(_sender_node, name="tx", port=ports[-1], members=names,
                           n_msgs=n_msgs, modes=list(modes))
        sent = tx.result(CHILD_TIMEOUT_S)
        got = [child.result(CHILD_TIMEOUT_S) for child in nodes]
    downs = sent["downs"] + sum(g["downs"] for g in got)
    if sent["rounds"] is None or downs or not all(g["complete"] for g in got):
        raise h.BenchError(f"run cut short: tx events {sent['events']}, "
                           f"member events {[g['events'] for g in got]}")
    member_stall = max(float(g["max_stall_ms"]) for g in got)
    out: dict[str, Fanout] = {}
    for r in sent["rounds"]:
        drops = r["expected"] - r["delivered"]
        if drops and r["mode"] != "broadcast":
            raise h.BenchError(f"{r['mode']} lost {drops} of {r['expected']} deliveries")
        out[r["mode"]] = Fanout(
            deliveries_s=r["delivered"] / (r["t_last"] - r["t_start"]),
            drops=float(drops),
            send_s=n_msgs / (r["t_sent"] - r["t_start"]),
            probes=float(r["probes"]),
            member_stall_ms=member_stall,
            tx_stall_ms=float(sent["max_stall_ms"]),
        )
    return out


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Measure fabric group broadcast next to raw PUB/SUB fan-out; print and write JSON."""
    args = h.parse_args(__doc__, argv)
    n = h.sized(args, full=20_000, quick=5_000)

    report = fb.Report("bench_broadcast", args)
    with_erlang = args.erlang and _erlang.available()
    report.extra = {
        "erlang_measured": with_erlang,
        "topology": (f"{MEMBER_NODES} member nodes x {MEMBERS_PER_NODE} members + 1 sender "
                     "node without members; raw: 1 PUB + 3 SUB processes x 10 lists"),
        "message": "('msg', sender_pid, 42, 'hello') via fabric; msgpack array for raw",
        "messages_per_run": n,
        "yield_every": YIELD_EVERY,
        "quiet_s": QUIET_S,
    }
    # Alternate the order of the two modes within the fabric cluster from run to run, so
    # neither always runs first (on a fresh cluster) or second.
    orders = itertools.cycle([list(MODES), list(reversed(MODES))])
    measurements: dict[str, Callable[[], object]] = {
        "raw": lambda: baselines.pubsub_fanout_raw(n, MEMBER_NODES, MEMBERS_PER_NODE),
        "fabric": lambda: broadcast_fabric(n, next(orders)),
    }
    if with_erlang:
        # Same topology and count: a sender node without members, 3 nodes x 10 members.
        measurements["erlang"] = lambda: _erlang.broadcast(n, MEMBER_NODES)
    got = h.run_interleaved(measurements, args.runs)
    fabric_runs = cast(list[dict[str, Fanout]], got["fabric"])

    def col(mode: str, attr: str) -> list[float]:
        return [float(getattr(r[mode], attr)) for r in fabric_runs]

    report.add("pubsub raw", "throughput", "deliveries/s",
               [float(v) for v in cast(list[float], got["raw"])],
               note=f"PUB -> 3 SUB x 10 lists, {n} msgs x {MEMBERS} = {n * MEMBERS} deliveries")
    for mode in MODES:
        name = f"fabric pg.{mode}"
        values = col(mode, "deliveries_s")
        drops = col(mode, "drops")
        report.add(
            name, "throughput", "deliveries/s", values, baseline="pubsub raw",
            note=(f"{n} msgs x {MEMBERS} members; "
                  f"drops in {sum(1 for d in drops if d)} of {len(drops)} runs"),
        )
        report.add(name, "drops", "deliveries", drops,
                   note="expected - delivered (best effort only; reliable fails on any)")
        report.add(name, "sender rate", "broadcasts/s", col(mode, "send_s"),
                   note=f"first to last send, yielding every {YIELD_EVERY}")
        report.add(name, "probes", "count", col(mode, "probes"),
                   note="slow-joiner guard: probe broadcasts until all 30 acked")
    if with_erlang:
        for mode in MODES:
            _erlang.add_rows(report, "erlang pg", f"fabric pg.{mode}", "throughput",
                             "deliveries/s", [float(v) for v in cast(list[float], got["erlang"])],
                             col(mode, "deliveries_s"),
                             note=f"Erlang/OTP pg: {n} msgs, each sent to the group's "
                                  f"{MEMBERS} members (pg:get_members + !)")
    report.add("fabric cluster", "member loop stall", "ms", col(MODES[0], "member_stall_ms"),
               note="longest event-loop stall over the 3 member nodes (whole run)")
    report.add("fabric cluster", "tx loop stall", "ms", col(MODES[0], "tx_stall_ms"),
               note="longest event-loop stall on the sending node (whole run)")
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
