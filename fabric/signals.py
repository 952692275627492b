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
resolves them all locally (see :meth:`fabric.runtime.ProcessRuntime._on_nodedown`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, NamedTuple

from fabric.errors import BackpressureError, NotExportedError
from fabric.exports import resolve_export
from fabric.process import KILLED, NORMAL, Down, Exit, Process
from fabric.protocol.messages import CALL_TAG, K_CALL, K_CTRL, K_REPLY
from fabric.protocol.messages import REPLY_TAG as CALL_REPLY
from fabric.types import Pid, Ref

if TYPE_CHECKING:
    from fabric.protocol.codec import Codec
    from fabric.protocol.mesh import MeshCore

__all__ = ["RegName", "Signals"]

_U64 = 1 << 64  # pid and ref ids are u64 on the wire (PROTOCOL.md section 5)


class RegName(NamedTuple):
    """A monitor target given as ``(name, node)``: Erlang's ``{Name, Node}``."""

    name: str
    node: str


class Signals:
    """Mixin of :class:`fabric.runtime.ProcessRuntime`: links, monitors, exit signals and
    control ops. Not used on its own; the state it reads is the runtime's."""

    # provided by ProcessRuntime / Node
    name: str
    creation: int
    config: Any
    codec: Codec
    metrics: dict[str, int]
    mesh: MeshCore
    _channels: dict[str, Any]
    _procs: dict[int, Process]
    _names: dict[str, Pid]
    _remote_monitors: dict[str, dict[Ref, tuple[Pid, Pid]]]
    _remote_links: dict[str, set[tuple[Pid, Pid]]]
    _watched_by_remote: dict[str, set[tuple[Pid, Ref]]]
    _spawn_waiters: dict[Ref, tuple[str, asyncio.Future[Pid]]]

    if TYPE_CHECKING:
        def make_ref(self) -> Ref: ...
        def is_local(self, pid: Pid) -> bool: ...
        def spawn(self, fn: Any, *args: Any, link_to: Process | None = None,
                  name: str | None = None) -> Pid: ...
        def _push(self, node: str, message: list[Any]) -> None: ...
        def _exited(self, proc: Process, reason: Any) -> None: ...
        def _deliver_pid(self, pid: Any, message: Any) -> None: ...
        def send(self, dest: Any, message: Any) -> None: ...
        async def _wait_for_room(self, node: str) -> bool: ...

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
        if ch is None or not self.mesh.is_up(node):
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
        _, to, creation, caller_id, ref_id, request = msg
        if type(caller_id) is not int or type(ref_id) is not int:
            raise TypeError("call without a caller and a ref")
        # The caller is the peer's: its run and ids as a pid/ref ext would bound them (a
        # pid this node cannot encode must not reach a server's From).
        session = self.mesh.peers.get(peer)
        if (session is None or creation != session.creation
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
            watched = self._watched_by_remote.get(caller[0])
            if watched is not None:
                watched.discard((proc.self, ref))
        return True

    def _hold_call(self, proc: Process, caller: Pid, ref: Ref) -> None:
        """Undo :meth:`_release_call`: the reply could not be queued yet."""
        proc.monitored_by[ref] = caller
        if caller[0] != self.name:
            watched = self._watched_by_remote.get(caller[0])
            if watched is None:
                watched = self._watched_by_remote[caller[0]] = set()
            watched.add((proc.self, ref))

    def _send_reply(self, caller: Pid, ref: Ref, ok: bool, value: Any,
                    released: bool) -> None:
        """Send a call's reply ``(REPLY_TAG, ref, ok, value, released)`` to ``caller``.

        Raises:
            LocalProtocolError: the reply is bound for another node and cannot be encoded
                (nothing was sent).
            BackpressureError: the caller's node's buffer is full.
        """
        node = caller[0] if type(caller) is Pid else None
        if node == self.name:
            self._deliver_pid(caller, (CALL_REPLY, ref, ok, value, released))
            return
        ch = self._channels.get(node) if node is not None else None
        if ch is not None and type(ref) is Ref and ref[0] == node and ref[2] == caller[2]:
            # The caller and the ref belong to the receiver: integers suffice (K_REPLY).
            ch.out.push_checked([K_REPLY, caller[2], caller[1], ref[1], ok, value, released])
            return
        message = (CALL_REPLY, ref, ok, value, released)
        self.codec.encode(message)  # refuse it here, as push_checked does
        self.send(caller, message)

    def _on_reply(self, msg: list[Any]) -> None:
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
        self.metrics["undeliverable"] += 1

    def _forget_monitor(self, proc: Process, ref: Ref) -> None:
        """Drop our side of a monitor the target's node already released."""
        target = proc.monitors.pop(ref, None)
        if target is None:
            return
        node = target[0] if type(target) is Pid else target.node  # RegName
        if node != self.name:
            monitors = self._remote_monitors.get(node)
            if monitors is not None:
                monitors.pop(ref, None)

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
