"""A distributed supervisor: children by key, spread over nodes, restarted on survivors.

Theory of operation
-------------------
A distributed supervisor named ``name`` is one *member* process on each node that runs
``await DistributedSupervisor.start(node, name)`` (or has
:meth:`DistributedSupervisor.child_spec` in its supervision tree). Each member is a local
supervisor (it reuses :mod:`fabric.supervisor`'s machinery: ``one_for_one``, restart
types, shutdowns, restart intensity) registered locally as ``name`` and joined to the
process group ``name`` of the pg scope ``"fabric.dsupervisor"``; the nodes of that group
are the supervisor's members. *Where* each child runs is decided by the sans-I/O
:class:`~fabric.protocol.dsupervision.PlacementCore` (read its docstring: a replicated
table, a hash ring of the members, reconciliation); this module carries its plans out.

* :meth:`DistributedSupervisor.start_child` places a child on the ring's owner of its
  key (any member forwards the request there) and returns ``(node, pid)``.
* A child that crashes is restarted in place by its member, by its restart type, within
  the member's intensity. A member that exceeds its intensity exits; its children are
  then taken over by the others, as when its node dies.
* When a node dies (or its member stops), pg drops its member at the failure detection;
  each survivor's member gets the ``PgLeave`` and the ring's new owner of each orphaned
  key starts it at once: no round of messages first. Children started after a
  ``start_child`` answered are known to every member that was reachable then.
* A child whose spec has ``handoff=True`` moves when the ring gives its key to a node
  that joined, and on :meth:`DistributedSupervisor.handoff` (a graceful stop: every child
  of this node moves to its new owner before the node leaves). A GenServer child is asked
  for its state first with the call :data:`HANDOFF` (its ``handle_call`` returns any
  encodable value), stopped, and started on the new node with that state as the last
  argument of its ``init`` (None on a fresh start, so ``init(self, *args, state)``).
* Names follow the child: ``name="x"`` registers the local name ``x`` on whichever node
  runs it; ``name=GlobalName("x")`` registers ``x`` with ``node.global_`` for every
  incarnation, so ``call(node, GlobalName("x"), ...)`` reaches it wherever it is;
  ``registry_name=x`` registers it in the default :class:`~fabric.Registry`.

Children are started from ``"module:function"`` or ``"module:Class"`` strings, exported
with :func:`fabric.export` (specs travel between nodes; code never does), and ``args``
must be encodable.

Graceful stop: ``await sup.handoff()`` must run before the node stops its processes (the
node's drain hook calls it, or the program does before ``node.stop()``); without it, a
stopping node's children are stopped with it and restarted fresh on the survivors when
its member leaves the group.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from fabric.calls import call
from fabric.errors import CallTimeout, FabricError, NameConflictError
from fabric.exports import resolve_export
from fabric.genserver import From, GenServer
from fabric.process import Exit, Process
from fabric.protocol.dsupervision import (
    Entry,
    MoveTo,
    PlacementCore,
    PlacementEffect,
    Publish,
    StartHere,
    StopHere,
)
from fabric.protocol.effects import Log
from fabric.protocol.events import PgJoin, PgLeave
from fabric.protocol.supervision import (
    ONE_FOR_ONE,
    PERMANENT,
    RESTARTS,
    SupervisorCore,
    check_shutdown,
)
from fabric.registry import Registry
from fabric.supervisor import ChildSpec, SupervisorServer
from fabric.types import GlobalName, Pid

if TYPE_CHECKING:
    from fabric.node import Node

__all__ = ["HANDOFF", "SCOPE", "DistributedChildSpec", "DistributedSupervisor", "handoff_all"]

#: The pg scope of every distributed supervisor's group (the group is its name).
SCOPE: Final = "fabric.dsupervisor"
#: The call request a moving GenServer child answers with its hand-off state.
HANDOFF: Final = ("fabric.handoff",)
_TAG: Final = "fabric.dsupervisor"  # first element of the members' messages to each other
_MAX_FORWARDS = 3  # hops a request follows while member views disagree
_NAME_RETRIES = 100  # a global name still held by a dead incarnation: retry this often,
_NAME_RETRY_S = 0.05  # this far apart (5 s in all), until its node's death is processed


@dataclass(frozen=True)
class DistributedChildSpec:
    """One child of a distributed supervisor.

    Attributes:
        key: the child's identity cluster-wide; the hash ring places it by this key.
        start: ``"module:function"`` (an exported process function) or
            ``"module:Class"`` (an exported :class:`~fabric.GenServer` subclass).
        args: encodable arguments of the function or of ``init``.
        restart: ``"permanent"``, ``"transient"`` or ``"temporary"`` (as for
            :class:`~fabric.ChildSpec`); a child that ends for good is deleted
            cluster-wide.
        shutdown: seconds, ``"brutal_kill"`` or ``"infinity"``.
        name: a local name on whichever node runs it, or a
            :class:`~fabric.GlobalName` registered cluster-wide for every incarnation.
        handoff: move the child when the ring gives its key to another member (a node
            joined, or this one is leaving); a GenServer child hands its state over
            (see the module docstring).
        registry_name: also register every incarnation under this name in the default
            :class:`~fabric.Registry` (``Registry(node).lookup(name)`` finds it).
    """

    key: str
    start: str
    args: tuple[Any, ...] = ()
    restart: str = PERMANENT
    shutdown: float | str = 5.0
    name: str | GlobalName | None = None
    handoff: bool = False
    registry_name: Any = None

    def to_wire(self) -> tuple[Any, ...]:
        kind: str | None = None
        name: Any = self.name
        if isinstance(self.name, GlobalName):
            kind, name = "global", self.name.name
        elif self.name is not None:
            kind = "local"
        return (self.key, self.start, tuple(self.args), self.restart, self.shutdown, kind,
                name, self.handoff, self.registry_name)

    @staticmethod
    def from_wire(wire: Any) -> DistributedChildSpec:
        key, start, args, restart, shutdown, kind, name, handoff, registry_name = wire
        return DistributedChildSpec(key, start, tuple(args), restart, shutdown,
                                    GlobalName(name) if kind == "global" else name,
                                    bool(handoff), registry_name)

    def validate(self) -> None:
        """Raises ValueError for a spec no member could start."""
        if type(self.key) is not str or not self.key:
            raise ValueError(f"key must be a non-empty str, not {self.key!r}")
        if type(self.start) is not str or self.start.count(":") != 1:
            raise ValueError(f"start must be 'module:function', not {self.start!r}")
        if self.restart not in RESTARTS:
            raise ValueError(f"restart must be one of {RESTARTS}, not {self.restart!r}")
        check_shutdown(self.shutdown)


class DistributedSupervisor:
    """The distributed supervisor ``name`` as seen from ``node`` (a handle; the member
    process on ``node`` must be running for its requests)."""

    def __init__(self, node: Node, name: str) -> None:
        self.node = node
        self.name = name

    @staticmethod
    async def start(node: Node, name: str, *, intensity: int = 3, period: float = 5.0,
                    tombstone_ttl: float = 300.0, handoff_timeout: float = 5.0,
                    link_to: Process | None = None) -> DistributedSupervisor:
        """Start this node's member of the distributed supervisor ``name``.

        Args:
            intensity: more than this many local restarts within ``period`` seconds
                stop the member (its children are then taken over by the others).
            period: the window of the intensity, in seconds.
            tombstone_ttl: seconds a deleted child's entry is kept.
            handoff_timeout: seconds a moving child may take to give its state.
            link_to: the member's parent (as for :meth:`fabric.Supervisor.start`).

        Raises:
            NameConflictError: ``name`` is registered on this node already.
        """
        SupervisorCore(ONE_FOR_ONE, intensity, period)  # validates
        await _Member.start(node, name, intensity, period, tombstone_ttl, handoff_timeout,
                            None if link_to is None else link_to.self, name=name,
                            link_to=link_to)
        return DistributedSupervisor(node, name)

    @staticmethod
    def child_spec(name: str, *, intensity: int = 3, period: float = 5.0,
                   tombstone_ttl: float = 300.0, handoff_timeout: float = 5.0,
                   id: str | None = None) -> ChildSpec:
        """This node's member as a child of a local supervision tree."""
        SupervisorCore(ONE_FOR_ONE, intensity, period)  # validates now, not at start
        return ChildSpec(id or name, _Member,
                         args=(name, intensity, period, tombstone_ttl, handoff_timeout,
                               _PARENT_IS_LINK),
                         shutdown="infinity", name=name)

    @property
    def pid(self) -> Pid | None:
        """This node's member (None if it is not running)."""
        return self.node.whereis(self.name)

    async def start_child(self, spec: DistributedChildSpec,
                          timeout: float = 10.0) -> tuple[str, Pid]:
        """Start ``spec`` on the member that owns its key; returns ``(node, pid)`` once
        every other member holds the child's entry (or left, or ``handoff_timeout`` passed).
        ``timeout`` bounds the whole request, forwards between members included.

        Raises:
            CallTimeout: no answer within ``timeout``.
            ValueError: an invalid spec, or a child with this key exists already.
            RuntimeError: it failed to start on its node (the message says why).
            LookupError: the members disagree for too long, or there is none.
        """
        spec.validate()
        node, pid = await self._request(("start_child", spec.to_wire()), timeout)
        return node, pid

    async def terminate_child(self, key: str, timeout: float = 10.0) -> None:
        """Stop the child ``key`` wherever it runs and delete it cluster-wide.

        Raises:
            KeyError: no such child.
        """
        await self._request(("terminate_child", key), timeout)

    async def which_children(self) -> list[tuple[str, str, Pid | None]]:
        """``(key, node, pid)`` of every child, as this node's member knows them (the
        pid of a child that is being started or moved may be None)."""
        return [(k, n, p) for k, n, p in await call(self.node, self.name, ("which_children",))]

    async def members(self) -> list[str]:
        """The member nodes, as this node's member sees them."""
        return list(await call(self.node, self.name, ("members",)))

    async def handoff(self, timeout: float | None = None) -> int:
        """Move every child of this node's member to its new owner among the other
        members, then leave the group (for a graceful stop: call it before the node
        stops its processes). Returns how many children moved. The member keeps
        running, without children, until it is stopped."""
        moved: int = await call(self.node, self.name, ("handoff",), timeout=timeout)
        return moved

    async def _request(self, request: tuple[Any, ...], timeout: float) -> Any:
        # One deadline for the request, whatever number of members it is forwarded to.
        loop = self.node.loop
        deadline = loop.time() + timeout
        server: Any = self.name
        for _ in range(_MAX_FORWARDS + 1):
            left = deadline - loop.time()
            if left <= 0:
                raise CallTimeout(f"{request[0]} of {self.name!r}: no answer within "
                                  f"{timeout} s")
            ok, value = await call(self.node, server, request, timeout=left)
            if ok:
                return value
            kind, detail = value
            if kind == "forward":
                server = (self.name, detail)
                continue
            raise {"not_found": KeyError, "invalid": ValueError,
                   "start_failed": RuntimeError}.get(kind, LookupError)(detail)
        raise LookupError(f"{request[0]}: the members of {self.name!r} disagree on the "
                          f"owner after {_MAX_FORWARDS} forwards")


