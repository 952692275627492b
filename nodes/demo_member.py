"""The member side of ``python -m nodes.demo``: one cluster node, and what it exports.

The narrator (:mod:`nodes.demo`) launches each member as ``python -m nodes.demo --member
NAME [--seed PEER]``; :func:`member_main` runs it. A member starts a fabric node on a port
chosen by the narrator, connects to its one seed (retrying until the seed is up), and
reports on stdout, one JSON object a line: ``started`` (with its creation), then every
``nodeup`` / ``nodedown`` with its view (``node.nodes()``) at that moment. Times are
``time.monotonic()``: the monotonic clock is system-wide, so the narrator can subtract its
own timestamps (for instance the moment it sent SIGKILL) from the members'. fabric's own
log goes to stderr, which the narrator keeps in a file and shows only when something
fails. A member stops gracefully on SIGTERM or SIGINT, and on its own when the narrator
disappears or after ``--lifetime`` seconds.

Each member starts its application at start: a supervision tree with a worker and a
member of the distributed supervisor ``demo_jobs`` (:func:`application`).

Everything else the walkthrough shows happens through fabric itself: the narrator
``spawn_on``-s the exported process functions below on the members, and they answer by
sending tuples to a pid the narrator passed them (the mailbox of the step that asked), with
a ``time.monotonic()`` stamp where the narrator measures a delay. Every one of them ends by
itself (a ``"stop"`` message, an idle timeout or a lifetime), so a forgotten process does
not outlive the demo's budget by much; all of them die with their node anyway.

Members run this module as ``nodes.demo_member`` (imported by ``nodes.demo``, which is
``__main__``), so ``"nodes.demo_member:fn"`` resolves to these very functions, not to a
second copy of the module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from typing import Any, TextIO

import fabric
from fabric.application import start_application
from fabric.ddata import GCounter, Key, ORSet, Replicator
from fabric.logs import configure_logging

HOST = "127.0.0.1"
WAIT = 10.0  # the longest any single wait may take, seconds
LIFETIME = 60.0  # the longest an exported demo process lives (the demo takes far less)
SPEC = "nodes.demo_member:"  # prefix of the spawn specs of the functions below


def quiet_fabric_log(stream: TextIO) -> None:
    """Send fabric's log events (warnings and up) to ``stream``, away from the narration
    on stdout (and, in a member, from its JSON reports)."""
    configure_logging("warning", stream=stream)


# -- step 2: hello/world ----------------------------------------------------------------------


@fabric.export
async def hello_worker(proc: fabric.Process, idle_timeout: float = 10.0,
                       max_messages: int = 10_000) -> None:
    """Answer ``("hello", from_pid)`` with ``("world", this node's name)``.

    Ends on ``"stop"``, after ``idle_timeout`` seconds without a message, or after
    ``max_messages`` messages, so a forgotten worker does not live forever.
    """
    for _ in range(max_messages):
        msg = await proc.receive(timeout=idle_timeout, default=None)
        if msg is None or msg == "stop":
            return
        if type(msg) is tuple and len(msg) == 2 and msg[0] == "hello" \
                and type(msg[1]) is fabric.Pid:
            proc.send(msg[1], ("world", proc.node.name))


# -- step 3: a GenServer called across nodes --------------------------------------------------


class Counter(fabric.GenServer):
    """A ClusterSingleton-style counter: one instance, on one node, called from anywhere.

    Requests: ``("incr", k)`` adds ``k`` and returns the new value; ``"get"`` returns it;
    ``("div", d)`` returns ``value // d``, so ``("div", 0)`` raises ZeroDivisionError in
    ``handle_call``: the caller gets a RemoteError, and the server crashes (Erlang's
    policy, see :mod:`fabric.genserver`).
    """

    n: int

    async def init(self, start: int = 0) -> None:
        self.n = start

    async def handle_call(self, request: Any, from_: fabric.From) -> Any:
        if request == "get":
            return self.n
        if type(request) is tuple and len(request) == 2 and type(request[1]) is int:
            op, arg = request
            if op == "incr":
                self.n += arg
                return self.n
            if op == "div":
                return self.n // arg
        raise ValueError(f"unknown request {request!r}")


@fabric.export
async def start_counter(proc: fabric.Process, reply_to: fabric.Pid, name: str,
                        start: int = 0) -> None:
    """Start a :class:`Counter` registered locally as ``name``; tell ``reply_to``.

    Sends ``("counter_started", node, pid)``, or ``("counter_failed", node, why)``. This
    process ends right after; the server is not linked to it, so it lives on.
    """
    node = proc.node
    try:
        pid = await Counter.start(node, start, name=name)
    except Exception as exc:  # anything init or the registration raised: report it
        proc.send(reply_to, ("counter_failed", node.name, f"{type(exc).__name__}: {exc}"))
        return
    proc.send(reply_to, ("counter_started", node.name, pid))


@fabric.export
async def call_counter(proc: fabric.Process, reply_to: fabric.Pid, name: str,
                       where: str, request: Any) -> None:
    """``fabric.call`` the server ``(name, where)`` from this node; report to ``reply_to``.

    Sends ``("called", node, request, outcome, seconds)`` where ``outcome`` is
    ``("ok", value)``, ``("RemoteError", type_name, message)`` or ``(error type, text)``.
    """
    t = time.monotonic()
    outcome: tuple[Any, ...]
    try:
        outcome = ("ok", await fabric.call(proc, (name, where), request, timeout=WAIT / 2))
    except fabric.RemoteError as exc:
        outcome = ("RemoteError", exc.type_name, exc.message)
    except fabric.FabricError as exc:
        outcome = (type(exc).__name__, str(exc))
    proc.send(reply_to, ("called", proc.node.name, request, outcome, time.monotonic() - t))


# -- step 4: process groups -------------------------------------------------------------------


@fabric.export
async def subscriber(proc: fabric.Process, group: str, reply_to: fabric.Pid,
                     lifetime: float = LIFETIME) -> None:
    """Join ``group`` and report every message it receives to ``reply_to``.

    Sends ``("delivered", own_pid, message, t)`` per message. Ends on ``"stop"`` or after
    ``lifetime`` seconds; leaving the group is automatic when a member exits.
    """
    proc.node.pg.join(group, proc.self)
    end = time.monotonic() + lifetime
    while (left := end - time.monotonic()) > 0:
        msg = await proc.receive(timeout=left, default=None)
        if msg is None or msg == "stop":
            return
        proc.send(reply_to, ("delivered", proc.self, msg, time.monotonic()))


@fabric.export
async def send_one(proc: fabric.Process, group: str, message: Any, strategy: str,
                   reply_to: fabric.Pid) -> None:
    """``pg.send_to_one`` from this node; sends ``("sent_one", node, chosen_pid)``."""
    chosen = proc.node.pg.send_to_one(group, message, strategy=strategy)
    proc.send(reply_to, ("sent_one", proc.node.name, chosen))


# -- the distributed cache --------------------------------------------------------------------

DEMO_CACHE = "demo"  # the cache the members share
_caches: dict[str, Any] = {}  # node name -> this member's fabric.cache.Cache
_CACHE_OPS = frozenset({"put", "get", "put_many", "get_many", "stats", "owners", "members"})


@fabric.export
async def cache_start(proc: fabric.Process, reply_to: fabric.Pid) -> None:
    """Start this member's part of the demo cache (an owner; replicas=2; it outlives this
    process); sends ``("cache_started", node)``."""
    from fabric.cache import Cache

    node = proc.node
    old = _caches.pop(node.name, None)
    if old is not None:
        await old.close()
    _caches[node.name] = Cache(node, DEMO_CACHE, replicas=2, sweep_interval=0.1)
    proc.send(reply_to, ("cache_started", node.name))


@fabric.export
async def cache_op(proc: fabric.Process, reply_to: fabric.Pid, op: str,
                   args: list[Any]) -> None:
    """Run one operation of this member's cache; sends ``("cache_result", node, op,
    result)`` or ``("cache_failed", node, op, why)``."""
    node = proc.node
    cache = _caches.get(node.name)
    try:
        if cache is None or op not in _CACHE_OPS:
            raise ValueError(f"no cache here, or an unknown operation {op!r}")
        if op == "stats":
            result: Any = cache.stats()
        elif op == "members":
            result = sorted(cache.core.placement.members)
        elif op == "owners":
            result = cache.owners(args[0])
        else:
            result = await getattr(cache, op)(*args)
    except Exception as exc:  # reported to the narrator, which fails the step
        proc.send(reply_to, ("cache_failed", node.name, op, repr(exc)))
        return
    proc.send(reply_to, ("cache_result", node.name, op, result))


# -- step 7: leader election ------------------------------------------------------------------


@fabric.export
async def candidate(proc: fabric.Process, group: str, reply_to: fabric.Pid,
                    lifetime: float = LIFETIME) -> None:
    """Stand for leading ``group``; forward every election message to ``reply_to``.

    Sends ``("candidate", own_pid, event, t)`` for each ``LeaderElected`` or
    ``LeaderLost`` event, as its tuple ``("leader_elected", group, leader, term)`` or
    ``("leader_lost", group, term)`` (events do not cross nodes). ``t`` is taken on receipt here,
    so the narrator measures the election, not the forwarding. Ends on ``"stop"`` or after
    ``lifetime`` seconds (its candidacy ends with it).
    """
    proc.node.global_.stand(group, proc.self)
    end = time.monotonic() + lifetime
    while (left := end - time.monotonic()) > 0:
        msg = await proc.receive(timeout=left, default=None)
        if msg is None or msg == "stop":
            return
        if type(msg) in (fabric.LeaderElected, fabric.LeaderLost):
            proc.send(reply_to, ("candidate", proc.self, msg.as_tuple(), time.monotonic()))


# -- step 7: partition-tolerant writes with CRDTs ---------------------------------------------

HITS = Key("hits", GCounter)  # the seed's counter, replicated
SEEN = Key("seen", ORSet)  # a replicated set beside it
_replicators: dict[str, Replicator] = {}  # this member's one Replicator (a process each)


def replicator_of(node: fabric.Node) -> Replicator:
    """This member's Replicator, started by the first worker that needs it."""
    repl = _replicators.get(node.name)
    if repl is None:
        repl = _replicators[node.name] = Replicator(node, delta_interval=0.1,
                                                    gossip_interval=0.5)
    return repl


