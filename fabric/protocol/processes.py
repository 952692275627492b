"""Process signals: links, monitors, exit signals, spawn replies and the calls' monitors.

Theory of operation
-------------------
One :class:`ProcessCore` per node keeps the signal bookkeeping of that node's processes
and turns every input into a list of effects; it never runs a process, owns a mailbox or
touches a socket. The runtime (:mod:`fabric.node.signals`) and the simulator
(:mod:`fabric.testing.processsim`) execute the effects: ``Deliver`` puts a ``Down``, an
``Exit`` or a call tuple in a mailbox, :class:`Kill` ends a process (which reports back
with :meth:`ProcessCore.exited`), the mesh's ``Control`` queues a ``[K_CTRL, op, ...]``
message on a peer's ordered stream (dropped when no session is up), and the spawn
effects serve or resolve a remote spawn.

The runtime may share its tables with the core: a process handle that is a
:class:`ProcessState` (``fabric.Process`` is one), kept in a dict the core was given as
``procs``, is the core's state for that process, so nothing is kept twice.

Semantics are Erlang's, as fabric has them on the wire (PROTOCOL.md section 6.2):

* **Links** are symmetric. A process that ends sends an exit signal with its reason
  along each link. A receiver with ``trap_exits`` gets ``Exit(sender, reason)`` as a
  message; otherwise any reason but ``"normal"`` ends it with that reason. An explicit
  :meth:`ProcessCore.exit` with ``"kill"`` (``exit(Pid, kill)``) ends even a trapping
  process, with ``"killed"``; a process that ended with reason ``"kill"`` itself sends an
  ordinary, trappable ``"kill"`` along its links, as in Erlang. An explicit exit names
  its sender (``exit(pid, reason, sender)``, ``exit2`` on the wire): a trapping receiver
  gets ``Exit(sender, reason)``, and no link is involved. Linking to a process
  that does not exist gives an immediate exit signal ``"noproc"`` (the peer answers
  ``link`` with ``exit ... noproc``); linking across a node that is not connected gives
  ``"noconnection"``. An exit signal that arrives after its sender was unlinked no
  longer applies.
* **Monitors** are one-way and fire exactly once: ``Down(ref, target, reason)`` when the
  target ends, ``"noproc"`` at once if it does not exist, ``"noconnection"`` when its node
  is or goes down. A monitor on ``(name, node)`` is resolved by that node when it is
  installed: it watches the pid the name held then, so a later re-registration of the
  name does not move it. :meth:`ProcessCore.demonitor` removes a monitor; a ``down``
  that arrives afterwards is dropped (the runtime also flushes a ``Down`` already in the
  mailbox).
* **Calls** (``K_CALL``) are a monitor and a request in one message: the server's node
  installs the caller's monitor as it delivers the request (:meth:`call_received`); when
  the server answers from its loop it releases the monitor (:meth:`call_released`) and
  says so in the reply, and the caller forgets its half (:meth:`forget_monitor`) without
  a ``demon``. A server that dies before replying fires the monitor (the caller raises
  ``ProcessDeadError``); one that replied first leaves nothing to fire.
* **Spawns** on another node (:meth:`spawn_request`) are answered with ``spawn_reply``;
  with ``link`` the new process is linked to the requester on both sides when the reply
  is handled. A requester that ends before the reply arrives cannot take the link any
  more, so the child is sent the exit signal the link would have carried.
* **Nodedown** resolves everything tied to the peer exactly once, locally: monitors held
  there fire ``"noconnection"``, links to its processes deliver ``"noconnection"`` exit
  signals, monitors its processes held here are dropped, pending spawns fail. Nothing is
  sent for a peer that is down.

Everything tied to a peer is indexed by peer so that its nodedown is one lookup; each
index entry is the other half of an entry in a :class:`ProcessState`, and both halves
are removed together, so nothing is left once every process has ended or every peer has
gone (:meth:`ProcessCore.bookkeeping` counts what is left).

Time plays no part (spawn timeouts are the caller's: :meth:`spawn_abandoned`); the only
entropy is the ref counter, which starts at 1 per node run (refs carry the creation).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from fabric.protocol.effects import Deliver
from fabric.protocol.mesh_effects import Control
from fabric.protocol.messages import CALL_TAG, K_CTRL
from fabric.types import Pid, Ref

__all__ = [
    "KILLED",
    "NORMAL",
    "Down",
    "Exit",
    "Kill",
    "ProcessCore",
    "ProcessState",
    "RegName",
    "ServeSpawn",
    "SignalEffect",
    "SpawnLost",
    "SpawnReplied",
]

NORMAL: Final = "normal"
KILLED: Final = "killed"
_U64: Final = 1 << 64  # pid and ref ids are u64 on the wire (PROTOCOL.md section 5)
_NONE: Final[list[Any]] = []  # shared empty result; callers never mutate a result


# -- messages a process receives ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Down:
    """A monitored process (or its node) is gone. Delivered exactly once per monitor."""

    ref: Ref
    pid: Pid
    reason: Any


@dataclass(frozen=True, slots=True)
class Exit:
    """An exit signal from a linked process, received as a message with ``trap_exits``."""

    pid: Pid
    reason: Any


class RegName(NamedTuple):
    """A monitor target given as ``(name, node)``: Erlang's ``{Name, Node}``."""

    name: str
    node: str


