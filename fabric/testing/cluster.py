"""Run real nodes in tests: in this process (:class:`LocalCluster`) or as OS processes
(:class:`NodeProcess`, :class:`ProcessCluster`), plus deadline-bounded waiting.

Theory of operation
-------------------
Tests of a distributed system wait for things to happen elsewhere; a bare ``sleep`` is
either too short (flaky) or too long (slow). :func:`wait_until` and
:func:`async_wait_until` poll a condition until it holds or a deadline passes, and then
fail with a message saying what was awaited.

:class:`NodeProcess` starts ``python -m fabric.console --no-repl``, the program behind
``nodes.node`` (see that module for the output contract). A reader thread turns the
child's stdout into a list of events (dicts),
so a test can wait for ``nodeup``/``nodedown`` lines, and the child's ``--status-file``
shows its current membership. Every child is recorded in a registry until it has exited:
:func:`kill_leftovers` (called by a pytest finalizer, and at interpreter exit) kills the
ones still running, by pid. Children also get ``--stop-on-eof`` with a pipe on stdin, so
they stop on their own if the test runner dies without cleaning up.

:class:`LocalCluster` runs N :class:`fabric.Node` objects on this event loop, connected in
a full mesh: the fast way to test code that needs several nodes.

Ports come from :func:`free_port` (bind port 0 and release it). Another program could take
the port between the release and the node's bind; on loopback in a test run that is rare,
and :class:`LocalCluster` retries a bind that fails.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from fabric.errors import ConfigError
from fabric.node import Node
from fabric.types import parse_node_name

__all__ = [
    "child_pythonpath",
    "LocalCluster",
    "NodeProcess",
    "ProcessCluster",
    "async_wait_until",
    "free_port",
    "free_ports",
    "heal",
    "kill_leftovers",
    "partition",
    "process_memory",
    "wait_until",
]

T = TypeVar("T")
Event = dict[str, Any]

DEFAULT_COOKIE = "fabric-test-cookie"


def child_pythonpath(*extra: str | os.PathLike[str]) -> str:
    """A PYTHONPATH under which a child Python imports what this process imports.

    It is this process's ``sys.path`` in order (the working directory written out), then
    ``extra`` (for example a checkout whose ``nodes`` the child runs), then any PYTHONPATH
    already set. So a child of an *installed* fabric runs that fabric, a child of a
    checkout's runs the checkout's, and modules this process can import (a test's exported
    functions) can be spawned there too. Start such a child in a working directory that
    holds no other ``fabric/``: ``python -m`` puts the working directory first.
    """
    paths = [os.getcwd() if p == "" else p for p in sys.path]
    paths += [os.fspath(p) for p in extra]
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(paths))


# -- waiting ------------------------------------------------------------------------------


def _describe(condition: Callable[..., Any], message: str | Callable[[], str] | None) -> str:
    if callable(message):
        return message()
    if message is not None:
        return message
    return getattr(condition, "__qualname__", repr(condition))


def wait_until(
    condition: Callable[[], T],
    timeout: float,
    interval: float = 0.01,
    message: str | Callable[[], str] | None = None,
) -> T:
    """Poll ``condition()`` until it returns a truthy value, and return that value.

    Args:
        condition: a callable without arguments; exceptions it raises propagate.
        timeout: seconds before giving up.
        interval: seconds between two polls.
        message: what was awaited (or a callable producing it), for the failure message.

    Raises:
        AssertionError: the condition did not hold within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"not true within {timeout} s: {_describe(condition, message)} "
                f"(last value {value!r})")
        time.sleep(interval)


