"""The claims table of ``global``: storing, showing, reporting and resolving claims.

See the theory of operation in :mod:`fabric.protocol.global_`. In short: claims come
only from their owners (``claim`` and ``sync`` messages) and leave with their owners'
``retract``, with their owner's node (``nodedown``) or, hidden ahead of the owner's
retract, when a re-registration supersedes them. A node that holds two claims for one
name shows the resolved one and reports the pair to both owners, once per pair of claim
*versions* (a changed meta, a leader's new term, may change the verdict); an owner acts
once per version pair, and the loser retracts.
"""

from __future__ import annotations

from typing import Any, cast

from fabric.protocol.effects import Deliver, Effect
from fabric.protocol.global_base import GlobalBase
from fabric.protocol.global_locks import Decision, Rid
from fabric.protocol.global_resolve import (
    Entry,
    ExitProcess,
    Resolution,
    earliest_name,
    fold_claims,
    resolve_pair,
)
from fabric.types import Pid

__all__ = ["GlobalNames"]


class GlobalNames(GlobalBase):
    """Claims handling on top of :class:`GlobalBase`; the transactions come on top."""

    def _put_claim(self, entry: Entry, supersede: bool) -> None:
        name = entry.name
        self._lamport = max(self._lamport, entry.stamp[0])
        if supersede:
            self._drop_others(name, entry.owner)
        claims = self._claims.setdefault(name, {})
        previous = claims.get(entry.owner)
        claims[entry.owner] = entry
        if entry.owner == self.node:
            if previous is not None and previous.pid != entry.pid:
                self._forget_local(previous)
            self._local.setdefault(entry.pid, set()).add(name)
        self._on_claim(entry)
        self._stale_grant(entry)
        for other in list(claims.values()):
            if other.owner != entry.owner:
                self._report(entry, other)
        self._refresh(name)

    def _stale_grant(self, entry: Entry) -> None:
        """A claim arrived while this node's grant on its name is outstanding.

        The grant told its requester whether the name was free when it was given; a claim
        that arrives without passing that lock (a peer that came up synced it) makes that
        answer stale, so the requester is told the name is taken. Without this it would
        commit a claim that is known, on this node, to conflict with one shown here.
        """
        req = self._locks.tentative(("n", entry.name))
        if req is not None and req.rid[0] != entry.owner:  # not the requester's own claim
            self._send(req.rid[0], ("taken", req.rid))

    def _drop_others(self, name: Any, keep: str) -> None:
        """Drop every claim on ``name`` but ``keep``'s (a re-registration supersedes)."""
        claims = self._claims.get(name, {})
        for owner, other in sorted(claims.items()):
            if owner == keep:
                continue
            if owner == self.node:
                self._retract_own(name, other, None)
            else:
                # Hide it now; its owner (our peer) is asked to retract it for real.
                del claims[owner]
                self._send(owner, ("supersede", name, other.wire()))
        self._refresh(name)

    def _report(self, a: Entry, b: Entry) -> None:
        """Tell both owners about a conflict (once per pair)."""
        pair = (a, b) if a.stamp <= b.stamp else (b, a)
        seen = self._reported.setdefault(a.name, set())
        if pair in seen:
            return
        seen.add(pair)
        self._log("info", "global_name_conflict", name=a.name, pids=[a.pid, b.pid])
        for owner in sorted({a.owner, b.owner}):
            if owner == self.node or owner in self._peers:
                self._send(owner, ("conflict", a.name, a.wire(), b.wire()))

    def _retract_own(self, name: Any, entry: Entry, ack: Rid | None) -> None:
        claims = self._claims.get(name, {})
        if claims.get(self.node) == entry:
            del claims[self.node]
            self._forget_local(entry)
            self._refresh(name)
        for peer in sorted(self._peers):
            self._send(peer, ("retract", name, entry.pid, ack))

    def _forget_local(self, entry: Entry) -> None:
        names = self._local.get(entry.pid)
        if names is not None:
            names.discard(entry.name)
            if not names:
                del self._local[entry.pid]
        self._handled = {h for h in self._handled if h[0].ident != entry.ident}

    def _resolve(self, a: Entry, b: Entry) -> tuple[Entry, Entry, Resolution]:
        try:
            return resolve_pair(a, b, self._resolvers, self._default_resolver)
        except Exception as exc:  # a user resolver failed: fall back, deterministically
            self._log("error", "global_resolver_failed", name=a.name, error=repr(exc))
            return resolve_pair(a, b, {}, earliest_name)

    def _refresh(self, name: Any) -> None:
        """Recompute the claim shown for ``name``; tell the subclass if it changed."""
        claims = self._claims.get(name)
        new = fold_claims(claims.values(), lambda a, b: self._resolve(a, b)[2]) if claims else None
        if not claims:
            self._claims.pop(name, None)
        if not claims or len(claims) == 1:
            self._reported.pop(name, None)  # no conflict left to report
        old = self._view.get(name)
        if new is None:
            self._view.pop(name, None)
        else:
            self._view[name] = new
        if old != new:
            self._view_changed(name, old, new)

    def _update_own_meta(self, name: Any, meta: Any) -> None:
        """Change the meta of our claim on ``name`` everywhere (no lock needed: ours)."""
        mine = self._claims.get(name, {}).get(self.node)
        if mine is not None and mine.meta != meta:
            entry = mine._replace(meta=meta)
            self._put_claim(entry, False)
            self._broadcast(("claim", entry.wire(), None, False, False))

    # -- lock answers (granter side) ------------------------------------------------------

    def _answer(self, decisions: list[Decision]) -> None:
        for req, verdict in decisions:
            if verdict == "grant":
                info = None
                if req.key[0] == "n":
                    name = req.key[1]
                    info = (name in self._claims, self._grant_extra(name))
                self._send(req.rid[0], ("grant", req.rid, info))
            else:
                self._send(req.rid[0], ("deny", req.rid, verdict))

    # -- message handlers -----------------------------------------------------------------

    def _h_sync(self, peer: str, claims: Any, locks: Any, extra: Any) -> None:
        entries = [Entry.from_wire(w) for w in claims]
        fresh = {e.name for e in entries if e.owner == peer}
        for name in [n for n, c in self._claims.items() if peer in c and n not in fresh]:
            del self._claims[name][peer]  # a sync replaces what we knew of the peer
            self._refresh(name)
        for entry in entries:
            if entry.owner == peer:
                self._put_claim(entry, False)
        for resource, pid in locks:
            if isinstance(pid, Pid) and pid.node == peer:
                self._locks.add_holder(("l", resource), pid)
        self._on_sync_extra(peer, extra)

    def _h_claim(self, peer: str, wire: Any, rid: Any, ack: bool, supersede: bool) -> None:
        entry = Entry.from_wire(wire)
        if entry.owner == peer and (peer == self.node or peer in self._peers):
            self._put_claim(entry, bool(supersede))
        if rid is not None:
            self._answer(self._locks.release(tuple(rid)))
            if ack:
                self._send(peer, ("ack", rid))

    def _h_retract(self, peer: str, name: Any, pid: Any, ack: Any) -> None:
        claims = self._claims.get(name)
        if claims is not None and peer in claims and claims[peer].pid == pid:
            del claims[peer]
            self._refresh(name)
        if ack is not None:
            self._send(peer, ("ack", ack))

    def _h_conflict(self, peer: str, name: Any, w1: Any, w2: Any) -> None:
        mine = self._claims.get(name, {}).get(self.node)
        a, b = Entry.from_wire(w1), Entry.from_wire(w2)
        if mine is None or mine not in (a, b):
            # Stale: our claim is gone, or changed (a newer pair will be reported).
            return
        other = b if mine == a else a
        if (mine, other) in self._handled:
            return
        self._handled.add((mine, other))
        _, _, verdict = self._resolve(a, b)
        if mine.pid in verdict.notify:
            self._out.append(Deliver(mine.pid, ("global_name_conflict", name, other.pid)))
        if mine.pid in verdict.exit:
            # Not in the Effect union of effects.py: the runtime must know this type too.
            self._out.append(cast(Effect, ExitProcess(mine.pid, "kill")))
        won = verdict.winner == mine.pid
        self._log("info", "global_conflict_resolved", name=name, pid=mine.pid, kept=won)
        self._conflict_outcome(name, mine, other, won)
        if not won:
            self._retract_own(name, mine, None)

    def _h_clear(self, peer: str, name: Any, rid: Any) -> None:
        if name in self._claims:
            self._drop_others(name, peer)
        self._send(peer, ("ack", rid))

    def _h_supersede(self, peer: str, name: Any, wire: Any) -> None:
        mine = self._claims.get(name, {}).get(self.node)
        if mine is not None and mine.ident == Entry.from_wire(wire).ident:
            self._retract_own(name, mine, None)
