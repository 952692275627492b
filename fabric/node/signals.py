"""Signals between processes: links, monitors, exit signals, and the calls' monitors.

Theory of operation
-------------------
The semantics and the bookkeeping are the sans-I/O :class:`~fabric.protocol.processes.
ProcessCore` (links, monitors, exit signals, spawn requests and replies, the calls'
monitors, nodedown fan-out, as input -> effects; its module docstring has the rules).
:class:`Signals` is the thin runtime around it: it turns the node's events (a process
asks for a link or a monitor, a process ends, a control message or a call arrives, a
peer comes up or goes down) into core inputs and runs the effects the core returns
through the node's one effect executor: ``Deliver`` by the process table, the mesh's
``Control`` (``[K_CTRL, op, ...]`` on the peer's ordered stream) by the channels,
:class:`~fabric.protocol.processes.Kill`, ``ServeSpawn``, ``SpawnReplied`` and
``SpawnLost`` here. The core shares the process table's dicts (a
:class:`~fabric.process.Process` is the core's state for its process), so nothing is
kept twice.

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
reports ``Down``. Encoding the call and the reply, and waiting for room, are this
module's; which monitors exist is the core's.

Its methods without an underscore are the node's documented low-level interface for
processes, calls and GenServers (ARCHITECTURE.md, "Low-level interface").
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from fabric.config import NodeConfig
from fabric.errors import (
    BackpressureError,
    NodeDownError,
    NodeDrainingError,
    NotExportedError,
    SpawnTimeout,
)
from fabric.exports import resolve_export
from fabric.node.channels import Channels
from fabric.node.effects import EffectExecutor
from fabric.node.metrics import Metrics
from fabric.node.processes import ProcessTable, running_process
from fabric.node.services import ServiceHost
from fabric.protocol.codec import Codec
from fabric.protocol.effects import Deliver, ExitProcess
from fabric.protocol.mesh import MeshCore
from fabric.protocol.mesh_effects import Control
from fabric.protocol.messages import K_CALL, K_CTRL, K_REPLY
from fabric.protocol.messages import REPLY_TAG as CALL_REPLY
from fabric.protocol.processes import (
    Down,
    Kill,
    ProcessCore,
    RegName,
    ServeSpawn,
    SpawnLost,
    SpawnReplied,
)
from fabric.timeouts import wait_for
from fabric.types import Pid, Ref

if TYPE_CHECKING:
    from fabric.process import Process

__all__ = ["RegName", "Signals"]

_U64 = 1 << 64  # pid and ref ids are u64 on the wire (PROTOCOL.md section 5)
# The text of a remote spawn refused by a draining node (its spawn_reply's error): the
# requester raises NodeDrainingError for it; an older requester shows it as the
# NotExportedError message it takes any refusal for.
SPAWN_REFUSED_DRAINING = "node_draining: the node is stopping and takes no new work"


class Signals:
    """Links, monitors, exit signals, remote spawns and calls' monitors of one node: the
    runtime around its :class:`~fabric.protocol.processes.ProcessCore`.

    Wired by :class:`fabric.node.Node` with the objects it uses; :meth:`attach` gives it
    the node's effect executor.
    """

    def __init__(self, table: ProcessTable, channels: Channels, mesh: MeshCore,
                 services: ServiceHost, codec: Codec, metrics: Metrics,
                 config: NodeConfig, send: Any, name: str, creation: int) -> None:
        self._table = table
        self._procs = table._procs  # the table's dict, read here on every signal
        self._channels = channels.by_peer
        self._mesh = mesh
        self._services = services
        self._codec = codec
        self._metrics = metrics
        self._config = config
        self._send = send  # the node's send: pid, name or (name, node)
        self.name = name  # this run's
        self.creation = creation
        # The bookkeeping, sharing the table's processes and names and its ref counter.
        self.core = ProcessCore(name, creation, procs=table._procs, names=table._names,
                                make_ref=table.make_ref)
        # ref -> future of a spawn_on waiting for its spawn_reply
        self._spawn_waiters: dict[Ref, asyncio.Future[Pid]] = {}
        self._run: Any = None  # the executor's run, set by attach()
        # Set by a graceful stop (fabric.node.drain): calls and spawns from other nodes
        # are refused from then on (the caller gets NodeDrainingError).
        self.draining = False
        # Calls from other nodes not answered yet: (caller's node, ref id) -> (server's
        # pid, caller's creation). Plain tuples: built, hashed and compared in C.
        # What a graceful stop waits for (calls_in_flight); an entry goes when the
        # reply is queued, or with the server (exited).
        self._inbound_calls: dict[tuple[str, int], tuple[Pid, int]] = {}

    def attach(self, executor: EffectExecutor) -> None:
        """Run the core's effects through ``executor`` (called once, by the wiring)."""
        self._run = executor.run
        executor.register(Kill, self._on_kill)
        executor.register(ServeSpawn, self._on_serve_spawn)
        executor.register(SpawnReplied, self._on_spawn_replied)
        executor.register(SpawnLost, self._on_spawn_lost)
        executor.register(ExitProcess, self._on_exit_process)

    def make_ref(self) -> Ref:
        return self._table.make_ref()

    def is_local(self, pid: Pid) -> bool:
        return pid.node == self.name

    # -- what the tests and `fabric status` may read ---------------------------------------

    def monitors_held_on(self, peer: str) -> int:
        """How many monitors local processes hold on processes of ``peer``."""
        return self.core.peer_bookkeeping(peer)[0]

    def links_with(self, peer: str) -> int:
        """How many links cross from local processes to processes of ``peer``."""
        return self.core.peer_bookkeeping(peer)[1]

    def watched_by(self, peer: str) -> int:
        """How many monitors processes of ``peer`` hold on local processes."""
        return self.core.peer_bookkeeping(peer)[2]

    # -- requests from local processes -----------------------------------------------------

    def link(self, proc: Process, pid: Pid) -> None:
        self._run(self.core.link(proc.self, pid))

    def unlink(self, proc: Process, pid: Pid) -> None:
        self._run(self.core.unlink(proc.self, pid))

    def monitor(self, proc: Process, dest: Pid | tuple[str, str]) -> Ref:
        ref, effects = self.core.monitor(proc.self, dest)
        self._run(effects)
        return ref

    def demonitor(self, proc: Process, ref: Ref) -> None:
        self._run(self.core.demonitor(proc.self, ref))

    def forget_monitor(self, proc: Process, ref: Ref) -> None:
        """Drop our side of a monitor the target's node already released."""
        self.core.forget_monitor(proc.self, ref)

    def exit(self, pid: Pid, reason: Any) -> None:
        """Send an exit signal to ``pid`` (``"kill"`` kills even a trapping process),
        from the process running the current task if there is one: a trapping receiver
        sees ``Exit(sender, reason)``, as with Erlang's ``exit/2``."""
        sender = running_process()
        self._run(self.core.exit(pid, reason, None if sender is None else sender.self))

    def kill(self, proc: Process, reason: Any) -> None:
        """End ``proc`` with ``reason``: cancel its task (a process already ending keeps
        its first reason), or end a task-less mailbox at once."""
        if proc.task is None:
            self.exited(proc, reason)
        elif proc.pending_kill is None and not proc.task.done():
            proc.pending_kill = reason
            proc.task.cancel()

    # -- calls -----------------------------------------------------------------------------

    def call_send(self, proc: Process, target: Pid | tuple[str, str],
                  request: Any) -> tuple[Ref, list[Any] | None]:
        """Monitor a remote ``target`` and send it a GenServer call, in one K_CALL message.

        Returns the monitor's ref and, when the peer's buffer was full, the message still
        to send (with :meth:`fabric.node.channels.Channels.push_wait`). An unreachable
        node gives ``Down(noconnection)``.

        Raises:
            LocalProtocolError: ``request`` cannot be encoded (nothing was sent).
        """
        caller = proc.self
        ref, unreachable = self.core.call_sent(caller, target)
        if unreachable:
            self._run(unreachable)
            return ref, None
        if type(target) is Pid:
            node: str = target[0]
            to: Any = target
        else:
            to, node = target
        ch = self._channels.get(node)
        if ch is None:  # the session is being torn down: as if it were down already
            self.core.forget_monitor(caller, ref)
            watched: Any = target if type(target) is Pid else RegName(*target)
            proc.deliver(Down(ref, watched, "noconnection"))
            return ref, None
        # The caller and the ref are ours: the receiver knows our name, so they travel
        # as integers (see K_CALL).
        message = [K_CALL, to, self.creation, caller[1], ref[1], request]
        try:
            ch.out.push_checked(message)
        except BackpressureError:
            return ref, message
        except BaseException:
            self.core.forget_monitor(caller, ref)  # nothing was sent
            raise
        return ref, None

    def on_call(self, peer: str, msg: list[Any]) -> None:
        if self.draining:
            self._refuse_call(peer, msg)
            return
        effects = self.core.call_received(peer, self._mesh.creation_of(peer), msg)
        if type(effects[0]) is Deliver:  # delivered (else: "down noproc" to the caller)
            self._inbound_calls[(peer, msg[4])] = (effects[0].pid, msg[2])
        self._run(effects)

    def _refuse_call(self, peer: str, msg: list[Any]) -> None:
        """Answer a call that came during a graceful stop with the ``down`` of its
        monitor, reason ``"draining"``: the request reaches no process, and the caller
        raises :class:`~fabric.errors.NodeDrainingError` (one before this reason raises
        ``ProcessDeadError(..., "draining")``)."""
        _, to, creation, caller_id, ref_id, _request = msg
        if (creation != self._mesh.creation_of(peer) or type(caller_id) is not int
                or type(ref_id) is not int or not (0 <= caller_id < _U64 and 0 <= ref_id < _U64)):
            raise ValueError("malformed call")  # the reactor counts it as bad input
        caller = tuple.__new__(Pid, (peer, caller_id, creation))
        ref = tuple.__new__(Ref, (peer, ref_id, creation))
        gone = (to, self.name) if type(to) is str else to
        self._run([Control(peer, [K_CTRL, "down", ref, gone, "draining", caller])])

    def calls_in_flight(self) -> int:
        """How many calls from other nodes local servers received and have not answered
        yet (a server that replies later with ``reply()`` counts until it does)."""
        inbound = self._inbound_calls
        for key, (server, creation) in list(inbound.items()):
            proc = self._procs.get(server[1])
            if (proc is None or proc.self != server
                    or Ref(key[0], key[1], creation) not in proc.monitored_by):
                del inbound[key]  # answered by a path that does not pass here, or gone
        return len(inbound)

    def release_call(self, proc: Process, caller: Pid, ref: Ref) -> bool:
        """The server ``proc`` answered the call ``(caller, ref)``: drop the monitor the
        call installed on it. True if there was one (the caller then drops its side
        without a ``demon``)."""
        return self.core.call_released(proc.self, caller, ref)

    def hold_call(self, proc: Process, caller: Pid, ref: Ref) -> None:
        """Undo :meth:`release_call`: the reply could not be queued yet."""
        self.core.call_held(proc.self, caller, ref)

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
        else:
            message = (CALL_REPLY, ref, ok, value, released)
            self._codec.encode(message)  # refuse it here, as push_checked does
            self._send(caller, message)
        if self._inbound_calls:
            self._inbound_calls.pop((ref[0], ref[1]), None)  # answered: not in flight

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

    # -- events: control messages, exits, sessions ----------------------------------------

    def on_ctrl(self, peer: str, msg: list[Any]) -> None:
        self._run(self.core.on_control(peer, msg))

    def exited(self, proc: Process, reason: Any) -> None:
        """``proc`` ended with ``reason``: take it out of the table, tell its monitors and
        links (local ones directly, remote ones by a control message), then the services."""
        if not proc.alive:
            return
        proc.exit_reason = reason
        pid = proc.self
        if self._inbound_calls and proc.monitored_by:
            for ref in proc.monitored_by:  # its unanswered calls end with it
                self._inbound_calls.pop((ref[0], ref[1]), None)
        effects = self.core.exited(pid, reason)  # takes it out of the shared table too
        self._table.remove(proc)
        self._run(effects)
        self._services.process_exited(pid, reason)

    def nodeup(self, peer: str) -> None:
        self._run(self.core.nodeup(peer))

    def nodedown(self, peer: str, reason: str) -> None:
        """The session with ``peer`` ended: every monitor held there fires
        ``noconnection``, every link to it delivers a ``noconnection`` exit signal, its
        monitors on our processes are forgotten and its pending spawns fail."""
        self._run(self.core.nodedown(peer, reason))

    # -- remote spawns ---------------------------------------------------------------------

    async def spawn_remote(self, node: str, spec: str, args: tuple[Any, ...],
                           link_to: Process | None, timeout: float) -> Pid:
        """Ask ``node`` (session up) to spawn ``spec``; see :meth:`fabric.Node.spawn_on`.

        Raises:
            NotExportedError: the function is unknown there or not exported.
            NodeDownError: the node went down meanwhile.
            NodeDrainingError: the node is stopping gracefully (nothing was started).
            SpawnTimeout: the node is up but did not answer within ``timeout``.
        """
        requester = link_to.self if link_to is not None else None
        ref, effects = self.core.spawn_request(node, spec, args, requester)
        fut: asyncio.Future[Pid] = asyncio.get_running_loop().create_future()
        self._spawn_waiters[ref] = fut
        try:
            self._run(effects)
            return await wait_for(fut, timeout, f"spawn_on {node} {spec}", SpawnTimeout)
        except NotExportedError as exc:
            if exc.args == (SPAWN_REFUSED_DRAINING,):
                raise NodeDrainingError(node) from None
            raise
        finally:
            del self._spawn_waiters[ref]
            if not fut.done() or fut.cancelled():
                # Given up (a timeout, or the requester was killed): a linked child is
                # still linked, or ended, when its reply comes (see ProcessCore).
                self.core.spawn_abandoned(ref)

    def _on_serve_spawn(self, service: str, eff: ServeSpawn) -> None:
        if self.draining:
            self._run(self.core.spawn_refused(eff.peer, eff.ref, SPAWN_REFUSED_DRAINING))
            return
        try:
            fn = resolve_export(eff.spec, self._config.allow_remote_spawn)
            pid = self._table.spawn(fn, tuple(eff.args))
        except NotExportedError as exc:
            self._run(self.core.spawn_refused(eff.peer, eff.ref, str(exc)))
            return
        self._run(self.core.spawn_served(eff.peer, eff.ref, eff.reply_to, eff.link, pid))

    def _on_spawn_replied(self, service: str, eff: SpawnReplied) -> None:
        fut = self._spawn_waiters.get(eff.ref)
        if fut is not None and not fut.done():
            if eff.ok:
                fut.set_result(eff.value)
            else:
                fut.set_exception(NotExportedError(eff.value))

    def _on_spawn_lost(self, service: str, eff: SpawnLost) -> None:
        fut = self._spawn_waiters.get(eff.ref)
        if fut is not None and not fut.done():
            fut.set_exception(NodeDownError(eff.peer, eff.reason))

    def _on_exit_process(self, service: str, eff: ExitProcess) -> None:
        """A service core ends a local process (global kills a name conflict's loser): an
        explicit exit signal from no process, like ``node.exit(pid, reason)``."""
        self._run(self.core.exit(eff.pid, eff.reason))

    def _on_kill(self, service: str, eff: Kill) -> None:
        proc = self._procs.get(eff.pid[1])
        if proc is not None and proc.self == eff.pid:
            self.kill(proc, eff.reason)

    async def stop_processes(self, timeout: float) -> None:
        """Kill every local process with reason ``shutdown`` and wait (at most
        ``timeout`` seconds) for their tasks to end."""
        procs = [p for p in self._procs.values() if p.alive]
        for proc in procs:
            self.kill(proc, "shutdown")
        tasks = [p.task for p in procs if p.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