async def async_wait_until(
    condition: Callable[[], T | Awaitable[T]],
    timeout: float,
    interval: float = 0.01,
    message: str | Callable[[], str] | None = None,
) -> T:
    """Like :func:`wait_until`, on the event loop; ``condition`` may be async.

    Raises:
        AssertionError: the condition did not hold within ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(
                f"not true within {timeout} s: {_describe(condition, message)} "
                f"(last value {value!r})")
        await asyncio.sleep(interval)


# -- ports --------------------------------------------------------------------------------


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports that were free on ``host`` a moment ago."""
    socks: list[socket.socket] = []
    try:
        # Hold every socket until all are bound, so the kernel hands out distinct ports.
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def process_memory(pid: int, field: str = "VmRSS") -> int:
    """A process's resident (``VmRSS``) or peak resident (``VmHWM``) memory, bytes
    (Linux: read from ``/proc/<pid>/status``)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    return free_ports(1, host)[0]


# -- OS-process nodes ---------------------------------------------------------------------

# pid -> NodeProcess for every child that may still run; see kill_leftovers().
_live: dict[int, NodeProcess] = {}
_live_lock = threading.Lock()


def kill_leftovers() -> list[int]:
    """SIGKILL every node process started here that still runs; returns their pids.

    Meant for test finalizers: a failing test must not leave nodes behind that hold
    ports and heartbeat into the next test.
    """
    with _live_lock:
        procs = list(_live.values())
    killed = []
    for proc in procs:
        if proc.returncode is None:
            killed.append(proc.pid)
        proc.kill()
        proc.close()
    return killed


atexit.register(kill_leftovers)


class NodeProcess:
    """A ``python -m fabric.console --no-repl`` (the program behind ``nodes.node``) child process.

    Args:
        name: ``name@host:port``; ``name`` alone (or without a port) gets ``127.0.0.1``
            and a free port.
        cookie: passed through ``FABRIC_COOKIE`` (never on the command line, where any
            local user could read it); None leaves the child to its own default.
        connect: seeds (full node names).
        hidden: start a hidden node.
        heartbeat_interval: the node's ``heartbeat_interval`` (None: its default).
        heartbeat_timeout: the node's ``heartbeat_timeout`` (None: its default).
        max_frame: the node's ``max_frame`` (None: its default).
        spawn_echo: register the ``"echo"`` process (see :mod:`fabric.console`).
        repl: run the REPL instead of ``--no-repl``; :meth:`send_line` types into it.
        extra_args: more command-line arguments.
        env: extra environment variables.

    Use as a context manager (leaving it kills the child: call :meth:`stop` first for
    a graceful stop), or call :meth:`start`, then :meth:`stop` or :meth:`kill`, then
    :meth:`close`.
    """

    def __init__(
        self,
        name: str = "n",
        *,
        cookie: str | None = DEFAULT_COOKIE,
        connect: Iterable[str] = (),
        hidden: bool = False,
        heartbeat_interval: float | None = None,
        heartbeat_timeout: float | None = None,
        max_frame: int | None = None,
        spawn_echo: bool = False,
        repl: bool = False,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        if "@" not in name:
            name = f"{name}@127.0.0.1"
        if ":" not in name.partition("@")[2]:
            name = f"{name}:{free_port()}"
        self.name = name  # replaced by the name the node reports when ready
        self.cookie = cookie
        self.connect = list(connect)
        self.repl = repl
        self._dir = Path(tempfile.mkdtemp(prefix="fabric-node-"))
        self.status_file = self._dir / "status.json"
        self.stderr_file = self._dir / "stderr.log"
        args = ["--name", name, "--status-file", str(self.status_file)]
        if not repl:
            args += ["--no-repl", "--stop-on-eof"]
        if self.connect:
            args += ["--connect", *self.connect]
        if hidden:
            args.append("--hidden")
        if heartbeat_interval is not None:
            args += ["--heartbeat-interval", str(heartbeat_interval)]
        if heartbeat_timeout is not None:
            args += ["--heartbeat-timeout", str(heartbeat_timeout)]
        if max_frame is not None:
            args += ["--max-frame", str(max_frame)]
        if spawn_echo:
            args.append("--spawn-echo")
        self.args = args + list(extra_args)
        self.extra_env = dict(env or {})
        self._popen: subprocess.Popen[str] | None = None
        self._events: list[Event] = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader: threading.Thread | None = None
        self._frozen = False
        self._stderr: Any = None

    # -- life cycle -----------------------------------------------------------------------

    def __enter__(self) -> NodeProcess:
        if self._popen is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self.close()

    def command(self) -> list[str]:
        """The child's command line."""
        return [sys.executable, "-m", "fabric.console", *self.args]

    def environment(self) -> dict[str, str]:
        """The child's environment: ours, our import path (:func:`child_pythonpath`), the
        cookie."""
        env = dict(os.environ)
        env["PYTHONPATH"] = child_pythonpath()
        env["PYTHONUNBUFFERED"] = "1"
        if self.cookie is not None:
            env["FABRIC_COOKIE"] = self.cookie
        env.update(self.extra_env)
        return env

    def start(self) -> NodeProcess:
        """Start the child (returns at once; see :meth:`wait_ready`)."""
        if self._popen is not None:
            raise RuntimeError(f"{self.name} was already started")
        self._stderr = open(self.stderr_file, "w")  # noqa: SIM115 (closed in close())
        self._popen = subprocess.Popen(
            self.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr, env=self.environment(), text=True, bufsize=1,
            # Its own session: a Ctrl-C meant for the test runner must not reach the
            # nodes, which would then report spurious shutdowns mid-test.
            start_new_session=True)
        with _live_lock:
            _live[self._popen.pid] = self
        self._reader = threading.Thread(target=self._read_stdout, daemon=True,
                                        name=f"stdout-{self.name}")
        self._reader.start()
        return self

    def _read_stdout(self) -> None:
        assert self._popen is not None and self._popen.stdout is not None
        for raw in self._popen.stdout:
            line = raw.rstrip("\n")
            # A REPL's prompts have no newline: they prefix the next line printed.
            while line.startswith((">>> ", "... ")):
                line = line[4:]
            event: Event
            if line.startswith("READY "):
                event = {"event": "ready", "node": line[6:].strip()}
            else:
                try:
                    event = json.loads(line)
                    if not isinstance(event, dict):
                        raise ValueError
                except ValueError:
                    event = {"event": "stdout", "line": line}
            event["received"] = time.monotonic()
            with self._cond:
                self._events.append(event)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise RuntimeError(f"{self.name} was not started")
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once the child has exited (negative: killed by that signal)."""
        return None if self._popen is None else self._popen.poll()

    def wait_ready(self, timeout: float = 10.0) -> str:
        """Wait for ``READY``; returns (and stores in :attr:`name`) the full node name.

        Raises:
            AssertionError: not ready in time, or the child exited first.
        """
        event = self.wait_event(lambda e: e["event"] == "ready", timeout, "READY")
        self.name = event["node"]
        return self.name

    def wait_exit(self, timeout: float = 10.0) -> int:
        """Wait for the child to exit; returns its exit code.

        Raises:
            AssertionError: it still runs after ``timeout`` seconds.
        """
        assert self._popen is not None
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still runs after {timeout} s") from None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (a graceful stop), wait, SIGKILL if it takes longer than ``timeout``."""
        if self._popen is None:
            return None
        if self._popen.poll() is None:
            self.thaw()  # a stopped process keeps a SIGTERM pending until continued
            self._signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._join()
        return self._popen.returncode

    def kill(self) -> None:
        """SIGKILL (like ``kill -9``: no goodbye) and reap."""
        if self._popen is None:
            return
        if self._popen.poll() is None:
            self._signal(signal.SIGKILL)
            self._popen.wait()
        self._join()

    def freeze(self) -> None:
        """SIGSTOP: the process keeps its sockets but stops running (a hung node)."""
        self._signal(signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        if self._frozen:
            self._signal(signal.SIGCONT)
            self._frozen = False

    def _signal(self, sig: int) -> None:
        assert self._popen is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._popen.pid, sig)

    def _join(self) -> None:
        assert self._popen is not None
        if self._popen.stdin is not None and not self._popen.stdin.closed:
            with contextlib.suppress(OSError):
                self._popen.stdin.close()
        if self._reader is not None:
            self._reader.join(timeout=5)
        with _live_lock:
            _live.pop(self._popen.pid, None)

    def close(self) -> None:
        """Release the child's files (kill it first if it still runs)."""
        if self._popen is not None and self._popen.poll() is None:
            self.kill()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        shutil.rmtree(self._dir, ignore_errors=True)

    # -- observing ------------------------------------------------------------------------

    @property
    def events(self) -> list[Event]:
        """Every event read so far (a copy), oldest first."""
        with self._cond:
            return list(self._events)

    def wait_event(self, pred: Callable[[Event], bool], timeout: float = 10.0,
                   what: str | None = None, since: int = 0) -> Event:
        """The first event from index ``since`` on that satisfies ``pred``.

        Raises:
            AssertionError: none within ``timeout`` seconds, or the child's output ended.
        """
        deadline = time.monotonic() + timeout
        i = since
        with self._cond:
            while True:
                while i < len(self._events):
                    if pred(self._events[i]):
                        return self._events[i]
                    i += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    break
                self._cond.wait(remaining)
        why = "its output ended" if self._eof else f"not within {timeout} s"
        raise AssertionError(
            f"{self.name}: no event {what or getattr(pred, '__qualname__', pred)}: {why}; "
            f"exit code {self.returncode}\n{self.describe()}")

    def wait_nodedown(self, peer: str, timeout: float = 10.0, since: int = 0) -> Event:
        """Wait for ``{"event": "nodedown", "node": peer}``; returns it (with its reason)."""
        return self.wait_event(lambda e: e["event"] == "nodedown" and e["node"] == peer,
                               timeout, f"nodedown {peer}", since)

    def status(self) -> dict[str, Any] | None:
        """The node's status file (None before it exists)."""
        try:
            data: dict[str, Any] = json.loads(self.status_file.read_text())
        except FileNotFoundError:
            return None
        return data

    def nodes(self) -> list[str]:
        """The node's ``nodes()`` as of its status file."""
        status = self.status()
        return [] if status is None else list(status["nodes"])

    def wait_nodes(self, expected: Iterable[str], timeout: float = 10.0) -> None:
        """Wait until the node's ``nodes()`` is exactly ``expected``.

        Raises:
            AssertionError: it was not, within ``timeout`` seconds.
        """
        want = sorted(expected)
        wait_until(lambda: self.nodes() == want, timeout,
                   message=lambda: f"{self.name}: nodes() == {want}, is {self.nodes()}\n"
                                   f"{self.describe()}")

    def stderr_text(self) -> str:
        """What the child wrote to stderr (its logs) so far."""
        try:
            return self.stderr_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def describe(self, lines: int = 20) -> str:
        """The last lines of the child's stderr, for failure messages."""
        tail = self.stderr_text().splitlines()[-lines:]
        return f"--- last stderr lines of {self.name} ---\n" + "\n".join(tail)

    def send_line(self, text: str) -> None:
        """Type a line into the child's stdin (its REPL, with ``repl=True``)."""
        assert self._popen is not None and self._popen.stdin is not None
        self._popen.stdin.write(text + "\n")
        self._popen.stdin.flush()

    def __repr__(self) -> str:
        pid = self._popen.pid if self._popen is not None else None
        return f"<NodeProcess {self.name} pid={pid} rc={self.returncode}>"


