"""A fabric node as a program: ``python -m nodes.node`` or ``fabric node`` (same options).

Like ``iex --sname n1 --cookie secret``: it starts a node and, by default, an asyncio REPL
with ``node`` and ``fabric`` bound, where top-level ``await`` works::

    $ python -m nodes.node --name n1@127.0.0.1:9100 --cookie secret
    >>> await node.connect("n2@127.0.0.1:9101")
    True
    >>> node.nodes()
    ['n2@127.0.0.1:9101']

With ``--no-repl`` it runs headless until SIGTERM or SIGINT, then stops gracefully and
exits 0: the node drains first (new calls from other nodes are refused with
``NodeDrainingError``, its global names and pg memberships go, calls in flight are
answered, then the hooks a program registered with ``node.on_drain(async_fn)`` run, all
within ``stop_grace`` seconds, ``FABRIC_STOP_GRACE``), then peers see
``NodeDown(reason="shutdown")``. A program's pre-stop work (hand a singleton over, flush
a buffer) goes in such a hook, registered by its ``--run`` start function.

Code can run at start, so a node program needs no script of its own: ``--eval CODE`` runs
Python (top-level ``await`` works, ``node`` is bound, names it defines stay visible in the
REPL) and ``--run module:function`` calls ``function(node)`` (awaited if it is a
coroutine function; the current directory is importable, as with ``python -m``). They run
in the order given, after the node has started and before ``READY``; one that raises
prints its traceback and stops the node with exit code 1::

    $ fabric node --name kv@127.0.0.1:9100 --no-repl --run myapp.kv:start

``--app module:function`` starts the program's supervision tree after them
(:mod:`fabric.application`: ``function(node)`` returns the child specs; the root is
registered as ``"app"``); on SIGTERM it is stopped before the node, after its distributed
supervisor members handed their children over::

    $ fabric node --name kv@127.0.0.1:9100 --no-repl --app myapp.tree:children

Theory of operation
-------------------
The node's event loop owns the main thread for the whole run: heartbeats must keep flowing
while a human thinks. The REPL reads lines in a second thread, but every statement it
compiles is *executed on the loop thread* (as ``python -m asyncio`` does), because the node
is not thread-safe; statements that ``await`` become tasks. A synchronous statement that
blocks (``time.sleep(10)``) therefore blocks the node too, exactly as in any asyncio
program. Ctrl-C cancels the running statement instead of killing the node (the signal is
taken by the loop, never raised inside node internals); Ctrl-D or ``exit()`` stops the node
gracefully.

Output contract (for programs and tests driving a node; every line is flushed):

* stdout: ``READY <full node name>`` once the sockets are bound, then one JSON object per
  line: ``{"event": "nodeup", "node": ...}``, ``{"event": "nodedown", "node": ...,
  "reason": ...}``, ``{"event": "connect", "node": ..., "ok": ..., "reason": ...}`` (the
  outcome of each ``--connect`` seed), ``{"event": "stopping"}`` and ``{"event":
  "stopped"}``. Each carries ``"t"``: ``time.monotonic()`` of the node's process, which on
  Linux is one clock for every process of the machine.
* ``--status-file PATH``: ``{"name", "pid", "nodes", "hidden_nodes", "running"}`` as JSON,
  rewritten atomically (write + rename) whenever membership changes.
* stderr: logs (:func:`fabric.logs.configure_logging`; ``--log-format json`` for
  production). At a terminal, a log line or event printed while the REPL waits for input
  is written above the prompt, and the prompt and the typed text are redrawn below it.

The cookie comes from ``--cookie``, else ``FABRIC_COOKIE``, else ``~/.fabric.cookie``.
Other ``NodeConfig`` fields can be set with ``FABRIC_<FIELD>`` environment variables.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import code
import concurrent.futures
import contextlib
import importlib
import inspect
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fabric
from fabric import loop as fabric_loop
from fabric.application import start_application
from fabric.discovery.config import parse_specs
from fabric.errors import ConfigError, FabricError
from fabric.logs import TextSink, configure_logging
from fabric.node import Node, NodeDown, NodeMonitor, NodeUp
from fabric.process import Process
from fabric.types import NodeName, Pid, parse_node_name

__all__ = ["main", "parse_args"]

# Seed connects that fail for these reasons will not succeed by retrying.
# Seeds refused for a reason that another try cannot change (the data plane's key and
# security refusals too: D18) are not retried.
_PERMANENT_REFUSALS = frozenset({"bad_cookie", "name_in_use", "version", "bad_name",
                                 "wrong_node", "stopping", "key_refused",
                                 "security_mismatch"})
_STATUS_POLL = 0.1  # hidden peers raise no events: membership is also polled this often
_LOG_LEVELS = ("debug", "info", "warning", "error")


# -- command line -------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (``argv`` defaults to ``sys.argv[1:]``)."""
    p = argparse.ArgumentParser(
        prog="python -m nodes.node",
        description="Start a fabric node: an asyncio REPL with `node` bound, or headless "
                    "with --no-repl.")
    p.add_argument("--name", required=True,
                   help="name@host:port (or name@host to pick a port from the range)")
    p.add_argument("--cookie", help="shared secret (default: $FABRIC_COOKIE, then "
                                    "~/.fabric.cookie)")
    p.add_argument("--connect", action="extend", nargs="+", default=[], metavar="PEER",
                   help="full names of nodes to connect to at start (seeds)")
    p.add_argument("--discovery", action="append", default=[], metavar="SPEC",
                   help="find peers by themselves: gossip, dns:name=...,basename=...,"
                        "port=..., static:nodes=A+B, hosts:path=FILE (several: repeat or "
                        "join with ';'; default $FABRIC_DISCOVERY; see docs/DISCOVERY.md)")
    p.add_argument("--seed-timeout", type=float, default=10.0, metavar="S",
                   help="keep retrying an unreachable seed this long (default 10)")
    p.add_argument("--hidden", action="store_true",
                   help="connect only where told; not listed in peers' nodes()")
    p.add_argument("--no-repl", action="store_true",
                   help="run headless until SIGTERM/SIGINT, then stop gracefully")
    p.add_argument("--heartbeat-interval", type=float, metavar="S")
    p.add_argument("--heartbeat-timeout", type=float, metavar="S",
                   help="silence after which a peer is declared down")
    p.add_argument("--max-frame", type=int, metavar="BYTES",
                   help="largest frame accepted from the network")
    p.add_argument("--metrics-address", metavar="HOST:PORT",
                   help="serve Prometheus metrics over HTTP there (needs the 'metrics' "
                        "extra; default: $FABRIC_METRICS_ADDRESS, else off)")
    p.add_argument("--status-file", type=Path, metavar="PATH",
                   help="keep a JSON file with this node's membership up to date")
    p.add_argument("--spawn-echo", action="store_true",
                   help='register a process "echo" answering (payload, pid) with '
                        '("echo", payload)')
    p.add_argument("--stop-on-eof", action="store_true",
                   help="with --no-repl: stop when stdin closes (so a node never outlives "
                        "the program that started it)")
    p.add_argument("--log-level", choices=sorted(_LOG_LEVELS),
                   help="stderr log level (default: info, or warning with the REPL)")
    p.add_argument("--log-format", choices=["console", "json"], default="console")
    p.add_argument("--eval", dest="start", action="append", default=[], metavar="CODE",
                   type=lambda code: ("eval", code),
                   help="run Python at start (node bound, top-level await works)")
    p.add_argument("--run", dest="start", action="append", metavar="MODULE:FUNCTION",
                   type=lambda spec: ("run", spec),
                   help="call (and await) FUNCTION(node) at start")
    p.add_argument("--app", metavar="MODULE:FUNCTION",
                   help="start the application: a supervision tree over the child specs "
                        "FUNCTION(node) returns, after --eval/--run; stopped first on exit "
                        "(fabric.application)")
    args = p.parse_args(argv)
    try:
        parse_node_name(args.name)
        for peer in args.connect:
            if parse_node_name(peer).port is None:
                raise ConfigError(f"--connect {peer!r}: a peer's name needs its port")
        for kind, text in args.start:
            if kind == "run" and not re.fullmatch(r"[\w.]+:\w+", text):
                raise ConfigError(f"--run {text!r}: expected module:function")
        if args.app is not None and not re.fullmatch(r"[\w.]+:\w+", args.app):
            raise ConfigError(f"--app {args.app!r}: expected module:function")
        parse_specs(";".join(args.discovery))
    except ConfigError as exc:
        p.error(str(exc))
    return args


