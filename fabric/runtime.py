"""The process half of a node: the process table, signals, monitors, links.

Theory of operation
-------------------
The node owns every local process (``_procs``: id -> :class:`Process`). A send to a local
pid appends to its mailbox; a send to a remote pid queues ``[K_SEND, pid, msg]`` on that
peer's ordered stream (connecting first if needed). Signals between processes on different
nodes travel as ``[K_CTRL, op, ...]`` messages on the same stream, so a message sent before
an exit is delivered before the exit signal:

    ["link", from, to]            ["unlink", from, to]      ["exit", from, to, reason]
    ["mon", watcher, target, ref] ["demon", watcher, target, ref]
    ["down", ref, target, reason, watcher]
    ["spawn", reply_to, ref, "module:function", args, link]
    ["spawn_reply", ref, ok, pid_or_error_text]

A GenServer call to another node is one ``[K_CALL, target, caller, ref, request]`` message:
the receiving node installs the monitor and delivers the request in one step (what a
``mon`` followed by a send would do). When the server answers straight from its loop it
releases that monitor itself and says so in the reply, so the caller forgets its side
without a ``demon`` message: a call costs one message each way.

Because a nodedown ends a session for good, everything tied to a peer is indexed by node
(``_remote_monitors``, ``_remote_links``, ``_watched_by_remote``) and resolved on its
nodedown: monitors fire ``noconnection``, links send ``noconnection`` exit signals.

Service cores (pg, global...) are hosted by :class:`fabric.services.ServiceHost`.
"""

from __future__ import annotations

import asyncio
import itertools
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from fabric.errors import (
    BackpressureError,
    ConfigError,
    LocalProtocolError,
    NameConflictError,
    NodeDownError,
    NotExportedError,
)
from fabric.exports import resolve_export
from fabric.outbound import MAX_BATCH
from fabric.process import KILLED, NORMAL, Down, Exit, Process, ProcessExit, exception_reason
from fabric.protocol.codec import Codec
from fabric.protocol.mesh import MeshCore
from fabric.protocol.messages import CALL_TAG, K_CALL, K_CTRL, K_REG_SEND, K_SEND, K_SEND_TUPLE
from fabric.services import ServiceHost

if TYPE_CHECKING:
    from fabric.global_ import Global
from fabric.types import GlobalName, Pid, Ref

__all__ = ["ProcessRuntime", "RegName"]

ProcessFn = Callable[..., Awaitable[Any]]


class RegName(NamedTuple):
    """A monitor target given as ``(name, node)``: Erlang's ``{Name, Node}``."""

    name: str
    node: str