class ProcessCluster:
    """N :class:`NodeProcess` nodes in a chain (each seeded with the previous one), started
    together; entering waits until they form a full mesh.

    Args:
        n: how many nodes.
        prefix: node names are ``{prefix}1``, ``{prefix}2``...
        timeout: seconds to wait for readiness and for the full mesh.
        options: passed to every :class:`NodeProcess`.
    """

    def __init__(self, n: int, *, prefix: str = "n", timeout: float = 20.0,
                 **options: Any) -> None:
        ports = free_ports(n)
        names = [f"{prefix}{i + 1}@127.0.0.1:{port}" for i, port in enumerate(ports)]
        self.timeout = timeout
        self.procs = [NodeProcess(name, connect=names[i - 1:i], **options)
                      for i, name in enumerate(names)]

    def __enter__(self) -> list[NodeProcess]:
        try:
            for proc in self.procs:
                proc.start()
            for proc in self.procs:
                proc.wait_ready(self.timeout)
            names = [p.name for p in self.procs]
            for proc in self.procs:
                proc.wait_nodes([n for n in names if n != proc.name], self.timeout)
        except BaseException:
            self.__exit__()
            raise
        return self.procs

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.kill()
            proc.close()


# -- in-process nodes ---------------------------------------------------------------------


class LocalCluster:
    """N :class:`fabric.Node` objects on this event loop, on free 127.0.0.1 ports,
    connected in a full mesh::

        async with LocalCluster(3, cookie="c") as nodes:
            assert await nodes[0].ping(nodes[2].name) == "pong"

    Args:
        n: how many nodes.
        cookie: their shared cookie.
        prefix: node names are ``{prefix}1``, ``{prefix}2``...
        connect: False leaves the nodes unconnected.
        timeout: seconds to wait for the full mesh.
        options: :class:`fabric.NodeConfig` fields for every node.
    """

    def __init__(self, n: int, cookie: str = DEFAULT_COOKIE, *, prefix: str = "n",
                 connect: bool = True, timeout: float = 10.0, **options: Any) -> None:
        if n < 1:
            raise ValueError("a cluster needs at least one node")
        self.n = n
        self.cookie = cookie
        self.prefix = prefix
        self.connect = connect
        self.timeout = timeout
        self.options = options
        self.nodes: list[Node] = []

    async def __aenter__(self) -> list[Node]:
        try:
            for i in range(self.n):
                self.nodes.append(await self._start(f"{self.prefix}{i + 1}"))
            if self.connect and self.n > 1:
                seed = self.nodes[0].name
                # One seed each is enough: the mesh closes transitively.
                oks = await asyncio.gather(*(n.connect(seed) for n in self.nodes[1:]))
                if not all(oks):
                    raise AssertionError(f"could not connect to the seed {seed}: {oks}")
                await async_wait_until(self.full_mesh, self.timeout,
                                       message="a full mesh")
        except BaseException:
            await self.__aexit__()
            raise
        return self.nodes

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(n.stop() for n in self.nodes), return_exceptions=True)

    async def _start(self, short: str) -> Node:
        last: ConfigError | None = None
        for _ in range(3):  # a free port can be taken before we bind it: try another
            node = Node(f"{short}@127.0.0.1:{free_port()}", self.cookie, **self.options)
            try:
                await node.start()
                return node
            except ConfigError as exc:
                if "cannot bind" not in str(exc):
                    raise
                last = exc
        assert last is not None
        raise last

    def full_mesh(self) -> bool:
        """True when every node sees every other one."""
        names = {n.name for n in self.nodes}
        return all(set(n.nodes()) == names - {n.name} for n in self.nodes)


