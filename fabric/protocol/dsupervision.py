"""Distributed supervision: where each child of a distributed supervisor runs.

Theory of operation
-------------------
A distributed supervisor is one *member* process per node (:mod:`fabric.dsupervisor`);
the members of one supervisor are the nodes of its process group. Every child has a key
(a ``str``) and an :class:`Entry` in a table that **every member holds in full**:
the child's spec (opaque here), the node it runs on, its pid there (for reading only),
and a version. A :class:`PlacementCore` is one member's table and its decisions; the
runtime feeds it the facts (the member set changed, a peer published entries, a local
child started, failed to start or ended for good) and executes the *plan* each returns,
in order:

* :class:`StartHere` - start the child ``key`` on this node (with the state a hand-off
  brought, if any); report :meth:`~PlacementCore.started` or
  :meth:`~PlacementCore.start_failed`.
* :class:`StopHere` - stop the local child ``key`` (deleted, or held by another node).
* :class:`MoveTo` - hand the local child ``key`` over to ``node``: take its hand-off
  state if its spec asks for one, stop it, and then send the entry and the state to
  ``node``'s member, which starts it there and publishes the new place (the others learn
  of the move from the new holder, so nobody starts the child before it stopped here).
* :class:`Publish` - send these entries to every other member.
* :class:`~fabric.protocol.effects.Log`.

**Replication.** Every change to an entry is made by the node that holds the child (or
takes it over), bumps its version, and is published to the other members; a member that
joins gets every member's whole table. Merging keeps the higher version of each key
(last writer wins, versions are Lamport clocks ``(counter, node)``, so they are totally
ordered and a writer's next version is above everything it has seen): the tables of the
members that can talk converge, in any order of delivery. A deleted child stays as a
tombstone for ``tombstone_ttl`` seconds, so a late copy of the old entry cannot revive it.

**Placement.** A new child goes to the owner of its key on a :class:`HashRing` of the
member nodes: any member forwards a request to the owner it computes. After that the
entry's ``node`` says where the child is; it stays there while that node is a member.

**Reconciliation** (after every input; idempotent). For every live entry:

* the entry names another node but the child runs here: stop it (someone else won);
* the entry names this node and the child does not run here: start it (a hand-off came,
  or this member restarted and learned its table from the others);
* the entry names a node that is not a member any more (it died, or its member stopped;
  see :meth:`~PlacementCore.orphaned`): the ring's owner of the key among the members
  takes it over - this node if the ring says so: it writes itself into the entry,
  publishes it, and starts the child. Every
  survivor computes the same ring from the same member set, so exactly one of them
  starts it, with no message exchanged first: failover costs the failure detection
  plus one local start;
* the child runs here, its spec is *movable* and the ring now gives the key to another
  member (a node joined), or this member is leaving (:meth:`~PlacementCore.leave`, a
  graceful stop): :class:`MoveTo` that node. A leaving member first tells the others
  (:meth:`~PlacementCore.member_leaving`), whose rings then leave it out, so they do not
  move children back to it; a hand-off that reaches it anyway is passed on.

Member views differ for a moment while membership changes, and during a partition each
side runs the children of the other (availability, as Horde's default). Both runs meet
when the views converge: the higher version wins and the other copy is stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from fabric.protocol.effects import Log
from fabric.protocol.hashring import HashRing

__all__ = [
    "Entry",
    "MoveTo",
    "PlacementCore",
    "PlacementEffect",
    "Publish",
    "StartHere",
    "StopHere",
    "Version",
]

Version = tuple[int, str]  # (Lamport counter, node that wrote it): totally ordered


@dataclass(frozen=True, slots=True)
class Entry:
    """One child as every member knows it. ``deleted`` entries are tombstones."""

    spec: Any
    node: str
    version: Version
    movable: bool = False
    pid: Any = None
    deleted: bool = False

    def to_wire(self, key: str) -> tuple[Any, ...]:
        return (key, self.spec, self.node, self.version[0], self.version[1], self.movable,
                self.pid, self.deleted)

    @staticmethod
    def from_wire(item: Any) -> tuple[str, Entry]:
        """``(key, entry)`` from :meth:`to_wire`'s tuple.

        Raises:
            ValueError: a malformed item.
        """
        try:
            key, spec, node, counter, writer, movable, pid, deleted = item
        except (TypeError, ValueError):
            raise ValueError(f"malformed entry {item!r:.200}") from None
        if type(key) is not str or type(node) is not str or type(counter) is not int \
                or type(writer) is not str:
            raise ValueError(f"malformed entry {item!r:.200}")
        return key, Entry(spec, node, (counter, writer), bool(movable), pid, bool(deleted))


@dataclass(frozen=True, slots=True)
class StartHere:
    """Start the child ``key`` on this node; ``state`` came with a hand-off (or None)."""

    key: str
    spec: Any
    state: Any = None


@dataclass(frozen=True, slots=True)
class StopHere:
    """Stop the local child ``key``; it runs elsewhere now, or not at all."""

    key: str


@dataclass(frozen=True, slots=True)
class MoveTo:
    """Hand the local child ``key`` over to ``node`` (its member gets ``entry``)."""

    key: str
    node: str
    entry: Entry
    state: Any = None  # a state that came with a hand-off to this leaving node


@dataclass(frozen=True, slots=True)
class Publish:
    """Send ``entries`` (``key -> entry``) to every other member."""

    entries: dict[str, Entry]


PlacementEffect = StartHere | StopHere | MoveTo | Publish | Log


class PlacementCore:
    """One member's table and decisions (see the module docstring).

    Args:
        node: this member's node name.
        tombstone_ttl: seconds a deleted entry is kept (against late copies).
    """

    def __init__(self, node: str, tombstone_ttl: float = 300.0) -> None:
        self.node = node
        self.tombstone_ttl = tombstone_ttl
        self.table: dict[str, Entry] = {}
        self.members: frozenset[str] = frozenset()
        self.running: set[str] = set()  # keys whose child runs on this node
        self.leaving = False
        self._seen: set[str] = set()  # every node ever seen as a member
        self._departing: set[str] = set()  # members that announced they are leaving
        self._clock = 0
        self._ring: HashRing[str] = HashRing()
        self._deleted_at: dict[str, float] = {}  # tombstone key -> local time of deletion
        self._handed: dict[str, Any] = {}  # key -> state a hand-off brought, until started

    # -- queries --------------------------------------------------------------------------

    def owner(self, key: str) -> str | None:
        """The member the ring gives ``key`` to (None: no member)."""
        return self._ring.lookup(key) if len(self._ring) else None

    def live(self) -> dict[str, Entry]:
        """The entries that are not tombstones."""
        return {k: e for k, e in self.table.items() if not e.deleted}

    def snapshot(self) -> dict[str, Entry]:
        """Every entry, tombstones included (what a joining member is sent)."""
        return dict(self.table)

    # -- inputs ---------------------------------------------------------------------------

    def set_members(self, nodes: set[str] | frozenset[str], now: float
                    ) -> list[PlacementEffect]:
        """The member nodes now (this node included while its member is in the group)."""
        self.members = frozenset(nodes)
        self._seen |= self.members
        self._departing &= self.members
        self._rebuild_ring()
        return self._reconcile(now)

    def orphaned(self, node: str) -> bool:
        """True if children placed on ``node`` need a new home: this member saw ``node``
        as a member, and it is not one any more (it died, or its member stopped).

        A node never seen as a member is left alone: it may be one whose join has not
        reached this node yet (a joining member learns the table, and other members'
        publishes can overtake their pg joins). If it is dead instead, the members that
        saw it leave take its children over."""
        return node not in self.members and node in self._seen

    def add(self, key: str, spec: Any, movable: bool, now: float) -> list[PlacementEffect]:
        """A new child placed here (the caller checked :meth:`owner`).

        Raises:
            ValueError: a live child has that key already.
        """
        current = self.table.get(key)
        if current is not None and not current.deleted:
            raise ValueError(f"a child with key {key!r} exists already (on {current.node})")
        self._write(key, Entry(spec, self.node, self._tick(), movable))
        return [StartHere(key, spec)]

    def started(self, key: str, pid: Any, now: float) -> list[PlacementEffect]:
        """The child ``key`` runs here now as ``pid`` (a start or a local restart)."""
        self.running.add(key)
        entry = self.table.get(key)
        if entry is None or entry.deleted or entry.node != self.node:
            return self._reconcile(now)  # deleted or taken over meanwhile: stop it
        return [Publish({key: self._write(key, replace(entry, pid=pid,
                                                       version=self._tick()))})]

    def start_failed(self, key: str, reason: Any, now: float) -> list[PlacementEffect]:
        """Starting the child ``key`` here failed: it is deleted (not retried forever)."""
        return [Log("error", "dsupervisor_child_start_failed", {"key": key, "reason": reason}),
                *self.delete(key, now)]

    def yield_to(self, key: str, node: str, now: float) -> list[PlacementEffect]:
        """Starting the child ``key`` here failed because ``node`` runs it already (its
        global name is held there): record that place instead of deleting the child."""
        entry = self.table.get(key)
        self.running.discard(key)
        if entry is None or entry.deleted or node == self.node:
            return self.start_failed(key, "name held here", now)
        moved = self._write(key, replace(entry, node=node, pid=None, version=self._tick()))
        return [Log("warning", "dsupervisor_child_runs_elsewhere", {"key": key, "node": node}),
                Publish({key: moved})]

    def delete(self, key: str, now: float) -> list[PlacementEffect]:
        """Delete the child ``key`` (terminated on request, or ended for good here)."""
        entry = self.table.get(key)
        if entry is None or entry.deleted:
            return []
        tomb = self._write(key, replace(entry, deleted=True, pid=None, version=self._tick()))
        self._deleted_at[key] = now
        plan: list[PlacementEffect] = []
        if key in self.running:
            self.running.discard(key)
            plan.append(StopHere(key))
        plan.append(Publish({key: tomb}))
        return plan

    def stopped(self, key: str) -> None:
        """The local child ``key`` is not running any more (the runtime stopped it)."""
        self.running.discard(key)

    def merge(self, entries: dict[str, Entry], now: float) -> list[PlacementEffect]:
        """Entries another member published (or sent to a joining member)."""
        for key, entry in entries.items():
            self._clock = max(self._clock, entry.version[0])
            current = self.table.get(key)
            if current is None or entry.version > current.version:
                self.table[key] = entry
                if entry.deleted:
                    self._deleted_at.setdefault(key, now)
                else:
                    self._deleted_at.pop(key, None)
        return self._reconcile(now)

    def handed_over(self, key: str, entry: Entry, state: Any,
                    now: float) -> list[PlacementEffect]:
        """A member moved the child ``key`` here, with its hand-off ``state``."""
        if entry.node == self.node and not entry.deleted:
            self._handed[key] = state
        return self.merge({key: entry}, now)

    def member_leaving(self, node: str, now: float) -> list[PlacementEffect]:
        """The member on ``node`` announced it is leaving (it hands its children over
        next): the ring stops giving it keys, so nothing is moved back to it."""
        if node != self.node and node in self.members:
            self._departing.add(node)
            self._rebuild_ring()
        return self._reconcile(now)

    def leave(self, now: float) -> list[PlacementEffect]:
        """This member is leaving (a graceful stop): move every local child to the
        member the ring gives it to among the others."""
        self.leaving = True
        self._rebuild_ring()
        return self._reconcile(now)

    # -- internals ------------------------------------------------------------------------

    def _tick(self) -> Version:
        self._clock += 1
        return (self._clock, self.node)

    def _write(self, key: str, entry: Entry) -> Entry:
        self.table[key] = entry
        return entry

    def _rebuild_ring(self) -> None:
        nodes = self.members - self._departing
        if self.leaving:
            nodes -= {self.node}
        self._ring = HashRing(sorted(nodes))

    def _reconcile(self, now: float) -> list[PlacementEffect]:
        plan: list[PlacementEffect] = []
        published: dict[str, Entry] = {}
        for key in list(self.table):
            entry = self.table[key]
            if entry.deleted:
                if now - self._deleted_at.setdefault(key, now) > self.tombstone_ttl:
                    del self.table[key]
                    del self._deleted_at[key]
                if key in self.running:
                    self.running.discard(key)
                    plan.append(StopHere(key))
                continue
            if key in self.running:
                if entry.node != self.node:
                    self.running.discard(key)
                    plan.append(StopHere(key))
                    continue
                target = self.owner(key)
                if (self.leaving or entry.movable) and target is not None \
                        and target != self.node:
                    moved = self._write(key, replace(entry, node=target, pid=None,
                                                     version=self._tick()))
                    self.running.discard(key)
                    # Not published: the target publishes once it runs the child, and
                    # nobody may start it before this node has stopped it.
                    plan.append(Log("info", "dsupervisor_move",
                                    {"key": key, "to": target,
                                     "members": sorted(self.members)}))
                    plan.append(MoveTo(key, target, moved))
            elif entry.node == self.node:
                target = self.owner(key)
                if not self.leaving:
                    plan.append(StartHere(key, entry.spec, self._handed.pop(key, None)))
                elif target is not None:  # a hand-off reached this leaving node: pass it on
                    moved = self._write(key, replace(entry, node=target, version=self._tick()))
                    plan.append(MoveTo(key, target, moved, self._handed.pop(key, None)))
            elif self.orphaned(entry.node) and self.owner(key) == self.node:
                plan.append(Log("info", "dsupervisor_takeover",
                                {"key": key, "from": entry.node,
                                 "members": sorted(self.members)}))
                published[key] = self._write(key, replace(entry, node=self.node, pid=None,
                                                          version=self._tick()))
                plan.append(StartHere(key, entry.spec))
        if published:
            # Published before the starts run: the others learn the new place at once.
            first_start = next((i for i, e in enumerate(plan) if type(e) is StartHere),
                               len(plan))
            plan.insert(first_start, Publish(published))
        return plan
