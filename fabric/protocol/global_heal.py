"""Resolution after a heal: ``global``'s nodeup sync and the owner's side of conflicts.

Theory of operation
-------------------
When two nodes meet (first contact, or a partition heals), each sends the other its own
claims, the user locks its pids hold and its plug-in's extra state, in one ``sync``
message that *replaces* what the receiver knew of the sender. A node that then holds two
claims for one name reports the pair to both owners (:mod:`.global_names`); every node
would compute the same verdict (:class:`~.global_resolve.Verdicts`), and :class:`Healer`
is what an *owner* does with a report about its own claim: deliver
``GlobalNameConflict(name, other_pid)`` or exit the process (``ExitProcess``) as the
resolver says, tell the plug-in whether the claim won, and retract a losing claim.

An owner acts once per pair of claim versions: a report about a claim of ours that is
gone or has changed since is stale (a newer pair will be reported if it still
conflicts). Which pairs were handled is remembered only while our claim is the current
one: a claim that is retracted or updated never comes back with the same stamp and meta
(stamps are unique, terms only grow), so its pairs can be forgotten.
"""

from __future__ import annotations

from typing import Any

from fabric.protocol.effects import Deliver, ExitProcess
from fabric.protocol.events import GlobalNameConflict
from fabric.protocol.global_context import GlobalContext
from fabric.protocol.global_locks import Granter
from fabric.protocol.global_names import NameTable
from fabric.protocol.global_plugin import NamePlugin
from fabric.protocol.global_resolve import Entry, Verdicts

__all__ = ["Healer"]


class Healer:
    """Syncs with a peer that comes up, and settles the conflicts of this node's claims."""

    def __init__(
        self,
        ctx: GlobalContext,
        names: NameTable,
        granter: Granter,
        verdicts: Verdicts,
        plugin: NamePlugin,
    ) -> None:
        self._ctx = ctx
        self._names = names
        self._granter = granter
        self._verdicts = verdicts
        self._plugin = plugin
        # (my claim, other claim) versions this node already acted on as an owner.
        self._handled: set[tuple[Entry, Entry]] = set()

    def sync_to(self, peer: str) -> None:
        """Send ``peer`` our claims, held locks and plug-in state."""
        mine = [e.wire() for e in self._names.own_claims()]
        held = self._granter.held_here()
        self._ctx.send(peer, ("sync", mine, held, self._plugin.sync_extra()))

    # -- message handlers -----------------------------------------------------------------

    def on_sync(self, peer: str, claims: Any, locks: Any, extra: Any) -> None:
        self._names.replace_peer(peer, [Entry.from_wire(w) for w in claims])
        self._granter.add_holders(peer, locks)
        self._plugin.on_sync_extra(peer, extra)

    def on_conflict(self, peer: str, name: Any, w1: Any, w2: Any) -> None:
        mine = self._names.own(name)
        a, b = Entry.from_wire(w1), Entry.from_wire(w2)
        if mine is None or mine not in (a, b):
            # Stale: our claim is gone, or changed (a newer pair will be reported).
            return
        other = b if mine == a else a
        self._forget_stale()
        if (mine, other) in self._handled:
            return
        self._handled.add((mine, other))
        _, _, verdict = self._verdicts.decide(a, b)
        if mine.pid in verdict.notify:
            self._ctx.emit(Deliver(mine.pid, GlobalNameConflict(name, other.pid)))
        if mine.pid in verdict.exit:
            self._ctx.emit(ExitProcess(mine.pid, "kill"))
        won = verdict.winner == mine.pid
        self._ctx.log("info", "global_conflict_resolved", name=name, pid=mine.pid, kept=won)
        self._plugin.conflict_outcome(name, mine, other, won)
        if not won:
            self._names.retract_own(name, mine, None)

    def _forget_stale(self) -> None:
        """Forget the pairs of claims of ours that are no longer current."""
        self._handled = {h for h in self._handled if self._names.own(h[0].name) == h[0]}
