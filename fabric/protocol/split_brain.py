"""Split-brain policies: may this side of a partition run what must run only once?

Theory of operation
-------------------
A node cannot tell a peer that died from a peer cut off behind a partition: both are
silent. Services that must not run twice (a cluster singleton, a distributed
supervisor's children) therefore keep two sets of peers:

* **known**: every peer that took part and was not *removed*. A peer is removed only on
  evidence that it is gone: its node went down with one of :data:`GONE_REASONS` (its
  process died and the OS closed its sockets, or it said goodbye), it announced that it
  leaves, or (with ``forget_after``) it stayed unreachable that long while this side
  satisfied the policy;
* **reachable**: the known peers this node is in contact with now (itself included).

Any other loss (``heartbeat_timeout``, ``peer_reset``, ``blocked``, ``disconnect``) may
be a partition: the peer stays known but unreachable. :func:`policy_allows` is the one
rule, pure and shared by :mod:`fabric.protocol.singleton` and
:mod:`fabric.protocol.dsupervision`, that says from these two sets whether this side may
run the service (:class:`SplitBrainPolicy` lists the kinds). Both sides of a partition
apply it to complementary views, so with ``keep_majority``, ``keep_oldest`` and a
``static_quorum`` above half of the cluster at most one side is allowed; the caller stops
what runs on a side that is not, and waits a stability margin before taking over from a
peer lost in a way that may be a partition, so the other side stops first.

"Oldest" is the smallest element of ``known``: callers pass elements every node orders
the same way (the singleton: ``(age, node)``; the distributed supervisor: node names).
What each policy guarantees and assumes: docs/guide/singletons.md, DECISIONS D27, D37.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Final

from fabric.errors import ConfigError
from fabric.protocol.mesh import CONNECTION_CLOSED

__all__ = [
    "AVAILABILITY",
    "GONE_REASONS",
    "KEEP_MAJORITY",
    "KEEP_OLDEST",
    "POLICIES",
    "STATIC_QUORUM",
    "SplitBrainPolicy",
    "policy_allows",
]

KEEP_MAJORITY: Final = "keep_majority"
KEEP_OLDEST: Final = "keep_oldest"
STATIC_QUORUM: Final = "static_quorum"
AVAILABILITY: Final = "availability"
POLICIES: Final = (KEEP_MAJORITY, KEEP_OLDEST, STATIC_QUORUM, AVAILABILITY)

# Reasons a peer leaves the view for good: its process is gone (the OS closed its
# sockets), or it said goodbye. Any other nodedown may be a partition; ``peer_reset`` in
# particular is proof the peer lives (taking it for a death after a heal started a
# second singleton beside the oldest's under keep_oldest: D36).
GONE_REASONS: Final = frozenset({CONNECTION_CLOSED, "shutdown"})


@dataclass(frozen=True, slots=True)
class SplitBrainPolicy:
    """Which side of a partition may run the service (see the module docstring).

    Args:
        kind: one of :data:`POLICIES`; default ``keep_majority``, which never runs two.
        quorum: for ``static_quorum``, the members that must be reachable (set it to
            more than half of the largest cluster you run, or two sides may both have it).
        forget_after: seconds after which a member that stayed unreachable is forgotten
            (no longer counted among the known members), but only by a node whose side
            satisfies the policy at that moment: a machine gone for good stops shrinking
            the majority, while a minority never forgets its way to a majority. None (the
            default): an unreachable member stays known until it comes back or is
            removed explicitly. What it costs ``keep_majority``'s guarantee:
            docs/guide/singletons.md (D34).

    Raises:
        ConfigError: an unknown kind, a ``static_quorum`` without a quorum >= 1, or a
            ``forget_after`` that is not positive.
    """

    kind: str = KEEP_MAJORITY
    quorum: int = 0
    forget_after: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in POLICIES:
            raise ConfigError(f"unknown split-brain policy {self.kind!r}; use one of {POLICIES}")
        if self.kind == STATIC_QUORUM and self.quorum < 1:
            raise ConfigError("static_quorum needs quorum >= 1")
        if self.forget_after is not None and not self.forget_after > 0:
            raise ConfigError("forget_after must be a positive number of seconds (or None)")


def policy_allows(policy: SplitBrainPolicy, known: Collection[Any],
                  reachable: Collection[Any]) -> bool:
    """Whether a side that reaches ``reachable`` of the ``known`` members (this node in
    both) may run the service under ``policy``. ``keep_majority``: more than half are
    reachable, or exactly half including the oldest (the smallest known element);
    ``keep_oldest``: the oldest is reachable; ``static_quorum``: at least ``quorum`` are
    reachable; ``availability``: always. Nobody known: False."""
    if not known:
        return False
    kind = policy.kind
    if kind == KEEP_MAJORITY:
        twice = 2 * len(reachable)
        return twice > len(known) or (twice == len(known) and min(known) in reachable)
    if kind == KEEP_OLDEST:
        return min(known) in reachable
    if kind == STATIC_QUORUM:
        return len(reachable) >= policy.quorum
    return True