async def _crdt_request(node: fabric.Node, repl: Replicator, msg: tuple[Any, ...]) -> Any:
    """Carry out one request of :func:`crdt_worker`; its answer, without the node name."""
    kind = msg[0]
    if kind == "members":  # ("members", n, timeout): wait until n nodes run a replicator
        end = time.monotonic() + msg[2]
        while len(repl.core.members()) < msg[1] and time.monotonic() < end:
            await asyncio.sleep(0.02)  # bounded by the deadline
        return ("crdt_members", len(repl.core.members()))
    if kind in ("incr", "add"):  # (kind, argument, consistency level)
        _, arg, level = msg
        try:
            if kind == "incr":
                counter = await repl.update(HITS, lambda c: c.increment(arg), write=level)
                return ("crdt_wrote", kind, arg, level, ("ok", counter.value))
            seen = await repl.update(SEEN, lambda s: s.add(arg), write=level)
            return ("crdt_wrote", kind, arg, level, ("ok", sorted(seen.value)))
        except fabric.ConsistencyError as exc:
            return ("crdt_wrote", kind, arg, level, ("ConsistencyError", str(exc)))
    if kind == "block":  # ("block", [peer, ...], seconds)
        for peer in msg[1]:
            node.block(peer, msg[2])
        return ("crdt_blocked", time.monotonic())
    if kind == "unblock":
        for peer in msg[1]:
            node.unblock(peer)
        return ("crdt_unblocked", time.monotonic())
    if kind == "await":  # ("await", counter, [element, ...], timeout)
        _, total, elements, timeout = msg
        end = time.monotonic() + timeout
        while True:
            counter, seen = repl.value(HITS), repl.value(SEEN)
            got = (None if counter is None else counter.value,
                   [] if seen is None else sorted(seen.value))
            if got == (total, sorted(elements)) or time.monotonic() >= end:
                return ("crdt_values", *got, time.monotonic())
            await asyncio.sleep(0.005)  # bounded by the deadline
    return ("crdt_unknown", kind)


