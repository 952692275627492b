"""The fabric demo: a local 3-node cluster forms, loses a member to kill -9, and heals.

Run ``python -m nodes.demo`` from the checkout. It exits 0 after a short summary, or
non-zero with the step that failed and why. It takes a few seconds (30 s at most).

Theory of operation
-------------------
This one module plays two parts.

* **Members** (``python -m nodes.demo --member NAME [--seed PEER]``): each starts a
  fabric node on a port chosen by the parent, connects to its one seed (retrying until
  the seed is up), and reports on stdout, one JSON object a line: ``started`` (with its
  creation), then every ``nodeup`` / ``nodedown`` with its view (``node.nodes()``) at that
  moment. Times are ``time.monotonic()``: the monotonic clock is system-wide, so the
  parent can subtract its own timestamps (for instance the moment it sent SIGKILL) from
  the members'. fabric's own log goes to stderr, which the parent keeps in a file and
  shows only when something fails. A member stops gracefully on SIGTERM or SIGINT, and
  on its own when the parent disappears or after ``--lifetime`` seconds.

* **The narrator** (no arguments): launches the members, reads their reports on one
  thread per member, and joins the cluster itself as a *hidden* node, so it can spawn
  processes there and watch nodeup/nodedown without becoming a member (members do not
  list it in ``nodes()`` and do not connect to it transitively). It runs the steps in
  :data:`STEPS` in order; each is an async function that narrates and returns a one-line
  result for the summary table. To add a part to the walkthrough, write a step function
  and append it to :data:`STEPS`.

The cookie is random per run and reaches the members through ``FABRIC_COOKIE``: argv is
visible to every user of the machine (``ps``), the environment is not.

Every wait has a deadline (:data:`WAIT`, and the whole run :data:`BUDGET`); members are
terminated by pid in a ``finally`` (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

import structlog

import fabric

HOST = "127.0.0.1"
MEMBERS = 3
WAIT = 10.0  # the longest any single wait may take, seconds
BUDGET = 30.0  # the whole walkthrough, seconds
TERM_GRACE = 3.0  # after SIGTERM, how long members get to stop before SIGKILL
ROUND_TRIPS = 100  # hello/world round trips timed after the first one
REPO = Path(__file__).resolve().parent.parent

T = TypeVar("T")


class StepFailed(Exception):
    """A step could not show what it set out to show; the message says what was missing."""


def short(name: str) -> str:
    """``n1@127.0.0.1:9100`` -> ``n1``: the narration uses short names."""
    return name.split("@", 1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on :data:`HOST`.

    All probe sockets stay open until every port is chosen, so the kernel cannot hand out
    the same port twice; they are closed before the members bind (a small race with other
    programs remains, as with any port-0 scheme).
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def quiet_fabric_log(stream: TextIO) -> None:
    """Send fabric's structlog output (warnings and up) to ``stream``.

    structlog prints to stdout by default, which would mix with the narration (and, in a
    member, with its JSON reports). Must run before any Node is created: a node binds its
    logger at construction.
    """
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


# -- the function the narrator spawns on a member -------------------------------------------


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


# -- the narrator's view of a member -------------------------------------------------------------


@dataclass
class Report:
    """One event, reported by a member (or by the narrator's own node as ``demo``)."""

    source: str  # short name of who saw it: n1, n2, n3 or demo
    run: int  # which launch of that member (0 for the first; the narrator is 0)
    event: str  # started, nodeup, nodedown, stopping, exited, ...
    t: float  # time.monotonic() when it was seen
    data: dict[str, Any]

    @property
    def peer(self) -> str:
        return short(str(self.data.get("peer", "")))


@dataclass
class Member:
    """One member as the narrator knows it: its ports, seed and current process."""

    short: str
    port: int
    pub_port: int
    seed: Member | None
    proc: subprocess.Popen[str] | None = None
    run: int = -1  # incremented at each launch
    stderr_path: Path | None = None
    creation: int | None = None  # of the current run, once it reported ``started``
    readers: list[threading.Thread] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.short}@{HOST}:{self.port}"