def node_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``Node`` keyword options given on the command line (others: env or defaults)."""
    opts: dict[str, Any] = {}
    if args.hidden:
        opts["hidden"] = True
    if args.heartbeat_interval is not None:
        opts["heartbeat_interval"] = args.heartbeat_interval
    if args.heartbeat_timeout is not None:
        opts["heartbeat_timeout"] = args.heartbeat_timeout
    if args.max_frame is not None:
        opts["max_frame"] = args.max_frame
    if args.discovery:
        opts["discovery"] = ";".join(args.discovery)
    if args.metrics_address is not None:
        opts["metrics_address"] = args.metrics_address
    return opts


# -- output -------------------------------------------------------------------------------


class Output:
    """Writes the stdout contract: whole lines, flushed at once, never raising.

    A reader that went away (closed pipe) must not crash the node: writes stop quietly.
    """

    def __init__(self, stream: TextSink) -> None:
        self._stream = stream
        self._broken = False

    def line(self, text: str) -> None:
        if self._broken:
            return
        try:
            self._stream.write(text + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            self._broken = True
            # Python flushes stdout again at exit; point it somewhere that cannot fail.
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115

    def event(self, event: str, **fields: Any) -> None:
        record = {"event": event, **fields, "t": round(time.monotonic(), 6)}
        self.line(json.dumps(record, default=str))


class StatusFile:
    """A JSON snapshot of the node's membership, replaced atomically when it changes."""

    def __init__(self, path: Path, node: Node) -> None:
        self.path = path
        self.node = node
        self._last: tuple[Any, ...] | None = None

    def update(self, running: bool = True) -> None:
        nodes = self.node.nodes() if running else []
        hidden = self.node.hidden_nodes() if running else []
        state = (tuple(nodes), tuple(hidden), running)
        if state == self._last:
            return
        self._last = state
        data = {"name": self.node.name, "pid": os.getpid(), "nodes": nodes,
                "hidden_nodes": hidden, "running": running}
        # Readers poll this file: they must see the old or the new content, never half.
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)


