"""The granter side of ``global``'s locks: a wait-die lock table, one per node.

Theory of operation
-------------------
Every write to a name (register, re-register) and every ``set_lock`` first locks a *key*
(``("n", name)`` or ``("l", resource)``) on its own node and on every connected node.
Each node's :class:`LockTable` answers those requests. A key has at most one *tentative*
grant at a time: the request that is currently collecting grants or committing. Requests
are ordered by a priority ``(lamport, node, sequence)``, smaller meaning older, which a
request keeps across its retries.

Conflicts are settled by **wait-die**: a request older than the tentative holder *waits*
in a queue; a younger one *dies* (is denied) and its requester releases everything and
retries later with the same priority. A request therefore only ever waits for younger
ones, so the waits-for graph has no cycle and there is no deadlock; the oldest request in
the system never dies, so somebody always makes progress (no livelock, no randomness
needed); and because a retry keeps its priority, every request eventually becomes the
oldest one (no starvation). When a tentative grant ends, the oldest waiter is granted and
the remaining waiters, now younger than the holder, die.

User locks (``("l", resource)`` keys) additionally have *holders*: the pids whose
``set_lock`` completed. A request from any other pid is denied with ``"held"`` (the
requester counts that against its retries, as ``global:set_lock`` does); a request from
a holder is granted again (locks are re-entrant per pid).

:class:`Granter` is the part of the ``global`` core that owns the table: it handles the
lock messages of the wire (``req``, ``release``, ``hold``, ``unlock``, ``unlock_pid``) and
turns the table's decisions into ``grant``/``deny`` answers. A grant of a name lock
carries what the requester must know of the name here: whether a claim on it is stored
(then a registration answers "no"), and the plug-in's extra (see :mod:`.global_plugin`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from fabric.protocol.global_context import GlobalContext
from fabric.types import Pid

__all__ = ["Decision", "Granter", "LockReq", "LockTable", "Prio", "Rid"]

Rid = tuple[str, int, int]
"""A request attempt: ``(requesting node, transaction number, attempt number)``."""

Prio = tuple[int, str, int]
"""A request's age: ``(lamport, requesting node, transaction number)``; smaller is older."""

Verdict = Literal["grant", "younger", "held"]


@dataclass(frozen=True, slots=True)
class LockReq:
    """One attempt to lock ``key`` on this node, for ``pid`` (the would-be holder)."""

    rid: Rid
    key: Any
    prio: Prio
    pid: Pid | None


Decision = tuple[LockReq, Verdict]
"""What to answer to whom: the caller turns decisions into ``grant``/``deny`` messages."""


@dataclass(slots=True)
class _Slot:
    # The request whose grant is outstanding (collecting grants or committing), if any.
    tentative: LockReq | None = None
    # Older requests waiting for the tentative one to end, oldest first.
    waiters: list[LockReq] = field(default_factory=list)
    # Pids that hold this user lock (normally one; two only after a split brain healed).
    held: set[Pid] = field(default_factory=set)

    def idle(self) -> bool:
        return self.tentative is None and not self.waiters and not self.held


class LockTable:
    """Wait-die lock table of one node. Pure bookkeeping: returns decisions."""

    def __init__(self) -> None:
        # key -> its slot; slots are dropped as soon as they are idle.
        self._slots: dict[Any, _Slot] = {}
        # rid -> key, for every request that is tentative or waiting here.
        self._where: dict[Rid, Any] = {}

    def request(self, req: LockReq) -> list[Decision]:
        """A request arrived. Returns the decision for it (none if it waits)."""
        slot = self._slots.setdefault(req.key, _Slot())
        if req.rid in self._where:  # a duplicate: answered already or still waiting
            return []
        if slot.held and not (req.pid is not None and slot.held <= {req.pid}):
            self._tidy(req.key, slot)
            return [(req, "held")]
        holder = slot.tentative
        if holder is None:
            slot.tentative = req
            self._where[req.rid] = req.key
            return [(req, "grant")]
        if req.prio < holder.prio:
            slot.waiters.append(req)
            slot.waiters.sort(key=lambda r: r.prio)
            self._where[req.rid] = req.key
            return []
        return [(req, "younger")]

    def release(self, rid: Rid) -> list[Decision]:
        """The request ``rid`` ended here (committed, aborted or its node went down)."""
        key = self._where.pop(rid, None)
        if key is None:
            return []
        slot = self._slots[key]
        if slot.tentative is not None and slot.tentative.rid == rid:
            slot.tentative = None
            return self._promote(key, slot)
        slot.waiters = [w for w in slot.waiters if w.rid != rid]
        self._tidy(key, slot)
        return []

    def hold(self, rid: Rid, pid: Pid) -> list[Decision]:
        """The user-lock request ``rid`` succeeded everywhere: ``pid`` now holds its key."""
        key = self._where.get(rid)
        if key is None:
            return []
        self._slots[key].held.add(pid)
        return self.release(rid)

    def add_holder(self, key: Any, pid: Pid) -> None:
        """Record a holder learnt from a peer's sync (it took the lock before we met)."""
        self._slots.setdefault(key, _Slot()).held.add(pid)

    def unlock(self, key: Any, pid: Pid) -> list[Decision]:
        """``pid`` released the lock ``key``."""
        slot = self._slots.get(key)
        if slot is None or pid not in slot.held:
            return []
        slot.held.discard(pid)
        return self._promote(key, slot)

    def drop_pids(self, dead: Any) -> list[Decision]:
        """Release every lock held by a pid for which ``dead(pid)`` is true."""
        out: list[Decision] = []
        for key, slot in list(self._slots.items()):
            gone = {p for p in slot.held if dead(p)}
            if gone:
                slot.held -= gone
                out += self._promote(key, slot)
        return out

    def drop_node(self, node: str) -> list[Decision]:
        """``node`` went down: forget its requests and the locks its pids held."""
        out = self.drop_pids(lambda p: p.node == node)
        for rid in [r for r in self._where if r[0] == node]:
            out += self.release(rid)
        return out

    def tentative(self, key: Any) -> LockReq | None:
        """The request whose grant on ``key`` is outstanding here, if any."""
        slot = self._slots.get(key)
        return slot.tentative if slot else None

    def holders(self, key: Any) -> frozenset[Pid]:
        """The pids holding user lock ``key``."""
        slot = self._slots.get(key)
        return frozenset(slot.held) if slot else frozenset()

    def held_by(self, node: str) -> list[tuple[Any, Pid]]:
        """``(key, pid)`` for every lock held by a pid of ``node`` (for a sync)."""
        return [(k, p) for k, s in self._slots.items() for p in s.held if p.node == node]

    def busy(self) -> int:
        """Number of keys with any state (a leak check for tests)."""
        return len(self._slots)

    def _promote(self, key: Any, slot: _Slot) -> list[Decision]:
        out: list[Decision] = []
        if slot.tentative is None and slot.waiters:
            waiters, slot.waiters = slot.waiters, []
            for w in waiters:
                del self._where[w.rid]
            head, rest = waiters[0], waiters[1:]
            out = self.request(head)
            # The rest are younger than the new holder (or than whoever holds the lock):
            # under wait-die they may not wait for it, so they die and retry.
            for w in rest:
                blocked = slot.held and not (w.pid is not None and slot.held <= {w.pid})
                out.append((w, "held" if blocked else "younger"))
        self._tidy(key, slot)
        return out

    def _tidy(self, key: Any, slot: _Slot) -> None:
        if slot.idle():
            self._slots.pop(key, None)


