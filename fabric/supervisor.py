"""Supervisors: processes that start children, watch them, and restart them (Erlang's).

Theory of operation
-------------------
A supervisor is a fabric process (a :class:`~fabric.GenServer` inside) that traps exits
and is linked to each of its children, so every child's end reaches it as an ``Exit``
message. What to do about it is decided by the sans-I/O
:class:`~fabric.protocol.supervision.SupervisorCore` (strategies, restart types,
intensity; read its docstring); this module only carries the plans out, one effect after
the other, inside the supervisor's process: messages that arrive meanwhile (other exits,
calls) wait in its mailbox.

Start one with ``pid = await Supervisor.start(node, [ChildSpec(...), ...])``. Children
start in list order; if one fails to start, the ones already running are stopped in
reverse order and ``start`` raises that child's error. A child is

* an ``async def fn(proc, *args)`` process function: spawned linked;
* a :class:`~fabric.GenServer` subclass: started linked with ``cls.start`` (so ``init``
  has finished when the next child starts, and an ``init`` that raises is a failed start);
* :meth:`Supervisor.child_spec`: a nested supervisor (shutdown ``"infinity"``).

A ``name`` in the spec is registered for each incarnation of the child (the dead one's
name is free by the time its exit arrives). Stopping a child sends it the exit signal
``"shutdown"`` (a child that does not trap exits ends with it at once; a GenServer that
traps exits is sent a stop request instead, so that its ``terminate`` runs) and waits up
to its ``shutdown`` seconds for its exit, then kills it; ``"brutal_kill"`` kills at once,
``"infinity"`` waits. The supervisor ends on an exit signal from its parent (the process
given as ``link_to``), an explicit one other than ``"normal"`` (``node.exit(sup,
"shutdown")``), or when the intensity is exceeded (reason ``"shutdown"``); it then stops
its children in reverse start order, each within its shutdown. ``node.exit(sup, "kill")``
skips that: the children, being linked, get the exit signal ``"killed"``.

The requests (:meth:`Supervisor.which_children`, ``terminate_child``, ``restart_child``,
``start_child``, ``delete_child``) are GenServer calls; the supervisor answers errors as
values, so a bad request does not crash it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fabric.calls import STOP, Server, call
from fabric.errors import BackpressureError, NameConflictError
from fabric.genserver import From, GenServer
from fabric.process import NORMAL, Exit, Process, ProcessExit, exception_reason
from fabric.protocol.effects import Log
from fabric.protocol.supervision import (
    ALL_SIGNIFICANT,
    ANY_SIGNIFICANT,
    BRUTAL_KILL,
    INFINITY,
    NEVER,
    ONE_FOR_ALL,
    ONE_FOR_ONE,
    PERMANENT,
    REST_FOR_ONE,
    TEMPORARY,
    TRANSIENT,
    StartChild,
    StopChild,
    StopSupervisor,
    SupervisorCore,
    SupervisorEffect,
)
from fabric.types import Pid

if TYPE_CHECKING:
    from fabric.node import Node

__all__ = [
    "ALL_SIGNIFICANT",
    "ANY_SIGNIFICANT",
    "BRUTAL_KILL",
    "INFINITY",
    "NEVER",
    "ONE_FOR_ALL",
    "ONE_FOR_ONE",
    "PERMANENT",
    "REST_FOR_ONE",
    "TEMPORARY",
    "TRANSIENT",
    "ChildSpec",
    "Supervisor",
]

# How long a killed child may take to report its exit before the supervisor moves on
# (a kill cancels its task; only a task that swallows cancellation takes longer).
_KILL_GRACE = 5.0


@dataclass(frozen=True)
class ChildSpec:
    """One child of a supervisor.

    Attributes:
        id: unique among the supervisor's children.
        start: an ``async def fn(proc, *args)`` process function, a
            :class:`~fabric.GenServer` subclass, or a nested supervisor from
            :meth:`Supervisor.child_spec`.
        args: passed to the function, or to the GenServer's ``init``.
        restart: ``"permanent"`` (always restarted), ``"transient"`` (restarted unless
            it ended with ``"normal"``, ``"shutdown"`` or ``("shutdown", x)``) or
            ``"temporary"`` (never).
        shutdown: seconds it may take to stop after the exit signal ``"shutdown"``
            before it is killed, ``"brutal_kill"`` or ``"infinity"``.
        name: a local name registered for every incarnation.
        significant: with the supervisor's ``auto_shutdown``, this child ending by
            itself (and not restarted: transient or temporary only) ends the supervisor.
    """

    id: str
    start: Any
    args: tuple[Any, ...] = ()
    restart: str = PERMANENT
    shutdown: float | str = 5.0
    name: str | None = None
    significant: bool = False


@dataclass(frozen=True)
class _Nested:
    """The start of a nested supervisor (what :meth:`Supervisor.child_spec` builds)."""

    children: tuple[ChildSpec, ...]
    strategy: str
    intensity: int
    period: float
    auto_shutdown: str


class Supervisor:
    """Start supervisors and make requests to them (all static; a supervisor is a pid)."""

    @staticmethod
    async def start(
        node: Node,
        children: Sequence[ChildSpec],
        strategy: str = ONE_FOR_ONE,
        intensity: int = 3,
        period: float = 5.0,
        name: str | None = None,
        link_to: Process | None = None,
        timeout: float | None = None,
        auto_shutdown: str = NEVER,
    ) -> Pid:
        """Start a supervisor on ``node`` and its children in order; returns its pid.

        Args:
            children: the child specs, in start order.
            strategy: ``"one_for_one"``, ``"one_for_all"`` or ``"rest_for_one"``.
            intensity: more than this many restarts within ``period`` seconds stop
                the supervisor with reason ``"shutdown"``.
            period: the window of the intensity, in seconds.
            name: register the supervisor under this local name.
            link_to: its parent: linked, and its exit signal stops the supervisor.
            timeout: seconds starting all children may take (None: no limit).
            auto_shutdown: ``"never"``, ``"any_significant"`` (end when a significant
                child ends by itself) or ``"all_significant"`` (when all of them have).

        Raises:
            ValueError: an invalid strategy, intensity, period or child spec.
            Exception: the error of the first child that failed to start.
        """
        core = SupervisorCore(strategy, intensity, period, auto_shutdown)  # validates first
        for spec in children:
            core.add(spec.id, spec.restart, spec.shutdown, spec.significant)
        return await SupervisorServer.start(node, core, tuple(children),
                                   None if link_to is None else link_to.self,
                                   name=name, link_to=link_to, timeout=timeout)

    @staticmethod
    def child_spec(id: str, children: Sequence[ChildSpec], strategy: str = ONE_FOR_ONE,
                   intensity: int = 3, period: float = 5.0, name: str | None = None,
                   restart: str = PERMANENT, auto_shutdown: str = NEVER,
                   significant: bool = False) -> ChildSpec:
        """A nested supervisor as a child of another one (shutdown ``"infinity"``)."""
        core = SupervisorCore(strategy, intensity, period, auto_shutdown)  # validates now
        for spec in children:
            core.add(spec.id, spec.restart, spec.shutdown, spec.significant)
        nested = _Nested(tuple(children), strategy, intensity, period, auto_shutdown)
        return ChildSpec(id, nested, restart=restart, shutdown=INFINITY, name=name,
                         significant=significant)

    @staticmethod
    async def which_children(node_or_proc: Node | Process,
                             sup: Server) -> list[tuple[str, Pid | None]]:
        """``(id, pid)`` of every child in start order; pid None if not running."""
        return [(i, p) for i, p in await call(node_or_proc, sup, ("which_children",))]

    @staticmethod
    async def terminate_child(node_or_proc: Node | Process, sup: Server, id: str) -> None:
        """Stop the child ``id`` within its shutdown; it is not restarted (a temporary
        one is forgotten). Raises KeyError for an unknown id."""
        check_answer(await call(node_or_proc, sup, ("terminate_child", id), timeout=None))

    @staticmethod
    async def restart_child(node_or_proc: Node | Process, sup: Server, id: str) -> Pid:
        """Start the stopped child ``id`` again; returns its pid.

        Raises:
            KeyError: unknown id.  ValueError: it is running.
            RuntimeError: it failed to start (the message gives the reason).
        """
        pid: Pid = check_answer(await call(node_or_proc, sup, ("restart_child", id), timeout=None))
        return pid

    @staticmethod
    async def start_child(node_or_proc: Node | Process, sup: Server, spec: ChildSpec) -> Pid:
        """Add ``spec`` as the last child and start it (same-node supervisors only: a
        spec holds functions); returns its pid. Raises ValueError for a taken id and
        RuntimeError when it fails to start (it is not kept then)."""
        pid: Pid = check_answer(await call(node_or_proc, sup, ("start_child", spec), timeout=None))
        return pid

    @staticmethod
    async def delete_child(node_or_proc: Node | Process, sup: Server, id: str) -> None:
        """Forget the stopped child ``id``. Raises KeyError or ValueError (running)."""
        check_answer(await call(node_or_proc, sup, ("delete_child", id)))


_ERRORS: dict[str, type[Exception]] = {"not_found": KeyError, "invalid": ValueError,
                                       "start_failed": RuntimeError}


# The supervisor's process and its answer format are shared, not public: the dynamic
# (fabric.dynamic_supervisor) and distributed (fabric.dsupervisor) supervisors extend
# SupervisorServer and answer their callers the same way. They are not exported.


def check_answer(answer: Any) -> Any:
    """A supervisor's ``(ok, value)`` answer: the value, or its error raised."""
    ok, value = answer
    if ok:
        return value
    kind, message = value
    raise _ERRORS[kind](message)


