"""Helpers shared by the fabric benchmarks: nodes in child processes, quiet logs, pids as JSON.

Every fabric benchmark runs its nodes as separate OS processes started with
:class:`bench._harness.Children`; the functions here are what those children use:
:func:`new_node` and :func:`run_child` to run a node, :class:`LoopWatch` to record the
NodeDowns, event-loop stalls, GC pauses and peak RSS that decide whether a figure can be
trusted, :func:`free_ports` for node ports that nothing else on the machine grabs, and
:class:`Report` to put reference figures (Erlang/OTP, goals) into the JSON.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import fabric
import fabric.loop
from bench import _harness as h
from fabric.logs import configure_logging
from fabric.types import Pid

T = TypeVar("T")

#: The cookie every benchmark node uses. Explicit, so no child ever creates or reads
#: ``~/.fabric.cookie`` on the machine it runs on.
COOKIE = "bench-cookie-not-a-secret"
HOST = "127.0.0.1"


def quiet_logs() -> None:
    """Send fabric's log events to stderr, warnings and up only.

    stdout is the channel a child uses to talk to its parent, and formatting info lines on
    the event loop would be counted as fabric's cost in a throughput figure.
    """
    configure_logging("warning")


def pid_to_json(pid: Pid) -> list[Any]:
    """A pid as a JSON-able ``[node, id, creation]`` (to hand it from one child to another)."""
    return [pid.node, pid.id, pid.creation]


def pid_from_json(data: list[Any]) -> Pid:
    """The inverse of :func:`pid_to_json`."""
    node, ident, creation = data
    return Pid(str(node), int(ident), int(creation))


def node_name(base: str, port: int) -> str:
    """A full node name on the loopback interface."""
    return f"{base}@{HOST}:{port}"


def new_node(base: str, port: int, **options: Any) -> fabric.Node:
    """A fabric node named ``base@127.0.0.1:port`` with the bench cookie."""
    return fabric.Node(node_name(base, port), cookie=COOKIE, **options)


def run_child(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main()`` on a fresh event loop in a child process, with quiet logs.

    The loop is :func:`fabric.loop.run`'s, as the node program's: uvloop when installed,
    unless the child's environment says ``FABRIC_UVLOOP=0``.
    """
    quiet_logs()
    return fabric.loop.run(_call(main))


async def _call(main: Callable[[], Awaitable[T]]) -> T:
    return await main()


def _proc_status_kib(field_name: str, pid: int | str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return None


def vm_rss_kib(pid: int | str = "self") -> int | None:
    """Resident set size of a process in KiB, from ``/proc/<pid>/status`` (None if gone)."""
    return _proc_status_kib("VmRSS", pid)


def vm_hwm_kib(pid: int | str = "self") -> int | None:
    """Peak resident set size of a process in KiB (``VmHWM``; None if gone)."""
    return _proc_status_kib("VmHWM", pid)


@dataclass
class Report(h.Report):
    """:class:`bench._harness.Report` plus top-level JSON keys (goals, references, notes).

    ``extra`` is merged into the JSON document: it carries what the table has no column
    for, such as the Erlang/OTP reference figures of issue 6 and fabric's goals.
    """

    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The harness's JSON document with ``extra`` merged in."""
        doc = super().to_json()
        doc.update(self.extra)
        return doc


class LoopWatch:
    """Records node events and event-loop stalls in a child, for the figures' fine print.

    A throughput figure taken while a peer was (falsely) declared down, or while the loop
    was blocked for a second, is not the figure it claims to be; the children return what
    this saw so the parent can reject or annotate the run.
    """

    #: How often the stall probe wakes up, seconds.
    PERIOD = 0.01

    def __init__(self, node: fabric.Node) -> None:
        loop = asyncio.get_running_loop()
        self.events: list[str] = []
        self.max_stall_ms = 0.0
        #: Resolved with the first abnormal NodeDown's text, so a waiter can stop early.
        self.first_down: asyncio.Future[str] = loop.create_future()
        self._monitor = node.monitor_nodes()
        self._tasks = [loop.create_task(self._collect()), loop.create_task(self._probe())]
        # The cyclic GC is a stall the event loop cannot see coming: time its passes.
        self.max_gc_ms = 0.0
        self.gc_ms = 0.0
        self._gc_t0 = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        else:
            ms = (time.perf_counter() - self._gc_t0) * 1000.0
            self.gc_ms += ms
            self.max_gc_ms = max(self.max_gc_ms, ms)

    async def _collect(self) -> None:
        async for event in self._monitor:
            if isinstance(event, fabric.NodeDown):
                text = f"down {event.node} {event.reason}"
                # A graceful stop at the end of a run is expected; anything else is not.
                if event.reason != "shutdown" and not self.first_down.done():
                    self.first_down.set_result(text)
            else:
                text = f"up {event.node}"
            self.events.append(text)

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(self.PERIOD)
            late = (loop.time() - t0 - self.PERIOD) * 1000.0
            if late > self.max_stall_ms:
                self.max_stall_ms = late

    def downs(self) -> list[str]:
        """The abnormal NodeDown events (any reason but ``shutdown``) seen so far."""
        return [e for e in self.events if e.startswith("down") and not e.endswith(" shutdown")]

    async def wait(self, done: asyncio.Future[T], timeout: float) -> T | None:
        """``done``'s result, or None as soon as a NodeDown is seen; bounded by ``timeout``.

        Raises:
            TimeoutError: neither happened within ``timeout`` seconds.
        """
        waiters: set[asyncio.Future[Any]] = {done, self.first_down}
        finished, _ = await asyncio.wait(
            waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if done in finished:
            result: T = done.result()
            return result
        if self.first_down in finished:
            return None
        raise TimeoutError(f"no result within {timeout} s")

    def close(self) -> dict[str, Any]:
        """Stop watching; returns events, the longest loop stall and the peak RSS."""
        for task in self._tasks:
            task.cancel()
        self._monitor.close()
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        return {
            "max_gc_ms": round(self.max_gc_ms, 1),
            "gc_ms": round(self.gc_ms, 1),
            "events": list(self.events),
            "downs": len(self.downs()),
            "max_stall_ms": round(self.max_stall_ms, 1),
            "peak_rss_kib": vm_hwm_kib(),
        }


#: Ports handed to nodes: below the kernel's ephemeral range (32768+ on Linux) and below
#: pyzmq's bind_to_random_port range (49152+), where every node binds its PUB socket, so
#: a port picked here is not taken a moment later by some node's random PUB port or by
#: an outgoing connection; above the 9100-9199 default node range other tests use.
PORT_RANGE = (20000, 32000)


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago.

    Picked at random in :data:`PORT_RANGE` and checked by binding (then closed: a small
    race remains, as with :func:`bench._harness.free_port`).
    """
    import random
    import socket

    ports: list[int] = []
    for _ in range(count * 50):
        port = random.randrange(*PORT_RANGE)
        if port in ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise h.BenchError(f"could not find {count} free ports in {PORT_RANGE}")


def free_port() -> int:
    """One port as :func:`free_ports` picks them."""
    return free_ports(1)[0]
