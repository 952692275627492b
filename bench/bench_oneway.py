"""One-way throughput, process to process, between two fabric nodes in separate OS processes.

Run:  python -m bench.bench_oneway [--quick] [--runs N] [--out PATH]
      (or python bench/bench_oneway.py)

A sender process on node ``tx`` sends N messages ``("msg", sender_pid, 42, "hello")`` to a
receiver process on node ``rx``, which takes each one with ``await proc.receive()``.  The
figure is ``N / (t_last_received - t_first_sent)`` on CLOCK_MONOTONIC, exactly as for the
raw baseline (see ``bench/baselines.py``): connection setup is excluded, pipeline fill and
drain are included.  Two sender variants:

* ``send``: plain ``proc.send``; the sender yields to the loop (``asyncio.sleep(0)``) every
  :data:`YIELD_EVERY` sends so the node can flush the queue as one batch.  A send refused
  with ``BackpressureError`` (more than ``outbound_limit`` queued) is retried with
  ``send_wait``; such refusals are counted and reported.
* ``send_wait``: ``await proc.send_wait`` for every message; it suspends only when the
  peer's outbound buffer (``outbound_limit`` = 100,000 messages) is full.

Heartbeat timeout: every row runs fabric's defaults (``heartbeat_timeout`` 1 s) unless
``--heartbeat-timeout S`` says otherwise.  Before commit 100c841 the receiving node's
event loop stalled for more than a second while it worked through the backlog a faster
sender built up (no heartbeat went out meanwhile), the sender declared it down
(``heartbeat_timeout``) and the messages queued for it were lost, so those runs needed
``--heartbeat-timeout 10``; see docs/PERFORMANCE.md.  The row "false NodeDowns at
default heartbeat" runs the ``send`` variant with twice the messages at the default
setting and counts the NodeDowns (a run is cut short at the first one): it guards that
fix.

The raw pyzmq baselines (DEALER -> ROUTER, msgpack, one message per frame and 64 per
frame) run in the same run, interleaved, so the ratios are fair on a noisy machine.
So does Erlang/OTP (``bench/_erlang.py``, when erl is installed; ``--no-erlang`` skips
it): N messages from a process on one node to a process on another, first send to last
receipt; the ``/ Erlang`` row is the per-round ratio to the ``send`` variant.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

if not __package__:  # started as `python bench/bench_oneway.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fabric  # noqa: E402
from bench import _erlang, baselines  # noqa: E402
from bench import _fabric as fb  # noqa: E402
from bench import _harness as h  # noqa: E402

#: Plain-send variant: sends between two yields to the loop, i.e. the batch size the
#: outbound queue sees.  1000 is near the outbound queue's 1024-message frame cap.
YIELD_EVERY = 1000
#: fabric's default heartbeat_timeout (1.0 s): what the rows run with unless overridden.
DEFAULT_HEARTBEAT_TIMEOUT = fabric.NodeConfig().heartbeat_timeout
#: Longest wait for any one step in a child (a stall means the benchmark is broken).
STALL_S = 30.0
#: Longest the parent waits for a child's result (the whole measurement).
CHILD_TIMEOUT_S = 60.0

MODES = ("send", "send_wait")


# --------------------------------------------------------------------------- children


async def _count(proc: Any, n_msgs: int, done: asyncio.Future[dict[str, Any]]) -> None:
    """Receiver process: take ``n_msgs`` messages, then tell the sender and the node."""
    try:
        receive = proc.receive
        first = await receive(timeout=STALL_S)
        if type(first) is not tuple or first[0] != "msg" or first[2] != 42:
            raise h.BenchError(f"unexpected message {first!r}")
        sender = first[1]
        count = 1
        # The loop under test: one awaited receive per message, as user code would do.
        while count < n_msgs:
            await receive(timeout=STALL_S)
            count += 1
        t_last = h.shared_clock()
        proc.send(sender, ("done", count))
        done.set_result({"count": count, "t_last": t_last})
    except BaseException as exc:  # the parent must hear about it, not wait out a timeout
        if not done.done():
            done.set_exception(exc)
        raise


async def _rx_main(port: int, n_msgs: int, heartbeat_timeout: float) -> dict[str, Any]:
    async with fb.new_node("rx", port, heartbeat_timeout=heartbeat_timeout) as node:
        watch = fb.LoopWatch(node)
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        pid = node.spawn(_count, n_msgs, done)
        h.emit("ready", node=node.name, pid=fb.pid_to_json(pid))
        result = await watch.wait(done, CHILD_TIMEOUT_S) or {"count": None}
        result.update(watch.close())
    # Leaving the block stopped the node gracefully: "done" was flushed to the sender.
    return result


def _rx(port: int, n_msgs: int, heartbeat_timeout: float) -> dict[str, Any]:
    """Child: node ``rx`` with one counting receiver process."""
    return fb.run_child(lambda: _rx_main(port, n_msgs, heartbeat_timeout))


def _outbound(node: Any, peer: str) -> Any:
    # Diagnostics only (the batch sizes actually sent): the per-peer queue, taken while the
    # session is up (a nodedown removes it).  Reads degrade to None rather than break the
    # benchmark if the runtime changes (the A/B baseline may predate node.channels).
    channels = getattr(node, "channels", None)
    if channels is None:
        ch = getattr(node, "_channels", {}).get(peer)
        return getattr(ch, "out", None)
    return channels.outbound(peer)


async def _send_all(
    proc: Any, target: Any, n_msgs: int, mode: str, done: asyncio.Future[dict[str, Any]]
) -> None:
    """Sender process: send ``n_msgs`` messages to ``target``, then await its "done"."""
    try:
        out = _outbound(proc.node, target.node)
        msg = ("msg", proc.self, 42, "hello")
        refused = 0
        t_start = h.shared_clock()
        if mode == "send":
            send = proc.send
            full, rest = divmod(n_msgs, YIELD_EVERY)
            for chunk in [YIELD_EVERY] * full + ([rest] if rest else []):
                for _ in range(chunk):
                    try:
                        send(target, msg)
                    except fabric.BackpressureError:
                        refused += 1
                        await proc.send_wait(target, msg)
                # Let the node flush what this turn queued, as one batch.
                await asyncio.sleep(0)
        else:
            send_wait = proc.send_wait
            for _ in range(n_msgs):
                await send_wait(target, msg)
        t_sent = h.shared_clock()
        reply = await proc.receive(timeout=STALL_S)
        if reply != ("done", n_msgs):
            raise h.BenchError(f"receiver answered {reply!r}")
        done.set_result({
            "t_start": t_start,
            "t_sent": t_sent,
            "refused": refused,
            "frames": int(getattr(out, "sent_frames", 0)),
        })
    except BaseException as exc:
        if not done.done():
            done.set_exception(exc)
        raise


async def _tx_main(
    port: int,
    target_node: str,
    target_pid: list[Any],
    n_msgs: int,
    mode: str,
    heartbeat_timeout: float,
    delay_s: float,
) -> dict[str, Any]:
    async with fb.new_node("tx", port, heartbeat_timeout=heartbeat_timeout) as node:
        if not await node.connect(target_node, timeout=STALL_S):
            raise h.BenchError(f"cannot connect: {node.last_connect_error(target_node)}")
        watch = fb.LoopWatch(node)
        h.emit("ready", node=node.name)
        if delay_s:  # profiling: time for the profiler to attach before the first send
            await asyncio.sleep(delay_s)
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        node.spawn(_send_all, fb.pid_from_json(target_pid), n_msgs, mode, done)
        result = await watch.wait(done, CHILD_TIMEOUT_S) or {"t_start": None}
        result.update(watch.close())
    return result


def _tx(
    port: int,
    target_node: str,
    target_pid: list[Any],
    n_msgs: int,
    mode: str,
    heartbeat_timeout: float,
    delay_s: float = 0,
) -> dict[str, Any]:
    """Child: node ``tx`` with one sender process."""
    return fb.run_child(
        lambda: _tx_main(port, target_node, target_pid, n_msgs, mode, heartbeat_timeout, delay_s)
    )


# --------------------------------------------------------------------------- measurement


class OneWay(NamedTuple):
    """One run: the figure plus what is needed to trust it."""

    msg_s: float  #: 0.0 when the run was cut short by a NodeDown
    avg_batch: float  #: messages per frame the sender's node sent
    refused: float  #: BackpressureError count (``send`` variant)
    false_downs: float  #: NodeDown events seen by either node during the run
    rx_stall_ms: float  #: the receiving node's longest event-loop stall
    tx_stall_ms: float  #: the sending node's longest event-loop stall
    rx_peak_mib: float  #: the receiving node's peak RSS


def oneway_fabric(
    n_msgs: int,
    mode: str = "send",
    *,
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
    allow_down: bool = False,
    on_ready: Callable[[dict[str, int]], None] | None = None,
    delay_s: float = 0.0,
) -> OneWay:
    """One measurement: msg/s from the sender's first send to the receiver's last receive.

    A NodeDown during the run makes the figure meaningless: it raises
    :class:`~bench._harness.BenchError`, or with ``allow_down`` returns ``msg_s=0`` and
    the count.  ``on_ready`` gets ``{"rx": os_pid, "tx": os_pid}`` once both nodes are up
    (to attach a profiler); ``delay_s`` holds the sender back that long after connecting.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    with h.Children() as kids:
        rx = kids.function(
            _rx, port=fb.free_port(), n_msgs=n_msgs, heartbeat_timeout=heartbeat_timeout
        )
        ready = rx.expect("ready", STALL_S)
        tx = kids.function(
            _tx,
            port=fb.free_port(),
            target_node=ready["node"],
            target_pid=ready["pid"],
            n_msgs=n_msgs,
            mode=mode,
            heartbeat_timeout=heartbeat_timeout,
            delay_s=delay_s,
        )
        tx.expect("ready", STALL_S)
        if on_ready is not None:
            on_ready({"rx": rx.pid, "tx": tx.pid})
        sent = tx.result(CHILD_TIMEOUT_S)
        got = rx.result(CHILD_TIMEOUT_S)
    # Abnormal NodeDowns either side saw (the final graceful "shutdown" is expected).
    downs = sent["downs"] + got["downs"]
    complete = got["count"] == n_msgs and sent["t_start"] is not None
    if (downs or not complete) and not allow_down:
        raise h.BenchError(
            f"run cut short: rx events {got['events']}, tx events {sent['events']}, "
            f"received {got['count']} of {n_msgs}"
        )
    rate = n_msgs / (got["t_last"] - sent["t_start"]) if complete else 0.0
    frames = sent.get("frames", 0)
    return OneWay(
        msg_s=rate,
        avg_batch=n_msgs / frames if frames else 0.0,
        refused=float(sent.get("refused", 0)),
        false_downs=float(downs),
        rx_stall_ms=float(got["max_stall_ms"]),
        tx_stall_ms=float(sent["max_stall_ms"]),
        rx_peak_mib=(got["peak_rss_kib"] or 0) / 1024.0,
    )


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Measure fabric one-way throughput next to the raw baselines; print and write JSON."""
    parser = h.make_parser(__doc__)
    parser.add_argument("--heartbeat-timeout", type=float, default=DEFAULT_HEARTBEAT_TIMEOUT,
                        metavar="S", help="for the throughput rows (default: fabric's, 1 s)")
    args = h.parse_args(__doc__, argv, parser)
    hb = args.heartbeat_timeout
    # Same message count as the raw per-message baseline, so pipeline fill and drain weigh
    # the same in both; the batched baseline is faster and gets more messages.
    n = h.sized(args, full=200_000, quick=50_000)
    n_batched = h.sized(args, full=1_000_000, quick=200_000)

    report = fb.Report("bench_oneway", args)
    with_erlang = args.erlang and _erlang.available()
    report.extra = {
        "erlang_measured": with_erlang,
        "message": "('msg', sender_pid, 42, 'hello') via fabric; msgpack array for raw",
        "heartbeat_timeout_s": hb,
        "yield_every": YIELD_EVERY,
    }
    measurements: dict[str, Callable[[], object]] = {
        "raw": lambda: baselines.oneway_raw(n),
        "raw64": lambda: baselines.oneway_raw(n_batched, batch=baselines.BATCH),
        "send": lambda: oneway_fabric(n, "send", heartbeat_timeout=hb),
        "send_wait": lambda: oneway_fabric(n, "send_wait", heartbeat_timeout=hb),
        # Twice the messages: a backlog big enough to show the stall if it is there.
        "send_default_hb": lambda: oneway_fabric(
            2 * n, "send", heartbeat_timeout=DEFAULT_HEARTBEAT_TIMEOUT,
            allow_down=True,
        ),
    }
    if with_erlang:
        # Same experiment: n messages between two nodes, first send to last receipt.
        measurements["erlang"] = lambda: _erlang.oneway(n)
    got = h.run_interleaved(measurements, args.runs)

    def num(key: str) -> list[float]:
        return [float(v) for v in cast(list[float], got[key])]

    def field(key: str, name: str) -> list[float]:
        return [float(getattr(r, name)) for r in cast(list[OneWay], got[key])]

    report.add("oneway raw", "throughput", "msg/s", num("raw"),
               note=f"DEALER->ROUTER, 1 msgpack msg/frame, {n} msgs")
    report.add("oneway raw batch=64", "throughput", "msg/s", num("raw64"),
               baseline="oneway raw", note=f"64 msgs/frame, {n_batched} msgs")
    raw64 = statistics.median(num("raw64"))
    for mode in MODES:
        values = field(mode, "msg_s")
        med = statistics.median(values)
        name = f"oneway fabric {mode}"
        report.add(
            name,
            "throughput",
            "msg/s",
            values,
            baseline="oneway raw",
            note=(
                f"{n} msgs, heartbeat_timeout {hb:g} s; "
                f"{med / raw64:.2f}x raw batch=64; "
                f"avg {statistics.median(field(mode, 'avg_batch')):.0f} msgs/frame; "
                f"{sum(field(mode, 'refused')):.0f} BackpressureError"
            ),
        )
        report.add(name, "rx loop stall", "ms", field(mode, "rx_stall_ms"),
                   note="longest event-loop stall on the receiving node")
        report.add(name, "tx loop stall", "ms", field(mode, "tx_stall_ms"),
                   note="longest event-loop stall on the sending node")
        report.add(name, "rx peak RSS", "MiB", field(mode, "rx_peak_mib"),
                   note="VmHWM of the receiving node")
    if with_erlang:
        _erlang.add_rows(report, "oneway erlang", "oneway fabric send", "throughput", "msg/s",
                         num("erlang"), field("send", "msg_s"),
                         note=f"Erlang/OTP, {n} msgs {{msg, Pid, 42, <<\"hello\">>}}, "
                              "first send to last receipt")
    name = "oneway fabric send, default heartbeat"
    report.add(name, "false NodeDowns", "count", field("send_default_hb", "false_downs"),
               note=f"{2 * n} msgs, heartbeat_timeout 1 s (default); should be 0 (module doc)")
    report.add(name, "rx loop stall", "ms", field("send_default_hb", "rx_stall_ms"),
               note="a stall over 1 s starves the receiver's heartbeats")
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