class SupervisorServer(GenServer):
    """The supervisor's process (the others extend it: see the comment above)."""

    class StartFailed(Exception):
        """A child failed to start on request (answered to the caller as an error
        value): raised by ``_start_now``, caught by the request handlers."""

    core: SupervisorCore
    specs: dict[str, ChildSpec]
    parent: Pid | None

    async def init(self, core: SupervisorCore, children: tuple[ChildSpec, ...],
                   parent: Pid | None) -> None:
        self.proc.trap_exits = True
        self.core, self.parent = core, parent
        self.specs = {spec.id: spec for spec in children}
        for spec in children:
            try:
                self.core.started(spec.id, await self._start(spec))
            except Exception as exc:
                self.node.log.error("supervisor_start_failed", supervisor=repr(self.pid),
                                    child=spec.id, reason=exception_reason(exc))
                await self._carry_out(self.core.stop_all())
                raise

    async def handle_info(self, message: Any) -> None:
        if type(message) is not Exit:
            await super().handle_info(message)
        elif message.pid == self.parent or (message.pid == self.pid
                                            and message.reason != NORMAL):
            # From the parent, or an explicit exit signal (which carries our own pid; a
            # "normal" one is ignored, as by a process that does not trap exits).
            raise ProcessExit(message.reason)  # terminate stops the children
        else:
            now = self.node.loop.time()
            await self._carry_out(self.core.exited(message.pid, message.reason, now))

    async def terminate(self, reason: Any) -> None:
        await self._carry_out(self.core.stop_all())

    async def handle_call(self, request: Any, from_: From) -> Any:
        op = request[0]
        core = self.core
        try:
            if op == "which_children":
                return [(c.id, c.pid) for c in core.children]
            if op == "terminate_child":
                await self._carry_out(core.terminate(request[1]))
                return (True, None)
            if op == "delete_child":
                core.delete(request[1])
                self.specs.pop(request[1], None)
                return (True, None)
            if op == "restart_child":
                child = core.child(request[1])
                if child is None:
                    raise KeyError(request[1])
                if child.pid is not None:
                    raise ValueError(f"child {child.id!r} is running")
                return (True, await self._start_now(child.id))
            if op == "start_child":
                spec: ChildSpec = request[1]
                core.add(spec.id, spec.restart, spec.shutdown, spec.significant)
                self.specs[spec.id] = spec
                try:
                    return (True, await self._start_now(spec.id))
                except SupervisorServer.StartFailed:
                    self._forget(spec.id)  # a dynamic child that never ran is not kept
                    raise
        except KeyError as exc:
            return (False, ("not_found", f"no child {exc.args[0]!r}"))
        except ValueError as exc:
            return (False, ("invalid", str(exc)))
        except SupervisorServer.StartFailed as exc:
            return (False, ("start_failed", str(exc)))
        return (False, ("invalid", f"unknown request {op!r}"))

    # -- carrying plans out ---------------------------------------------------------------

    async def _carry_out(self, plan: list[SupervisorEffect]) -> None:
        """Execute ``plan`` in order; a failed start replaces the rest of it (the core's
        contract). Bounded: every failed start counts against the intensity."""
        i = 0
        while i < len(plan):
            effect = plan[i]
            i += 1
            if type(effect) is StopChild:
                await self._stop(effect.id, effect.pid, effect.shutdown)
            elif type(effect) is StartChild:
                try:
                    self.core.started(effect.id, await self._start(self.specs[effect.id]))
                except Exception as exc:
                    now = self.node.loop.time()
                    plan, i = self.core.start_failed(effect.id, exception_reason(exc), now), 0
            elif type(effect) is StopSupervisor:
                raise ProcessExit(effect.reason)
            elif type(effect) is Log:
                getattr(self.node.log, effect.level)(
                    effect.event, supervisor=repr(self.pid),
                    **{k: repr(v) if isinstance(v, tuple) else v
                       for k, v in effect.fields.items()})
        if len(self.specs) != len(self.core.children):
            # The core forgot temporary children that ended: so do we, once their stop
            # (which reads the spec) is over, or a dynamic supervisor would grow forever.
            kept = {c.id for c in self.core.children}
            self.specs = {i: spec for i, spec in self.specs.items() if i in kept}

    async def _start_now(self, id: str) -> Pid:
        """Start the child ``id`` on request (not a restart: no intensity counted)."""
        try:
            pid = await self._start(self.specs[id])
        except Exception as exc:
            if self.specs[id].restart == TEMPORARY:
                self._forget(id)
            raise SupervisorServer.StartFailed(repr(exc)) from exc
        self.core.started(id, pid)
        return pid

    def _forget(self, id: str) -> None:
        if self.core.child(id) is not None:
            self.core.delete(id)
        self.specs.pop(id, None)

    async def _start(self, spec: ChildSpec) -> Pid:
        node, start = self.node, spec.start
        if isinstance(start, _Nested):
            return await Supervisor.start(node, start.children, start.strategy,
                                          start.intensity, start.period, name=spec.name,
                                          link_to=self.proc,
                                          auto_shutdown=start.auto_shutdown)
        if isinstance(start, type) and issubclass(start, GenServer):
            return await start.start(node, *spec.args, name=spec.name, link_to=self.proc)
        if spec.name is not None and node.whereis(spec.name) is not None:
            raise NameConflictError(f"the name {spec.name!r} is registered already")
        fn: Callable[..., Awaitable[Any]] = start
        return node.spawn(fn, *spec.args, link_to=self.proc, name=spec.name)

    async def _stop(self, id: str, pid: Pid, shutdown: float | str) -> None:
        """Stop the child ``id`` running as ``pid``; wait for its exit (its ``Exit``)."""
        node = self.node

        def its_exit(m: Any) -> bool:
            return type(m) is Exit and m.pid == pid

        if shutdown == BRUTAL_KILL:
            node.exit(pid, "kill")
        else:
            self._ask_to_stop(id, pid)
            wait = None if shutdown == INFINITY else float(shutdown)
            if await self.proc.receive(its_exit, timeout=wait, default=None) is not None:
                return
            node.log.warning("supervisor_child_shutdown_timeout", supervisor=repr(self.pid),
                             child=repr(pid), shutdown=shutdown)
            node.exit(pid, "kill")
        if await self.proc.receive(its_exit, timeout=_KILL_GRACE, default=None) is None:
            node.log.error("supervisor_child_kill_unanswered", supervisor=repr(self.pid),
                           child=repr(pid))


    def _ask_to_stop(self, id: str, pid: Pid) -> None:
        """Send the child the exit signal ``"shutdown"``; a GenServer that traps exits is
        sent a stop request instead (Erlang's gen_server stops on its parent's exit
        signal; ours would take the ``Exit`` for a message), so its ``terminate`` runs."""
        spec = self.specs.get(id)
        proc = self.node.processes.get(pid)
        if (spec is not None and proc is not None and proc.trap_exits
                and isinstance(spec.start, type) and issubclass(spec.start, GenServer)):
            try:
                self.node.send(pid, (STOP, "shutdown"))
                return
            except BackpressureError:  # a full mailbox: the signal passes its bound
                pass
        self.node.exit(pid, "shutdown")