# -- the echo process ---------------------------------------------------------------------


async def echo(proc: Process) -> None:
    """Answer ``(payload, reply_to_pid)`` with ``("echo", payload)``; ignore the rest."""
    while True:
        msg = await proc.receive()
        if type(msg) is tuple and len(msg) == 2 and type(msg[1]) is Pid:
            try:
                proc.send(msg[1], ("echo", msg[0]))
            except FabricError as exc:  # e.g. backpressure: an echo is best effort
                proc.node.log.warning("echo_failed", error=str(exc))


class AbovePrompt:
    """A text stream for a terminal shared with the REPL: a line written while the REPL
    waits for input goes above the prompt, and the prompt and the typed text are redrawn
    under it (instead of the line landing in the middle of what the user types).

    Each write must be whole lines (``Output.line`` and logging handlers write a line per
    call); writes come from the loop thread while the REPL thread sits in ``input()``.
    """

    ERASE_LINE = "\r\x1b[2K"  # carriage return, then erase the whole line

    def __init__(self, stream: TextSink) -> None:
        self._stream = stream
        self.console: NodeConsole | None = None  # set once the REPL exists
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            prompt = None if self.console is None else self.console.waiting_prompt
            if prompt is None:
                return self._stream.write(text)
            self._stream.write(self.ERASE_LINE + text + prompt + _typed_text())
            return len(text)

    def flush(self) -> None:
        self._stream.flush()


def _typed_text() -> str:
    """What the user has typed on the current line so far (readline's buffer), if known."""
    try:
        import readline
    except ImportError:
        return ""
    return readline.get_line_buffer()


# -- the REPL -----------------------------------------------------------------------------