# -- effects ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Kill:
    """End the local process ``pid`` with ``reason`` (a process already ending keeps its
    first reason). The runtime reports the end with :meth:`ProcessCore.exited`."""

    pid: Pid
    reason: Any


@dataclass(frozen=True, slots=True)
class ServeSpawn:
    """``peer`` asks this node to start ``spec`` (``"module:function"``) with ``args``:
    resolve and start it, then report with :meth:`ProcessCore.spawn_served` or
    :meth:`ProcessCore.spawn_refused`."""

    peer: str
    reply_to: Pid | None
    ref: Ref
    spec: str
    args: list[Any]
    link: bool


@dataclass(frozen=True, slots=True)
class SpawnReplied:
    """The spawn ``ref`` this node requested was answered: ``value`` is the new pid when
    ``ok``, else the peer's error text (the function is not exported there)."""

    ref: Ref
    ok: bool
    value: Any


@dataclass(frozen=True, slots=True)
class SpawnLost:
    """The spawn ``ref`` will never be answered: ``peer`` went down with ``reason``."""

    ref: Ref
    peer: str
    reason: str


SignalEffect = Deliver | Kill | Control | ServeSpawn | SpawnReplied | SpawnLost
"""What :class:`ProcessCore` asks its runtime to do."""


# -- state --------------------------------------------------------------------------------


class ProcessState:
    """The signal state of one live local process. The runtime's process handle shares
    these containers (``links``, ``monitors``, ``monitored_by``), so each is kept once."""

    __slots__ = ("links", "monitored_by", "monitors", "names", "pid", "trap_exits")

    def __init__(self, pid: Pid) -> None:
        self.pid = pid
        self.trap_exits = False  # exit signals arrive as Exit messages instead of killing
        self.links: set[Pid] = set()  # linked pids, local or remote (one half each)
        # monitors this process holds: ref -> target (a Pid, or a RegName on another node)
        self.monitors: dict[Ref, Any] = {}
        self.monitored_by: dict[Ref, Pid] = {}  # monitors on this process: ref -> watcher
        self.names: set[str] = set()  # local names registered to this process


class _PendingSpawn:
    """A spawn this node asked ``peer`` for, until its reply (or the peer's nodedown)."""

    __slots__ = ("abandoned", "peer", "requester", "requester_exit")

    def __init__(self, peer: str, requester: Pid | None) -> None:
        self.peer = peer
        self.requester = requester  # the process to link the child to; None: no link
        self.requester_exit: Any = None  # its exit reason if it ended before the reply
        self.abandoned = False  # the caller stopped waiting (a timeout)