class ProcessRuntime(ServiceHost):
    """Mixin of :class:`fabric.Node` holding process state. Not used on its own."""

    # provided by Node
    name: str
    creation: int
    loop: asyncio.AbstractEventLoop
    log: Any
    metrics: dict[str, int]
    mesh: MeshCore
    codec: Codec
    config: Any
    pub: Any
    sub: Any
    global_: Global
    _channels: dict[str, Any]

    def __init__(self) -> None:
        self._procs: dict[int, Process] = {}  # local process id -> process
        self._ids = itertools.count(1)
        self._refs = itertools.count(1)
        self._names: dict[str, Pid] = {}  # local registered names
        # peer -> {ref: (watcher local pid, target remote pid)}: monitors we hold there
        self._remote_monitors: dict[str, dict[Ref, tuple[Pid, Pid]]] = {}
        # peer -> {(local pid, remote pid)}: links that cross to that peer
        self._remote_links: dict[str, set[tuple[Pid, Pid]]] = {}
        # peer -> {(local target pid, ref)}: monitors that peer's processes hold on ours
        self._watched_by_remote: dict[str, set[tuple[Pid, Ref]]] = {}
        self._spawn_waiters: dict[Ref, tuple[str, asyncio.Future[Pid]]] = {}
        # peer -> messages sent while its session is being negotiated (no channel yet)
        self._early: dict[str, list[Any]] = {}
        ServiceHost.__init__(self)

    # -- identifiers ----------------------------------------------------------------------

    def make_ref(self) -> Ref:
        """A reference unique within this node run."""
        return Ref(self.name, next(self._refs), self.creation)

    def is_local(self, pid: Pid) -> bool:
        return pid.node == self.name

    def is_alive(self, pid: Pid) -> bool:
        """True if ``pid`` is a live process of this node run."""
        if type(pid) is not Pid or pid[0] != self.name or pid[2] != self.creation:
            return False
        proc = self._procs.get(pid[1])
        return proc is not None and proc.alive

    # -- spawning -------------------------------------------------------------------------

    def spawn(self, fn: ProcessFn, *args: Any, link_to: Process | None = None,
              name: str | None = None) -> Pid:
        """Start ``async def fn(proc, *args)`` as a local process; returns its pid."""
        self._require_started()  # type: ignore[attr-defined]
        pid = Pid(self.name, next(self._ids), self.creation)
        proc = Process(self, pid)  # type: ignore[arg-type]
        self._procs[pid.id] = proc
        if name is not None:
            self.register(name, pid)
        if link_to is not None:
            proc.links.add(link_to.self)
            link_to.links.add(pid)
        proc.task = self.loop.create_task(self._run(proc, fn, args))
        return pid

    def new_mailbox(self) -> Process:
        """A process without a task: a mailbox for code outside any process (calls)."""
        pid = Pid(self.name, next(self._ids), self.creation)
        proc = Process(self, pid)  # type: ignore[arg-type]
        self._procs[pid.id] = proc
        return proc

    def close_mailbox(self, proc: Process) -> None:
        if proc.alive:
            self._exited(proc, NORMAL)

    async def _run(self, proc: Process, fn: ProcessFn, args: tuple[Any, ...]) -> None:
        reason: Any = NORMAL
        try:
            await fn(proc, *args)
        except ProcessExit as exc:
            reason = exc.reason
        except asyncio.CancelledError:
            reason = proc.pending_kill if proc.pending_kill is not None else KILLED
        except Exception as exc:
            reason = exception_reason(exc)
            self.log.error("process_crashed", pid=repr(proc.self), error=repr(exc),
                           traceback=traceback.format_exc())
        self._exited(proc, reason)

    async def spawn_on(self, node: str, spec: str, *args: Any, link_to: Process | None = None,
                       timeout: float = 5.0) -> Pid:
        """Spawn ``"module:function"`` on ``node``; only functions that node exports.

        Raises:
            NotExportedError: the function is unknown there or not exported.
            NodeDownError: the node is unreachable or went down meanwhile.
        """
        if node == self.name:
            fn = resolve_export(spec, self.config.allow_remote_spawn)
            return self.spawn(fn, *args, link_to=link_to)
        if not self.mesh.is_up(node) and not await self.connect(node):  # type: ignore[attr-defined]
            raise NodeDownError(node, "noconnection")
        ref = self.make_ref()
        fut: asyncio.Future[Pid] = self.loop.create_future()
        self._spawn_waiters[ref] = (node, fut)
        reply_to = link_to.self if link_to is not None else None
        self._ctrl(node, ["spawn", reply_to, ref, spec, list(args), link_to is not None])
        try:
            pid: Pid = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise NodeDownError(node, "timeout") from None
        finally:
            self._spawn_waiters.pop(ref, None)
        if link_to is not None:
            link_to.links.add(pid)
            self._remote_links.setdefault(node, set()).add((link_to.self, pid))
        return pid

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
        """The pid registered locally under ``name``, or None."""
        return self._names.get(name)

    def registered(self) -> list[str]:
        return sorted(self._names)

    # -- sending --------------------------------------------------------------------------

    def send(self, dest: Any, message: Any) -> None:
        """Send to a pid, a local name, or ``(name, node)``. Never blocks; never raises for
        a dead or unknown destination (as in Erlang), but raises
        :class:`BackpressureError` when the peer's outbound buffer is full."""
        t = type(dest)
        if t is Pid:
            node = dest[0]
            if node == self.name:
                self._deliver_pid(dest, message)
            else:
                envelope = ([K_SEND_TUPLE, dest, *message] if type(message) is tuple
                            else [K_SEND, dest, message])
                ch = self._channels.get(node)
                if ch is not None:
                    ch.out.push(envelope)
                else:
                    self._push(node, envelope)
        elif t is str:
            self._deliver_name(dest, message)
        elif t is GlobalName:
            pid = self.global_.whereis_name(dest.name)
            if pid is None:
                self.metrics["undeliverable"] += 1
            else:
                self.send(pid, message)
        elif t is tuple and len(dest) == 2:
            name, node = dest
            if node == self.name:
                self._deliver_name(name, message)
            else:
                self._push(node, [K_REG_SEND, name, message])
        else:
            raise LocalProtocolError(f"cannot send to {dest!r}: not a pid, name or (name, node)")

    async def send_wait(self, dest: Any, message: Any) -> None:
        """Like :meth:`send`, but waits for room in the peer's buffer instead of raising."""
        while True:
            try:
                self.send(dest, message)
                if type(dest) is Pid and dest[0] != self.name:
                    ch = self._channels.get(dest[0])
                    if ch is not None and len(ch.out.queue) >= MAX_BATCH:
                        # A full batch is waiting: let the loop send it (and heartbeat)
                        # instead of queueing up to the limit in one go.
                        await asyncio.sleep(0)
                return
            except BackpressureError as exc:
                if not await self._wait_for_room(exc.node):
                    return

    async def _wait_for_room(self, node: str) -> bool:
        """Wait until ``node``'s outbound buffer has room; False if it has no channel
        (the message cannot be queued: like Erlang, the send is dropped)."""
        ch = self._channels.get(node)
        if ch is None:
            return False
        await ch.out.wait_for_room()
        return True

    def _push(self, node: str, message: list[Any]) -> None:
        """Queue ``message`` for ``node``, connecting first if there is no session (as
        Erlang auto-connects); queued messages wait for the session, in order."""
        ch = self._channels.get(node)
        if ch is None:
            if self.mesh.peers.get(node) is None:
                try:
                    self._exec(self.mesh.connect(node, self.loop.time()))
                except ConfigError:
                    self.metrics["undeliverable"] += 1
                    return
                ch = self._channels.get(node)
            if ch is None:
                if not self.mesh.negotiating(node):
                    # The attempt failed at once (stopping, bad name): nothing will
                    # ever take these messages, so do not hold them.
                    self.metrics["undeliverable"] += 1
                    return
                # A handshake we accept has no channel yet: hold the message for it.
                early = self._early.setdefault(node, [])
                if len(early) >= self.config.outbound_limit:
                    raise BackpressureError(node, len(early))
                early.append(message)
                return
        ch.out.push(message)

    def _deliver_pid(self, pid: Any, message: Any) -> None:
        # Hot path: index the pid tuple directly (its properties cost a Python call).
        # A pid of another creation (from before a restart) reaches nothing.
        if type(pid) is Pid and pid[2] == self.creation and pid[0] == self.name:
            proc = self._procs.get(pid[1])
            if proc is not None:
                proc.deliver(message)
                return
        self.metrics["undeliverable"] += 1

    def _deliver_name(self, name: Any, message: Any) -> None:
        pid = self._names.get(name) if type(name) is str else None
        if pid is None:
            self.metrics["undeliverable"] += 1
            return
        self._deliver_pid(pid, message)

    def _ctrl(self, node: str, args: list[Any]) -> None:
        ch = self._channels.get(node)
        if ch is not None:
            ch.out.push_control([K_CTRL, *args])

    # -- links, monitors, exits -----------------------------------------------------------

    def _link(self, proc: Process, pid: Pid) -> None:
        if pid in proc.links:
            return
        proc.links.add(pid)
        if self.is_local(pid):
            target = self._procs.get(pid.id)
            if target is None or target.self != pid:
                self._signal(proc, pid, "noproc")
            else:
                target.links.add(proc.self)
        elif self.mesh.is_up(pid.node):
            self._remote_links.setdefault(pid.node, set()).add((proc.self, pid))
            self._ctrl(pid.node, ["link", proc.self, pid])
        else:
            self._signal(proc, pid, "noconnection")

    def _unlink(self, proc: Process, pid: Pid) -> None:
        proc.links.discard(pid)
        if self.is_local(pid):
            target = self._procs.get(pid.id)
            if target is not None:
                target.links.discard(proc.self)
        else:
            self._remote_links.get(pid.node, set()).discard((proc.self, pid))
            self._ctrl(pid.node, ["unlink", proc.self, pid])

    def _monitor(self, proc: Process, dest: Pid | tuple[str, str]) -> Ref:
        ref = self.make_ref()
        pid: Any = dest
        if type(dest) is tuple:  # (name, node): a registered name, resolved by its node
            pid = RegName(*dest)
            if pid.node == self.name:
                pid = self._names.get(pid.name, pid)
        proc.monitors[ref] = pid
        if self.is_local(pid):
            target = self._procs.get(pid.id) if type(pid) is Pid else None
            if target is None or target.self != pid or not target.alive:
                del proc.monitors[ref]
                proc.deliver(Down(ref, pid, "noproc"))
            else:
                target.monitored_by[ref] = proc.self
        elif self.mesh.is_up(pid.node):
            self._remote_monitors.setdefault(pid.node, {})[ref] = (proc.self, pid)
            self._ctrl(pid.node, ["mon", proc.self, pid, ref])
        else:
            del proc.monitors[ref]
            proc.deliver(Down(ref, pid, "noconnection"))
        return ref

    def _call_send(self, proc: Process, target: Pid | tuple[str, str],
                   request: Any) -> tuple[Ref, list[Any] | None]:
        """Monitor a remote ``target`` and send it a GenServer call, in one K_CALL message.

        Returns the monitor's ref and, when the peer's buffer was full, the message still
        to send (see :meth:`_push_wait`). An unreachable node gives ``Down(noconnection)``.
        """
        ref = self.make_ref()
        if type(target) is Pid:
            node: str = target[0]
            to: Any = target
            watched: Any = target
        else:
            to, node = target
            watched = RegName(to, node)
        if not self.mesh.is_up(node):
            proc.deliver(Down(ref, watched, "noconnection"))
            return ref, None
        proc.monitors[ref] = watched
        self._remote_monitors.setdefault(node, {})[ref] = (proc.self, watched)
        message = [K_CALL, to, proc.self, ref, request]
        try:
            self._push(node, message)
        except BackpressureError:
            return ref, message
        return ref, None

    async def _push_wait(self, node: str, message: list[Any]) -> None:
        """Queue ``message`` for ``node``, waiting for room in its buffer (as send_wait)."""
        while True:
            try:
                self._push(node, message)
                return
            except BackpressureError as exc:
                if not await self._wait_for_room(exc.node):
                    return

    def _on_call(self, peer: str, msg: list[Any]) -> None:
        _, to, caller, ref, request = msg
        if type(caller) is not Pid or type(ref) is not Ref:
            raise TypeError("call without a caller pid and a ref")
        if type(to) is str:
            pid: Any = self._names.get(to)
            gone: Any = (to, self.name)  # as a "mon" on (name, node) reports it
        else:
            pid = gone = to
        proc = self._procs.get(pid[1]) if type(pid) is Pid and self.is_local(pid) else None
        if proc is None or proc.self != pid or not proc.alive:
            self._ctrl(peer, ["down", ref, gone, "noproc", caller])
            return
        proc.monitored_by[ref] = caller
        watched = self._watched_by_remote.get(peer)
        if watched is None:
            watched = self._watched_by_remote[peer] = set()
        watched.add((pid, ref))
        proc.deliver((CALL_TAG, (caller, ref), request))

    def _release_call(self, proc: Process, caller: Pid, ref: Ref) -> bool:
        """The server ``proc`` answered the call ``(caller, ref)``: drop the monitor the
        call installed on it. True if there was one (the caller then drops its side
        without a ``demon``)."""
        watcher = proc.monitored_by.get(ref)
        # Identity first: the From a server answers holds the very pid stored here.
        if watcher is not caller and (watcher is None or watcher != caller):
            return False
        del proc.monitored_by[ref]
        if caller[0] != self.name:
            self._watched_by_remote.get(caller[0], set()).discard((proc.self, ref))
        return True

    def _forget_monitor(self, proc: Process, ref: Ref) -> None:
        """Drop our side of a monitor the target's node already released."""
        target = proc.monitors.pop(ref, None)
        if target is not None and not self.is_local(target):
            self._remote_monitors.get(target.node, {}).pop(ref, None)

    def _demonitor(self, proc: Process, ref: Ref) -> None:
        pid = proc.monitors.pop(ref, None)
        if pid is None:
            return
        if self.is_local(pid):
            target = self._procs.get(pid.id)
            if target is not None:
                target.monitored_by.pop(ref, None)
        else:
            self._remote_monitors.get(pid.node, {}).pop(ref, None)
            self._ctrl(pid.node, ["demon", proc.self, pid, ref])

    def exit(self, pid: Pid, reason: Any) -> None:
        """Send an exit signal to ``pid`` (``"kill"`` kills even a trapping process)."""
        if self.is_local(pid):
            proc = self._procs.get(pid.id)
            if proc is not None and proc.self == pid:
                self._signal(proc, None, reason)
        else:
            self._ctrl(pid.node, ["exit", None, pid, reason])

    def _signal(self, proc: Process, sender: Pid | None, reason: Any) -> None:
        """Apply an exit signal from ``sender`` (None: an explicit ``exit``) to ``proc``."""
        if not proc.alive:
            return
        if sender is not None:
            proc.links.discard(sender)
        if reason == "kill":
            self._kill(proc, KILLED)
        elif proc.trap_exits:
            proc.deliver(Exit(sender if sender is not None else proc.self, reason))
        elif reason != NORMAL:
            self._kill(proc, reason)

    def _kill(self, proc: Process, reason: Any) -> None:
        if proc.task is None:
            self._exited(proc, reason)
        elif proc.pending_kill is None and not proc.task.done():
            proc.pending_kill = reason
            proc.task.cancel()

    def _exited(self, proc: Process, reason: Any) -> None:
        if not proc.alive:
            return
        proc.exit_reason = reason
        pid = proc.self
        self._procs.pop(pid.id, None)
        for name in proc.names:
            self._names.pop(name, None)
        for ref, watcher in proc.monitored_by.items():
            if self.is_local(watcher):
                w = self._procs.get(watcher.id)
                if w is not None and w.monitors.pop(ref, None) is not None:
                    w.deliver(Down(ref, pid, reason))
            else:
                self._watched_by_remote.get(watcher.node, set()).discard((pid, ref))
                self._ctrl(watcher.node, ["down", ref, pid, reason, watcher])
        for other in proc.links:
            if self.is_local(other):
                o = self._procs.get(other.id)
                if o is not None:
                    self._signal(o, pid, reason)
            else:
                self._remote_links.get(other.node, set()).discard((pid, other))
                self._ctrl(other.node, ["exit", pid, other, reason])
        for ref, target in proc.monitors.items():
            if not self.is_local(target):
                self._remote_monitors.get(target.node, {}).pop(ref, None)
        now = self.loop.time()
        for service in list(self._services.values()):
            self._exec_service(service.service, service.on_process_exit(pid, reason, now))

    def _on_ctrl(self, peer: str, msg: list[Any]) -> None:
        op = msg[1]
        if op == "link":
            _, _, src, dst = msg
            proc = self._procs.get(dst.id) if self.is_local(dst) else None
            if proc is None or proc.self != dst:
                self._ctrl(peer, ["exit", dst, src, "noproc"])
            else:
                proc.links.add(src)
                self._remote_links.setdefault(peer, set()).add((dst, src))
        elif op == "unlink":
            _, _, src, dst = msg
            proc = self._procs.get(dst.id) if self.is_local(dst) else None
            if proc is not None:
                proc.links.discard(src)
            self._remote_links.get(peer, set()).discard((dst, src))
        elif op == "exit":
            _, _, src, dst, reason = msg
            proc = self._procs.get(dst.id) if self.is_local(dst) else None
            if proc is not None and proc.self == dst:
                if src is not None:
                    self._remote_links.get(peer, set()).discard((dst, src))
                    if src not in proc.links:
                        return  # unlinked meanwhile: the signal no longer applies
                self._signal(proc, src, reason)
        elif op == "mon":
            _, _, watcher, target, ref = msg
            if type(target) is tuple:  # a monitor on a registered name: resolve it now
                target = self._names.get(target[0], target)
            local = type(target) is Pid and self.is_local(target)
            proc = self._procs.get(target.id) if local else None
            if proc is None or proc.self != target or not proc.alive:
                self._ctrl(peer, ["down", ref, target, "noproc", watcher])
            else:
                proc.monitored_by[ref] = watcher
                self._watched_by_remote.setdefault(peer, set()).add((target, ref))
        elif op == "demon":
            _, _, watcher, target, ref = msg
            if type(target) is tuple:
                target = self._names.get(target[0], target)
            local = type(target) is Pid and self.is_local(target)
            proc = self._procs.get(target.id) if local else None
            if proc is not None:
                proc.monitored_by.pop(ref, None)
            self._watched_by_remote.get(peer, set()).discard((target, ref))
        elif op == "down":
            _, _, ref, target, reason, watcher = msg
            self._remote_monitors.get(peer, {}).pop(ref, None)
            w = self._procs.get(watcher.id) if self.is_local(watcher) else None
            if w is not None and w.monitors.pop(ref, None) is not None:
                w.deliver(Down(ref, target, reason))
        elif op == "spawn":
            _, _, reply_to, ref, spec, args, link = msg
            try:
                fn = resolve_export(spec, self.config.allow_remote_spawn)
                pid = self.spawn(fn, *args)
            except NotExportedError as exc:
                self._ctrl(peer, ["spawn_reply", ref, False, str(exc)])
                return
            if link and reply_to is not None:
                self._procs[pid.id].links.add(reply_to)
                self._remote_links.setdefault(peer, set()).add((pid, reply_to))
            self._ctrl(peer, ["spawn_reply", ref, True, pid])
        elif op == "spawn_reply":
            _, _, ref, ok, value = msg
            waiter = self._spawn_waiters.get(ref)
            if waiter is not None and not waiter[1].done():
                if ok:
                    waiter[1].set_result(value)
                else:
                    waiter[1].set_exception(NotExportedError(value))
        else:
            raise ValueError(f"unknown control op {op!r}")

    def _on_nodeup(self, peer: str) -> None:
        now = self.loop.time()
        for service in list(self._services.values()):
            self._exec_service(service.service, service.on_nodeup(peer, now))

    def _on_nodedown(self, peer: str, reason: str) -> None:
        for ref, (watcher, target) in self._remote_monitors.pop(peer, {}).items():
            w = self._procs.get(watcher.id)
            if w is not None and w.monitors.pop(ref, None) is not None:
                w.deliver(Down(ref, target, "noconnection"))
        for local, remote in self._remote_links.pop(peer, set()):
            proc = self._procs.get(local.id)
            if proc is not None and remote in proc.links:
                self._signal(proc, remote, "noconnection")
        for target, ref in self._watched_by_remote.pop(peer, set()):
            proc = self._procs.get(target.id)
            if proc is not None:
                proc.monitored_by.pop(ref, None)
        for node, fut in list(self._spawn_waiters.values()):
            if node == peer and not fut.done():
                fut.set_exception(NodeDownError(peer, reason))
        now = self.loop.time()
        for service in list(self._services.values()):
            self._exec_service(service.service, service.on_nodedown(peer, reason, now))

    async def _stop_processes(self) -> None:
        procs = [p for p in self._procs.values() if p.alive]
        for proc in procs:
            self._kill(proc, "shutdown")
        tasks = [p.task for p in procs if p.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=self.config.drain_timeout)
