"""The names discovery found: which to hand to the mesh, and which to let go.

Theory of operation
-------------------
Discovery strategies (static list, hosts file, gossip, DNS) each report a *snapshot*: the
set of node names the source knows now. :class:`DiscoveredNames` merges the snapshots of
every source. A name is *wanted* while at least one source lists it.

Dialing and retrying are the mesh's job, not discovery's: a wanted name that is not
connected is handed to the mesh (``Learn``, run as ``node.learn(name)``), which dials it
as an automatic attempt and retries it with its own reconnect backoff until it answers
(PROTOCOL.md section 7.1). The mesh ignores a name it already holds (a session, an
attempt, or a planned retry), so handing a name over again costs nothing; it happens on
every snapshot and on the name's ``nodedown``. That is what brings back a name the mesh
let go: one that left gracefully (``shutdown`` is not retried), or one it forgot after a
refusal that would repeat (``bad_cookie``, ``name_in_use``) or after
``reconnect_give_up``.

* A name no source lists any more is forgotten (``Forgotten``): the runtime then takes it
  back from the mesh if it is not connected (``node.disconnect`` cancels the attempts, so
  a pod that left a DNS record is not dialled forever) and, with ``disconnect=True``
  (libcluster's ``disconnect`` on removal), ends its session if it is. Whether it is
  connected is read from the node at that moment, not kept here.
* This node's own name is never handed over.

Pure: no clock, no entropy; inputs are method calls, effects are returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DiscoveredNames", "Forgotten", "Learn", "Seen"]


@dataclass(frozen=True, slots=True)
class Learn:
    """Hand ``name`` to the mesh (``node.learn``): it dials and retries."""

    name: str


@dataclass(frozen=True, slots=True)
class Seen:
    """``name`` was listed for the first time (by ``source``)."""

    name: str
    source: str


@dataclass(frozen=True, slots=True)
class Forgotten:
    """No source lists ``name`` any more: take it back from the mesh, and end its
    session too when ``disconnect`` (see the module docstring)."""

    name: str
    disconnect: bool


Effect = Learn | Seen | Forgotten


@dataclass
class DiscoveredNames:
    """The merged snapshots of one node's discovery sources."""

    self_name: str
    disconnect: bool = False
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("seen", "learned", "forgotten"), 0))

    def __post_init__(self) -> None:
        self._sources: dict[str, frozenset[str]] = {}  # source label -> its snapshot
        self._wanted: set[str] = set()  # the union of the snapshots

    # -- inputs ---------------------------------------------------------------------------

    def update(self, source: str, names: frozenset[str]) -> list[Effect]:
        """``source`` now lists exactly ``names`` (full, normalised node names)."""
        names = names - {self.self_name}
        self._sources[source] = names
        before, self._wanted = self._wanted, set().union(*self._sources.values())
        effects: list[Effect] = []
        for name in sorted(names - before):
            self.stats["seen"] += 1
            effects.append(Seen(name, source))
        for name in sorted(before - self._wanted):
            self.stats["forgotten"] += 1
            effects.append(Forgotten(name, self.disconnect))
        # Every wanted name, connected or not: the mesh ignores the ones it holds.
        return effects + [self._learn(name) for name in sorted(self._wanted)]

    def node_down(self, name: str) -> list[Effect]:
        """The session with ``name`` ended: a wanted name goes back to the mesh (which
        ignores it while it retries the session itself)."""
        return [self._learn(name)] if name in self._wanted else []

    # -- queries --------------------------------------------------------------------------

    def wanted(self) -> set[str]:
        """Every name some source lists (never this node's own)."""
        return set(self._wanted)

    def _learn(self, name: str) -> Learn:
        self.stats["learned"] += 1
        return Learn(name)
