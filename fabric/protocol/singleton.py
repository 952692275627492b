"""Cluster singletons: where the one instance of a named service runs (sans-I/O).

Theory of operation
-------------------
Every node that may host the singleton ``name`` runs a *manager* for it with one
:class:`SingletonCore` (nodes that only call it run an *observer*: a core with
``candidate=False``). Managers of one name talk to each other only; each keeps a view of
the others, learned from their messages, and decides by itself, from that view alone,
whether to start, stop or hand over the instance. Since every manager applies the same
pure rules to the same facts, connected managers agree without a vote:

* **Members.** A manager greets each peer that comes up (``hello``: its age, whether it
  is a candidate, the pid of the instance it runs if any) and is greeted back; a peer
  whose manager never greets is not a member. A member that goes down by
  ``connection_closed`` (its process died: kill -9, the OS closed its sockets) or that
  said ``leaving`` is *removed*; one lost by ``heartbeat_timeout``, ``peer_reset`` (its
  process answered: it lives, as when sessions flap in a reconnect race after a heal),
  ``blocked`` or ``disconnect`` stays *known* but *unreachable* (it may be alive behind a
  partition) until it comes
  back, :meth:`SingletonCore.forget` removes it, or (with the policy's ``forget_after``)
  it has been unreachable that long while this side satisfies the policy. Every change
  is announced with a ``status`` message.
* **Designated host.** The oldest reachable candidate (smallest ``age``: the manager's
  start time and node name, the same numbers on every node), or the smallest by the
  optional ``rank`` rule. The instance runs on the designated host only.
* **Policy** (:class:`SplitBrainPolicy`): may this side of a partition run it at all?
  ``keep_majority``: the reachable candidates (this one included) are more than half
  of the known ones, or exactly half and include the oldest known; ``keep_oldest``: the
  oldest known candidate is reachable; ``static_quorum``: at least ``quorum`` candidates
  are reachable; ``availability``: always. And no instance starts anywhere before this
  manager has once seen ``min_members`` candidates reachable (itself included), or known
  of a running instance (the cluster formed elsewhere): a node that starts alone does
  not run a singleton of its own before it joined the cluster (Akka's
  ``min-nr-of-members``); once formed, the policy alone decides.
* **Starting** (effect :class:`StartInstance`): only on the designated host, with the
  policy satisfied, when no reachable member runs an instance and no reachable candidate
  *sees* one on another node (each manager tells the others which instance it knows of,
  ``seen``: after a heal, the first hello from the other side already names its
  instance; a peer that still has a session with a host this node lost, as in a one-way
  cut, keeps this node from starting a second one), and when the view has been *stable*
  for ``margin`` seconds: no member was lost unreachable during that time, this side did
  not just gain the policy (a heal or a re-split that gives it the majority as the other
  side loses it: the other side stops only when its own detector fires, D38), and a new
  manager has either known of an instance or been up for ``margin`` (time to hear from
  the others). A removal (a member known dead or gone) does not unsettle the view, so a
  kill -9 is taken over as soon as it is detected; a loss that may be a partition waits
  ``margin``, which gives the other side, which loses contact at the same moment, time
  to stop its instance first.
* **Stopping** (effect :class:`StopInstance`): a running host that no longer satisfies
  the policy stops at once (reason ``"split_brain"``); one that is no longer the
  designated host hands over to the one that is (``handover_to``). A node that drains
  (:meth:`SingletonCore.drain`) hands over to the oldest other reachable candidate.
* **Hand-over.** The runtime stops the instance gracefully, takes its state from the
  state-transfer hook and reports :meth:`SingletonCore.handed_off`; the core sends
  ``handover`` with the state to the successor, whose next start uses it. Only then does
  the old host say ``status`` (no instance) or ``leaving``, so nobody starts while the
  old instance may still run.
* **Two instances** (``availability`` after a heal, or a race): the instance's global
  name decides (``global``'s conflict resolver keeps one claim and notifies the loser);
  the runtime reports a lost name with :meth:`SingletonCore.name_lost` and the loser
  stops (reason ``"conflict"``). Should no verdict come within ``2 * margin``, the
  instance on the younger host stops.

What each policy guarantees (and assumes) is in docs/guide/singletons.md and DECISIONS
D27. Inputs take ``now`` (seconds, any monotonic clock); effects are frozen dataclasses;
nothing here does I/O.

Messages between managers (tuples, sent to the manager of the same name on ``node``)::

    ("hello", age, candidate, running_pid_or_None, seen_pid_or_None, want_reply)
    ("status", running_pid_or_None)
    ("seen", pid_or_None)               the instance the sender knows of changed
    ("handover", state, leaving)        the sender stopped its instance; state for ours
    ("leaving",)                        the sender stops taking part (its node drains)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from fabric.errors import ConfigError
from fabric.protocol.mesh import CONNECTION_CLOSED
from fabric.types import Pid

__all__ = [
    "AVAILABILITY",
    "KEEP_MAJORITY",
    "KEEP_OLDEST",
    "POLICIES",
    "STATIC_QUORUM",
    "Age",
    "HostChanged",
    "SendPeer",
    "SingletonCore",
    "SplitBrainPolicy",
    "StartInstance",
    "StopInstance",
]

KEEP_MAJORITY: Final = "keep_majority"
KEEP_OLDEST: Final = "keep_oldest"
STATIC_QUORUM: Final = "static_quorum"
AVAILABILITY: Final = "availability"
POLICIES: Final = (KEEP_MAJORITY, KEEP_OLDEST, STATIC_QUORUM, AVAILABILITY)

# Reasons a member leaves the view for good: its process is gone (the OS closed its
# sockets), or it said goodbye. Any other nodedown may be a partition; ``peer_reset`` in
# particular is proof the member lives (taking it for a death after a heal started a
# second instance beside the oldest's under keep_oldest: D36).
_GONE_REASONS: Final = frozenset({CONNECTION_CLOSED, "shutdown"})

Age = tuple[float, str]
"""``(manager start time, node name)``: smaller is older. The start time is a wall clock
reading taken once; its accuracy does not matter, only that every node sees the same
value (it travels in ``hello``)."""


@dataclass(frozen=True, slots=True)
class SplitBrainPolicy:
    """Which side of a partition may run the singleton (see the module docstring).

    Args:
        kind: one of :data:`POLICIES`; default ``keep_majority``, which never runs two.
        quorum: for ``static_quorum``, the candidates that must be reachable (set it to
            more than half of the largest cluster you run, or two sides may both have it).
        forget_after: seconds after which a member that stayed unreachable is forgotten
            (no longer counted among the known candidates), but only by a manager whose
            side satisfies the policy at that moment: a machine gone for good stops
            shrinking the majority, while a minority never forgets its way to a majority.
            None (the default): members are forgotten only by :meth:`SingletonCore.forget`.
            What it costs ``keep_majority``'s guarantee: docs/guide/singletons.md (D34).

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