@fabric.export
async def crdt_worker(proc: fabric.Process, reply_to: fabric.Pid,
                      lifetime: float = LIFETIME) -> None:
    """Host this member's replicator (:mod:`fabric.ddata`) and carry out the narrator's
    requests, answering each to ``reply_to`` as ``(answer kind, node, ...)``:

    * ``("members", n, timeout)``: wait until ``n`` nodes run a replicator;
    * ``("incr", n, level)`` / ``("add", element, level)``: update the counter ``hits`` or
      the set ``seen`` at consistency ``level``; the outcome is the new local value or the
      ConsistencyError's text;
    * ``("block", [peer, ...], seconds)`` / ``("unblock", [peer, ...])``: cut this node
      off from those peers (``Node.block``: the partition) and heal;
    * ``("await", counter, elements, timeout)``: wait until this replica holds those
      values (or the timeout), answer the values and the time.

    Ends on ``"stop"`` or after ``lifetime`` seconds; the replicator stays with the node.
    """
    repl = replicator_of(proc.node)
    end = time.monotonic() + lifetime
    while (left := end - time.monotonic()) > 0:
        msg = await proc.receive(timeout=left, default=None)
        if msg is None or msg == "stop":
            return
        if type(msg) is tuple and msg:
            answer = await _crdt_request(proc.node, repl, msg)
            proc.send(reply_to, (answer[0], proc.node.name, *answer[1:]))