@dataclass
class Step:
    """One part of the walkthrough: a title and an async function returning a result."""

    title: str
    run: Callable[[Demo], Awaitable[str]]


class Demo:
    """The narrator: owns the members' processes, their reports and a hidden node."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.deadline = self.t0 + BUDGET
        self.cookie = secrets.token_urlsafe(24)
        self.tmp = Path(tempfile.mkdtemp(prefix="fabric-demo-"))
        ports = free_ports(2 * MEMBERS + 2)
        self.members: list[Member] = []
        for i in range(MEMBERS):
            seed = self.members[-1] if self.members else None  # n2 <- n1, n3 <- n2
            self.members.append(Member(f"n{i + 1}", ports[2 * i], ports[2 * i + 1], seed))
        self.node_name = f"demo@{HOST}:{ports[-2]}"
        self.node_pub_port = ports[-1]
        self.node: fabric.Node | None = None
        self.reports: list[Report] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self.expect_alive: set[str] = set()  # members whose exit would be a failure
        self.results: list[tuple[str, str, str, float]] = []  # step, status, result, s
        self._log: TextIO | None = None  # the narrator node's fabric log (a file)

    # -- narration ------------------------------------------------------------------------

    def at(self, t: float) -> str:
        """A timestamp relative to the start of the demo."""
        return f"[{t - self.t0:7.3f}s]"

    def say(self, text: str, t: float | None = None) -> None:
        print(f"{self.at(time.monotonic() if t is None else t)} {text}", flush=True)

    def member(self, short_name: str) -> Member:
        return next(m for m in self.members if m.short == short_name)

    # -- member processes -------------------------------------------------------------------

    def launch(self, m: Member) -> None:
        """Start (or restart) member ``m`` on its ports, seeded with its one seed."""
        m.run += 1
        m.creation = None
        m.stderr_path = self.tmp / f"{m.short}.{m.run}.stderr"
        cmd = [sys.executable, "-m", "nodes.demo", "--member", m.name,
               "--pub-port", str(m.pub_port), "--parent", str(os.getpid())]
        if m.seed is not None:
            cmd += ["--seed", m.seed.name]
        env = dict(os.environ, FABRIC_COOKIE=self.cookie, PYTHONUNBUFFERED="1")
        # The members import nodes.demo (and fabric) from this checkout, wherever the
        # narrator was started from.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        with open(m.stderr_path, "w") as err:
            m.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=err, text=True)
        self.expect_alive.add(m.short)
        reader = threading.Thread(target=self._read, args=(m, m.run, m.proc),
                                  name=f"read-{m.short}.{m.run}", daemon=True)
        m.readers.append(reader)
        reader.start()
        seed = f"seed {m.seed.short}" if m.seed else "no seed"
        self.say(f"launched {m.short} (pid {m.proc.pid}, run {m.run + 1}) "
                 f"on {HOST}:{m.port}, {seed}")

    def _read(self, m: Member, run: int, proc: subprocess.Popen[str]) -> None:
        """Reader thread: forward a member's JSON lines to the event loop until EOF."""
        assert proc.stdout is not None and self.loop is not None
        for line in proc.stdout:
            try:
                data = json.loads(line)
                event, t = str(data.pop("event")), float(data.pop("t"))
            except (ValueError, KeyError, TypeError, AttributeError):
                data, event, t = {"text": line.rstrip()}, "text", time.monotonic()
            self._post(Report(m.short, run, event, t, data))
        proc.stdout.close()
        self._post(Report(m.short, run, "exited", time.monotonic(), {}))

    def _post(self, report: Report) -> None:
        assert self.loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is already closed: too late
            self.loop.call_soon_threadsafe(self._record, report)

    def _record(self, report: Report) -> None:
        """On the loop: store a report and wake the waiters."""
        self.reports.append(report)
        if report.event == "started" and report.source != "demo":
            m = self.member(report.source)
            if report.run == m.run:
                m.creation = int(report.data["creation"])
        assert self._changed is not None
        self._changed.set()

    def kill9(self, m: Member) -> float:
        """SIGKILL member ``m``; returns the moment of the kill (monotonic)."""
        assert m.proc is not None
        self.expect_alive.discard(m.short)
        t = time.monotonic()
        os.kill(m.proc.pid, signal.SIGKILL)
        return t

    def terminate_members(self) -> None:
        """SIGTERM every member still running, SIGKILL those that outlive the grace."""
        procs = [m.proc for m in self.members if m.proc is not None and m.proc.poll() is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
        end = time.monotonic() + TERM_GRACE
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.0, end - time.monotonic()))
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(2.0)
        for m in self.members:
            for r in m.readers:
                r.join(1.0)

    # -- waiting ----------------------------------------------------------------------------

    async def wait_for(self, what: str, predicate: Callable[[], T | None],
                       timeout: float = WAIT) -> T:
        """Wait until ``predicate()`` is truthy and return it; fail after ``timeout``.

        Fails at once if a member in :attr:`expect_alive` exits: waiting out the deadline
        would only hide the reason.
        """
        assert self._changed is not None
        end = min(time.monotonic() + timeout, self.deadline)
        while True:
            self._changed.clear()
            result = predicate()
            if result:
                return result
            for m in self.members:
                if m.short in self.expect_alive and m.proc is not None \
                        and m.proc.poll() is not None:
                    raise StepFailed(f"{m.short} exited (code {m.proc.returncode}) "
                                     f"while waiting for {what}")
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise StepFailed(f"timed out after {timeout:.0f} s waiting for {what}")
            # Wake on the next report, or every 0.1 s to notice a member's exit.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.1))

    def since(self, index: int, event: str, source: str | None = None,
              run: int | None = None) -> list[Report]:
        """Reports numbered ``index`` and later of kind ``event`` (optionally filtered)."""
        return [r for r in self.reports[index:]
                if r.event == event and (source is None or r.source == source)
                and (run is None or r.run == run)]

    def first(self, index: int, event: str, source: str, peer: str) -> Report | None:
        """The first report since ``index`` of ``event`` about ``peer`` by ``source``."""
        return next((r for r in self.since(index, event, source) if r.peer == peer), None)

    def view(self, m: Member) -> set[str] | None:
        """Member ``m``'s latest reported view (its current run), as short names."""
        for r in reversed(self.reports):
            if r.source == m.short and r.run == m.run and r.event in ("nodeup", "nodedown"):
                return {short(p) for p in r.data.get("view", [])}
        return None

    def full_mesh(self) -> bool:
        """Every member's latest view holds every other member."""
        names = {m.short for m in self.members}
        return all(self.view(m) == names - {m.short} for m in self.members)

    # -- the run ------------------------------------------------------------------------------

    async def run(self) -> int:
        """Run every step; print the summary; return the exit code."""
        self.loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._log = open(self.tmp / "demo.stderr", "w")  # noqa: SIM115 (closed in cleanup)
        quiet_fabric_log(self._log)
        print(f"fabric demo: {MEMBERS} member nodes as OS processes on {HOST}; a random "
              "cookie in FABRIC_COOKIE; this narrator joins as a hidden node", flush=True)
        failed: str | None = None
        try:
            for i, step in enumerate(STEPS, 1):
                print(f"\n== {i}/{len(STEPS)} {step.title} ==", flush=True)
                start = time.monotonic()
                try:
                    # A step's own waits have deadlines; this one caps the whole run.
                    result = await asyncio.wait_for(step.run(self),
                                                    max(0.0, self.deadline - start))
                except Exception as exc:
                    elapsed = time.monotonic() - start
                    if isinstance(exc, asyncio.TimeoutError):
                        why = f"the demo's {BUDGET:.0f} s budget ran out"
                    elif isinstance(exc, (StepFailed, fabric.FabricError)):
                        why = str(exc) or type(exc).__name__
                    else:  # a bug here or in fabric: the traceback is the useful part
                        traceback.print_exc()
                        why = f"{type(exc).__name__}: {exc}"
                    failed = f"step {i} ({step.title}) failed: {why}"
                    self.results.append((f"{i} {step.title}", "FAIL", why, elapsed))
                    break
                self.results.append((f"{i} {step.title}", "ok", result,
                                     time.monotonic() - start))
        finally:
            if self.node is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.node.stop(), 5.0)
        self.summary()
        if failed is not None:
            print(f"\nFAILED: {failed}", flush=True)
            self.show_logs()
            return 1
        print(f"\nall {len(STEPS)} steps passed in {time.monotonic() - self.t0:.2f} s",
              flush=True)
        return 0

    def summary(self) -> None:
        """The table: step, status, result, time."""
        w_step = max(len(s) for s, *_ in self.results) if self.results else 4
        print(f"\n{'step':<{w_step}}  {'':4}  {'time':>7}  result", flush=True)
        print(f"{'-' * w_step}  {'-' * 4}  {'-' * 7}  {'-' * 50}")
        for step, status, result, elapsed in self.results:
            print(f"{step:<{w_step}}  {status:<4}  {elapsed:6.2f}s  {result}")
        sys.stdout.flush()

    def show_logs(self, lines: int = 15) -> None:
        """On failure: the tail of every member's stderr and of the narrator's fabric log."""
        for path in sorted(self.tmp.glob("*.stderr")):
            text = path.read_text(errors="replace").strip().splitlines()
            if text:
                print(f"\n--- {path.name} (last {min(lines, len(text))} lines) ---")
                print("\n".join(text[-lines:]))
        odd = [r for r in self.reports if r.event in ("text", "seed_failed", "connect_retry")]
        if odd:
            print("\n--- member diagnostics (source, run, event) ---")
            for r in odd[-lines:]:
                print(f"{self.at(r.t)} {r.source} run {r.run + 1} {r.event} {r.data}")
        sys.stdout.flush()

    def cleanup(self) -> None:
        """Terminate the members and remove the temporary directory. Idempotent."""
        try:
            self.terminate_members()
        finally:
            if self._log is not None:
                self._log.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    async def watch_own_node(self, node: fabric.Node) -> None:
        """Record the narrator node's own NodeUp/NodeDown events as source ``demo``."""
        async for ev in node.monitor_nodes():
            data: dict[str, Any] = {"peer": ev.node}
            if isinstance(ev, fabric.NodeDown):
                data["reason"] = ev.reason
            event = "nodeup" if isinstance(ev, fabric.NodeUp) else "nodedown"
            self._record(Report("demo", 0, event, time.monotonic(), data))


