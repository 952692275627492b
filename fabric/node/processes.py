"""The process table: every local process, its registered names, pids and refs.

Theory of operation
-------------------
The table owns the local processes (``_procs``: id -> :class:`~fabric.process.Process`)
and the local registered names (``_names``), and draws process ids and ref numbers from
this run's counters. It starts a process as an asyncio task and, when the task ends,
hands the process and its exit reason to the exit handler the node's wiring gave it
(:meth:`fabric.node.signals.Signals.exited`, which removes it from this table with
:meth:`remove` and tells its links and monitors).

Delivery to a local pid is the hot path of every message: :meth:`deliver_pid` indexes the
pid tuple directly and counts what reaches nobody (``undeliverable``), as Erlang drops it.
A pid of another creation (from before a restart) reaches nothing. It ignores the
mailbox bound: it carries what the node itself delivers (services' notifications, a local
call's reply); messages that users send go through :class:`fabric.node.mailboxes.
Mailboxes`, which enforces the bound.

The table makes process handles with what :mod:`fabric.process` handed over when it was
imported (:func:`use_process_handles`: the handle class, the exception that ends a
process, the reason of a crash), so the node never imports that module. Each process's
task records its process in a context variable (:func:`running_process`): an exit
signal sent from that task names it as the sender.

Low-level interface (documented in ARCHITECTURE.md): :meth:`get`, :meth:`count`,
:meth:`pids`, :meth:`deliver_pid`, :meth:`deliver_name`, :meth:`make_ref`,
:meth:`remove`.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fabric.errors import ConfigError, LocalProtocolError, NameConflictError
from fabric.node.effects import EffectExecutor
from fabric.node.metrics import Metrics
from fabric.protocol.effects import Deliver
from fabric.protocol.processes import KILLED, NORMAL
from fabric.types import Pid, Ref

if TYPE_CHECKING:
    from fabric.node import Node
    from fabric.process import Process

__all__ = ["ProcessFn", "ProcessHandles", "ProcessTable", "running_process",
           "use_process_handles"]

ProcessFn = Callable[..., Awaitable[Any]]
ExitHandler = Callable[["Process", Any], None]


@dataclass(frozen=True, slots=True)
class ProcessHandles:
    """What the table needs of :mod:`fabric.process`, which depends on the node and
    hands this over when it is imported (the node never imports it: D26)."""

    make: Callable[[Any, Pid, int | None], Process]  # (node, pid, mailbox_limit)
    exit_exception: type[BaseException]  # raised to end a process; its ``reason``
    crash_reason: Callable[[BaseException], Any]  # the reason of a process that raised


_handles: ProcessHandles | None = None


def use_process_handles(handles: ProcessHandles) -> None:
    """Make every node's processes with ``handles`` (called by :mod:`fabric.process`)."""
    global _handles
    _handles = handles


def _process_handles() -> ProcessHandles:
    if _handles is None:
        raise ConfigError("fabric.process is not imported: import fabric first")
    return _handles

# The process whose task (or a task it created) is running: the sender of an exit signal
# sent with ``node.exit`` (Erlang's exit/2 names its caller). Set per task by _run.
_running: contextvars.ContextVar[Process | None] = contextvars.ContextVar(
    "fabric_running_process", default=None)


def running_process() -> Process | None:
    """The local process running the current task, or None outside any process."""
    return _running.get()


