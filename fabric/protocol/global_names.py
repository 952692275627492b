"""The claims table of ``global``: storing, showing, reporting and retracting claims.

Theory of operation
-------------------
See the overview in :mod:`fabric.protocol.global_`. Claims come only from their owners
(``claim`` and ``sync`` messages) and leave with their owners' ``retract``, with their
owner's node (``nodedown``) or, hidden ahead of the owner's retract, when a
re-registration supersedes them. :class:`NameTable` keeps, per name, every claim of this
node and of its connected peers, and shows the one the resolvers pick
(:meth:`~fabric.protocol.global_resolve.Verdicts.shown`). A node that holds two claims
for one name reports the pair to both owners (``conflict``), once per pair of claim
*versions*: a changed meta (a leader's new term) may change the verdict, so that version
is reported anew. What an owner then does is :mod:`.global_heal`'s job.

Collaborators: the shared :class:`~.global_context.GlobalContext`, the resolver table,
the :class:`~.global_locks.Granter` (a claim ends the lock its commit held, and a claim
that arrives while a grant on its name is outstanding makes that grant stale), and the
plug-in, told of every stored claim and every change of a shown claim.
"""

from __future__ import annotations

from typing import Any

from fabric.protocol.global_context import GlobalContext
from fabric.protocol.global_locks import Granter, Rid
from fabric.protocol.global_plugin import NamePlugin
from fabric.protocol.global_resolve import Entry, Verdicts
from fabric.types import Pid

__all__ = ["NameTable"]


