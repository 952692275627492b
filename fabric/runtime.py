"""The process half of a node: the process table, spawning, names, sending, exits.

Theory of operation
-------------------
The node owns every local process (``_procs``: id -> :class:`Process`). A send to a local
pid appends to its mailbox; a send to a remote pid queues ``[K_SEND, pid, msg]`` on that
peer's ordered stream (connecting first if needed). Links, monitors, exit signals and the
control ops that carry them live in :mod:`fabric.signals`, a mixin of this class.

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
from typing import TYPE_CHECKING, Any

from fabric.errors import (
    BackpressureError,
    ConfigError,
    LocalProtocolError,
    NameConflictError,
    NodeDownError,
    SpawnTimeout,
)
from fabric.exports import resolve_export
from fabric.outbound import MAX_BATCH
from fabric.process import KILLED, NORMAL, Down, Process, ProcessExit, exception_reason
from fabric.protocol.codec import Codec
from fabric.protocol.mesh import MeshCore
from fabric.protocol.messages import K_REG_SEND, K_SEND, K_SEND_TUPLE
from fabric.services import ServiceHost
from fabric.signals import RegName, Signals
from fabric.timeouts import wait_for

if TYPE_CHECKING:
    from fabric.global_ import Global
from fabric.types import GlobalName, Pid, Ref

__all__ = ["ProcessRuntime", "RegName"]

ProcessFn = Callable[..., Awaitable[Any]]


class ProcessRuntime(Signals, ServiceHost):
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
        return tuple.__new__(Ref, (self.name, next(self._refs), self.creation))  # C only

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
            SpawnTimeout: the node is up but did not answer within ``timeout``.
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
            pid: Pid = await wait_for(fut, timeout, f"spawn_on {node} {spec}", SpawnTimeout)
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
