"""Layers built on ``global`` names: the plug-in interface (leader election is one).

Theory of operation
-------------------
A layer built on names (:mod:`fabric.protocol.leader`) is not a kind of ``global`` core:
it is a :class:`NamePlugin` handed to :class:`~fabric.protocol.global_.GlobalCore`, which
stays the one service hosted as ``"global"``. The core tells its plug-in what happens to
names, and the plug-in acts through a :class:`NamesPort`, the narrow set of things a
plug-in may do: start and end registrations, update the meta of its own node's claim,
read claims, emit effects, and run its own API calls as inputs of the core (so that the
messages the core sends to itself are handled before the call returns).

What the core tells the plug-in (every hook has a no-op default):

* the claim shown for a name changed (:meth:`~NamePlugin.view_changed`), a claim was
  stored (:meth:`~NamePlugin.claim_stored`), a claim of this node met another one and won
  or lost (:meth:`~NamePlugin.conflict_outcome`), a local process exited
  (:meth:`~NamePlugin.local_exit`);
* a transaction the plug-in started ended (:meth:`~NamePlugin.owns_token`,
  :meth:`~NamePlugin.done`), one of its timers fired (:meth:`~NamePlugin.on_timer`);
* the plug-in's wire state: what a grant of a name lock carries to the requester
  (:meth:`~NamePlugin.grant_extra`), the meta committed given every granter's extra
  (:meth:`~NamePlugin.finalize_meta`), and the extra of the nodeup ``sync`` message,
  sent (:meth:`~NamePlugin.sync_extra`) and received (:meth:`~NamePlugin.on_sync_extra`).

A core has one plug-in slot: the ``sync`` message carries one extra value, and a grant
one extra per name. The default, :class:`NamePlugin` itself, observes nothing and adds
nothing (``None`` on the wire).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from fabric.protocol.effects import Effect
from fabric.protocol.global_resolve import Entry
from fabric.types import Pid

__all__ = ["NamePlugin", "NamesPort"]


class NamesPort(Protocol):
    """What a plug-in may ask of the ``global`` core it is attached to."""

    @property
    def node(self) -> str:
        """This node's full name."""

    @property
    def now(self) -> float:
        """The current input's time."""

    def random(self) -> float:
        """A number in [0, 1) from the core's seeded randomness (jitter only)."""

    def run(self, now: float, action: Callable[[], None]) -> list[Effect]:
        """Run ``action`` as one input of the core; the input's effects."""

    def emit(self, effect: Effect) -> None:
        """An effect of the current input."""

    def check_local(self, name: Any, pid: Pid) -> None:
        """Raise LocalProtocolError unless ``pid`` is of this node run and ``name`` hashable."""

    def name_info(self, name: Any) -> Entry | None:
        """The claim shown for ``name``, or None."""

    def claimed(self, name: Any) -> bool:
        """Whether any claim on ``name`` is stored here (shown or not)."""

    def register(self, name: Any, pid: Pid, token: Any, method: str | None, meta: Any) -> None:
        """Start registering ``name``; the plug-in is told the result via :meth:`done`."""

    def unregister(self, name: Any, token: Any) -> None:
        """Start removing ``name`` everywhere; completes ``token`` like a registration."""

    def update_own_meta(self, name: Any, meta: Any) -> None:
        """Change the meta of this node's claim on ``name`` everywhere."""


class NamePlugin:
    """A layer that observes and steers ``global`` names. The defaults do nothing."""

    def attach(self, port: NamesPort) -> None:
        """Called once by the core the plug-in is given to."""

    def owns_token(self, token: Any) -> bool:
        """Whether a transaction with ``token`` was started by this plug-in."""
        return False

    def done(self, token: Any, result: Any) -> None:
        """A transaction this plug-in started (``owns_token``) ended with ``result``."""

    def on_timer(self, key: Any) -> None:
        """A timer that is not the core's own fired."""

    def view_changed(self, name: Any, old: Entry | None, new: Entry | None) -> None:
        """The claim shown for ``name`` changed."""

    def claim_stored(self, entry: Entry) -> None:
        """A claim was stored (new or updated)."""

    def conflict_outcome(self, name: Any, mine: Entry, other: Entry, won: bool) -> None:
        """Our claim ``mine`` met ``other`` and ``won`` or lost (owner side, once)."""

    def grant_extra(self, name: Any) -> Any:
        """Extra information a grant for ``name`` carries to the requester."""
        return None

    def finalize_meta(self, name: Any, meta: Any, extras: list[Any]) -> Any:
        """The meta to commit, given every granter's extra information."""
        return meta

    def sync_extra(self) -> Any:
        """Extra state sent in a sync (must be msgpack-able)."""
        return None

    def on_sync_extra(self, peer: str, extra: Any) -> None:
        """Extra state received in a sync."""

    def local_exit(self, pid: Pid) -> None:
        """A local process exited (before its names and locks are dropped)."""
