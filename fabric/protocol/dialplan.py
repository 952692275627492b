"""Which discovered names to dial, when to retry, and when to let go.

Theory of operation
-------------------
Discovery strategies (static list, hosts file, gossip, DNS) each report a *snapshot*: the
set of node names the source knows now. :class:`DialPlan` merges the snapshots of every
source and decides, on each input, which names to dial (``Dial``) and which sessions to
end (``Disconnect``). It never touches the mesh: the runtime executes ``Dial`` as
``node.connect(name)`` and reports the outcome back with :meth:`DialPlan.dial_result`.

* A name is *wanted* while at least one source lists it. A wanted name that is neither
  connected nor being dialled is dialled when its retry time comes (at once for a name
  never tried).
* A failed dial is retried after a backoff that doubles from ``initial_backoff`` up to
  ``max_backoff`` (a refusal that retrying cannot fix, such as ``bad_cookie``, jumps to
  the cap). This is the only retry discovery does: once a session has been up, the mesh
  reconnects by itself after a drop (its reconnect window), so after a ``nodedown`` the
  plan waits a full ``max_backoff`` before dialling again; a name that stays wanted is
  what re-merges a cluster after a partition longer than the mesh's window.
* A name no source lists any more is forgotten; with ``disconnect=True`` (libcluster's
  ``disconnect`` on removal) a connected one is disconnected.
* This node's own name is never dialled.

Pure: ``now`` is an argument (loop time, seconds), effects are returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

__all__ = ["Dial", "DialPlan", "Disconnect", "Forgotten", "Seen"]

PERMANENT_REFUSALS: Final = frozenset({"bad_cookie", "name_in_use", "version", "bad_name",
                                       "wrong_node"})


@dataclass(frozen=True, slots=True)
class Dial:
    """Connect to ``name`` and report the outcome with ``dial_result``."""

    name: str


@dataclass(frozen=True, slots=True)
class Disconnect:
    """End the session with ``name``: no source lists it any more."""

    name: str


@dataclass(frozen=True, slots=True)
class Seen:
    """``name`` was listed for the first time (by ``source``)."""

    name: str
    source: str


@dataclass(frozen=True, slots=True)
class Forgotten:
    """No source lists ``name`` any more."""

    name: str


Effect = Dial | Disconnect | Seen | Forgotten


@dataclass
class _Target:
    next_at: float = 0.0
    backoff: float = 0.0
    dialling: bool = False


@dataclass
class DialPlan:
    """The dialling decisions of one node's discovery."""

    self_name: str
    disconnect: bool = False
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("seen", "dialled", "connected", "failed", "forgotten", "disconnected"), 0))

    def __post_init__(self) -> None:
        if not 0 < self.initial_backoff <= self.max_backoff:
            raise ValueError("need 0 < initial_backoff <= max_backoff")
        self._sources: dict[str, frozenset[str]] = {}
        self._targets: dict[str, _Target] = {}
        self._up: set[str] = set()

    # -- inputs ---------------------------------------------------------------------------

    def update(self, source: str, names: frozenset[str], now: float) -> list[Effect]:
        """``source`` now lists exactly ``names`` (full, normalised node names)."""
        names = names - {self.self_name}
        effects: list[Effect] = []
        self._sources[source] = names
        for name in sorted(names):
            if name not in self._targets:
                self._targets[name] = _Target(next_at=now)
                self.stats["seen"] += 1
                effects.append(Seen(name, source))
        wanted = self.wanted()
        for name in sorted(set(self._targets) - wanted):
            del self._targets[name]
            self.stats["forgotten"] += 1
            effects.append(Forgotten(name))
            if self.disconnect and name in self._up:
                self.stats["disconnected"] += 1
                effects.append(Disconnect(name))
        return effects + self.tick(now)

    def node_up(self, name: str) -> None:
        self._up.add(name)
        target = self._targets.get(name)
        if target is not None:
            target.backoff = 0.0

    def node_down(self, name: str, now: float) -> None:
        self._up.discard(name)
        target = self._targets.get(name)
        if target is not None and not target.dialling:
            # The mesh reconnects a dropped session itself: dial only if it gives up.
            target.next_at = now + self.max_backoff

    def dial_result(self, name: str, ok: bool, reason: str, now: float) -> list[Effect]:
        target = self._targets.get(name)
        if target is None:
            return []
        target.dialling = False
        if ok:
            self.stats["connected"] += 1
            target.backoff = 0.0
            self._up.add(name)
        else:
            self.stats["failed"] += 1
            if reason in PERMANENT_REFUSALS:
                target.backoff = self.max_backoff
            else:
                target.backoff = min(max(target.backoff * 2, self.initial_backoff),
                                     self.max_backoff)
            target.next_at = now + target.backoff
        return self.tick(now)

    def tick(self, now: float) -> list[Effect]:
        """Dials that are due."""
        effects: list[Effect] = []
        for name, target in self._targets.items():
            if not target.dialling and name not in self._up and target.next_at <= now:
                target.dialling = True
                self.stats["dialled"] += 1
                effects.append(Dial(name))
        return effects

    # -- queries --------------------------------------------------------------------------

    def wanted(self) -> set[str]:
        """Every name some source lists (never this node's own)."""
        out: set[str] = set()
        for names in self._sources.values():
            out |= names
        return out

    def next_due(self) -> float | None:
        """When the next retry is due, or None when nothing waits."""
        times = [t.next_at for n, t in self._targets.items()
                 if not t.dialling and n not in self._up]
        return min(times) if times else None