_PARENT_IS_LINK: Final = "link"  # child_spec: the member's parent is the process it links to


class _Member(SupervisorServer):
    """One node's member (a local supervisor of the children placed on this node)."""

    name: str
    placement: PlacementCore
    dspecs: dict[str, DistributedChildSpec]
    token: Any
    handoff_timeout: float

    async def init(self, name: str, intensity: int, period: float,  # type: ignore[override]
                   tombstone_ttl: float, handoff_timeout: float, parent: Any) -> None:
        self.proc.trap_exits = True
        if parent == _PARENT_IS_LINK:  # started by a supervisor: that is the parent
            links = [p for p in self.proc.links if p != self.pid]
            parent = links[0] if links else None
        self.core = SupervisorCore(ONE_FOR_ONE, intensity, period)
        self.specs, self.parent = {}, parent
        self.name, self.handoff_timeout = name, handoff_timeout
        self.placement = PlacementCore(self.node.name, tombstone_ttl)
        self.dspecs = {}
        self._failures: dict[str, str] = {}
        pg = self.node.pg
        pg.join(name, self.pid, scope=SCOPE)
        self.token, _ = pg.monitor(name, self.pid, scope=SCOPE)
        # A graceful stop of the node moves this member's children with their state
        # while the node still belongs to the group (the drain's hand-off step).
        self._end_drain_hook = self.node.on_drain(self._handoff_on_drain, handoff=True)
        await self._members_changed()

    async def _handoff_on_drain(self) -> None:
        if self.node.whereis(self.name) == self.pid:
            await DistributedSupervisor(self.node, self.name).handoff(self.handoff_timeout)

    async def terminate(self, reason: Any) -> None:
        self._end_drain_hook()
        await super().terminate(reason)

    # -- messages -------------------------------------------------------------------------

    async def handle_info(self, message: Any) -> None:
        if type(message) is Exit:
            await super().handle_info(message)
            await self._after_exits()
            return
        if type(message) in (PgJoin, PgLeave) and message.token == self.token:
            if type(message) is PgJoin:
                snapshot = [e.to_wire(k) for k, e in self.placement.snapshot().items()]
                for pid in message.pids:
                    if pid != self.pid and snapshot:
                        self._send(pid, (_TAG, "put", snapshot))
            await self._members_changed()
            return
        if type(message) is not tuple or not message:
            await super().handle_info(message)
            return
        if message[0] == _TAG:
            try:
                await self._from_member(message)
            except (ValueError, TypeError, IndexError) as exc:  # a peer's bad message
                self.node.log.warning("dsupervisor_bad_message", supervisor=self.name,
                                      error=repr(exc), message=repr(message)[:200])
        else:
            await super().handle_info(message)

    async def _from_member(self, message: tuple[Any, ...]) -> None:
        kind, now = message[1], self._now()
        if kind == "put":
            entries = dict(Entry.from_wire(item) for item in message[2])
            await self._execute(self.placement.merge(entries, now))
            if len(message) == 5:  # the writer waits until every member holds them
                self._send(message[3], (_TAG, "put_ack", message[4], self.node.name))
        elif kind == "leaving" and type(message[2]) is str:
            await self._execute(self.placement.member_leaving(message[2], now))
        elif kind == "handoff":
            key, entry = Entry.from_wire(message[2])
            await self._execute(self.placement.handed_over(key, entry, message[3], now))
            self._send(message[4], (_TAG, "handed", key))
        elif kind not in ("handed", "put_ack"):  # late acks need no answer
            raise ValueError(f"unknown message {kind!r}")

    async def handle_call(self, request: Any, from_: From) -> Any:
        op, placement, now = request[0], self.placement, self._now()
        if op == "which_children":
            return sorted((k, e.node, e.pid) for k, e in placement.live().items())
        if op == "members":
            return sorted(placement.members)
        if op == "handoff":
            for pid in self.node.pg.get_members(self.name, scope=SCOPE):
                if pid != self.pid:  # before any hand-off: nothing is moved back here
                    self._send(pid, (_TAG, "leaving", self.node.name))
            plan = placement.leave(now)
            moving = {e.key for e in plan if type(e) is MoveTo}
            await self._execute(plan)
            # Leave the group only once the new holders run the children: seeing this
            # member leave first, the ring's owner would take a child over afresh.
            deadline = now + self.handoff_timeout
            while moving and (left := deadline - self._now()) > 0:
                done = await self.proc.receive(_is_handed, timeout=left, default=None)
                if done is not None:
                    moving.discard(done[2])
            self.node.pg.leave(self.name, self.pid, scope=SCOPE)
            return sum(1 for e in plan if type(e) is MoveTo)
        if op == "start_child":
            spec = DistributedChildSpec.from_wire(request[1])
            owner = placement.owner(spec.key)
            if owner is None:
                return (False, ("no_members", f"{self.name!r} has no members"))
            if owner != self.node.name:
                return (False, ("forward", owner))
            try:
                plan = placement.add(spec.key, request[1], spec.handoff, now)
            except ValueError as exc:
                return (False, ("invalid", str(exc)))
            await self._execute(plan)
            entry = placement.table[spec.key]
            if entry.deleted or entry.pid is None:
                return (False, ("start_failed", self._failures.pop(spec.key, "not started")))
            await self._replicated(spec.key, entry)
            return (True, (self.node.name, entry.pid))
        if op == "terminate_child":
            held = placement.table.get(request[1])
            if held is None or held.deleted:
                return (False, ("not_found", f"no child {request[1]!r}"))
            if held.node != self.node.name and held.node in placement.members:
                return (False, ("forward", held.node))
            await self._execute(placement.delete(request[1], now))
            return (True, None)
        return (False, ("invalid", f"unknown request {op!r}"))

    async def _replicated(self, key: str, entry: Entry) -> None:
        """Send ``entry`` to every other member and wait (at most ``handoff_timeout``)
        until each holds it or left the group: then a crash of this node a moment
        after ``start_child`` answered cannot lose the child."""
        ref = self.node.make_ref()
        waiting = set()
        for pid in self.node.pg.get_members(self.name, scope=SCOPE):
            if pid != self.pid:
                waiting.add(pid.node)
                self._send(pid, (_TAG, "put", [entry.to_wire(key)], self.pid, ref))

        def is_ack(m: Any) -> bool:
            return (type(m) is tuple and len(m) == 4 and m[:3] == (_TAG, "put_ack", ref))

        deadline = self._now() + self.handoff_timeout
        while waiting and (left := deadline - self._now()) > 0:
            ack = await self.proc.receive(is_ack, timeout=min(left, 0.05), default=None)
            if ack is not None:
                waiting.discard(ack[3])
            else:  # a member that left answers never: stop waiting for it
                waiting &= {p.node for p in self.node.pg.get_members(self.name, scope=SCOPE)}
        if waiting:
            self.node.log.warning("dsupervisor_replication_incomplete", supervisor=self.name,
                                  key=key, missing=sorted(waiting))

    # -- carrying plans out ---------------------------------------------------------------

    async def _execute(self, plan: list[PlacementEffect]) -> None:
        for effect in plan:
            if type(effect) is Publish:
                items = [e.to_wire(k) for k, e in effect.entries.items()]
                for pid in self.node.pg.get_members(self.name, scope=SCOPE):
                    if pid != self.pid:
                        self._send(pid, (_TAG, "put", items))
            elif type(effect) is StartHere:
                await self._start_here(effect)
            elif type(effect) is StopHere:
                await self._stop_here(effect.key)
            elif type(effect) is MoveTo:
                await self._move(effect)
            elif type(effect) is Log:
                getattr(self.node.log, effect.level)(effect.event, supervisor=self.name,
                                                     **effect.fields)

    async def _start_here(self, effect: StartHere) -> None:
        key, now = effect.key, self._now()
        try:
            spec = DistributedChildSpec.from_wire(effect.spec)
            start = resolve_export(spec.start, self.node.config.allow_remote_spawn)
        except (FabricError, ValueError, TypeError) as exc:
            self._failures[key] = repr(exc)
            await self._execute(self.placement.start_failed(key, repr(exc), now))
            return
        wants_state = spec.handoff and _is_genserver(start)
        args = (*spec.args, effect.state) if wants_state else spec.args
        if self.core.child(key) is not None:
            self._forget(key)
        self.dspecs[key] = spec
        self.core.add(key, spec.restart, spec.shutdown)
        local_name = spec.name if type(spec.name) is str else None
        self.specs[key] = ChildSpec(key, start, args, spec.restart, spec.shutdown, local_name)
        try:
            pid = await self._start_now(key)
        except SupervisorServer.StartFailed as exc:
            self._forget(key)
            self.dspecs.pop(key, None)
            self._failures[key] = str(exc)
            holder = (self.node.global_.whereis_name(spec.name.name)
                      if type(spec.name) is GlobalName else None)
            if isinstance(exc.__cause__, NameConflictError) and holder is not None:
                # Another copy runs (views differed): keep it rather than delete the child.
                await self._execute(self.placement.yield_to(key, holder.node, self._now()))
            else:
                await self._execute(self.placement.start_failed(key, str(exc), self._now()))
            return
        if wants_state:  # a local restart starts afresh: no hand-off state then
            self.specs[key] = ChildSpec(key, start, (*spec.args, None), spec.restart,
                                        spec.shutdown, local_name)
        await self._execute(self.placement.started(key, pid, self._now()))

    async def _start(self, spec: ChildSpec) -> Pid:
        """Start a child; register its global name (every incarnation, restarts too)."""
        pid = await super()._start(spec)
        dspec = self.dspecs.get(spec.id)
        if dspec is not None and type(dspec.name) is GlobalName:
            await self._register_global(dspec.name.name, pid)
        if dspec is not None and dspec.registry_name is not None:
            Registry(self.node).register(dspec.registry_name, pid)
        return pid

    async def _register_global(self, name: Hashable, pid: Pid) -> None:
        # The dead incarnation's name goes when its node's death is processed here and
        # on every peer: a "no" can come first, so retry a bounded number of times.
        global_ = self.node.global_
        for _ in range(_NAME_RETRIES):
            if await global_.register_name(name, pid) == "yes":
                return
            if not self.node.is_alive(pid):
                break
            await asyncio.sleep(_NAME_RETRY_S)
        self.node.exit(pid, "kill")
        raise NameConflictError(f"the global name {name!r} is held by "
                                f"{global_.whereis_name(name)!r}")

    async def _stop_here(self, key: str) -> None:
        if self.core.child(key) is not None:
            await self._carry_out(self.core.terminate(key))
        self._forget(key)
        self.dspecs.pop(key, None)
        self.placement.stopped(key)

    async def _move(self, effect: MoveTo) -> None:
        key, state = effect.key, effect.state
        child, spec = self.core.child(key), self.specs.get(key)
        pid = None if child is None else child.pid
        if type(pid) is Pid and spec is not None and self.dspecs[key].handoff \
                and _is_genserver(spec.start):
            try:
                state = await call(self.proc, pid, HANDOFF, timeout=self.handoff_timeout)
            except FabricError as exc:
                self.node.log.warning("dsupervisor_handoff_failed", supervisor=self.name,
                                      key=key, error=str(exc))
        await self._stop_here(key)
        self._send((self.name, effect.node), (_TAG, "handoff", effect.entry.to_wire(key),
                                              state, self.pid))

    async def _after_exits(self) -> None:
        """After the local supervisor handled an exit: publish restarted children's new
        pids, delete the ones that ended for good (transient, temporary)."""
        placement, now = self.placement, self._now()
        for key in sorted(placement.running):
            child = self.core.child(key)
            entry = placement.table.get(key)
            if child is None or child.pid is None:
                self._forget(key)
                self.dspecs.pop(key, None)
                placement.stopped(key)
                await self._execute(placement.delete(key, now))
            elif entry is not None and entry.pid != child.pid:
                await self._execute(placement.started(key, child.pid, now))

    async def _members_changed(self) -> None:
        members = self.node.pg.get_members(self.name, scope=SCOPE)
        nodes = {p.node for p in members}
        if self.placement.leaving:
            nodes.discard(self.node.name)
        await self._execute(self.placement.set_members(nodes, self._now()))

    def _send(self, dest: Any, message: Any) -> None:
        try:
            self.node.send(dest, message)
        except FabricError as exc:  # a full or gone peer: its next sync repairs it
            self.node.log.warning("dsupervisor_send_failed", supervisor=self.name,
                                  error=str(exc))

    def _now(self) -> float:
        return self.node.loop.time()


async def handoff_all(node: Node, timeout: float | None = None) -> int:
    """:meth:`DistributedSupervisor.handoff` for every distributed supervisor member
    running on ``node`` (what a graceful stop runs before the node leaves its groups);
    returns how many children moved in all. ``timeout`` bounds them all together."""
    moved = 0
    deadline = None if timeout is None else node.loop.time() + timeout
    for name in node.pg.which_local_groups(scope=SCOPE):
        if type(name) is str and node.whereis(name) is not None:
            left = None if deadline is None else max(0.0, deadline - node.loop.time())
            try:
                moved += await DistributedSupervisor(node, name).handoff(left)
            except FabricError as exc:  # one member's trouble must not stop the others
                node.log.error("dsupervisor_handoff_failed", supervisor=name, error=str(exc))
    return moved


def _is_handed(message: Any) -> bool:
    return type(message) is tuple and len(message) == 3 and message[:2] == (_TAG, "handed")


def _is_genserver(start: Any) -> bool:
    return isinstance(start, type) and issubclass(start, GenServer)
