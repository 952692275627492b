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

Member views differ for a moment while membership changes. Without a split-brain
policy, during a partition each side runs the children of the other (availability, as
Horde's default); both runs meet when the views converge: the higher version wins and the
other copy is stopped.

**Split-brain policy** (opt-in, D37: ``policy=`` a
:class:`~fabric.protocol.split_brain.SplitBrainPolicy`). The core then keeps the *known*
member nodes apart from the *reachable* ones (the current member set). A member leaves
the known set only when it is removed: its node went down with a reason of
:data:`~fabric.protocol.split_brain.GONE_REASONS` (:meth:`~PlacementCore.nodedown`,
before or after its member left the group: either order), it announced that it leaves
(:meth:`~PlacementCore.member_leaving`), or (``forget_after``) it stayed unreachable that
long while this side was allowed. A member that left the group for any other reason may
be behind a partition: it stays known, unreachable. Then:

* :meth:`~PlacementCore.allowed` applies
  :func:`~fabric.protocol.split_brain.policy_allows` to the known and reachable nodes
  ("oldest": the smallest node name, which every node computes alike); a node that
  holds children in the table but was never seen in the group counts as known, and so
  does one a peer says it knows (:meth:`~PlacementCore.heard_of`), so a member that
  (re)starts behind a partition does not take its side for the cluster; and a node that
  joins while some member is unreachable (this one too, if it joins such a group; a
  known node whose member comes back as another pid joins afresh) counts as known but
  not as reachable until none is (Akka's "weakly up"): a node restarted into one side
  must not give both sides a majority;
* while not allowed, every local child is stopped at once (:class:`StopHere`), nothing is
  started or taken over, and nothing is written, so the other side's entries win at the
  heal;
* while allowed, the children of a removed member are taken over at once, and those of
  an unreachable one only once the view has been stable for ``margin`` seconds since
  the last such loss (:meth:`~PlacementCore.tick` with the time;
  :meth:`~PlacementCore.wake_at` says when): the side that loses the policy, which loses
  contact at the same moment, has stopped its copies by then;
* for ``margin`` after this side became allowed again (a heal, a re-split) it takes
  nothing over, and neither then nor for ``margin`` after this member's first input (a
  restart) does it start an entry that names this node but does not run here (unless
  a hand-off brought it): the side that just lost the policy must stop first, and the
  tables the members exchange when they meet say first whether another node took the
  child over.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from fabric.protocol.effects import Log
from fabric.protocol.hashring import HashRing
from fabric.protocol.split_brain import GONE_REASONS, SplitBrainPolicy, policy_allows

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
        policy: the split-brain policy; None (the default): availability, each side of a
            partition runs every child.
        margin: with a policy, seconds the view must be stable after a loss that may be
            a partition before this member takes the lost member's children over.
    """

    def __init__(self, node: str, tombstone_ttl: float = 300.0, *,
                 policy: SplitBrainPolicy | None = None, margin: float = 0.0) -> None:
        self.node = node
        self.tombstone_ttl = tombstone_ttl
        self.policy = policy
        self.margin = margin
        self.known: set[str] = set()  # with a policy: members seen and not removed
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
        self._lost_at: dict[str, float] = {}  # known, unreachable member -> since when
        self._gone: set[str] = set()  # members whose node is gone: removed when they leave
        self._stable_since = float("-inf")  # the last loss that may be a partition
        self._was_allowed = True
        self._allowed_since = float("-inf")  # when this side was last allowed again
        self._born: float | None = None  # the time of the first input
        self._placed: dict[str, int] = {}  # node -> live entries placed on it
        # Nodes that joined while a member was unreachable (this one too, if it joined a
        # partitioned group): not counted by the policy until no member is unreachable,
        # or a node returning to one side could give both sides a majority.
        self._weak: set[str] = set()
        self._runs: dict[str, Any] = {}  # node -> the identity of its member (set_members)

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

    def allowed(self) -> bool:
        """Whether this side of any partition may run children (always, without a
        policy): the policy applied to the known and the reachable member nodes."""
        if self.policy is None:
            return True
        # A node the table places children on counts as known too if this member never
        # saw it in the group: a member that (re)starts behind a partition learns from
        # its side's tables that the cluster is larger than its view.
        holders = self._placed.keys() - self._seen
        return policy_allows(self.policy, self.known | holders | {self.node},
                             (self.members | {self.node}) - self._weak)

    def unreachable(self) -> frozenset[str]:
        """Known members lost in a way that may be a partition (empty without a policy)."""
        return frozenset(self._lost_at)

    def wake_at(self, now: float) -> float | None:
        """The next time after ``now`` at which :meth:`tick` may change something (a
        margin ends, a member is due to be forgotten), or None."""
        if self.policy is None:
            return None
        times = [t + self.policy.forget_after for t in self._lost_at.values()] \
            if self.policy.forget_after is not None else []
        if self._lost_at:
            times.append(max(self._stable_since, self._allowed_since) + self.margin)
        times.append(self._settling_since() + self.margin)
        return min((t for t in times if t > now), default=None)

    # -- inputs ---------------------------------------------------------------------------

    def set_members(self, nodes: set[str] | frozenset[str], now: float,
                    runs: dict[str, Any] | None = None) -> list[PlacementEffect]:
        """The member nodes now (this node included while its member is in the group).
        ``runs`` (optional): an identity of each node's member (its pid); a known node
        whose member comes back as another one is a new member (the old one is gone)."""
        previous, self.members = self.members, frozenset(nodes)
        self._seen |= self.members
        if self.policy is not None:
            for node in sorted(previous - self.members - {self.node}):
                if node in self._gone or node in self._departing:
                    self._remove(node)
                elif node in self.known:  # no reason known (yet): it may be a partition
                    self._lost_at[node] = now
                    self._stable_since = now
            for node, run in (runs or {}).items():
                if node != self.node and self._runs.get(node, run) != run:
                    self._remove(node)  # a new run: it joins afresh (maybe weakly)
                self._runs[node] = run
            if self._lost_at:
                self._weak |= self.members - self.known - {self.node}
            self.known |= self.members
            for node in self.members:
                self._lost_at.pop(node, None)
            self._gone &= self.members
        self._departing &= self.members
        self._rebuild_ring()
        return self._reconcile(now)

    def nodedown(self, node: str, reason: str, now: float) -> list[PlacementEffect]:
        """The node ``node`` went down with ``reason`` (a mesh nodedown reason). With a
        policy, a reason of :data:`~fabric.protocol.split_brain.GONE_REASONS` removes its
        member: now if it left the group already (its children are taken over at once),
        else when it leaves. Other reasons change nothing: the group says who left."""
        if self.policy is None or node == self.node or reason not in GONE_REASONS:
            return []
        if node in self.members:
            self._gone.add(node)
            return []
        if node not in self.known:
            return []
        self._remove(node)
        return self._reconcile(now)

    def heard_of(self, nodes: list[str], now: float) -> list[PlacementEffect]:
        """A member told which nodes it knows as members (as it sends its table to a
        joiner). With a policy, those this member never saw become known and
        unreachable: a member that (re)starts behind a partition learns that the
        cluster is larger than its side. Nodes it saw follow its own evidence (one it
        saw die stays removed)."""
        if self.policy is None:
            return []
        for node in nodes:
            if node != self.node and node not in self._seen and node not in self.known:
                self.known.add(node)
                self._lost_at[node] = now
                self._weak.add(self.node)  # it joined a group with unreachable members
        return self._reconcile(now)

    def tick(self, now: float) -> list[PlacementEffect]:
        """Time passed (see :meth:`wake_at`): margins may have ended."""
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
        """A new child placed here (the caller checked :meth:`owner` and
        :meth:`allowed`).

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
        if entry is None or entry.deleted or entry.node != self.node or not self.allowed():
            return self._reconcile(now)  # deleted, taken over or not allowed: stop it
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
        if not self.allowed():  # no write while not allowed
            return self._reconcile(now)
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
        if not self.allowed():  # no write: the other side's entries must win at the heal
            return self._reconcile(now)
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
                self._write(key, entry)
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
        old = self.table.get(key)
        if old is not None and not old.deleted:
            self._placed[old.node] -= 1
            if not self._placed[old.node]:
                del self._placed[old.node]
        if not entry.deleted:
            self._placed[entry.node] = self._placed.get(entry.node, 0) + 1
        self.table[key] = entry
        return entry

    def _remove(self, node: str) -> None:
        self.known.discard(node)
        self._lost_at.pop(node, None)
        self._gone.discard(node)

    def _allowed_now(self, now: float) -> bool:
        """:meth:`allowed`, after forgetting long-lost members (``forget_after``: only
        while allowed, so a minority never forgets its way to a majority); notes when
        this side becomes allowed again."""
        bound = None if self.policy is None else self.policy.forget_after
        if bound is not None and self.allowed():
            for node in [n for n, t in self._lost_at.items() if now - t >= bound]:
                self._remove(node)
        if not self._lost_at:  # the view converged: joiners count from now on
            self._weak.clear()
        allowed = self.allowed()
        if allowed and not self._was_allowed:
            self._allowed_since = now
        self._was_allowed = allowed
        return allowed

    def _settled(self, node: str, now: float) -> bool:
        """May the children of the lost member ``node`` be taken over now? Not within
        ``margin`` after this side became allowed: a side that just gained the policy
        faces one that just lost it, and the tables of a view that just changed may say
        that somebody took them over already. Then at once if ``node`` was removed (or
        without a policy), or ``margin`` after the last loss that may be a partition."""
        since = self._allowed_since
        if node in self._lost_at:
            since = max(since, self._stable_since)
        return now >= since + self.margin

    def _rebuild_ring(self) -> None:
        nodes = self.members - self._departing
        if self.leaving:
            nodes -= {self.node}
        self._ring = HashRing(sorted(nodes))

    def _settling_since(self) -> float:
        """Since when this member's own entries may be stale: it (re)started, or its
        side was just allowed again (``-inf`` without a policy)."""
        if self.policy is None or self._born is None:
            return float("-inf")
        return max(self._born, self._allowed_since)

    def _reconcile(self, now: float) -> list[PlacementEffect]:
        if self._born is None:
            self._born = now
        was_allowed = self._was_allowed
        allowed = self._allowed_now(now)
        plan: list[PlacementEffect] = []
        if allowed != was_allowed:  # why children stop here, or may start again
            plan.append(Log("warning" if not allowed else "info",
                            "dsupervisor_split_brain_" + ("allowed" if allowed else "stop"),
                            {"members": sorted(self.members), "known": sorted(self.known),
                             "policy": None if self.policy is None else self.policy.kind}))
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
                if not allowed:
                    self.running.discard(key)
                    plan.append(StopHere(key))
                    continue
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
                if not allowed or (key not in self._handed
                                   and now < self._settling_since() + self.margin):
                    # Not yet: the tables of a heal (or, for a member that restarted,
                    # of its peers) may say another node took it over. A hand-off is
                    # certain: its sender stopped it for this node.
                    continue
                if not self.leaving:
                    plan.append(StartHere(key, entry.spec, self._handed.pop(key, None)))
                elif target is not None:  # a hand-off reached this leaving node: pass it on
                    moved = self._write(key, replace(entry, node=target, version=self._tick()))
                    plan.append(MoveTo(key, target, moved, self._handed.pop(key, None)))
            elif allowed and self.orphaned(entry.node) and self.owner(key) == self.node \
                    and self._settled(entry.node, now):
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