# -- effects --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartInstance:
    """Start the instance on this node, with ``state`` handed over (None: a fresh start);
    report :meth:`SingletonCore.instance_started` or :meth:`SingletonCore.instance_ended`."""

    state: Any


@dataclass(frozen=True, slots=True)
class StopInstance:
    """Stop this node's instance. With ``handover_to``, stop it gracefully, take its state
    and report :meth:`SingletonCore.handed_off`; else report
    :meth:`SingletonCore.instance_ended`. ``reason``: ``"handover"``, ``"split_brain"``,
    ``"conflict"`` or ``"leaving"``."""

    reason: str
    handover_to: str | None


@dataclass(frozen=True, slots=True)
class SendPeer:
    """Send ``message`` to the manager of this singleton on ``node``."""

    node: str
    message: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class HostChanged:
    """Where the instance runs, as this node now knows it (None: nowhere known): what
    callers wait for during a hand-over."""

    pid: Pid | None


Effect = StartInstance | StopInstance | SendPeer | HostChanged


def _pid_or_none(value: Any) -> bool:
    return value is None or type(value) is Pid


# -- state ----------------------------------------------------------------------------------


class _Member:
    """Another node's manager, as this one knows it."""

    __slots__ = ("age", "candidate", "leaving", "reachable", "running", "seen",
                 "unreachable_since")

    def __init__(self, age: Age, candidate: bool, running: Pid | None,
                 seen: Pid | None) -> None:
        self.age = age
        self.candidate = candidate
        self.running = running  # the instance it said it runs
        self.seen = seen  # the instance it said it knows of (its own or another's)
        self.reachable = True
        self.unreachable_since = 0.0  # meaningful while not reachable
        self.leaving = False