# -- partitions of in-process nodes ------------------------------------------------------

# node -> the peers it may not connect to while a partition() holds (see _refuse_across).
_cut_off: weakref.WeakKeyDictionary[Node, set[str]] = weakref.WeakKeyDictionary()


def _across(groups: Sequence[Sequence[Node]]) -> list[tuple[Node, Node]]:
    return [(a, b) for i, left in enumerate(groups) for right in groups[i + 1:]
            for a in left for b in right]


def _refuse_across(node: Node) -> None:
    """Make ``node.connect`` fail for the peers in ``_cut_off[node]``.

    A call, rpc, ping or spawn to a node that is not connected connects first (as in
    Erlang), so cutting sessions alone would not hold: this instance attribute shadows the
    method until :func:`heal` removes it. Sessions the mesh opens by itself come only from
    peers' lists on a new session, and no session crosses the cut.
    """
    connect = type(node).connect

    async def guarded(peer: str, timeout: float | None = None) -> bool:
        if str(parse_node_name(peer)) in _cut_off.get(node, ()):
            return False
        return await connect(node, peer, timeout)

    setattr(node, "connect", guarded)  # noqa: B010 (mypy forbids assigning a method)


async def partition(*groups: Sequence[Node], timeout: float = 10.0) -> None:
    """Cut the network between ``groups`` of in-process nodes until :func:`heal`.

    Every session between nodes of different groups ends (:meth:`Node.disconnect` on
    both sides: they see ``NodeDown`` with reason ``disconnect`` at once), and a connect
    across the cut fails (``connect`` returns False, a call raises ``NodeDownError``), so
    nothing reconnects behind the test's back. Returns once no node sees one of another
    group. To test detection by heartbeats (a frozen peer, a silent network), use
    :class:`NodeProcess` ``freeze``, the simulators or the lab.

    Raises:
        AssertionError: a cross-group session still showed after ``timeout`` seconds.
    """
    pairs = _across(groups)
    for a, b in pairs:
        for node, peer in ((a, b), (b, a)):
            if node not in _cut_off:
                _cut_off[node] = set()
                _refuse_across(node)
            _cut_off[node].add(peer.name)
    for a, b in pairs:
        a.disconnect(b.name)
        b.disconnect(a.name)
    await async_wait_until(
        lambda: not any(b.name in a.nodes() or a.name in b.nodes() for a, b in pairs),
        timeout, message="the partition to hold")


async def heal(*groups: Sequence[Node], timeout: float = 10.0) -> None:
    """End a :func:`partition` between ``groups``: connect their nodes again and wait
    until every node of every group sees every other one.

    Raises:
        AssertionError: the mesh was not complete after ``timeout`` seconds.
    """
    pairs = _across(groups)
    for a, b in pairs:
        for node, peer in ((a, b), (b, a)):
            blocked = _cut_off.get(node)
            if blocked is not None:
                blocked.discard(peer.name)
                if not blocked:
                    del _cut_off[node]
                    delattr(node, "connect")  # the class's method again
    await asyncio.gather(*(a.connect(b.name) for a, b in pairs))
    everyone = [n for group in groups for n in group]
    names = {n.name for n in everyone}
    await async_wait_until(
        lambda: all(names - {n.name} <= set(n.nodes()) for n in everyone),
        timeout, message="the healed mesh")
