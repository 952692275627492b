"""Signals between processes: links, monitors, exit signals, and the calls' monitors.

Theory of operation
-------------------
Signals between processes on different nodes travel as ``[K_CTRL, op, ...]`` messages on
the same ordered stream as messages, so a message sent before an exit is delivered before
the exit signal:

    ["link", from, to]            ["unlink", from, to]      ["exit", from, to, reason]
    ["mon", watcher, target, ref] ["demon", watcher, target, ref]
    ["down", ref, target, reason, watcher]
    ["spawn", reply_to, ref, "module:function", args, link]
    ["spawn_reply", ref, ok, pid_or_error_text]

A GenServer call to another node is one ``[K_CALL, target, creation, caller_id, ref_id,
request]`` message (the caller and its ref live on the sending node, so integers name
them): the receiving node installs the monitor and delivers the request in one step (what
a ``mon`` followed by a send would do). When the server answers straight from its loop
it releases that monitor itself and says so in the reply (``[K_REPLY, creation, pid_id,
ref_id, ok, value, released]``), so the caller forgets its side without a ``demon``
message: a call costs one message each way. A reply that must wait for room in the
caller's buffer keeps the monitor until it is queued, so a server killed meanwhile still
reports ``Down``.

Each side keeps its half of every cross-node link and monitor, indexed by peer
(``_remote_monitors``, ``_remote_links``, ``_watched_by_remote``), so that a nodedown
resolves them all locally (see :meth:`Signals.nodedown`).

All of this bookkeeping lives in this one object (:class:`Signals`), composed into the
node with the process table, the channels and the service host it uses. A process's exit
(:meth:`Signals.exited`) and a peer's nodedown (:meth:`Signals.nodedown`) are resolved
here. Its methods without an underscore are the node's documented low-level interface
for processes, calls and GenServers (ARCHITECTURE.md, "Low-level interface").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NamedTuple

from fabric.config import NodeConfig
from fabric.errors import BackpressureError, NodeDownError, NotExportedError
from fabric.exports import resolve_export
from fabric.node.channels import Channels
from fabric.node.metrics import Metrics
from fabric.node.processes import ProcessTable
from fabric.node.services import ServiceHost
from fabric.process import KILLED, NORMAL, Down, Exit, Process
from fabric.protocol.codec import Codec
from fabric.protocol.mesh import MeshCore
from fabric.protocol.messages import CALL_TAG, K_CALL, K_CTRL, K_REPLY
from fabric.protocol.messages import REPLY_TAG as CALL_REPLY
from fabric.types import Pid, Ref

__all__ = ["RegName", "Signals"]

_U64 = 1 << 64  # pid and ref ids are u64 on the wire (PROTOCOL.md section 5)


class RegName(NamedTuple):
    """A monitor target given as ``(name, node)``: Erlang's ``{Name, Node}``."""

    name: str
    node: str