# -- steps 7 and 8: the application's supervision tree ----------------------------------------


JOBS = "demo_jobs"  # the distributed supervisor every member's tree has a member of


class Worker(fabric.GenServer):
    """The supervised worker of every member's tree: ``"whoami"`` -> ``(node, pid)``;
    ``"crash"`` raises (its supervisor restarts it in place)."""

    async def handle_call(self, request: Any, from_: fabric.From) -> Any:
        if request == "whoami":
            return (self.node.name, self.pid)
        raise RuntimeError(f"asked to {request!r}")


@fabric.export
class Job(fabric.GenServer):
    """A child of the distributed supervisor: ``"where"`` -> the node it runs on."""

    async def init(self, key: str) -> None:
        self.key = key

    async def handle_call(self, request: Any, from_: fabric.From) -> Any:
        if request == "where":
            return self.node.name
        raise ValueError(f"unknown request {request!r}")


def application(node: fabric.Node) -> list[fabric.ChildSpec]:
    """Each member's supervision tree (:func:`fabric.application.start_application`): a
    worker registered as ``"worker"``, and this node's member of :data:`JOBS`."""
    return [fabric.ChildSpec("worker", Worker, name="worker"),
            fabric.DistributedSupervisor.child_spec(JOBS)]


@fabric.export
async def start_jobs(proc: fabric.Process, reply_to: fabric.Pid, keys: list[str]) -> None:
    """Start a :class:`Job` per key under :data:`JOBS`, globally named by its key; sends
    ``("jobs_started", [(key, node), ...])`` or ``("jobs_failed", why)``."""
    sup = fabric.DistributedSupervisor(proc.node, JOBS)
    placed = []
    try:
        for key in keys:
            spec = fabric.DistributedChildSpec(key, SPEC + "Job", args=(key,),
                                               name=fabric.GlobalName(key))
            placed.append((key, (await sup.start_child(spec, timeout=WAIT / 2))[0]))
    except Exception as exc:  # reported to the narrator, which fails the step with it
        proc.send(reply_to, ("jobs_failed", f"{type(exc).__name__}: {exc}"))
        return
    proc.send(reply_to, ("jobs_started", placed))