class Granter:
    """The granter side of ``global``: the lock table and its answers.

    Args:
        ctx: the core's shared context.
        grant_info: ``grant_info(name) -> (claimed, extra)``, what a grant of the name
            lock tells the requester.
    """

    def __init__(self, ctx: GlobalContext, grant_info: Callable[[Any], tuple[bool, Any]]) -> None:
        self._ctx = ctx
        self._grant_info = grant_info
        # The wait-die table of the name and user locks.
        self._table = LockTable()

    # -- reads ----------------------------------------------------------------------------

    def holders(self, resource: Any) -> frozenset[Pid]:
        """The pids holding user lock ``resource``."""
        return self._table.holders(("l", resource))

    def tentative(self, key: Any) -> LockReq | None:
        """The request whose grant on ``key`` is outstanding here, if any."""
        return self._table.tentative(key)

    def held_here(self) -> list[tuple[Any, Pid]]:
        """``(resource, pid)`` of every user lock a local pid holds (for a sync)."""
        return [(key[1], pid) for key, pid in self._table.held_by(self._ctx.node)]

    # -- changes from this node -----------------------------------------------------------

    def unlock(self, resource: Any, pid: Pid) -> None:
        """``pid`` (local or of the peer that said so) released ``resource``."""
        self._answer(self._table.unlock(("l", resource), pid))

    def release(self, rid: Any) -> None:
        """The request ``rid`` ended here (committed or aborted)."""
        self._answer(self._table.release(tuple(rid)))

    def drop_pid(self, pid: Pid) -> None:
        """Release every lock ``pid`` holds."""
        self._answer(self._table.drop_pids(lambda p: p == pid))

    def drop_node(self, node: str) -> None:
        """``node`` went down: forget its requests and its pids' locks."""
        self._answer(self._table.drop_node(node))

    def add_holders(self, peer: str, held: Any) -> None:
        """User locks ``peer``'s pids held before we met (from its sync)."""
        for resource, pid in held:
            if isinstance(pid, Pid) and pid.node == peer:
                self._table.add_holder(("l", resource), pid)

    # -- message handlers -----------------------------------------------------------------

    def on_req(self, peer: str, rid: Any, key: Any, prio: Any, pid: Any) -> None:
        lamport, node, seq = prio
        self._ctx.see(int(lamport))
        req = LockReq(tuple(rid), tuple(key), (lamport, node, seq), pid)
        if req.rid[0] == peer:
            self._answer(self._table.request(req))

    def on_release(self, peer: str, rid: Any) -> None:
        self.release(rid)

    def on_hold(self, peer: str, rid: Any, pid: Any) -> None:
        self._answer(self._table.hold(tuple(rid), pid))

    def on_unlock(self, peer: str, resource: Any, pid: Any) -> None:
        if isinstance(pid, Pid) and pid.node == peer:
            self.unlock(resource, pid)

    def on_unlock_pid(self, peer: str, pid: Any) -> None:
        if isinstance(pid, Pid) and pid.node == peer:
            self.drop_pid(pid)

    def _answer(self, decisions: list[Decision]) -> None:
        for req, verdict in decisions:
            if verdict == "grant":
                info = self._grant_info(req.key[1]) if req.key[0] == "n" else None
                self._ctx.send(req.rid[0], ("grant", req.rid, info))
            else:
                self._ctx.send(req.rid[0], ("deny", req.rid, verdict))