class Signals:
    """Links, monitors, exit signals, remote spawns and calls' monitors of one node.

    The one owner of the cross-node bookkeeping indexed by peer (what a nodedown
    resolves) and the only writer of the link and monitor sets of the processes. Wired
    by :class:`fabric.node.Node` with the objects it uses.
    """

    def __init__(self, table: ProcessTable, channels: Channels, mesh: MeshCore,
                 services: ServiceHost, codec: Codec, metrics: Metrics,
                 config: NodeConfig, send: Callable[[Any, Any], None], name: str,
                 creation: int) -> None:
        self._table = table
        self._procs = table._procs  # the table's dict, read here on every signal
        self._names = table._names
        self._channels = channels.by_peer
        self._push = channels.push
        self._mesh = mesh
        self._services = services
        self._codec = codec
        self._metrics = metrics
        self._config = config
        self._send = send  # the node's send: pid, name or (name, node)
        self.name = name  # this run's
        self.creation = creation
        # peer -> {ref: (watcher local pid, target remote pid)}: monitors we hold there
        self._remote_monitors: dict[str, dict[Ref, tuple[Pid, Any]]] = {}
        # peer -> {(local pid, remote pid)}: links that cross to that peer
        self._remote_links: dict[str, set[tuple[Pid, Pid]]] = {}
        # peer -> {(local target pid, ref)}: monitors that peer's processes hold on ours
        self._watched_by_remote: dict[str, set[tuple[Pid, Ref]]] = {}
        # ref -> (node, future) of a spawn_on waiting for its spawn_reply
        self._spawn_waiters: dict[Ref, tuple[str, asyncio.Future[Pid]]] = {}

    def make_ref(self) -> Ref:
        return self._table.make_ref()

    def is_local(self, pid: Pid) -> bool:
        return pid.node == self.name

    # -- what the tests and `fabric status` may read ---------------------------------------

    def monitors_held_on(self, peer: str) -> int:
        """How many monitors local processes hold on processes of ``peer``."""
        return len(self._remote_monitors.get(peer, ()))

    def watched_by(self, peer: str) -> int:
        """How many monitors processes of ``peer`` hold on local processes."""
        return len(self._watched_by_remote.get(peer, ()))

    def links_with(self, peer: str) -> int:
        """How many links cross from local processes to processes of ``peer``."""
        return len(self._remote_links.get(peer, ()))

    def _ctrl(self, node: str, args: list[Any]) -> None:
        ch = self._channels.get(node)
        if ch is not None:
            ch.out.push_control([K_CTRL, *args])

    # -- links, monitors, exits -----------------------------------------------------------

    def link(self, proc: Process, pid: Pid) -> None:
        if pid in proc.links:
            return
        proc.links.add(pid)
        if self.is_local(pid):
            target = self._procs.get(pid.id)
            if target is None or target.self != pid:
                self._signal(proc, pid, "noproc")
            else:
                target.links.add(proc.self)
        elif self._mesh.is_up(pid.node):
            self._remote_links.setdefault(pid.node, set()).add((proc.self, pid))
            self._ctrl(pid.node, ["link", proc.self, pid])
        else:
            self._signal(proc, pid, "noconnection")

    def unlink(self, proc: Process, pid: Pid) -> None:
        proc.links.discard(pid)
        if self.is_local(pid):
            target = self._procs.get(pid.id)
            if target is not None:
                target.links.discard(proc.self)
        else:
            self._remote_links.get(pid.node, set()).discard((proc.self, pid))
            self._ctrl(pid.node, ["unlink", proc.self, pid])

    def monitor(self, proc: Process, dest: Pid | tuple[str, str]) -> Ref:
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
        elif self._mesh.is_up(pid.node):
            self._remote_monitors.setdefault(pid.node, {})[ref] = (proc.self, pid)
            self._ctrl(pid.node, ["mon", proc.self, pid, ref])
        else:
            del proc.monitors[ref]
            proc.deliver(Down(ref, pid, "noconnection"))
        return ref

    def call_send(self, proc: Process, target: Pid | tuple[str, str],
                   request: Any) -> tuple[Ref, list[Any] | None]:
        """Monitor a remote ``target`` and send it a GenServer call, in one K_CALL message.

        Returns the monitor's ref and, when the peer's buffer was full, the message still
        to send (with :meth:`fabric.node.channels.Channels.push_wait`). An unreachable
        node gives ``Down(noconnection)``.

        Raises:
            LocalProtocolError: ``request`` cannot be encoded (nothing was sent).
        """
        ref = self.make_ref()
        if type(target) is Pid:
            node: str = target[0]
            to: Any = target
            watched: Any = target
        else:
            to, node = target
            watched = RegName(to, node)
        ch = self._channels.get(node)
        if ch is None or not self._mesh.is_up(node):
            proc.deliver(Down(ref, watched, "noconnection"))
            return ref, None
        # The caller and the ref are ours: the receiver knows our name, so they travel
        # as integers (see K_CALL).
        message = [K_CALL, to, self.creation, proc.self[1], ref[1], request]
        try:
            ch.out.push_checked(message)
        except BackpressureError:
            unsent: list[Any] | None = message
        else:
            unsent = None
        proc.monitors[ref] = watched
        monitors = self._remote_monitors.get(node)
        if monitors is None:
            monitors = self._remote_monitors[node] = {}
        monitors[ref] = (proc.self, watched)
        return ref, unsent

    def on_call(self, peer: str, msg: list[Any]) -> None:
        _, to, creation, caller_id, ref_id, request = msg
        if type(caller_id) is not int or type(ref_id) is not int:
            raise TypeError("call without a caller and a ref")
        # The caller is the peer's: its run and ids as a pid/ref ext would bound them (a
        # pid this node cannot encode must not reach a server's From).
        if (creation != self._mesh.creation_of(peer)
                or not (0 <= caller_id < _U64 and 0 <= ref_id < _U64)):
            raise ValueError("call from another run of the peer, or ids out of range")
        # Built in C, as the codec builds decoded pids: this runs once per call.
        caller = tuple.__new__(Pid, (peer, caller_id, creation))
        ref = tuple.__new__(Ref, (peer, ref_id, creation))
        if type(to) is str:
            pid: Any = self._names.get(to)
            gone: Any = (to, self.name)  # as a "mon" on (name, node) reports it
        else:
            pid = gone = to
        proc = self._procs.get(pid[1]) if type(pid) is Pid and pid[0] == self.name else None
        # Identity first: a registered name maps to the very pid object of the process.
        if proc is None or (proc.self is not pid and proc.self != pid) or not proc.alive:
            self._ctrl(peer, ["down", ref, gone, "noproc", caller])
            return
        proc.monitored_by[ref] = caller
        watched = self._watched_by_remote.get(peer)
        if watched is None:
            watched = self._watched_by_remote[peer] = set()
        watched.add((pid, ref))
        proc.deliver((CALL_TAG, (caller, ref), request))

    def release_call(self, proc: Process, caller: Pid, ref: Ref) -> bool:
        """The server ``proc`` answered the call ``(caller, ref)``: drop the monitor the
        call installed on it. True if there was one (the caller then drops its side
        without a ``demon``)."""
        watcher = proc.monitored_by.get(ref)
        # Identity first: the From a server answers holds the very pid stored here.
        if watcher is not caller and (watcher is None or watcher != caller):
            return False
        del proc.monitored_by[ref]
        if caller[0] != self.name:
            watched = self._watched_by_remote.get(caller[0])
            if watched is not None:
                watched.discard((proc.self, ref))
        return True

    def hold_call(self, proc: Process, caller: Pid, ref: Ref) -> None:
        """Undo :meth:`_release_call`: the reply could not be queued yet."""
        proc.monitored_by[ref] = caller
        if caller[0] != self.name:
            watched = self._watched_by_remote.get(caller[0])
            if watched is None:
                watched = self._watched_by_remote[caller[0]] = set()
            watched.add((proc.self, ref))

    def send_reply(self, caller: Pid, ref: Ref, ok: bool, value: Any,
                    released: bool) -> None:
        """Send a call's reply ``(REPLY_TAG, ref, ok, value, released)`` to ``caller``.

        Raises:
            LocalProtocolError: the reply is bound for another node and cannot be encoded
                (nothing was sent).
            BackpressureError: the caller's node's buffer is full.
        """
        node = caller[0] if type(caller) is Pid else None
        if node == self.name:
            self._table.deliver_pid(caller, (CALL_REPLY, ref, ok, value, released))
            return
        ch = self._channels.get(node) if node is not None else None
        if ch is not None and type(ref) is Ref and ref[0] == node and ref[2] == caller[2]:
            # The caller and the ref belong to the receiver: integers suffice (K_REPLY).
            ch.out.push_checked([K_REPLY, caller[2], caller[1], ref[1], ok, value, released])
            return
        message = (CALL_REPLY, ref, ok, value, released)
        self._codec.encode(message)  # refuse it here, as push_checked does
        self._send(caller, message)

    def on_reply(self, msg: list[Any]) -> None:
        _, creation, pid_id, ref_id, ok, value, released = msg
        if (type(creation) is not int or type(pid_id) is not int or type(ref_id) is not int
                or type(ok) is not bool or type(released) is not bool
                or not 0 <= ref_id < _U64):
            raise TypeError("reply fields of the wrong type or range")
        if creation == self.creation:  # else it is for a pid of an earlier run
            proc = self._procs.get(pid_id)
            if proc is not None:
                ref = tuple.__new__(Ref, (self.name, ref_id, creation))
                proc.deliver((CALL_REPLY, ref, ok, value, released))
                return
        self._metrics.undeliverable += 1

    def forget_monitor(self, proc: Process, ref: Ref) -> None:
        """Drop our side of a monitor the target's node already released."""
        target = proc.monitors.pop(ref, None)
        if target is None:
            return
        node = target[0] if type(target) is Pid else target.node  # RegName
        if node != self.name:
            monitors = self._remote_monitors.get(node)
            if monitors is not None:
                monitors.pop(ref, None)

    def demonitor(self, proc: Process, ref: Ref) -> None:
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
            self.kill(proc, KILLED)
        elif proc.trap_exits:
            proc.deliver(Exit(sender if sender is not None else proc.self, reason))
        elif reason != NORMAL:
            self.kill(proc, reason)

    def kill(self, proc: Process, reason: Any) -> None:
        if proc.task is None:
            self.exited(proc, reason)
        elif proc.pending_kill is None and not proc.task.done():
            proc.pending_kill = reason
            proc.task.cancel()

    def on_ctrl(self, peer: str, msg: list[Any]) -> None:
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
                fn = resolve_export(spec, self._config.allow_remote_spawn)
                pid = self._table.spawn(fn, tuple(args))
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

    # -- exits, nodedowns, remote spawns ---------------------------------------------------

    def exited(self, proc: Process, reason: Any) -> None:
        """``proc`` ended with ``reason``: take it out of the table, tell its monitors and
        links (local ones directly, remote ones by a control message), then the services."""
        if not proc.alive:
            return
        proc.exit_reason = reason
        pid = proc.self
        self._table.remove(proc)
        procs = self._procs
        for ref, watcher in proc.monitored_by.items():
            if self.is_local(watcher):
                w = procs.get(watcher.id)
                if w is not None and w.monitors.pop(ref, None) is not None:
                    w.deliver(Down(ref, pid, reason))
            else:
                self._watched_by_remote.get(watcher.node, set()).discard((pid, ref))
                self._ctrl(watcher.node, ["down", ref, pid, reason, watcher])
        for other in proc.links:
            if self.is_local(other):
                o = procs.get(other.id)
                if o is not None:
                    self._signal(o, pid, reason)
            else:
                self._remote_links.get(other.node, set()).discard((pid, other))
                self._ctrl(other.node, ["exit", pid, other, reason])
        for ref, target in proc.monitors.items():
            if not self.is_local(target):
                self._remote_monitors.get(target.node, {}).pop(ref, None)
        self._services.process_exited(pid, reason)

    def nodedown(self, peer: str, reason: str) -> None:
        """The session with ``peer`` ended: every monitor held there fires
        ``noconnection``, every link to it delivers a ``noconnection`` exit signal, its
        monitors on our processes are forgotten and its pending spawns fail."""
        procs = self._procs
        for ref, (watcher, target) in self._remote_monitors.pop(peer, {}).items():
            w = procs.get(watcher.id)
            if w is not None and w.monitors.pop(ref, None) is not None:
                w.deliver(Down(ref, target, "noconnection"))
        for local, remote in self._remote_links.pop(peer, set()):
            proc = procs.get(local.id)
            if proc is not None and remote in proc.links:
                self._signal(proc, remote, "noconnection")
        for target, ref in self._watched_by_remote.pop(peer, set()):
            proc = procs.get(target.id)
            if proc is not None:
                proc.monitored_by.pop(ref, None)
        for node, fut in list(self._spawn_waiters.values()):
            if node == peer and not fut.done():
                fut.set_exception(NodeDownError(peer, reason))

    async def spawn_remote(self, node: str, spec: str, args: tuple[Any, ...],
                           link_to: Process | None, timeout: float) -> Pid:
        """Ask ``node`` (session up) to spawn ``spec``; see :meth:`fabric.Node.spawn_on`.

        Raises:
            NotExportedError: the function is unknown there or not exported.
            NodeDownError: the node went down meanwhile, or did not answer in time.
        """
        ref = self.make_ref()
        fut: asyncio.Future[Pid] = asyncio.get_running_loop().create_future()
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

    async def stop_processes(self, timeout: float) -> None:
        """Kill every local process with reason ``shutdown`` and wait (at most
        ``timeout`` seconds) for their tasks to end."""
        procs = [p for p in self._procs.values() if p.alive]
        for proc in procs:
            self.kill(proc, "shutdown")
        tasks = [p.task for p in procs if p.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