# -- member mode ------------------------------------------------------------------------------


def emit(event: str, **fields: Any) -> None:
    """Report one event to the narrator as a JSON line on stdout."""
    try:
        print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)
    except (BrokenPipeError, ValueError):
        pass  # the narrator is gone (or stdout closed): nobody left to tell


async def join_seed(node: fabric.Node, seed: str, deadline: float) -> None:
    """Connect to ``seed`` until the session is up or ``deadline`` (monotonic) passes.

    Retries because members start at the same moment: the seed may not be listening yet
    (``connection_refused``), and a restarted member may race the seed's own reconnect
    attempts (the mesh then keeps one session, and we only need to see it up).
    """
    while time.monotonic() < deadline:
        if seed in node.nodes():
            return
        if await node.connect(seed, timeout=1.0):
            return
        emit("connect_retry", peer=seed, reason=node.last_connect_error(seed))
        await asyncio.sleep(0.1)
    emit("seed_failed", peer=seed, reason=node.last_connect_error(seed))


async def member_main(name: str, seed: str | None, pub_port: int, lifetime: float,
                      parent: int | None) -> int:
    """Run one member until SIGTERM/SIGINT, the exit of process ``parent`` (the
    narrator), or ``lifetime`` seconds."""
    quiet_fabric_log(sys.stderr)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The narrator passes its pid: reading os.getppid() here would be too late if it
    # died while we were starting (we would already be someone else's child).
    if parent is None:
        parent = os.getppid()
    # The cookie comes from FABRIC_COOKIE (set by the narrator), never from argv.
    node = fabric.Node(name, pub_port=pub_port)
    async with node:
        events = node.monitor_nodes()  # subscribe before connecting: miss no nodeup
        await start_application(node, "nodes.demo_member:application")
        emit("started", name=node.name, creation=node.creation, pid=os.getpid())

        async def pump() -> None:
            async for ev in events:
                if isinstance(ev, fabric.NodeUp):
                    emit("nodeup", peer=ev.node, view=node.nodes())
                else:
                    emit("nodedown", peer=ev.node, reason=ev.reason, view=node.nodes())

        pump_task = loop.create_task(pump())
        seed_task = (loop.create_task(join_seed(node, seed, time.monotonic() + WAIT))
                     if seed else None)
        end = time.monotonic() + lifetime
        # Poll for the parent's death: if the narrator is killed -9 it cannot clean up,
        # and a broken stdout would only show at our next report, which may never come.
        while not stop.is_set() and time.monotonic() < end and os.getppid() == parent:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)
        for task in (seed_task, pump_task):
            if task is not None:
                task.cancel()
        emit("stopping")
    return 0


# -- step 9: a cluster singleton --------------------------------------------------------------

SINGLETON = "tickets"  # the singleton of step 9


class Tickets(fabric.SingletonServer):
    """The singleton of step 9: ``"next"`` hands out the next ticket number, ``"where"``
    says which node runs it. The number moves with a graceful hand-over."""

    async def init(self, state: Any = None, *args: Any) -> None:
        self.last: int = state or 0

    async def handoff(self) -> Any:
        return self.last

    async def handle_call(self, request: Any, from_: fabric.From) -> Any:
        if request == "next":
            self.last += 1
            return self.last
        return self.node.name


async def start_singleton_candidate(node: fabric.Node) -> None:
    """``fabric node --run nodes.demo_member:start_singleton_candidate``: a candidate for
    :data:`SINGLETON`; it starts once three candidates met."""
    await fabric.Singleton(node, SINGLETON, Tickets, min_members=3).start()