# -- the steps --------------------------------------------------------------------------------


def how_learned(m: Member, peer: str, members: list[Member]) -> str:
    """How member ``m`` met ``peer``: one was the other's seed, or the mesh introduced them."""
    if m.seed is not None and m.seed.short == peer:
        return "its seed"
    if any(o.short == peer and o.seed is m for o in members):
        return f"{peer}'s seed"
    return "transitively"


async def step_mesh(demo: Demo) -> str:
    """Launch the members, each with one seed, and watch the full mesh form."""
    mark = len(demo.reports)
    for m in demo.members:
        demo.launch(m)
    started: list[Report] = []
    for m in demo.members:
        def has_started(m: Member = m) -> list[Report]:
            return demo.since(mark, "started", m.short, m.run)
        started.append((await demo.wait_for(f"{m.short} to start", has_started))[0])
    for r in sorted(started, key=lambda r: r.t):
        demo.say(f"{r.source} is listening, creation {r.data['creation']:#010x}", r.t)
    # The narrator joins last, as a hidden node: it connects to each member explicitly,
    # and nobody connects onward to it.
    node = fabric.Node(demo.node_name, cookie=demo.cookie, hidden=True,
                       pub_port=demo.node_pub_port, drain_timeout=1.0)
    await node.start()
    demo.node = node
    asyncio.get_running_loop().create_task(demo.watch_own_node(node))
    for m in demo.members:
        if not await node.connect(m.name, timeout=WAIT / 2):
            raise StepFailed(f"the narrator could not connect to {m.short}: "
                             f"{node.last_connect_error(m.name)}")
    await demo.wait_for("every member to see the two others", demo.full_mesh)
    done = time.monotonic()
    ups = demo.since(mark, "nodeup")
    for r in sorted(ups, key=lambda r: r.t):
        if r.source == "demo":
            continue
        m = demo.member(r.source)
        view = ", ".join(sorted(short(p) for p in r.data.get("view", [])))
        demo.say(f"  {r.source:<4} nodeup   {r.peer:<4} {how_learned(m, r.peer, demo.members):<16} "
                 f"view: {view}", r.t)
    # A link is reported by both of its ends: count each pair once.
    made = sorted({"-".join(sorted((r.source, r.peer))) for r in ups if r.source != "demo"
                   and how_learned(demo.member(r.source), r.peer, demo.members)
                   == "transitively"})
    demo.say(f"full mesh: each of the {MEMBERS} members sees the {MEMBERS - 1} others; "
             f"never configured, made by the mesh: {', '.join(made) or 'none'}", done)
    visible = sorted(short(n) for n in node.nodes())
    demo.say(f"narrator (hidden) is connected to {', '.join(visible)}; members do not "
             "list it")
    first = min(r.t for r in started)
    return (f"{MEMBERS} members, one seed each, full mesh {done - first:.2f} s "
            "after the first was listening")


