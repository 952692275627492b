"""Name claims and the conflict resolvers of ``global``.

Theory of operation
-------------------
A registered name is held by a *claim*: an :class:`Entry` ``(name, pid, stamp, method,
meta)`` that only the pid's own node (the *owner*) may create, update or retract. Two
claims for one name can exist at once only after a partition heals (or, transiently, in an
overlapping partition); every node that holds both resolves them with the same pure
function, :func:`resolve_pair`, so every node reaches the same verdict without talking.

Determinism is the whole point, so:

* the two claims are always passed in one canonical order: the earlier ``stamp`` first.
  A stamp is ``(lamport, owner node, sequence)``: a Lamport time (monotonic clocks of
  different nodes cannot be compared, Lamport times at least respect causality: a
  registration made after its node heard of another one carries a larger stamp), then
  the owner's name and a per-node counter, so no two claims ever share a stamp;
* the resolver is chosen by the earlier claim's ``method`` (a key of the resolver table,
  ``None`` meaning the node's default), so both sides pick the same function;
* resolvers must be pure functions of their arguments. The "random" ones of Erlang are,
  like in Erlang, in fact ordered by node name.

A resolver returns the pid that keeps the name, ``None`` (nobody keeps it), or a full
:class:`Resolution` that also lists which pids to notify and which to kill. Returning a
bare pid notifies the loser; returning ``None`` notifies both. Notifications are delivered
by the owner of the notified pid as ``GlobalNameConflict(name, other_pid)``, the
event for Erlang's ``{global_name_conflict, Name, OtherPid}``: ``other_pid`` is the
pid of the other claim (the one that kept the name, unless nobody did).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from fabric.protocol.effects import ExitProcess
from fabric.types import Pid

__all__ = [
    "BUILTIN_RESOLVERS",
    "ConflictInfo",
    "Entry",
    "ExitProcess",
    "Resolution",
    "Resolver",
    "Stamp",
    "Verdicts",
    "earliest_name",
    "fold_claims",
    "highest_term",
    "notify_all_name",
    "random_exit_name",
    "random_notify_name",
    "resolve_pair",
]

Stamp = tuple[int, str, int]
"""``(lamport, owner node, per-node sequence)``: a unique, totally ordered claim age."""


class Entry(NamedTuple):
    """One claim on a name. Travels as the plain tuple of its fields."""

    name: Any
    pid: Pid
    stamp: Stamp
    method: str | None
    meta: Any

    @property
    def owner(self) -> str:
        """The node that is the authority for this claim (the pid's node)."""
        return self.pid.node

    @property
    def ident(self) -> tuple[Pid, Stamp]:
        """What identifies the claim across meta updates."""
        return (self.pid, self.stamp)

    def wire(self) -> tuple[Any, ...]:
        """The claim as a plain tuple (what goes into a ``Send`` payload)."""
        return (self.name, self.pid, self.stamp, self.method, self.meta)

    @classmethod
    def from_wire(cls, value: Any) -> Entry:
        """Parse a claim sent by a peer.

        Raises:
            ValueError: the value is not a well-formed claim.
        """
        name, pid, stamp, method, meta = value
        if not isinstance(pid, Pid):
            raise ValueError(f"claim pid {pid!r} is not a Pid")
        lamport, node, seq = stamp
        if not (isinstance(lamport, int) and isinstance(node, str) and isinstance(seq, int)):
            raise ValueError(f"bad claim stamp {stamp!r}")
        if method is not None and not isinstance(method, str):
            raise ValueError(f"bad claim method {method!r}")
        try:
            hash((name, meta))  # claims are dict keys and set members
        except TypeError:
            raise ValueError("claim name and meta must be hashable") from None
        return cls(name, pid, (lamport, node, seq), method, meta)


@dataclass(frozen=True, slots=True)
class ConflictInfo:
    """What a resolver knows about the two claims besides their pids.

    ``stamp1``/``meta1`` belong to ``pid1`` (the earlier registration), ``stamp2``/``meta2``
    to ``pid2``. ``meta`` is what the registration carried (the leader term for
    leader-election names, else usually None).
    """

    stamp1: Stamp
    stamp2: Stamp
    meta1: Any
    meta2: Any


@dataclass(frozen=True, slots=True)
class Resolution:
    """A resolver's full verdict.

    Attributes:
        winner: the pid that keeps the name (one of the two), or None: unregistered.
        notify: pids to send ``GlobalNameConflict(name, other_pid)``.
        exit: pids the owner kills (:class:`ExitProcess` with reason ``"kill"``).
    """

    winner: Pid | None
    notify: tuple[Pid, ...] = ()
    exit: tuple[Pid, ...] = ()


Resolver = Callable[[Any, Pid, Pid, ConflictInfo], "Pid | Resolution | None"]
"""``resolver(name, pid1, pid2, info)``: pid1 registered earlier. Must be pure."""


def _minmax(pid1: Pid, pid2: Pid) -> tuple[Pid, Pid]:
    # Erlang's minmax orders by node name; pids of one name always differ in node.
    return (pid1, pid2) if tuple(pid1) <= tuple(pid2) else (pid2, pid1)


def earliest_name(name: Any, pid1: Pid, pid2: Pid, info: ConflictInfo) -> Resolution:
    """The default: the earlier registration keeps the name, the other is notified."""
    return Resolution(pid1, notify=(pid2,))


def random_exit_name(name: Any, pid1: Pid, pid2: Pid, info: ConflictInfo) -> Resolution:
    """Erlang's default: keep the pid on the lower node name, kill the other."""
    keep, kill = _minmax(pid1, pid2)
    return Resolution(keep, exit=(kill,))


def random_notify_name(name: Any, pid1: Pid, pid2: Pid, info: ConflictInfo) -> Resolution:
    """Keep the pid on the lower node name, notify the other."""
    keep, lose = _minmax(pid1, pid2)
    return Resolution(keep, notify=(lose,))


def notify_all_name(name: Any, pid1: Pid, pid2: Pid, info: ConflictInfo) -> Resolution:
    """Unregister the name and notify both processes."""
    return Resolution(None, notify=(pid1, pid2))


def highest_term(name: Any, pid1: Pid, pid2: Pid, info: ConflictInfo) -> Resolution:
    """Leader names: the higher term (``meta``) wins, ties go to the earlier registration.

    Nobody is notified here: the leader layer tells the deposed leader ``leader_lost``.
    """
    term1 = info.meta1 if isinstance(info.meta1, int) else 0
    term2 = info.meta2 if isinstance(info.meta2, int) else 0
    return Resolution(pid2 if term2 > term1 else pid1)


BUILTIN_RESOLVERS: Mapping[str, Resolver] = {
    "earliest": earliest_name,
    "random_exit": random_exit_name,
    "random_notify": random_notify_name,
    "notify_all": notify_all_name,
    "leader": highest_term,
}


def _normalise(result: Any, pid1: Pid, pid2: Pid) -> Resolution:
    if isinstance(result, Resolution):
        if result.winner not in (pid1, pid2, None):
            # Like Erlang: anything but one of the two pids unregisters the name.
            return Resolution(None, result.notify, result.exit)
        return result
    if result == pid1:
        return Resolution(pid1, notify=(pid2,))
    if result == pid2:
        return Resolution(pid2, notify=(pid1,))
    return Resolution(None, notify=(pid1, pid2))


def resolve_pair(
    a: Entry, b: Entry, resolvers: Mapping[str, Resolver], default: Resolver
) -> tuple[Entry, Entry, Resolution]:
    """Resolve two conflicting claims the same way on every node.

    Returns:
        ``(first, second, resolution)`` with ``first`` the earlier claim.

    Raises:
        Exception: whatever a user resolver raised (the caller falls back).
    """
    first, second = (a, b) if a.stamp <= b.stamp else (b, a)
    resolver = resolvers.get(first.method, default) if first.method is not None else default
    info = ConflictInfo(first.stamp, second.stamp, first.meta, second.meta)
    result = resolver(first.name, first.pid, second.pid, info)
    return first, second, _normalise(result, first.pid, second.pid)


def fold_claims(
    claims: Iterable[Entry], decide: Callable[[Entry, Entry], Resolution]
) -> Entry | None:
    """The claim a node shows for a name: claims folded pairwise in stamp order.

    With two claims this is exactly the pair's verdict; with more, every node holding the
    same claims computes the same answer (the order is canonical).
    """
    current: Entry | None = None
    for claim in sorted(claims, key=lambda e: e.stamp):
        if current is None:
            current = claim
            continue
        verdict = decide(current, claim)
        current = (
            current
            if verdict.winner == current.pid
            else claim
            if verdict.winner == claim.pid
            else None
        )
    return current


class Verdicts:
    """One node's resolver table: the verdict on a pair of claims, never an exception.

    Args:
        default: the resolver used when a claim names no method (or an unknown one); it
            must be the same on every node.
        extra: named resolvers besides :data:`BUILTIN_RESOLVERS`, by ``method``.
        on_error: told ``(name, exception)`` when a user resolver raised; the pair is
            then resolved by :func:`earliest_name`, which is the same on every node.
    """

    def __init__(
        self,
        default: Resolver,
        extra: Mapping[str, Resolver] | None,
        on_error: Callable[[Any, Exception], None],
    ) -> None:
        self._default = default
        # method name -> resolver; the earlier claim's method picks the resolver.
        self._resolvers: dict[str, Resolver] = {**BUILTIN_RESOLVERS, **(extra or {})}
        self._on_error = on_error

    def decide(self, a: Entry, b: Entry) -> tuple[Entry, Entry, Resolution]:
        """``(earlier, later, resolution)`` for two claims on one name."""
        try:
            return resolve_pair(a, b, self._resolvers, self._default)
        except Exception as exc:  # a user resolver failed: fall back, deterministically
            self._on_error(a.name, exc)
            return resolve_pair(a, b, {}, earliest_name)

    def shown(self, claims: Iterable[Entry]) -> Entry | None:
        """The claim a node shows among ``claims`` (see :func:`fold_claims`)."""
        return fold_claims(claims, lambda a, b: self.decide(a, b)[2])
