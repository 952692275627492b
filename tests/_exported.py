"""Functions the test nodes export (spawned and rpc'd by name), and shared test helpers.

Remote spawn and rpc name functions as ``"_exported:function"``: pytest puts ``tests/`` on
``sys.path``, so every node in the test process imports this same module.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import fabric
from fabric import Node, Process
from fabric.testing import free_port
from nodes.demo_member import SINGLETON, Tickets

COOKIE = "fabric-test-cookie"
TEST_TIMEOUT = 20.0  # a hung test fails instead of hanging the suite

F = TypeVar("F", bound=Callable[..., Any])

# -- exported process functions (for spawn_on) ----------------------------------------------


@fabric.export
async def hello_world(proc: Process) -> None:
    """The seed's example: answer ``("hello", from)`` with ``("world", node_name)``."""
    msg = await proc.receive(match=lambda m: type(m) is tuple and m[0] == "hello", timeout=5)
    proc.send(msg[1], ("world", proc.node.name))


@fabric.export
async def echo(proc: Process) -> None:
    """Echo ``(reply_to, payload)`` back as ``("echo", payload)`` until ``"stop"``."""
    while True:
        msg = await proc.receive()
        if msg == "stop":
            return
        proc.send(msg[0], ("echo", msg[1]))


@fabric.export
async def crash_on(proc: Process, message: str) -> None:
    """Raise ``ValueError(message)`` when any message arrives."""
    await proc.receive()
    raise ValueError(message)


@fabric.export
async def linker(proc: Process, peer: fabric.Pid, trap: bool, report_to: fabric.Pid) -> None:
    """Link to ``peer``; report ``("linked", self)`` then every message to ``report_to``."""
    proc.trap_exits = trap
    proc.link(peer)
    proc.send(report_to, ("linked", proc.self))
    while True:
        msg = await proc.receive()
        if msg == "crash":
            raise RuntimeError("asked to crash")
        if msg == "stop":
            return
        proc.send(report_to, msg)


async def not_exported(proc: Process) -> None:
    """Not exported: remote spawns of it must fail."""


# -- exported plain functions (for rpc) ------------------------------------------------------


@fabric.export
def add(a: int, b: int) -> int:
    return a + b


@fabric.export
async def slow_double(x: int, delay: float) -> int:
    await asyncio.sleep(delay)
    return 2 * x


@fabric.export
async def where_am_i() -> str:
    """The name of the node an rpc runs on, from ``rpc.current_node()`` (no argument)."""
    await asyncio.sleep(0)
    return fabric.rpc.current_node().name


@fabric.export
def boom(message: str) -> None:
    raise ValueError(message)


def allowlisted_only() -> str:
    """Not decorated: callable only where ``allow_remote_spawn`` lists it."""
    return "allowed"


def plain_function() -> str:
    return "never"


# -- helpers ---------------------------------------------------------------------------------


def new_name(prefix: str) -> str:
    return f"{prefix}@127.0.0.1:{free_port()}"