async def step_spawn(demo: Demo) -> str:
    """Spawn an exported function on n2 and time hello/world round trips with it."""
    node = demo.node
    assert node is not None
    target = demo.member("n2")
    spec = "nodes.demo:hello_worker"
    mbox = node.new_mailbox()  # the narrator's own mailbox: a pid the worker can answer
    try:
        t = time.monotonic()
        pid = await node.spawn_on(target.name, spec, timeout=WAIT / 2)
        spawned = time.monotonic() - t
        demo.say(f"spawn_on {target.short} {spec} -> {pid!r} ({spawned * 1000:.1f} ms)")
        ref = mbox.monitor(pid)

        async def round_trip() -> tuple[float, Any]:
            t = time.monotonic()
            node.send(pid, ("hello", mbox.self))
            reply = await mbox.receive(
                match=lambda msg: type(msg) is tuple and msg[:1] == ("world",),
                timeout=WAIT / 2)
            return time.monotonic() - t, reply

        first, reply = await round_trip()
        if reply != ("world", target.name):
            raise StepFailed(f"expected ('world', {target.name!r}), got {reply!r}")
        demo.say(f"sent ('hello', {mbox.self!r}) -> got {reply!r} in {first * 1000:.2f} ms")
        samples = [(await round_trip())[0] for _ in range(ROUND_TRIPS)]
        p50 = statistics.median(samples) * 1000
        worst = max(samples) * 1000
        demo.say(f"{ROUND_TRIPS} more round trips: median {p50:.2f} ms, max {worst:.2f} ms")
        node.send(pid, "stop")
        down = await mbox.receive(
            match=lambda msg: isinstance(msg, fabric.Down) and msg.ref == ref,
            timeout=WAIT / 2)
        demo.say(f"worker stopped; the narrator's monitor on it fired: reason {down.reason!r}")
    except fabric.ReceiveTimeout as exc:
        raise StepFailed(f"no answer from the worker on {target.short}: {exc}") from None
    finally:
        node.close_mailbox(mbox)
    return f"('world', {target.short}) in {first * 1000:.2f} ms; median {p50:.2f} ms"


