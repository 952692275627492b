"""Leader election with fencing terms, on top of ``global`` names (sans-I/O).

Theory of operation
-------------------
:class:`LeaderElection` is a plug-in (:mod:`fabric.protocol.global_plugin`) of the
node's :class:`~fabric.protocol.global_.GlobalCore`, which stays the service hosted as
``"global"``: it observes names and registers some, it is not a kind of ``global``.
A group's leader is whoever holds the global name ``("leader", group)``; the claim's
``meta`` is the leader's **term**, a fencing token::

    election = LeaderElection()
    core = GlobalCore(node, creation, plugin=election)   # host ``core``
    effects = election.stand(group, pid, now)            # effects of the core's input

* **Standing.** A local process calls :meth:`LeaderElection.stand`. When the group has no
  leader, the node's oldest live candidate registers the name with
  ``term = 1 + the highest term this node has seen``. Candidates on all nodes race;
  ``global`` guarantees exactly one ``"yes"`` in a connected cluster.
* **Terms only grow.** Every node remembers the highest term it has seen per group
  (from claims, and from peers in the nodeup sync), and every grant of the
  registration lock carries the granter's highest term: the term is fixed at commit, while
  the requester holds the lock on every connected node, to one more than anything any of
  them has seen. So a new leader's term is strictly greater than every earlier leader's
  term known to the cluster.
* **Watching.** Nobody monitors the leader directly: its name disappears everywhere when
  it exits, resigns or its node goes down (that is ``global``'s job), and then every node
  with candidates stands again.
* **Split brain.** ``global`` has no quorum, so each side of a partition (a restarted
  node that is still alone, too) may elect a leader. After the heal the claims conflict
  and the ``"leader"`` resolver keeps the higher term (ties: the earlier registration).
  The loser is told ``LeaderLost(group, its_term)`` and its claim goes; if the terms
  were equal (or the node saw a higher one meanwhile) the winner takes a fresh term.
  Nodes remember the two highest-term leaders that are gone and send them in the sync:
  a leader that learns of a gone one (another claim) with a term at least as high as its
  own (it was elected out of sight, say just restarted and alone) takes a fresh term. So
  after a heal the surviving leader's term is strictly greater than the term of every
  other leader the cluster has seen, and everybody is told the new term.

Terms live in memory only: the term of a leader elected on a node that was cut off and
died before it met anybody is forgotten (persist terms where that matters).

API: ``stand(group, pid, now)``, ``resign(group, pid, now)`` (effects of the core's
input, to execute as the core's), and the reads ``leader(group) -> (pid, term) | None``,
``max_term(group)``, ``candidates(group)``, ``groups()``. Leader names use resolver method
``"leader"``; the terms travel in the grants of the name lock and in the ``sync``
message's extra (the plug-in's wire state, see :mod:`fabric.protocol.global_plugin`).

Events delivered to local candidates (:mod:`fabric.protocol.events`)::

    LeaderElected(group, leader, term)   to every local candidate, whenever the leader
                                         or its term changes (and at stand)
    LeaderLost(group, term)              to a leader deposed by a conflict
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fabric.errors import LocalProtocolError
from fabric.protocol.effects import Deliver, Effect, SetTimer
from fabric.protocol.events import LeaderElected, LeaderLost
from fabric.protocol.global_plugin import NamePlugin, NamesPort
from fabric.protocol.global_resolve import Entry
from fabric.types import Pid

__all__ = ["LEADER_TAG", "LeaderElection", "leader_name"]

LEADER_TAG = "leader"
_STAND = "leader_stand"  # timer key tag: (_STAND, group)


def leader_name(group: Any) -> tuple[str, Any]:
    """The global name a group's leader registers."""
    return (LEADER_TAG, group)


def _group_of(name: Any) -> tuple[bool, Any]:
    if isinstance(name, tuple) and len(name) == 2 and name[0] == LEADER_TAG:
        return True, name[1]
    return False, None


@dataclass(frozen=True, slots=True)
class _Stand:
    """Token of a registration started by standing for ``group``."""

    group: Any
    pid: Pid


@dataclass(frozen=True, slots=True)
class _Quiet:
    """Token of an internal request whose completion nobody awaits."""