def async_test(fn: F) -> F:
    """Run an ``async def test_...`` with ``asyncio.run`` and an overall deadline."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(asyncio.wait_for(fn(*args, **kwargs), TEST_TIMEOUT))

    return wrapper  # type: ignore[return-value]


async def wait_until(pred: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``pred`` until it holds; fail the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def cluster(n: int = 2, **options: Any) -> AsyncIterator[list[Node]]:
    """``n`` started nodes on free 127.0.0.1 ports, fully meshed; stopped on exit."""
    nodes: list[Node] = []
    started: list[Node] = []
    try:
        for i in range(n):
            node = await _started_on_a_free_port(f"n{i}", **options)
            nodes.append(node)
            started.append(node)
        for other in nodes[1:]:
            assert await nodes[0].connect(other.name), nodes[0].last_connect_error(other.name)
        await wait_until(lambda: all(len(x.nodes()) == n - 1 for x in nodes), what="full mesh")
        yield nodes
    finally:
        await asyncio.gather(*(x.stop() for x in started))


async def _started_on_a_free_port(prefix: str, **options: Any) -> Node:
    """A started node named ``prefix@127.0.0.1:<port>``. The port was free when picked,
    but another process on a busy machine (a connection's ephemeral source port) can take
    it before the bind: then a new port is picked, a bounded number of times."""
    for attempt in range(5):
        node = Node(new_name(prefix), cookie=COOKIE, **options)
        try:
            await node.start()
            return node
        except fabric.ConfigError as exc:
            if "Address already in use" not in str(exc) or attempt == 4:
                raise
    raise AssertionError("unreachable")


async def collect(proc: Process, count: int, timeout: float = 5.0) -> list[Any]:
    """The next ``count`` messages of ``proc``'s mailbox."""
    return [await proc.receive(timeout=timeout) for _ in range(count)]


def spawn_waiter(node: Node) -> fabric.Pid:
    """A process on ``node`` that exits normally when it receives ``"stop"``."""

    async def waiter(proc: Process) -> None:
        await proc.receive(match=lambda m: m == "stop")

    return node.spawn(waiter)


def monitored_by(node: Node, pid: fabric.Pid) -> int:
    """How many monitors are registered on the local process ``pid`` (0 if gone)."""
    proc = node.processes.get(pid)
    return 0 if proc is None else len(proc.monitored_by)


# -- start code for `fabric node --run` ------------------------------------------------------


class KeyValue(fabric.GenServer):
    """call ("put", k, v) / ("get", k): a node program's GenServer."""

    async def init(self) -> None:
        self.data: dict[Any, Any] = {}

    async def handle_call(self, request: Any, from_: fabric.From) -> Any:
        if request[0] == "put":
            self.data[request[1]] = request[2]
            return "ok"
        return self.data.get(request[1])


async def start_kv(node: Node) -> None:
    """What ``fabric node --run _exported:start_kv`` runs: start "kv", join group "stores"
    and take the global name "kv_primary"."""
    pid = await KeyValue.start(node, name="kv")
    node.pg.join("stores", pid)
    assert await node.global_.register_name("kv_primary", pid) == "yes"


class SlowWorker(fabric.GenServer):
    """call ("work", i, notify, delay): tells ``notify`` ("started", i), sleeps ``delay``
    seconds, answers ("done", i): calls that are surely in flight when a stop comes."""

    async def handle_call(self, request: Any, from_: fabric.From) -> Any:
        _, i, notify, delay = request
        self.node.send(notify, ("started", i))
        await asyncio.sleep(delay)
        return ("done", i)


async def start_slow_worker(node: Node) -> None:
    """What ``fabric node --run _exported:start_slow_worker`` runs: start "worker", take
    the global name "worker" and join group "workers"."""
    pid = await SlowWorker.start(node, name="worker")
    node.pg.join("workers", pid)
    assert await node.global_.register_name("worker", pid) == "yes"


def slow_app(node: Node) -> list[fabric.ChildSpec]:
    """``fabric node --app _exported:slow_app``: the application tree is one SlowWorker
    under the local name "worker"."""
    return [fabric.ChildSpec("worker", SlowWorker, name="worker")]


async def start_counter_singleton(node: Node) -> None:
    """What ``fabric node --run _exported:start_counter_singleton`` runs: a candidate for
    the demo's singleton "tickets" (``"next"``, ``"where"``) that starts once three
    candidates met."""
    await fabric.Singleton(node, SINGLETON, Tickets, min_members=3, margin=0.5).start()


def _print_event(event: str, **fields: Any) -> None:
    """A JSON line on stdout, as ``fabric node`` prints its own events (with ``"t"``:
    ``time.monotonic()``, one clock for every process of the machine)."""
    print(json.dumps({"event": event, **fields, "t": round(time.monotonic(), 6)}),
          flush=True)


class ObservedSingleton(fabric.SingletonServer):
    """A singleton that prints ``instance_started`` / ``instance_stopped`` with their
    times: what the lab's "never two at once" check reads."""

    async def init(self, state: Any = None, *args: Any) -> None:
        _print_event("instance_started", pid=repr(self.pid))

    async def terminate(self, reason: Any) -> None:
        await super().terminate(reason)
        _print_event("instance_stopped", pid=repr(self.pid))

    async def handle_call(self, request: Any, from_: fabric.From) -> Any:
        return self.node.name


async def start_observed_singleton(node: Node) -> None:
    """What ``fabric node --run _exported:start_observed_singleton`` runs: a candidate for
    the singleton "observed" with the policy in ``$SINGLETON_POLICY`` (``kind`` or
    ``kind:quorum``), starting once ``$SINGLETON_MIN_MEMBERS`` candidates met."""
    kind, _, quorum = os.environ.get("SINGLETON_POLICY", "keep_majority").partition(":")
    policy = fabric.SplitBrainPolicy(kind, int(quorum or 0))
    await fabric.Singleton(node, "observed", ObservedSingleton, policy=policy,
                           min_members=int(os.environ.get("SINGLETON_MIN_MEMBERS", "1"))
                           ).start()