async def step_kill(demo: Demo) -> str:
    """kill -9 n3; every survivor must see NodeDown(connection_closed), and quickly."""
    victim = demo.member("n3")
    survivors = [m.short for m in demo.members if m is not victim] + ["demo"]
    mark = len(demo.reports)
    assert victim.proc is not None
    demo.say(f"kill -9 {victim.short} (pid {victim.proc.pid})")
    t_kill = demo.kill9(victim)

    def all_down() -> list[Report] | None:
        found = [demo.first(mark, "nodedown", s, victim.short) for s in survivors]
        downs = [r for r in found if r is not None]
        return downs if len(downs) == len(survivors) else None

    downs = await demo.wait_for(f"every survivor's nodedown for {victim.short}", all_down)
    with contextlib.suppress(subprocess.TimeoutExpired):
        victim.proc.wait(WAIT)  # reap it
    delays = []
    for r in sorted(downs, key=lambda r: r.t):
        ms = (r.t - t_kill) * 1000
        delays.append(ms)
        who = "demo (hidden)" if r.source == "demo" else r.source
        demo.say(f"  {who:<13} nodedown {r.peer:<4} reason {r.data['reason']:<18} "
                 f"noticed after {ms:6.1f} ms", r.t)
    wrong = [r for r in downs if r.data["reason"] != "connection_closed"]
    if wrong:
        raise StepFailed("expected reason connection_closed, got " + ", ".join(
            f"{r.source}: {r.data['reason']}" for r in wrong))
    for m in demo.members:
        if m is not victim:
            demo.say(f"  {m.short} now sees: {', '.join(sorted(demo.view(m) or ())) or '-'}")
    return (f"{', '.join(sorted(r.source for r in downs))}: connection_closed within "
            f"{max(delays):.1f} ms")