class NodeConsole(code.InteractiveConsole):
    """An interactive console whose statements run on the node's event loop.

    Lines are read in the calling (REPL) thread; each compiled statement is handed to the
    loop thread, where a top-level ``await`` turns it into a task. :meth:`interrupt`
    (called on the loop by the SIGINT handler) cancels that task.
    """

    def __init__(self, namespace: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(namespace, filename="<fabric>")
        self.compile.compiler.flags |= ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        self.loop = loop
        self._task: asyncio.Task[Any] | None = None  # the running statement (loop thread)
        self._interrupted = False
        self.waiting_prompt: str | None = None  # the prompt shown while input() waits

    def raw_input(self, prompt: str = "") -> str:
        self.waiting_prompt = prompt
        try:
            return super().raw_input(prompt)
        finally:
            self.waiting_prompt = None

    def runcode(self, code: types.CodeType) -> None:
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def start() -> None:  # on the loop thread
            self._interrupted = False
            func = types.FunctionType(code, self.locals)
            try:
                result = func()
            except BaseException as exc:  # SystemExit too: the REPL thread ends the session
                done.set_exception(exc)
                return
            if not inspect.iscoroutine(result):
                done.set_result(result)
                return
            task = self.loop.create_task(result)
            self._task = task
            task.add_done_callback(lambda t: self._finished(t, done))

        self.loop.call_soon_threadsafe(start)
        try:
            done.result()
        except SystemExit:
            raise
        except BaseException:
            if self._interrupted:
                self.write("KeyboardInterrupt\n")
            else:
                self.showtraceback()

    def _finished(self, task: asyncio.Task[Any], done: concurrent.futures.Future[Any]) -> None:
        self._task = None
        if task.cancelled():
            done.set_exception(KeyboardInterrupt())
        elif task.exception() is not None:
            done.set_exception(task.exception())
        else:
            done.set_result(task.result())

    def interrupt(self) -> bool:
        """Cancel the running statement; False when none runs (the user is typing)."""
        if self._task is None or self._task.done():
            return False
        self._interrupted = True
        self._task.cancel()
        return True


def _namespace(node: Node) -> dict[str, Any]:
    """The globals of ``--eval`` code and of the REPL (one dict: names defined at start
    stay visible at the prompt)."""
    return {"node": node, "fabric": fabric, "asyncio": asyncio,
            "__name__": "__console__", "__builtins__": __builtins__}


async def run_start_code(steps: list[tuple[str, str]], namespace: dict[str, Any]) -> None:
    """Run the ``--eval`` and ``--run`` steps in order (see the module docstring).

    Raises:
        Exception: whatever a step raised (the caller stops the node).
    """
    node = namespace["node"]
    for kind, text in steps:
        if kind == "eval":
            compiled = compile(text, "<--eval>", "exec",
                               flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            result = types.FunctionType(compiled, namespace)()
        else:
            module_name, _, function_name = text.partition(":")
            if "" not in sys.path and os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())  # as ``python -m`` would
            function = getattr(importlib.import_module(module_name), function_name)
            result = function(node)
        if inspect.isawaitable(result):
            await result


def _start_repl(node: Node, namespace: dict[str, Any], loop: asyncio.AbstractEventLoop,
                stop: asyncio.Event, exit_code: list[int]) -> NodeConsole:
    console = NodeConsole(namespace, loop)
    if sys.stdin.isatty():
        try:
            import readline
            import rlcompleter

            readline.set_completer(rlcompleter.Completer(namespace).complete)
            readline.parse_and_bind("tab: complete")
        except ImportError:  # not every platform has readline; the REPL works without
            pass
    banner = (f"fabric node {node.name}\n"
              "`node` and `fabric` are bound; top-level await works, e.g. "
              f"await node.ping({_another_node(node)!r}).\n"
              "Ctrl-C cancels a statement; Ctrl-D or exit() stops the node.")

    def run() -> None:
        try:
            console.interact(banner=banner, exitmsg="stopping the node")
        except SystemExit as exc:
            exit_code[0] = exc.code if isinstance(exc.code, int) else 0
        finally:
            loop.call_soon_threadsafe(stop.set)

    # A daemon: a SIGTERM while the user types must not wait for the next line.
    threading.Thread(target=run, name="fabric-repl", daemon=True).start()
    return console


def _another_node(node: Node) -> str:
    """A name for the banner's example that is not this node: a peer's if there is one."""
    peers = node.nodes()
    if peers:
        return peers[0]
    me = parse_node_name(node.name)
    return str(NodeName("other", me.host, (me.port or 9100) + 1))


# -- main ---------------------------------------------------------------------------------


async def _connect_seed(node: Node, peer: str, timeout: float, out: Output,
                        stop: asyncio.Event) -> None:
    """Connect to a seed, retrying with backoff for ``timeout`` seconds.

    Nodes of a cluster are often started together, so a seed may not listen yet.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    backoff = 0.05
    attempts = 0
    while True:
        attempts += 1
        ok = await node.connect(peer)
        reason = "ok" if ok else (node.last_connect_error(peer) or "unknown")
        if ok or reason in _PERMANENT_REFUSALS or stop.is_set():
            break
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        backoff = min(backoff * 2, 1.0)
        try:
            await asyncio.wait_for(stop.wait(), min(backoff, remaining))
        except asyncio.TimeoutError:
            pass
    out.event("connect", node=peer, ok=ok, reason=reason, attempts=attempts)


async def _pump_events(events: NodeMonitor, out: Output, status: StatusFile | None) -> None:
    async for ev in events:
        if isinstance(ev, NodeUp):
            out.event("nodeup", node=ev.node)
        elif isinstance(ev, NodeDown):
            out.event("nodedown", node=ev.node, reason=ev.reason)
        if status is not None:
            status.update()


async def _poll_status(status: StatusFile) -> None:
    while True:
        status.update()
        await asyncio.sleep(_STATUS_POLL)


def _watch_stdin_eof(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    def run() -> None:
        # os.read on the descriptor, not sys.stdin: a thread blocked inside the buffered
        # reader holds its lock, and interpreter shutdown aborts on that lock.
        try:
            while os.read(0, 65536):
                pass
        except OSError:
            pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=run, name="fabric-stdin-eof", daemon=True).start()


async def run(args: argparse.Namespace, out: Output,
              terminals: Sequence[AbovePrompt] = ()) -> int:
    """Run the node until asked to stop; returns the process exit code.

    Raises:
        ConfigError: invalid cookie or options, or the name's port cannot be bound.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    exit_code = [0]
    node = Node(args.name, args.cookie, **node_options(args))
    # Subscribe before starting: a peer that was already dialling can complete its
    # handshake in the very first read, before any task created after start() runs.
    events = node.monitor_nodes()
    await node.start()
    status = StatusFile(args.status_file, node) if args.status_file else None
    monitor_task = loop.create_task(_pump_events(events, out, status))
    background: list[asyncio.Task[Any]] = []
    if status is not None:
        status.update()
        background.append(loop.create_task(_poll_status(status)))
    if args.spawn_echo:
        node.spawn(echo, name="echo")
    namespace = _namespace(node)
    try:
        await run_start_code(args.start, namespace)
        if args.app is not None:
            namespace["app"] = await start_application(node, args.app)
    except Exception:
        traceback.print_exc()
        return await _shut_down(node, out, [monitor_task, *background], status, 1)
    out.line(f"READY {node.name}")

    console: NodeConsole | None = None
    signals_seen = [0]

    def on_signal(signum: int) -> None:
        if signum == signal.SIGINT and console is not None:
            if not console.interrupt():
                sys.stderr.write("\nKeyboardInterrupt (Ctrl-D or exit() stops the node)\n")
            return
        signals_seen[0] += 1
        if signals_seen[0] > 1:
            os._exit(1)  # a second signal while stopping: the user insists
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    seeds = [loop.create_task(_connect_seed(node, peer, args.seed_timeout, out, stop))
             for peer in args.connect]
    if args.no_repl:
        if args.stop_on_eof:
            _watch_stdin_eof(loop, stop)
    else:
        console = _start_repl(node, namespace, loop, stop, exit_code)
        for terminal in terminals:
            terminal.console = console

    await stop.wait()
    return await _shut_down(node, out, [monitor_task, *seeds, *background], status,
                            exit_code[0])


async def _shut_down(node: Node, out: Output, tasks: list[asyncio.Task[Any]],
                     status: StatusFile | None, code: int) -> int:
    """Stop the node and its helper tasks (``tasks[0]`` is the event monitor); ``code``."""
    monitor_task, others = tasks[0], tasks[1:]
    out.event("stopping")
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
    # The drain stops the application (--app) too: its distributed children move at the
    # hand-off step, its tree stops in order once the calls from other nodes are answered.
    await node.stop()
    # The monitor ends when the node stops; its last events (our own view of the
    # sessions ending) are still worth printing.
    await asyncio.wait([monitor_task], timeout=1.0)
    if status is not None:
        status.update(running=False)
    out.event("stopped")
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m nodes.node``; returns the exit code."""
    args = parse_args(argv)
    # At a terminal that the REPL shares with our output, lines go above the prompt.
    stdout: TextSink = sys.stdout
    stderr: TextSink = sys.stderr
    terminals: list[AbovePrompt] = []
    if not args.no_repl and sys.stdin.isatty():
        if sys.stdout.isatty():
            stdout = AbovePrompt(sys.stdout)
            terminals.append(stdout)
        if sys.stderr.isatty():
            stderr = AbovePrompt(sys.stderr)
            terminals.append(stderr)
    configure_logging(args.log_level or ("info" if args.no_repl else "warning"),
                      json=args.log_format == "json", stream=stderr)
    out = Output(stdout)
    try:
        # uvloop when installed (fabric.loop, D31): a shorter round trip.
        code = fabric_loop.run(run(args, out, terminals))
    except ConfigError as exc:
        sys.stderr.write(f"nodes.node: {exc}\n")
        return 2
    if any(t.daemon and t.is_alive() for t in threading.enumerate()):
        # The REPL thread may sit in input(), holding stdin's buffer lock, which makes
        # interpreter shutdown abort. Everything is stopped and flushed: leave now.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