class NameTable:
    """Every claim this node knows, the claim it shows per name, and the local owners."""

    def __init__(
        self, ctx: GlobalContext, verdicts: Verdicts, granter: Granter, plugin: NamePlugin
    ) -> None:
        self._ctx = ctx
        self._verdicts = verdicts
        self._granter = granter
        self._plugin = plugin
        # name -> owner node -> claim; owners are this node and connected peers only.
        self._claims: dict[Any, dict[str, Entry]] = {}
        # name -> the claim shown (the resolved one); absent when nobody holds the name.
        self._view: dict[Any, Entry] = {}
        # local pid -> names it claims (to retract them when it exits).
        self._local: dict[Pid, set[Any]] = {}
        # name -> claim pairs (earlier first) already reported to their owners. Whole
        # entries, meta included: a claim whose meta changed (a leader's new term) may
        # change the verdict, so that version is reported anew.
        self._reported: dict[Any, set[tuple[Entry, Entry]]] = {}
        # Sequence of claim stamps (the third part of a stamp).
        self._stamps = 0

    # -- reads ----------------------------------------------------------------------------

    def shown(self, name: Any) -> Entry | None:
        """The claim shown for ``name``, or None."""
        return self._view.get(name)

    def names(self) -> list[Any]:
        """Every name shown, in no particular order."""
        return list(self._view)

    def claimed(self, name: Any) -> bool:
        """Whether any claim on ``name`` is stored (shown or not)."""
        return name in self._claims

    def own(self, name: Any) -> Entry | None:
        """This node's claim on ``name``, or None."""
        return self._claims.get(name, {}).get(self._ctx.node)

    def owners(self, name: Any) -> list[tuple[str, Entry]]:
        """``(owner, claim)`` of every claim on ``name``, by owner."""
        return sorted(self._claims.get(name, {}).items())

    def own_claims(self) -> list[Entry]:
        """Every claim of this node (what a sync sends)."""
        node = self._ctx.node
        return [e for c in self._claims.values() if (e := c.get(node)) is not None]

    def names_of(self, pid: Pid) -> list[Any]:
        """The names the local ``pid`` claims, in a stable order."""
        return sorted(self._local.get(pid, ()), key=repr)

    # -- changes --------------------------------------------------------------------------

    def new_stamp(self) -> tuple[int, str, int]:
        """A fresh stamp for a claim this node commits now."""
        self._stamps += 1
        return (self._ctx.tick(), self._ctx.node, self._stamps)

    def put(self, entry: Entry, supersede: bool) -> None:
        """Store a claim from its owner (``supersede``: drop every other claim first)."""
        name = entry.name
        self._ctx.see(entry.stamp[0])
        if supersede:
            self.drop_others(name, entry.owner)
        claims = self._claims.setdefault(name, {})
        previous = claims.get(entry.owner)
        claims[entry.owner] = entry
        if entry.owner == self._ctx.node:
            if previous is not None and previous.pid != entry.pid:
                self._forget_local(previous)
            self._local.setdefault(entry.pid, set()).add(name)
        self._plugin.claim_stored(entry)
        self._stale_grant(entry)
        for other in list(claims.values()):
            if other.owner != entry.owner:
                self._report(entry, other)
        self._refresh(name)

    def replace_peer(self, peer: str, entries: list[Entry]) -> None:
        """A sync: ``entries`` replace every claim of ``peer`` we knew."""
        fresh = {e.name for e in entries if e.owner == peer}
        for name in [n for n, c in self._claims.items() if peer in c and n not in fresh]:
            del self._claims[name][peer]
            self._refresh(name)
        for entry in entries:
            if entry.owner == peer:
                self.put(entry, False)

    def drop_peer(self, peer: str) -> None:
        """``peer`` went down: its claims go."""
        for name in [n for n, c in self._claims.items() if peer in c]:
            del self._claims[name][peer]
            self._refresh(name)

    def drop_others(self, name: Any, keep: str) -> None:
        """Drop every claim on ``name`` but ``keep``'s (a re-registration supersedes)."""
        claims = self._claims.get(name, {})
        for owner, other in sorted(claims.items()):
            if owner == keep:
                continue
            if owner == self._ctx.node:
                self.retract_own(name, other, None)
            else:
                # Hide it now; its owner (our peer) is asked to retract it for real.
                del claims[owner]
                self._ctx.send(owner, ("supersede", name, other.wire()))
        self._refresh(name)

    def retract_own(self, name: Any, entry: Entry, ack: Rid | None) -> None:
        """Remove this node's claim ``entry`` here and on every peer."""
        claims = self._claims.get(name, {})
        if claims.get(self._ctx.node) == entry:
            del claims[self._ctx.node]
            self._forget_local(entry)
            self._refresh(name)
        for peer in sorted(self._ctx.peers):
            self._ctx.send(peer, ("retract", name, entry.pid, ack))

    def update_own_meta(self, name: Any, meta: Any) -> None:
        """Change the meta of our claim on ``name`` everywhere (no lock needed: ours)."""
        mine = self.own(name)
        if mine is not None and mine.meta != meta:
            entry = mine._replace(meta=meta)
            self.put(entry, False)
            self._ctx.broadcast(("claim", entry.wire(), None, False, False))

    # -- message handlers -----------------------------------------------------------------

    def on_claim(self, peer: str, wire: Any, rid: Any, ack: bool, supersede: bool) -> None:
        entry = Entry.from_wire(wire)
        if entry.owner == peer and (peer == self._ctx.node or peer in self._ctx.peers):
            self.put(entry, bool(supersede))
        if rid is not None:
            self._granter.release(rid)
            if ack:
                self._ctx.send(peer, ("ack", rid))

    def on_retract(self, peer: str, name: Any, pid: Any, ack: Any) -> None:
        claims = self._claims.get(name)
        if claims is not None and peer in claims and claims[peer].pid == pid:
            del claims[peer]
            self._refresh(name)
        if ack is not None:
            self._ctx.send(peer, ("ack", ack))

    def on_clear(self, peer: str, name: Any, rid: Any) -> None:
        if name in self._claims:
            self.drop_others(name, peer)
        self._ctx.send(peer, ("ack", rid))

    def on_supersede(self, peer: str, name: Any, wire: Any) -> None:
        mine = self.own(name)
        if mine is not None and mine.ident == Entry.from_wire(wire).ident:
            self.retract_own(name, mine, None)

    # -- internals ------------------------------------------------------------------------

    def _stale_grant(self, entry: Entry) -> None:
        """A claim arrived while this node's grant on its name is outstanding.

        The grant told its requester whether the name was free when it was given; a claim
        that arrives without passing that lock (a peer that came up synced it) makes that
        answer stale, so the requester is told the name is taken. Without this it would
        commit a claim that is known, on this node, to conflict with one shown here.
        """
        req = self._granter.tentative(("n", entry.name))
        if req is not None and req.rid[0] != entry.owner:  # not the requester's own claim
            self._ctx.send(req.rid[0], ("taken", req.rid))

    def _report(self, a: Entry, b: Entry) -> None:
        """Tell both owners about a conflict (once per pair)."""
        pair = (a, b) if a.stamp <= b.stamp else (b, a)
        seen = self._reported.setdefault(a.name, set())
        if pair in seen:
            return
        seen.add(pair)
        self._ctx.log("info", "global_name_conflict", name=a.name, pids=[a.pid, b.pid])
        for owner in sorted({a.owner, b.owner}):
            if owner == self._ctx.node or owner in self._ctx.peers:
                self._ctx.send(owner, ("conflict", a.name, a.wire(), b.wire()))

    def _forget_local(self, entry: Entry) -> None:
        names = self._local.get(entry.pid)
        if names is not None:
            names.discard(entry.name)
            if not names:
                del self._local[entry.pid]

    def _refresh(self, name: Any) -> None:
        """Recompute the claim shown for ``name``; tell the plug-in if it changed."""
        claims = self._claims.get(name)
        new = self._verdicts.shown(claims.values()) if claims else None
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
            self._plugin.view_changed(name, old, new)
