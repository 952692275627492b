"""The narrator's cluster of ``python -m nodes.demo``: members as OS processes, their reports.

:class:`Demo` is what every step of the walkthrough (:mod:`nodes.demo_steps`) is handed.
It launches each member (``python -m nodes.demo --member NAME [--seed PEER]``, whose code
is :mod:`nodes.demo_member`) on ports chosen here, reads the JSON lines the member prints
(``started`` / ``nodeup`` / ``nodedown``, stamped with ``time.monotonic()``) on one thread
per launch, and keeps them as :class:`Report` objects on the event loop, where steps wait
for them (:meth:`Demo.wait_for`) or for messages to the narrator's own hidden node
(:meth:`Demo.receive`); every wait has a deadline and fails at once if a member that
should be alive has exited. It also narrates (timestamped lines, short names and pids),
kills members (``kill -9``) and, at the end, terminates them by pid (SIGTERM, then SIGKILL
after :data:`TERM_GRACE`) and removes its temporary directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

import fabric
from fabric.testing import child_pythonpath, free_ports
from nodes.demo_member import HOST, WAIT, quiet_fabric_log

MEMBERS = 3
BUDGET = 30.0  # the whole walkthrough, seconds
TERM_GRACE = 3.0  # after SIGTERM, how long members get to stop before SIGKILL
REPO = Path(__file__).resolve().parent.parent

T = TypeVar("T")


class StepFailed(Exception):
    """A step could not show what it set out to show; the message says what was missing."""


def short(name: str) -> str:
    """``n1@127.0.0.1:9100`` -> ``n1``: the narration uses short names."""
    return name.split("@", 1)[0]


def spid(pid: fabric.Pid) -> str:
    """``<n2@127.0.0.1:9101.7.1234>`` -> ``<n2.7>``: a pid as the narration shows it."""
    return f"<{short(pid.node)}.{pid.id}>"


def per_node(pids: list[fabric.Pid]) -> str:
    """``n1 x3, n2 x3``: how many of ``pids`` live on each node."""
    counts = Counter(short(p.node) for p in pids)
    return ", ".join(f"{n} x{c}" for n, c in sorted(counts.items())) or "none"


def tagged(*tags: str) -> Callable[[Any], bool]:
    """A receive pattern: a tuple whose first element is one of ``tags``."""
    return lambda msg: type(msg) is tuple and len(msg) > 0 and msg[0] in tags


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


class Demo:
    """The narrator: owns the members' processes, their reports and a hidden node."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.deadline = self.t0 + BUDGET
        self.cookie = secrets.token_urlsafe(24)
        self.tmp = Path(tempfile.mkdtemp(prefix="fabric-demo-"))
        ports = free_ports(2 * MEMBERS + 2, HOST)
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
        # The members import nodes.demo from this checkout and the same fabric as the
        # narrator (the installed one, if that is what the narrator runs), wherever the
        # narrator was started from; their working directory holds no fabric/ to shadow it.
        env["PYTHONPATH"] = child_pythonpath(REPO)
        with open(m.stderr_path, "w") as err:
            m.proc = subprocess.Popen(cmd, cwd=self.tmp, env=env, stdin=subprocess.DEVNULL,
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
            self.check_alive(what)
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise StepFailed(f"timed out after {timeout:.0f} s waiting for {what}")
            # Wake on the next report, or every 0.1 s to notice a member's exit.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.1))

    def check_alive(self, what: str) -> None:
        """Fail if a member in :attr:`expect_alive` has exited."""
        for m in self.members:
            if m.short in self.expect_alive and m.proc is not None \
                    and m.proc.poll() is not None:
                raise StepFailed(f"{m.short} exited (code {m.proc.returncode}) "
                                 f"while waiting for {what}")

    async def receive(self, mbox: fabric.Process, what: str, match: Callable[[Any], bool],
                      timeout: float = WAIT) -> Any:
        """Take the first message ``match`` accepts from the narrator's mailbox ``mbox``.

        Like :meth:`wait_for`: fails after ``timeout`` (or at the run's deadline), and at
        once if a member that should be alive exits, instead of waiting out the deadline.
        """
        end = min(time.monotonic() + timeout, self.deadline)
        while True:
            msg = await mbox.receive(match, timeout=min(0.1, max(0.0, end - time.monotonic())),
                                     default=None)
            if msg is not None:
                return msg
            self.check_alive(what)
            if time.monotonic() >= end:
                raise StepFailed(f"timed out after {timeout:.0f} s waiting for {what}")

    def node_up(self) -> fabric.Node:
        """The narrator's node (started by the first step)."""
        if self.node is None:
            raise StepFailed("the narrator's node is not running (did step 1 fail?)")
        return self.node

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

    def begin(self) -> None:
        """On the event loop, before the first step: let the reader threads post to it,
        and send the narrator node's fabric log to a file (shown only on failure)."""
        self.loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._log = open(self.tmp / "demo.stderr", "w")  # noqa: SIM115 (closed in cleanup)
        quiet_fabric_log(self._log)

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