_IDLE: Final = "idle"
_STARTING: Final = "starting"
_STOPPING: Final = "stopping"


class SingletonCore:
    """One node's manager of one singleton (see the module docstring).

    Args:
        node: this node's name.
        age: this manager's :data:`Age`.
        now: the time the manager starts (the view is stable ``margin`` after it).
        policy: the split-brain policy (default keep-majority).
        margin: seconds the view must be stable before a start (default 1.2 s: cover the
            failure detector's timeout, so the other side of a partition stops first).
        min_members: reachable candidates this manager must have seen once before it
            starts an instance (default 1).
        candidate: False for an observer that never hosts (it only follows the host).
        rank: optional placement rule: ``rank(node, age)`` sortable, smallest hosts;
            default: the oldest.
        restart_delay: seconds before an instance that ended by itself is started again.
    """

    def __init__(self, node: str, age: Age, now: float, *,
                 policy: SplitBrainPolicy | None = None, margin: float = 1.2,
                 min_members: int = 1, candidate: bool = True,
                 rank: Callable[[str, Age], Any] | None = None,
                 restart_delay: float = 0.1) -> None:
        self.node = node
        self.age = age
        self.policy = policy or SplitBrainPolicy()
        self.margin = margin
        self.min_members = min_members
        self.candidate = candidate
        self._rank = rank or (lambda _node, age: age)
        self._restart_delay = restart_delay
        self.members: dict[str, _Member] = {}
        self.running: Pid | None = None  # this node's instance
        self.phase = _IDLE
        self.leaving = False
        self._state: Any = None  # handed over, for the next start here
        self._stable_since = float("-inf")  # the last loss that may be a partition
        self._not_before = now
        # A new manager waits a margin to hear from the cluster, unless it learns of an
        # instance sooner (then it is in sync: the other rules suffice).
        self._fresh_until = now + margin
        self._knew_instance = False
        self._conflict_since: float | None = None
        self._host: Pid | None = None  # last HostChanged
        self._formed = min_members <= 1  # min_members candidates were reachable once
        # allowed() at the last evaluation (None: none yet; a new manager's first view
        # is covered by _fresh_until)
        self._was_allowed: bool | None = None

    # -- reads ----------------------------------------------------------------------------

    def host(self) -> Pid | None:
        """The instance as this node knows it: its own, else one a reachable member runs."""
        if self.running is not None:
            return self.running
        for member in self.members.values():
            if member.reachable and member.running is not None:
                return member.running
        return None

    def designated(self) -> str | None:
        """The node that should host it in this view (None: no candidate)."""
        nodes = [(self._rank(n, m.age), n) for n, m in self.members.items()
                 if m.reachable and m.candidate and not m.leaving]
        if self.candidate and not self.leaving:
            nodes.append((self._rank(self.node, self.age), self.node))
        return min(nodes)[1] if nodes else None

    def allowed(self) -> bool:
        """Whether this side of any partition may run it (``min_members``, the policy)."""
        known = [(m.age, n) for n, m in self.members.items() if m.candidate]
        reachable = [(m.age, n) for n, m in self.members.items()
                     if m.candidate and m.reachable]
        if self.candidate:
            known.append((self.age, self.node))
            reachable.append((self.age, self.node))
        if not self._formed or not known:
            return False
        kind = self.policy.kind
        if kind == KEEP_MAJORITY:
            twice = 2 * len(reachable)
            return twice > len(known) or (twice == len(known) and min(known) in reachable)
        if kind == KEEP_OLDEST:
            return min(known) in reachable
        if kind == STATIC_QUORUM:
            return len(reachable) >= self.policy.quorum
        return True

    @property
    def drained(self) -> bool:
        """After :meth:`drain`: no instance runs here any more."""
        return self.leaving and self.running is None and self.phase == _IDLE

    # -- inputs: the mesh -----------------------------------------------------------------

    def nodeup(self, peer: str, now: float) -> list[Effect]:
        """A session with ``peer`` came up: greet its manager (if it has one)."""
        return [SendPeer(peer, self._hello(True))]

    def nodedown(self, peer: str, reason: str, now: float) -> list[Effect]:
        """The session with ``peer`` ended with ``reason`` (a mesh nodedown reason)."""
        member = self.members.get(peer)
        if member is None:
            return self._evaluate(now)
        if reason in _GONE_REASONS:
            del self.members[peer]
        elif member.reachable:
            member.reachable = False
            member.unreachable_since = now
            self._stable_since = now
        return self._evaluate(now)

    def forget(self, peer: str, now: float) -> list[Effect]:
        """Remove an unreachable member for good (an operator knows it is dead)."""
        member = self.members.get(peer)
        if member is not None and not member.reachable:
            del self.members[peer]
        return self._evaluate(now)

    # -- inputs: other managers -----------------------------------------------------------

    def on_message(self, peer: str, msg: Any, now: float) -> list[Effect]:
        """A message from ``peer``'s manager of the same singleton.

        Raises:
            ValueError: a malformed message (nothing changes).
        """
        if type(msg) is not tuple or not msg:
            raise ValueError("not a singleton message")
        out: list[Effect] = []
        kind = msg[0]
        if kind == "hello" and len(msg) == 6:
            _, age, candidate, running, seen, want_reply = msg
            if not (type(age) is tuple and len(age) == 2 and type(candidate) is bool
                    and _pid_or_none(running) and _pid_or_none(seen)):
                raise ValueError("malformed hello")
            # A member that joins or comes back does not unsettle the view: if it runs
            # or sees an instance, its hello says so, and that alone holds a start back.
            self.members[peer] = _Member((float(age[0]), str(age[1])), candidate, running,
                                         seen)
            if want_reply:
                out.append(SendPeer(peer, self._hello(False)))
        elif kind in ("status", "seen") and len(msg) == 2:
            if not _pid_or_none(msg[1]):
                raise ValueError(f"malformed {kind}")
            member = self.members.get(peer)
            if member is not None:
                if kind == "status":
                    member.running = member.seen = msg[1]
                else:
                    member.seen = msg[1]
        elif kind == "handover" and len(msg) == 3:
            self._state = msg[1]
            member = self.members.get(peer)
            if member is not None:
                member.running = member.seen = None
                if msg[2]:
                    del self.members[peer]
        elif kind == "leaving" and len(msg) == 1:
            self.members.pop(peer, None)
        else:
            raise ValueError(f"unknown singleton message {kind!r}")
        return out + self._evaluate(now)

    # -- inputs: the instance -------------------------------------------------------------

    def instance_started(self, pid: Pid, now: float) -> list[Effect]:
        """The instance asked for by :class:`StartInstance` runs as ``pid``."""
        self.running = pid
        self.phase = _IDLE
        self._state = None
        out = self._broadcast(("status", pid))
        if self.leaving:  # the node began to drain while it started: hand it over now
            self.phase = _STOPPING
            return [*out, StopInstance("leaving", self.designated())]
        return out + self._evaluate(now)

    def instance_ended(self, now: float) -> list[Effect]:
        """The instance ended (crashed, was stopped, or did not start)."""
        was_stopping = self.phase == _STOPPING
        self.running = None
        self.phase = _IDLE
        if not was_stopping:
            self._not_before = now + self._restart_delay  # a crash loop must not spin
        out = self._broadcast(("status", None)) if not self.leaving else self._leave()
        return out + self._evaluate(now)

    def handed_off(self, to: str, state: Any, now: float) -> list[Effect]:
        """The instance stopped for a hand-over to ``to`` and gave ``state``."""
        self.running = None
        self.phase = _IDLE
        out: list[Effect] = [SendPeer(to, ("handover", state, self.leaving))]
        if self.leaving:
            out += [SendPeer(n, ("leaving",)) for n in self.members if n != to]
        else:
            out += [SendPeer(n, ("status", None)) for n in self.members if n != to]
        return out + self._evaluate(now)

    def name_lost(self, now: float) -> list[Effect]:
        """The instance lost its global name to another instance (after a heal)."""
        if self.running is None or self.phase != _IDLE:
            return []
        self.phase = _STOPPING
        return [StopInstance("conflict", None)]

    # -- inputs: time and the node's life -------------------------------------------------

    def tick(self, now: float) -> list[Effect]:
        return self._evaluate(now)

    def drain(self, now: float) -> list[Effect]:
        """This node stops: hand the instance over to the oldest other reachable
        candidate, then say ``leaving``; :attr:`drained` tells when it is done."""
        if self.leaving:
            return []
        self.leaving = True
        if self.running is None:
            return self._leave() if self.phase == _IDLE else []
        if self.phase == _STOPPING:
            return []
        self.phase = _STOPPING
        return [StopInstance("leaving", self.designated())]

    # -- the rules ------------------------------------------------------------------------

    def _hello(self, want_reply: bool) -> tuple[Any, ...]:
        return ("hello", self.age, self.candidate, self.running, self._host, want_reply)

    def _broadcast(self, msg: tuple[Any, ...]) -> list[Effect]:
        return [SendPeer(n, msg) for n, m in self.members.items() if m.reachable]

    def _leave(self) -> list[Effect]:
        return self._broadcast(("leaving",))

    def _forget_long_lost(self, now: float) -> None:
        """Forget members unreachable for ``forget_after``, if this side may run the
        singleton: forgetting only shrinks the known set, so the side that has the
        majority keeps it as more machines go, and a side without it (the minority of a
        partition, which cannot tell a partition from a death) forgets nothing."""
        bound = self.policy.forget_after
        if bound is None:
            return
        lost = [n for n, m in self.members.items()
                if not m.reachable and now - m.unreachable_since >= bound]
        if lost and self.allowed():
            for peer in lost:
                del self.members[peer]

    def _evaluate(self, now: float) -> list[Effect]:
        self._forget_long_lost(now)
        if not self._knew_instance and self.host() is not None:
            self._knew_instance = True
        if not self._formed:
            # Formed: min_members candidates met here, or an instance ran (some manager
            # saw the cluster formed: it must not wait for this one to see it too).
            reachable = sum(1 for m in self.members.values() if m.candidate and m.reachable)
            self._formed = (reachable + self.candidate >= self.min_members
                            or self._knew_instance)
        allowed = self.allowed()
        if allowed and self._was_allowed is False:
            # This side just gained the policy (a heal, or a re-split that gives it the
            # majority as the other side loses it): the other side may still run the
            # instance until its own detector fires, later than ours. A view that was
            # stable before the gain proves nothing about that: unsettle it.
            self._stable_since = max(self._stable_since, now)
        self._was_allowed = allowed
        out = self._decide(now)
        host = self.host()
        if host != self._host:
            self._host = host
            out.append(HostChanged(host))
            out += self._broadcast(("seen", host))
        return out

    def _decide(self, now: float) -> list[Effect]:
        if self.phase != _IDLE or self.leaving or not self.candidate:
            return []
        others_running = [(m.age, n) for n, m in self.members.items()
                          if m.reachable and m.running is not None]
        if self.running is not None:
            return self._keep_or_stop(others_running, now)
        self._conflict_since = None
        # Candidates' beliefs only: an observer may be a hidden node, whose nodedown
        # nobody is told of, so its stale belief could hold a start back for ever.
        seen_elsewhere = any(m.reachable and m.candidate and m.seen is not None
                             and m.seen[0] != self.node for m in self.members.values())
        if (others_running or seen_elsewhere or self.designated() != self.node
                or not self.allowed()
                or now < self._stable_since + self.margin or now < self._not_before
                or (now < self._fresh_until and not self._knew_instance)):
            return []
        self.phase = _STARTING
        return [StartInstance(self._state)]

    def _keep_or_stop(self, others_running: list[tuple[Age, str]],
                      now: float) -> list[Effect]:
        if not self.allowed():
            self.phase = _STOPPING
            return [StopInstance("split_brain", None)]
        if others_running:
            # Two instances: global's resolver decides (name_lost); failing that, the
            # younger host gives way after 2 * margin.
            if self._conflict_since is None:
                self._conflict_since = now
            if (now >= self._conflict_since + 2 * self.margin
                    and min(others_running)[0] < self.age):
                self.phase = _STOPPING
                return [StopInstance("conflict", None)]
            return []
        self._conflict_since = None
        target = self.designated()
        if target is not None and target != self.node:
            self.phase = _STOPPING
            return [StopInstance("handover", target)]
        return []