class ProcessCore:
    """The sans-I/O signal bookkeeping of one node run (see the module docstring).

    Args:
        node: this node's full name.
        creation: this node run's creation (local pids and refs carry it).
        procs: the live local processes by id, shared with the runtime (which adds a
            process's state as it starts it); default: the core's own, filled by
            :meth:`started`.
        names: the local registered names, shared likewise.
        make_ref: where refs come from (the runtime's counter, so that every ref of the
            run is unique); default: the core's own counter.
    """

    def __init__(self, node: str, creation: int, *, procs: dict[int, Any] | None = None,
                 names: dict[str, Pid] | None = None,
                 make_ref: Callable[[], Ref] | None = None) -> None:
        self.node = node
        self.creation = creation
        self._refs = itertools.count(1)
        if make_ref is not None:
            self.make_ref = make_ref  # type: ignore[method-assign]
        # live local process id -> its state (a ProcessState, or a runtime handle that is one)
        self.procs: dict[int, ProcessState] = procs if procs is not None else {}
        self.names: dict[str, Pid] = names if names is not None else {}  # registered names
        self._up: set[str] = set()  # peers whose session is up (nodeup .. nodedown)
        # peer -> {ref: (local watcher, remote target)}: monitors our processes hold there
        self._monitors_there: dict[str, dict[Ref, tuple[Pid, Any]]] = {}
        # peer -> {(local pid, remote pid)}: links that cross to that peer
        self._links_there: dict[str, set[tuple[Pid, Pid]]] = {}
        # peer -> {ref: local target}: monitors that peer's processes hold on ours
        self._watched_from: dict[str, dict[Ref, Pid]] = {}
        self._spawns: dict[Ref, _PendingSpawn] = {}  # spawns requested from peers

    # -- identity and lookups -------------------------------------------------------------

    def make_ref(self) -> Ref:
        """A reference unique within this node run."""
        return tuple.__new__(Ref, (self.node, next(self._refs), self.creation))

    def state(self, pid: Any) -> ProcessState | None:
        """The state of ``pid`` if it is a live process of this node run."""
        if type(pid) is not Pid or pid[0] != self.node:
            return None
        s = self.procs.get(pid[1])
        return s if s is not None and (s.pid is pid or s.pid == pid) else None

    def is_up(self, peer: str) -> bool:
        return peer in self._up

    def bookkeeping(self) -> dict[str, int]:
        """How many entries each table holds: all zero once every process has ended or
        every peer has gone (what the leak checks look at)."""
        return {
            "processes": len(self.procs),
            "names": len(self.names),
            "links": sum(len(s.links) for s in self.procs.values()),
            "monitors": sum(len(s.monitors) for s in self.procs.values()),
            "monitored_by": sum(len(s.monitored_by) for s in self.procs.values()),
            "monitors_there": sum(len(m) for m in self._monitors_there.values()),
            "links_there": sum(len(m) for m in self._links_there.values()),
            "watched_from": sum(len(m) for m in self._watched_from.values()),
            "spawns": len(self._spawns),
        }

    def peer_bookkeeping(self, peer: str) -> tuple[int, int, int]:
        """``(monitors held there, links to there, monitors held from there)``."""
        return (len(self._monitors_there.get(peer, ())), len(self._links_there.get(peer, ())),
                len(self._watched_from.get(peer, ())))

    # -- process lifecycle ----------------------------------------------------------------

    def started(self, pid: Pid, link_to: Pid | None = None) -> ProcessState:
        """A local process started (linked to the local ``link_to`` if given)."""
        s = self.procs[pid[1]] = ProcessState(pid)
        if link_to is not None:
            other = self.state(link_to)
            if other is not None:
                s.links.add(link_to)
                other.links.add(pid)
        return s

    def register(self, name: str, pid: Pid) -> bool:
        """Register ``name`` for the live local ``pid``; False if the name is taken or
        the process is not alive (nothing changes)."""
        s = self.state(pid)
        if s is None or name in self.names:
            return False
        self.names[name] = pid
        s.names.add(name)
        return True

    def unregister(self, name: str) -> None:
        pid = self.names.pop(name, None)
        if pid is not None:
            s = self.procs.get(pid[1])
            if s is not None:
                s.names.discard(name)

    def exited(self, pid: Pid, reason: Any) -> list[SignalEffect]:
        """The local process ``pid`` ended with ``reason``: fire its monitors, signal its
        links, drop the monitors it held. Unknown or already ended: nothing."""
        s = self.state(pid)
        if s is None:
            return _NONE
        del self.procs[pid[1]]
        for name in s.names:
            self.names.pop(name, None)
        effects: list[SignalEffect] = []
        for ref, watcher in s.monitored_by.items():
            if watcher[0] == self.node:
                w = self.state(watcher)
                if w is not None and w.monitors.pop(ref, None) is not None:
                    effects.append(Deliver(watcher, Down(ref, pid, reason)))
            else:
                _pop(self._watched_from, watcher[0], ref)
                effects.append(_ctrl(watcher[0], "down", ref, pid, reason, watcher))
        for other in s.links:
            if other[0] == self.node:
                o = self.state(other)
                if o is not None:
                    effects += self._signal(o, pid, reason)
            else:
                _discard(self._links_there, other[0], (pid, other))
                effects.append(_ctrl(other[0], "exit", pid, other, reason))
        for ref, target in s.monitors.items():
            node = _node_of(target)
            if node == self.node:
                t = self.state(target)
                if t is not None:
                    t.monitored_by.pop(ref, None)
            else:
                _pop(self._monitors_there, node, ref)
        if self._spawns:
            for spawn in self._spawns.values():
                if spawn.requester == pid:
                    spawn.requester_exit = reason  # for the child, when the reply comes
        return effects

    def _signal(self, s: ProcessState, sender: Pid, reason: Any) -> list[SignalEffect]:
        """Apply the exit signal a link carries from ``sender`` to ``s`` (the link is
        gone with it)."""
        s.links.discard(sender)
        return self._receive_signal(s, sender, reason)

    def _explicit(self, s: ProcessState, sender: Pid | None,
                  reason: Any) -> list[SignalEffect]:
        """Apply an explicit exit signal (Erlang's ``exit(Pid, Reason)``) sent by
        ``sender`` (None: from no process) to ``s``: no link is involved, and ``"kill"``
        cannot be trapped."""
        if reason == "kill":
            return [Kill(s.pid, KILLED)]
        if reason == NORMAL and sender == s.pid and not s.trap_exits:
            return [Kill(s.pid, NORMAL)]  # exit(self(), normal) ends the caller
        return self._receive_signal(s, sender if sender is not None else s.pid, reason)

    @staticmethod
    def _receive_signal(s: ProcessState, sender: Pid, reason: Any) -> list[SignalEffect]:
        if s.trap_exits:
            return [Deliver(s.pid, Exit(sender, reason))]
        if reason != NORMAL:
            return [Kill(s.pid, reason)]
        return _NONE

    # -- requests from local processes ----------------------------------------------------

    def link(self, pid: Pid, other: Pid) -> list[SignalEffect]:
        """``pid`` links to ``other``."""
        s = self.state(pid)
        if s is None or other in s.links or other == pid:
            return _NONE
        s.links.add(other)
        if other[0] == self.node:
            o = self.state(other)
            if o is None:
                return self._signal(s, other, "noproc")
            o.links.add(pid)
            return _NONE
        if other[0] in self._up:
            self._links_there.setdefault(other[0], set()).add((pid, other))
            return [_ctrl(other[0], "link", pid, other)]
        return self._signal(s, other, "noconnection")

    def unlink(self, pid: Pid, other: Pid) -> list[SignalEffect]:
        """``pid`` unlinks from ``other`` (an exit signal from it that is on its way no
        longer applies)."""
        s = self.state(pid)
        if s is not None:
            s.links.discard(other)
        if other[0] == self.node:
            o = self.state(other)
            if o is not None:
                o.links.discard(pid)
            return _NONE
        _discard(self._links_there, other[0], (pid, other))
        return [_ctrl(other[0], "unlink", pid, other)]

    def monitor(self, pid: Pid, dest: Pid | tuple[str, str]) -> tuple[Ref, list[SignalEffect]]:
        """``pid`` monitors ``dest`` (a pid, or ``(name, node)`` resolved by that node)."""
        ref = self.make_ref()
        target: Any = dest
        if type(dest) is not Pid:
            target = RegName(*dest)
            if target.node == self.node:
                target = self.names.get(target.name, target)
        s = self.state(pid)
        if s is None:
            return ref, _NONE
        node = _node_of(target)
        if node == self.node:
            t = self.state(target)
            if t is None:
                return ref, [Deliver(pid, Down(ref, target, "noproc"))]
            t.monitored_by[ref] = pid
            s.monitors[ref] = target
            return ref, _NONE
        if node in self._up:
            s.monitors[ref] = target
            self._monitors_there.setdefault(node, {})[ref] = (pid, target)
            return ref, [_ctrl(node, "mon", pid, target, ref)]
        return ref, [Deliver(pid, Down(ref, target, "noconnection"))]

    def demonitor(self, pid: Pid, ref: Ref) -> list[SignalEffect]:
        """``pid`` drops its monitor ``ref`` (a ``down`` arriving later is dropped)."""
        s = self.state(pid)
        target = s.monitors.pop(ref, None) if s is not None else None
        if target is None:
            return _NONE
        node = _node_of(target)
        if node == self.node:
            t = self.state(target)
            if t is not None:
                t.monitored_by.pop(ref, None)
            return _NONE
        _pop(self._monitors_there, node, ref)
        return [_ctrl(node, "demon", pid, target, ref)]

    def forget_monitor(self, pid: Pid, ref: Ref) -> None:
        """Drop ``pid``'s half of the monitor ``ref``, which the target's node already
        released (a call's reply with ``released``), or which was never sent."""
        s = self.procs.get(pid[1])  # inlined state(): this runs once per remote call
        if s is None or (s.pid is not pid and s.pid != pid):
            return
        target = s.monitors.pop(ref, None)
        if target is not None:
            node = target[0] if type(target) is Pid else target[1]
            if node != self.node:
                monitors = self._monitors_there.get(node)
                if monitors is not None:
                    monitors.pop(ref, None)

    def set_trap_exits(self, pid: Pid, flag: bool) -> None:
        s = self.state(pid)
        if s is not None:
            s.trap_exits = flag

    def exit(self, pid: Pid, reason: Any, sender: Pid | None = None) -> list[SignalEffect]:
        """An explicit exit signal to ``pid`` from the local process ``sender`` (None:
        from no process), Erlang's ``exit(Pid, Reason)``: ``"kill"`` kills even a
        trapping process, and a trapping one receives ``Exit(sender, reason)``. An
        unknown local pid: nothing."""
        if pid[0] == self.node:
            s = self.state(pid)
            return self._explicit(s, sender, reason) if s is not None else _NONE
        if sender is None:
            return [_ctrl(pid[0], "exit", None, pid, reason)]
        return [_ctrl(pid[0], "exit2", sender, pid, reason)]

    # -- calls ----------------------------------------------------------------------------

    def call_sent(self, caller: Pid,
                  server: Pid | tuple[str, str]) -> tuple[Ref, list[SignalEffect]]:
        """``caller`` calls ``server`` on another node: the monitor a ``K_CALL`` carries.

        Returns the monitor's ref and, when the server's node is not connected, the
        ``Down(noconnection)`` to deliver (nothing is recorded: do not send the call).
        Otherwise send ``[K_CALL, to, creation, caller_id, ref_id, request]`` (and call
        :meth:`forget_monitor` if it cannot be sent).
        """
        ref = self.make_ref()
        if type(server) is Pid:
            node: str = server[0]
            watched: Any = server
        else:
            watched = RegName(*server)
            node = watched.node
        s = self.procs.get(caller[1])  # inlined state(): this runs once per call
        if (node not in self._up or s is None or (s.pid is not caller and s.pid != caller)
                or caller[0] != self.node):
            return ref, [Deliver(caller, Down(ref, watched, "noconnection"))]
        s.monitors[ref] = watched
        monitors = self._monitors_there.get(node)
        if monitors is None:
            monitors = self._monitors_there[node] = {}
        monitors[ref] = (caller, watched)
        return ref, _NONE

    def call_received(self, peer: str, peer_creation: int | None,
                      msg: list[Any]) -> list[SignalEffect]:
        """A ``K_CALL`` from ``peer`` (whose session has ``peer_creation``): install the
        caller's monitor on the server and deliver the request, or answer ``down noproc``.

        Raises:
            TypeError, ValueError: the message is malformed (nothing changes).
        """
        _, to, creation, caller_id, ref_id, request = msg
        if type(caller_id) is not int or type(ref_id) is not int:
            raise TypeError("call without a caller and a ref")
        # The caller is the peer's: its run and ids as a pid/ref ext would bound them (a
        # pid this node cannot encode must not reach a server's From).
        if (creation != peer_creation or not (0 <= caller_id < _U64 and 0 <= ref_id < _U64)):
            raise ValueError("call from another run of the peer, or ids out of range")
        caller = tuple.__new__(Pid, (peer, caller_id, creation))
        ref = tuple.__new__(Ref, (peer, ref_id, creation))
        if type(to) is str:
            pid: Any = self.names.get(to)
            gone: Any = (to, self.node)  # as a "mon" on (name, node) reports it
        else:
            pid = gone = to
        # Inlined state(): identity first, a registered name maps to the very pid object.
        s = self.procs.get(pid[1]) if type(pid) is Pid and pid[0] == self.node else None
        if s is None or (s.pid is not pid and s.pid != pid):
            return [_ctrl(peer, "down", ref, gone, "noproc", caller)]
        s.monitored_by[ref] = caller
        watched = self._watched_from.get(peer)
        if watched is None:
            watched = self._watched_from[peer] = {}
        watched[ref] = s.pid
        return [Deliver(s.pid, (CALL_TAG, (caller, ref), request))]

    def call_released(self, server: Pid, caller: Pid, ref: Ref) -> bool:
        """The server answered the call ``(caller, ref)``: drop the monitor the call
        installed on it. True if there was one (the reply then says ``released``)."""
        s = self.procs.get(server[1])  # inlined state(): this runs once per call
        if s is None or (s.pid is not server and s.pid != server):
            return False
        watcher = s.monitored_by.get(ref)
        # Identity first: the From a server answers holds the very pid stored here.
        if watcher is not caller and (watcher is None or watcher != caller):
            return False
        del s.monitored_by[ref]
        if caller[0] != self.node:
            watched = self._watched_from.get(caller[0])
            if watched is not None:
                watched.pop(ref, None)
        return True

    def call_held(self, server: Pid, caller: Pid, ref: Ref) -> None:
        """Undo :meth:`call_released`: the reply could not be queued yet, so a server
        that dies meanwhile must still fire the caller's monitor."""
        s = self.state(server)
        if s is None:
            return
        s.monitored_by[ref] = caller
        if caller[0] != self.node:
            self._watched_from.setdefault(caller[0], {})[ref] = server

    # -- spawns ---------------------------------------------------------------------------

    def spawn_request(self, peer: str, spec: str, args: Iterable[Any],
                      link_to: Pid | None = None) -> tuple[Ref, list[SignalEffect]]:
        """Ask ``peer`` to start ``spec`` with ``args`` (linked to ``link_to`` if given).

        The answer comes as :class:`SpawnReplied`, or :class:`SpawnLost` if the peer is
        or goes down first.
        """
        ref = self.make_ref()
        if peer not in self._up:
            return ref, [SpawnLost(ref, peer, "noconnection")]
        self._spawns[ref] = _PendingSpawn(peer, link_to)
        return ref, [_ctrl(peer, "spawn", link_to, ref, spec, list(args),
                           link_to is not None)]

    def spawn_abandoned(self, ref: Ref) -> None:
        """The requester stopped waiting for the spawn ``ref``. A linked spawn stays
        pending so that its reply still completes the link (or ends the child)."""
        spawn = self._spawns.get(ref)
        if spawn is not None:
            spawn.abandoned = True
            if spawn.requester is None:
                del self._spawns[ref]

    def spawn_served(self, peer: str, ref: Ref, reply_to: Pid | None, link: bool,
                     child: Pid) -> list[SignalEffect]:
        """This node started ``child`` for ``peer``'s spawn request ``ref``."""
        if link and reply_to is not None:
            c = self.state(child)
            if c is not None:
                c.links.add(reply_to)
                self._links_there.setdefault(peer, set()).add((child, reply_to))
        return [_ctrl(peer, "spawn_reply", ref, True, child)]

    def spawn_refused(self, peer: str, ref: Ref, error: str) -> list[SignalEffect]:
        """This node could not start what ``peer`` asked for (not exported...)."""
        return [_ctrl(peer, "spawn_reply", ref, False, error)]

    def _spawn_replied(self, peer: str, ref: Ref, ok: bool, value: Any) -> list[SignalEffect]:
        spawn = self._spawns.get(ref)
        if spawn is None or spawn.peer != peer:
            return _NONE
        del self._spawns[ref]
        effects: list[SignalEffect] = []
        requester = spawn.requester
        if ok and requester is not None and type(value) is Pid:
            s = self.state(requester)
            if s is not None:
                s.links.add(value)
                self._links_there.setdefault(peer, set()).add((requester, value))
            else:
                # The link was asked for but its local end is gone: what it would have
                # carried reaches the child now.
                reason = spawn.requester_exit if spawn.requester_exit is not None else "noproc"
                effects.append(_ctrl(peer, "exit", requester, value, reason))
        if not spawn.abandoned:
            effects.append(SpawnReplied(ref, ok, value))
        return effects

    # -- the mesh -------------------------------------------------------------------------

    def nodeup(self, peer: str) -> list[SignalEffect]:
        self._up.add(peer)
        return _NONE

    def nodedown(self, peer: str, reason: str) -> list[SignalEffect]:
        """The session with ``peer`` ended: resolve everything tied to it, once."""
        self._up.discard(peer)
        effects: list[SignalEffect] = []
        for ref, (watcher, target) in self._monitors_there.pop(peer, {}).items():
            w = self.state(watcher)
            if w is not None and w.monitors.pop(ref, None) is not None:
                effects.append(Deliver(watcher, Down(ref, target, "noconnection")))
        for local, remote in self._links_there.pop(peer, set()):
            s = self.state(local)
            if s is not None and remote in s.links:
                effects += self._signal(s, remote, "noconnection")
        for ref, target in self._watched_from.pop(peer, {}).items():
            t = self.state(target)
            if t is not None:
                t.monitored_by.pop(ref, None)
        if self._spawns:
            for ref, spawn in list(self._spawns.items()):
                if spawn.peer == peer:
                    del self._spawns[ref]
                    if not spawn.abandoned:
                        effects.append(SpawnLost(ref, peer, reason))
        return effects

    # -- control messages from peers ------------------------------------------------------

    def on_control(self, peer: str, msg: list[Any]) -> list[SignalEffect]:
        """A ``[K_CTRL, op, ...]`` message from ``peer`` (PROTOCOL.md section 6.2).

        Raises:
            ValueError, TypeError, IndexError, AttributeError: the message is malformed.
        """
        op = msg[1]
        if op == "link":
            _, _, src, dst = msg
            s = self.state(dst)
            if s is None:
                return [_ctrl(peer, "exit", dst, src, "noproc")]
            s.links.add(src)
            self._links_there.setdefault(peer, set()).add((dst, src))
            return _NONE
        if op == "unlink":
            _, _, src, dst = msg
            s = self.state(dst)
            if s is not None:
                s.links.discard(src)
            _discard(self._links_there, peer, (dst, src))
            return _NONE
        if op == "exit":
            _, _, src, dst, reason = msg
            s = self.state(dst)
            if s is None:
                return _NONE
            if src is None:
                return self._explicit(s, None, reason)
            _discard(self._links_there, peer, (dst, src))
            if src not in s.links:
                return _NONE  # unlinked meanwhile: the signal no longer applies
            return self._signal(s, src, reason)
        if op == "exit2":  # an explicit exit(Pid, Reason) sent by the process src
            _, _, src, dst, reason = msg
            if type(src) is not Pid:
                raise TypeError("exit2 needs the sender's pid")
            s = self.state(dst)
            return self._explicit(s, src, reason) if s is not None else _NONE
        if op == "mon":
            _, _, watcher, target, ref = msg
            if type(target) is tuple:  # a monitor on a registered name: resolve it now
                target = self.names.get(target[0], target)
            s = self.state(target)
            if s is None:
                return [_ctrl(peer, "down", ref, target, "noproc", watcher)]
            s.monitored_by[ref] = watcher
            self._watched_from.setdefault(peer, {})[ref] = s.pid
            return _NONE
        if op == "demon":
            _, _, watcher, target, ref = msg
            # By ref, not by target: a name may have moved since the monitor resolved it.
            pid = _pop(self._watched_from, peer, ref)
            s = self.state(pid)
            if s is not None:
                s.monitored_by.pop(ref, None)
            return _NONE
        if op == "down":
            _, _, ref, target, reason, watcher = msg
            _pop(self._monitors_there, peer, ref)
            w = self.state(watcher)
            if w is not None and w.monitors.pop(ref, None) is not None:
                return [Deliver(watcher, Down(ref, target, reason))]
            return _NONE
        if op == "spawn":
            _, _, reply_to, ref, spec, args, link = msg
            return [ServeSpawn(peer, reply_to, ref, spec, args, link)]
        if op == "spawn_reply":
            _, _, ref, ok, value = msg
            return self._spawn_replied(peer, ref, ok, value)
        raise ValueError(f"unknown control op {op!r}")


def _node_of(target: Any) -> str:
    """The node of a monitor target: a Pid ``(node, id, creation)`` or a RegName ``(name,
    node)``. Indexed, not by attribute: a Pid's properties cost a Python call."""
    return target[0] if type(target) is Pid else target[1]  # type: ignore[no-any-return]


def _ctrl(peer: str, *args: Any) -> Control:
    """The control message ``[K_CTRL, *args]`` for ``peer`` (PROTOCOL.md section 6.2)."""
    return Control(peer, [K_CTRL, *args])


def _pop(index: dict[str, dict[Ref, Any]], peer: str, ref: Ref) -> Any:
    """Remove ``ref`` from ``index[peer]``; its value, or None. An emptied per-peer dict
    stays (the next call to that peer reuses it; the peer's nodedown drops it)."""
    entries = index.get(peer)
    return None if entries is None else entries.pop(ref, None)


def _discard(index: dict[str, set[tuple[Pid, Pid]]], peer: str, pair: tuple[Pid, Pid]) -> None:
    """Remove ``pair`` from ``index[peer]`` (an emptied set stays, as in :func:`_pop`)."""
    pairs = index.get(peer)
    if pairs is not None:
        pairs.discard(pair)