class ProcessTable:
    """The local processes and names of one node; see the module docstring."""

    def __init__(self, node: Node, metrics: Metrics) -> None:
        self._node = node  # what a Process handle points to (proc.node)
        self._handles = _process_handles()  # the process handle's class and exceptions
        self._metrics = metrics
        self.name = node.name  # this run's name and creation, set by bind()
        self.creation = node.creation
        self._procs: dict[int, Process] = {}  # local process id -> process
        self._names: dict[str, Pid] = {}  # local registered names
        self._ids = itertools.count(1)
        self._refs = itertools.count(1)
        self._exited: ExitHandler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._log: Any = None

    def bind(self, name: str, creation: int, loop: asyncio.AbstractEventLoop, log: Any,
             exited: ExitHandler, executor: EffectExecutor) -> None:
        """Start the run (called once, by the node's wiring): this run's identity, its
        loop, who handles a process's exit, and the effects the table runs."""
        self.name = name
        self.creation = creation
        self._loop = loop
        self._log = log
        self._exited = exited
        executor.register(Deliver, self._on_deliver)
        # DeliverMany (group broadcasts: user messages) is bounded: fabric.node.mailboxes.

    # -- identifiers ----------------------------------------------------------------------

    def make_ref(self) -> Ref:
        """A reference unique within this node run."""
        return tuple.__new__(Ref, (self.name, next(self._refs), self.creation))  # C only

    def new_pid(self) -> Pid:
        return Pid(self.name, next(self._ids), self.creation)

    def is_local(self, pid: Pid) -> bool:
        return pid.node == self.name

    # -- the table ------------------------------------------------------------------------

    def get(self, pid: Pid) -> Process | None:
        """The live local process ``pid`` (this run's), or None."""
        if type(pid) is not Pid or pid[0] != self.name or pid[2] != self.creation:
            return None
        return self._procs.get(pid[1])

    def by_id(self, pid_id: int) -> Process | None:
        """The local process with this id (any pid of this node names it by id)."""
        return self._procs.get(pid_id)

    def count(self) -> int:
        """How many local processes (and call mailboxes) exist."""
        return len(self._procs)

    def pids(self) -> list[Pid]:
        return [p.self for p in self._procs.values()]

    def processes(self) -> list[Process]:
        return list(self._procs.values())

    def is_alive(self, pid: Pid) -> bool:
        """True if ``pid`` is a live process of this node run."""
        proc = self.get(pid)
        return proc is not None and proc.alive

    def add(self, proc: Process) -> None:
        self._procs[proc.self[1]] = proc

    def remove(self, proc: Process) -> None:
        """Take an exiting process and its names out of the table."""
        self._procs.pop(proc.self[1], None)
        for name in proc.names:
            self._names.pop(name, None)
        if proc.watch_below >= 0:  # senders wait for its room: it will never come
            self._node.mailboxes.released(proc)

    # -- spawning -------------------------------------------------------------------------

    def spawn(self, fn: ProcessFn, args: tuple[Any, ...], link_to: Process | None = None,
              name: str | None = None, mailbox_limit: int | None = None) -> Pid:
        """Start ``async def fn(proc, *args)`` as a local process; returns its pid."""
        pid = self.new_pid()
        proc = self._handles.make(self._node, pid, _checked_limit(mailbox_limit))
        self._procs[pid[1]] = proc
        if name is not None:
            try:
                self.register(name, pid)
            except BaseException:
                del self._procs[pid[1]]  # never started: it must not stay in the table
                raise
        if link_to is not None:
            proc.links.add(link_to.self)
            link_to.links.add(pid)
        assert self._loop is not None, "spawn before the node started"
        proc.task = task = self._loop.create_task(self._run(proc, fn, args))
        task.add_done_callback(lambda _: self._ended(proc))
        return pid

    def new_mailbox(self, mailbox_limit: int | None = None) -> Process:
        """A process without a task: a mailbox for code outside any process (calls)."""
        proc = self._handles.make(self._node, self.new_pid(), _checked_limit(mailbox_limit))
        self._procs[proc.self[1]] = proc
        return proc

    async def _run(self, proc: Process, fn: ProcessFn, args: tuple[Any, ...]) -> None:
        reason: Any = NORMAL
        _running.set(proc)  # this task's own context: other tasks do not see it
        handles = self._handles
        try:
            await fn(proc, *args)
        except handles.exit_exception as exc:
            reason = getattr(exc, "reason", NORMAL)
        except asyncio.CancelledError:
            reason = proc.pending_kill if proc.pending_kill is not None else KILLED
        except Exception as exc:
            reason = handles.crash_reason(exc)
            self._log.error("process_crashed", pid=repr(proc.self), error=repr(exc),
                            traceback=traceback.format_exc())
        assert self._exited is not None
        self._exited(proc, reason)

    def _ended(self, proc: Process) -> None:
        """The task is done. A task cancelled before its first step (an exit signal
        right after spawn) never ran :meth:`_run`, so its end is reported here."""
        if proc.alive:
            assert self._exited is not None
            self._exited(proc, proc.pending_kill if proc.pending_kill is not None else KILLED)

    # -- names ----------------------------------------------------------------------------

    def register(self, name: str, pid: Pid) -> None:
        """Register a local name for a local, live process.

        Raises:
            NameConflictError: the name is taken, or the process already has another name.
            LocalProtocolError: the pid is not local or not alive.
        """
        if type(name) is not str or not name:
            raise ConfigError("a registered name must be a non-empty str")
        proc = self._procs.get(pid.id) if self.is_local(pid) else None
        if proc is None or proc.self != pid:
            raise LocalProtocolError(f"{pid!r} is not a live local process")
        if name in self._names:
            raise NameConflictError(f"{name!r} is already registered to {self._names[name]!r}")
        self._names[name] = pid
        proc.names.add(name)

    def unregister(self, name: str) -> None:
        pid = self._names.pop(name, None)
        if pid is not None:
            proc = self._procs.get(pid.id)
            if proc is not None:
                proc.names.discard(name)

    def whereis(self, name: str) -> Pid | None:
        return self._names.get(name)

    def registered(self) -> list[str]:
        return sorted(self._names)

    # -- delivery -------------------------------------------------------------------------

    def deliver_pid(self, pid: Any, message: Any) -> None:
        """Deliver to a local pid of this run; count it ``undeliverable`` otherwise."""
        # Hot path: index the pid tuple directly (its properties cost a Python call).
        if type(pid) is Pid and pid[2] == self.creation and pid[0] == self.name:
            proc = self._procs.get(pid[1])
            if proc is not None:
                proc.deliver(message)
                return
        self._metrics.undeliverable += 1

    def deliver_name(self, name: Any, message: Any) -> None:
        """Deliver to a locally registered name; count it ``undeliverable`` otherwise."""
        pid = self._names.get(name) if type(name) is str else None
        if pid is None:
            self._metrics.undeliverable += 1
            return
        self.deliver_pid(pid, message)

    def _on_deliver(self, service: str, eff: Deliver) -> None:
        self.deliver_pid(eff.pid, eff.message)



def _checked_limit(limit: int | None) -> int | None:
    if limit is not None and (type(limit) is not int or limit < 1):
        raise ConfigError(f"mailbox_limit must be an int >= 1, not {limit!r}")
    return limit