async def step_restart(demo: Demo) -> str:
    """Restart n3 on the same port; every survivor must see it come back."""
    m = demo.member("n3")
    old = m.creation
    mark = len(demo.reports)
    t = time.monotonic()
    demo.launch(m)
    started = await demo.wait_for(f"{m.short} to restart",
                                  lambda: demo.since(mark, "started", m.short, m.run))
    demo.say(f"{m.short} is listening again on port {m.port}, creation "
             f"{m.creation:#010x} (was {old:#010x})", started[0].t)
    others = [o.short for o in demo.members if o is not m] + ["demo"]

    def healed() -> list[Report] | None:
        found = [demo.first(mark, "nodeup", s, m.short) for s in others]
        ups = [r for r in found if r is not None]
        return ups if len(ups) == len(others) and demo.full_mesh() else None

    ups = await demo.wait_for(f"every node to see {m.short} up again", healed)
    own = demo.since(mark, "nodeup", m.short, m.run)
    for r in sorted(ups + own, key=lambda r: r.t):
        who = "demo (hidden)" if r.source == "demo" else r.source
        demo.say(f"  {who:<13} nodeup   {r.peer:<4} {(r.t - t) * 1000:7.1f} ms after "
                 "the restart", r.t)
    if m.creation == old:
        raise StepFailed(f"{m.short} came back with the same creation {old:#x}")
    done = max(r.t for r in ups)
    demo.say(f"healed: full mesh again, {done - started[0].t:.2f} s after {m.short} "
             f"was listening; {m.short} dialed its seed {m.seed.short if m.seed else '-'}, "
             "the mesh did the rest")
    # Nobody dials a hidden node, so the narrator's nodeup proves the reconnect loop that
    # every node runs for a peer lost abnormally (connection_closed, heartbeat_timeout).
    demo.say("the hidden narrator, which nobody dials, came back by its own reconnect loop")
    return f"{m.short} back with a new creation; nodeup everywhere in {done - t:.2f} s"


STEPS: list[Step] = [
    Step("mesh forms: 3 members, one seed each", step_mesh),
    Step("processes across nodes: spawn_on + send", step_spawn),
    Step("kill -9 n3: survivors see NodeDown", step_kill),
    Step("restart n3: NodeUp everywhere", step_restart),
]


# -- entry point ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nodes.demo", description=__doc__.split("\n")[0])
    p.add_argument("--member", metavar="NAME", help=argparse.SUPPRESS)
    p.add_argument("--seed", metavar="PEER", help=argparse.SUPPRESS)
    p.add_argument("--pub-port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--lifetime", type=float, default=120.0, help=argparse.SUPPRESS)
    p.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the demo (no arguments) or one member (``--member``, used by the demo)."""
    args = parse_args(argv)
    if args.member:
        return asyncio.run(member_main(args.member, args.seed, args.pub_port, args.lifetime,
                                       args.parent))
    demo = Demo()
    try:
        return asyncio.run(demo.run())
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
        return 130
    finally:
        demo.cleanup()


if __name__ == "__main__":
    sys.exit(main())