class LeaderElection(NamePlugin):
    """Leader election as a plug-in of ``global``. See the module docstring.

    Args:
        stand_backoff: pause before standing again after a lost race that left no leader.
    """

    def __init__(self, *, stand_backoff: float = 0.05) -> None:
        # The core this plug-in is attached to (set by the core, once).
        self._port: NamesPort | None = None
        # group -> local candidates, in the order they stood (the first stands first).
        self._candidates: dict[Any, list[Pid]] = {}
        # group -> the local candidate whose registration is in flight.
        self._standing: dict[Any, Pid] = {}
        # group -> the highest term this node has seen (never decreases).
        self._terms: dict[Any, int] = {}
        # group -> the (leader, term) last announced to local candidates.
        self._told: dict[Any, tuple[Pid, int]] = {}
        # group -> the (at most two, distinct) gone leaders with the highest terms this
        # node knows of: what a leader elected out of sight must outbid (see sync).
        self._gone: dict[Any, list[Entry]] = {}
        self._stand_backoff = stand_backoff

    def attach(self, port: NamesPort) -> None:
        if self._port is not None:
            raise LocalProtocolError("a LeaderElection serves one global core")
        self._port = port

    @property
    def _names(self) -> NamesPort:
        if self._port is None:
            raise LocalProtocolError("LeaderElection is not attached to a global core")
        return self._port

    # -- API ------------------------------------------------------------------------------

    def stand(self, group: Any, pid: Pid, now: float) -> list[Effect]:
        """Make the local ``pid`` a candidate for leading ``group``.

        The candidate is told ``LeaderElected(group, leader, term)`` now if the group
        has a leader, else when the election it takes part in ends.

        Raises:
            LocalProtocolError: ``pid`` is not a pid of this node run.
        """
        names = self._names
        names.check_local(group, pid)

        def go() -> None:
            cands = self._candidates.setdefault(group, [])
            if pid not in cands:
                cands.append(pid)
            current = self.leader(group)
            if current is not None:
                names.emit(Deliver(pid, LeaderElected(group, *current)))
            self._try_stand(group)

        return names.run(now, go)

    def resign(self, group: Any, pid: Pid, now: float) -> list[Effect]:
        """Withdraw ``pid``'s candidacy; a leader that resigns gives the name up."""
        names = self._names

        def go() -> None:
            cands = self._candidates.get(group, [])
            if pid in cands:
                cands.remove(pid)
            if not cands:
                self._candidates.pop(group, None)
                self._told.pop(group, None)
            shown = names.name_info(leader_name(group))
            if shown is not None and shown.pid == pid:
                names.unregister(leader_name(group), _Quiet())

        return names.run(now, go)

    def leader(self, group: Any) -> tuple[Pid, int] | None:
        """``(leader pid, term)`` of ``group`` as this node sees it, or None."""
        entry = self._names.name_info(leader_name(group))
        if entry is None:
            return None
        return entry.pid, self._term_of(entry)

    def max_term(self, group: Any) -> int:
        """The highest term of ``group`` this node has seen (0 if none)."""
        return self._terms.get(group, 0)

    def candidates(self, group: Any) -> list[Pid]:
        """The local candidates of ``group``, in standing order."""
        return list(self._candidates.get(group, ()))

    def groups(self) -> list[Any]:
        """The groups that have a local candidate (what a draining node resigns from)."""
        return list(self._candidates)

    # -- election -------------------------------------------------------------------------

    @staticmethod
    def _term_of(entry: Entry) -> int:
        return entry.meta if isinstance(entry.meta, int) else 0

    def _see_term(self, group: Any, term: Any) -> None:
        if isinstance(term, int) and term > self._terms.get(group, 0):
            self._terms[group] = term

    def _try_stand(self, group: Any) -> None:
        """Stand with the oldest local candidate if the group has no leader."""
        cands = self._candidates.get(group)
        names = self._names
        if not cands or group in self._standing or names.claimed(leader_name(group)):
            return
        pid = cands[0]
        self._standing[group] = pid
        term = self.max_term(group) + 1
        names.register(leader_name(group), pid, _Stand(group, pid), LEADER_TAG, term)

    def _announce(self, group: Any, entry: Entry) -> None:
        told = (entry.pid, self._term_of(entry))
        if self._told.get(group) == told:
            return
        self._told[group] = told
        for pid in self._candidates.get(group, ()):
            self._names.emit(Deliver(pid, LeaderElected(group, *told)))

    # -- NamePlugin hooks -----------------------------------------------------------------

    def owns_token(self, token: Any) -> bool:
        return isinstance(token, (_Stand, _Quiet))

    def done(self, token: Any, result: Any) -> None:
        if not isinstance(token, _Stand):
            return  # a resignation: nobody awaits it
        if self._standing.get(token.group) == token.pid:
            del self._standing[token.group]
        names = self._names
        if result != "yes" and not names.claimed(leader_name(token.group)):
            # Lost the race, yet no leader is visible (it died meanwhile, or the winner's
            # claim is still on its way): look again a little later, never in a loop.
            delay = self._stand_backoff * (1 + names.random())
            names.emit(SetTimer((_STAND, token.group), names.now + delay))

    def on_timer(self, key: Any) -> None:
        if isinstance(key, tuple) and len(key) == 2 and key[0] == _STAND:
            self._try_stand(key[1])

    def view_changed(self, name: Any, old: Entry | None, new: Entry | None) -> None:
        is_leader, group = _group_of(name)
        if not is_leader:
            return
        if old is not None and (new is None or new.ident != old.ident):
            self._remember_gone(group, old)
        if new is not None:
            self._see_term(group, new.meta)
            self._announce(group, new)
        else:
            self._told.pop(group, None)
            self._try_stand(group)

    def claim_stored(self, entry: Entry) -> None:
        is_leader, group = _group_of(entry.name)
        if is_leader:
            self._see_term(group, entry.meta)

    def grant_extra(self, name: Any) -> Any:
        is_leader, group = _group_of(name)
        return self.max_term(group) if is_leader else None

    def finalize_meta(self, name: Any, meta: Any, extras: list[Any]) -> Any:
        is_leader, group = _group_of(name)
        if not is_leader:
            return meta
        seen = [x for x in extras if isinstance(x, int)] + [self.max_term(group)]
        term = max(meta if isinstance(meta, int) else 0, max(seen) + 1)
        self._see_term(group, term)
        return term

    def conflict_outcome(self, name: Any, mine: Entry, other: Entry, won: bool) -> None:
        is_leader, group = _group_of(name)
        if not is_leader:
            return
        self._see_term(group, other.meta)
        mine_term = self._term_of(mine)
        if not won:
            self._names.emit(Deliver(mine.pid, LeaderLost(group, mine_term)))
        elif mine_term <= self._term_of(other) or mine_term < self.max_term(group):
            # Equal terms on both sides of a healed split (or a higher one seen since):
            # take a fresh term, so the survivor fences off every deposed leader.
            self._bump(name, group)

    def _bump(self, name: Any, group: Any) -> None:
        term = self.max_term(group) + 1
        self._see_term(group, term)
        self._names.update_own_meta(name, term)

    def _remember_gone(self, group: Any, entry: Entry) -> None:
        kept = [e for e in self._gone.get(group, []) if e.ident != entry.ident] + [entry]
        kept.sort(key=lambda e: (self._term_of(e), e.stamp), reverse=True)
        self._gone[group] = kept[:2]

    def sync_extra(self) -> Any:
        return [
            (group, term, [e.wire() for e in self._gone.get(group, [])])
            for group, term in self._terms.items()
        ]

    def on_sync_extra(self, peer: str, extra: Any) -> None:
        if not isinstance(extra, list):
            return
        for group, term, gone in extra:
            self._see_term(group, term)
            for wire in gone:
                self._remember_gone(group, Entry.from_wire(wire))
            name = leader_name(group)
            shown = self._names.name_info(name)
            if shown is None or shown.owner != self._names.node:
                continue
            outbid = [e for e in self._gone[group] if e.ident != shown.ident] if gone else []
            if any(self._term_of(e) >= self._term_of(shown) for e in outbid):
                # We lead, but a leader we never heard of (we were elected out of sight,
                # e.g. just restarted) had a term at least as high: fence it off. Only
                # gone leaders count: a live competing claim reaches us as a claim and
                # the conflict resolution decides, so a bump never decides a conflict.
                self._bump(name, group)

    def local_exit(self, pid: Pid) -> None:
        for group in list(self._candidates):
            cands = self._candidates[group]
            if pid in cands:
                cands.remove(pid)
                if not cands:
                    del self._candidates[group]
                    self._told.pop(group, None)
