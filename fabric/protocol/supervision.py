"""Supervision decisions: which children to stop and start after an exit (Erlang's supervisor).

Theory of operation
-------------------
A :class:`SupervisorCore` holds one supervisor's children, in start order, each with its
restart type, its shutdown and its current pid (None while it is not running; the core never
looks inside a pid), and the times of its recent restarts. It decides; the runtime
(:mod:`fabric.supervisor`) carries the decisions out. Every input returns a *plan*: a list
of effects the runtime executes **in order**, one at a time:

* :class:`StopChild` - stop that child (an exit signal ``"shutdown"``, then ``"kill"``
  after its ``shutdown`` seconds; ``"brutal_kill"`` kills at once, ``"infinity"`` waits),
  and wait for its exit. The core already counts it as not running.
* :class:`StartChild` - start that child; report :meth:`SupervisorCore.started` with its
  pid, or :meth:`SupervisorCore.start_failed`. A failed start *replaces the rest of the
  plan* with the plan that call returns (the children after it were not started yet).
* :class:`StopSupervisor` - the supervisor gives up: it exits with ``reason``.
* :class:`~fabric.protocol.effects.Log` - a fact worth logging.

After a child exits (:meth:`SupervisorCore.exited`), its restart type decides whether it
is restarted: ``permanent`` always, ``transient`` unless the reason is ``"normal"``,
``"shutdown"`` or ``("shutdown", anything)``, ``temporary`` never (and a temporary child
is forgotten once it ended). A restart first counts against the intensity: more than
``intensity`` restarts within the last ``period`` seconds, bounds included as in Erlang
(``now`` is an argument, so tests use a fake clock), and the plan is to stop every running
child in reverse start order and then :class:`StopSupervisor` with ``"shutdown"``, logged as
``reached_max_restart_intensity``; the supervisor's own supervisor sees that exit and
applies its own policy, which is how failures escalate up a tree. Otherwise the strategy
chooses what restarts with the child:

* ``one_for_one`` - that child only;
* ``one_for_all`` - every child: the others are stopped in reverse order, then all are
  started in order;
* ``rest_for_one`` - that child and the ones started after it, likewise.

**Auto-shutdown** (Erlang's ``auto_shutdown`` and ``significant`` children): a core made
with ``auto_shutdown="any_significant"`` ends (stops the others in reverse order, then
:class:`StopSupervisor` with ``"shutdown"``) when a *significant* child ends by itself
and is not restarted; with ``"all_significant"``, when the last running significant child
does. Only transient and temporary children can be significant, and only under a core
whose ``auto_shutdown`` is not ``"never"`` (the default); stopping a child on request
(:meth:`SupervisorCore.terminate`) never triggers it.

Temporary children stopped that way are not restarted (they are dropped). A start that
fails during a restart counts as one more restart and is retried with the same strategy,
so a child that can never start ends the supervisor once the intensity is spent: every
retry loop is bounded by the intensity. An exit of a pid the core does not know (a child
already replaced or stopped on purpose) is ignored.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Final

from fabric.protocol.effects import Log

__all__ = [
    "ALL_SIGNIFICANT",
    "ANY_SIGNIFICANT",
    "AUTO_SHUTDOWNS",
    "BRUTAL_KILL",
    "NEVER",
    "INFINITY",
    "ONE_FOR_ALL",
    "ONE_FOR_ONE",
    "PERMANENT",
    "REST_FOR_ONE",
    "RESTARTS",
    "STRATEGIES",
    "TEMPORARY",
    "TRANSIENT",
    "Child",
    "StartChild",
    "StopChild",
    "StopSupervisor",
    "SupervisorCore",
    "SupervisorEffect",
    "check_shutdown",
    "restarts_after",
]

ONE_FOR_ONE: Final = "one_for_one"
ONE_FOR_ALL: Final = "one_for_all"
REST_FOR_ONE: Final = "rest_for_one"
STRATEGIES: Final = (ONE_FOR_ONE, ONE_FOR_ALL, REST_FOR_ONE)

PERMANENT: Final = "permanent"
TRANSIENT: Final = "transient"
TEMPORARY: Final = "temporary"
RESTARTS: Final = (PERMANENT, TRANSIENT, TEMPORARY)

NEVER: Final = "never"
ANY_SIGNIFICANT: Final = "any_significant"
ALL_SIGNIFICANT: Final = "all_significant"
AUTO_SHUTDOWNS: Final = (NEVER, ANY_SIGNIFICANT, ALL_SIGNIFICANT)

BRUTAL_KILL: Final = "brutal_kill"
INFINITY: Final = "infinity"


@dataclass(frozen=True, slots=True)
class StartChild:
    """Start the child ``id``; then report ``started`` or ``start_failed``."""

    id: str


@dataclass(frozen=True, slots=True)
class StopChild:
    """Stop the running child ``id`` (pid ``pid``) within ``shutdown``; wait for its exit."""

    id: str
    pid: Any
    shutdown: float | str


@dataclass(frozen=True, slots=True)
class StopSupervisor:
    """The supervisor exits with ``reason`` (its children are already stopped)."""

    reason: Any


SupervisorEffect = StartChild | StopChild | StopSupervisor | Log


@dataclass(slots=True)
class Child:
    """A child as the core knows it: ``pid`` is None while it is not running."""

    id: str
    restart: str
    shutdown: float | str
    pid: Hashable | None = None
    significant: bool = False


def restarts_after(restart: str, reason: Any) -> bool:
    """True if a child of restart type ``restart`` that ended with ``reason`` restarts."""
    if restart == PERMANENT:
        return True
    if restart == TEMPORARY:
        return False
    return not (reason == "normal" or reason == "shutdown"
                or (type(reason) in (tuple, list) and len(reason) == 2
                    and reason[0] == "shutdown"))


def check_shutdown(shutdown: float | str) -> float | str:
    """``shutdown`` if valid: seconds >= 0, ``"brutal_kill"`` or ``"infinity"``."""
    if shutdown in (BRUTAL_KILL, INFINITY):
        return shutdown
    if isinstance(shutdown, bool) or not isinstance(shutdown, (int, float)) or shutdown < 0:
        raise ValueError(f"shutdown must be seconds >= 0, {BRUTAL_KILL!r} or {INFINITY!r}, "
                         f"not {shutdown!r}")
    return float(shutdown)


class SupervisorCore:
    """The decisions of one supervisor (see the module docstring)."""

    def __init__(self, strategy: str = ONE_FOR_ONE, intensity: int = 3,
                 period: float = 5.0, auto_shutdown: str = NEVER) -> None:
        if auto_shutdown not in AUTO_SHUTDOWNS:
            raise ValueError(f"auto_shutdown must be one of {AUTO_SHUTDOWNS}, "
                             f"not {auto_shutdown!r}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
        if isinstance(intensity, bool) or not isinstance(intensity, int) or intensity < 0:
            raise ValueError(f"intensity must be an int >= 0, not {intensity!r}")
        if not period > 0:
            raise ValueError(f"period must be > 0 seconds, not {period!r}")
        self.strategy = strategy
        self.intensity = intensity
        self.period = float(period)
        self.auto_shutdown = auto_shutdown
        self.children: list[Child] = []
        self._restarts: deque[float] = deque()  # times of the restarts within the period

    # -- the children ---------------------------------------------------------------------

    def add(self, id: str, restart: str = PERMANENT, shutdown: float | str = 5.0,
            significant: bool = False) -> StartChild:
        """Append a child (not running yet); returns the effect that starts it.

        Raises:
            ValueError: the id is taken, the restart type or shutdown is invalid, or it
                cannot be significant (permanent, or this core never auto-shuts down).
        """
        if restart not in RESTARTS:
            raise ValueError(f"restart must be one of {RESTARTS}, not {restart!r}")
        if self.child(id) is not None:
            raise ValueError(f"a child with id {id!r} exists already")
        if significant and (restart == PERMANENT or self.auto_shutdown == NEVER):
            raise ValueError(f"child {id!r}: only a transient or temporary child of a "
                             "supervisor with auto_shutdown can be significant")
        self.children.append(Child(id, restart, check_shutdown(shutdown),
                                   significant=significant))
        return StartChild(id)

    def child(self, id: str) -> Child | None:
        for c in self.children:
            if c.id == id:
                return c
        return None

    def delete(self, id: str) -> None:
        """Forget the stopped child ``id``.

        Raises:
            KeyError: no such child.  ValueError: it is running.
        """
        c = self._known(id)
        if c.pid is not None:
            raise ValueError(f"child {id!r} is running")
        self.children.remove(c)

    def started(self, id: str, pid: Hashable) -> None:
        """The child ``id`` runs now as ``pid``."""
        self._known(id).pid = pid

    def terminate(self, id: str) -> list[SupervisorEffect]:
        """Stop the child ``id`` on request, without restarting it (a temporary child is
        forgotten). Nothing if it is not running.

        Raises:
            KeyError: no such child.
        """
        c = self._known(id)
        plan: list[SupervisorEffect] = []
        if c.pid is not None:
            plan.append(StopChild(c.id, c.pid, c.shutdown))
            c.pid = None
        if c.restart == TEMPORARY:
            self.children.remove(c)
        return plan

    def stop_all(self) -> list[SupervisorEffect]:
        """Stop every running child, in reverse start order (the supervisor is ending)."""
        plan: list[SupervisorEffect] = []
        for c in reversed(self.children):
            if c.pid is not None:
                plan.append(StopChild(c.id, c.pid, c.shutdown))
                c.pid = None
        return plan

    # -- exits and failed starts ----------------------------------------------------------

    def exited(self, pid: Hashable, reason: Any, now: float) -> list[SupervisorEffect]:
        """The child running as ``pid`` ended with ``reason``: the plan."""
        c = next((c for c in self.children if c.pid is not None and c.pid == pid), None)
        if c is None:
            return []
        c.pid = None
        if not restarts_after(c.restart, reason):
            if c.restart == TEMPORARY:
                self.children.remove(c)
            if c.significant and (self.auto_shutdown == ANY_SIGNIFICANT or not any(
                    o.significant and o.pid is not None for o in self.children)):
                return [Log("info", "auto_shutdown", {"child": c.id, "reason": reason}),
                        *self.stop_all(), StopSupervisor("shutdown")]
            return []
        return [Log("error", "child_terminated", {"id": c.id, "reason": reason}),
                *self._restart(c, now)]

    def start_failed(self, id: str, reason: Any, now: float) -> list[SupervisorEffect]:
        """Starting the child ``id`` during a restart failed with ``reason``: the plan
        that replaces the rest of the current one."""
        c = self._known(id)
        c.pid = None
        log = Log("error", "child_start_failed", {"id": id, "reason": reason})
        if c.restart == TEMPORARY:
            self.children.remove(c)
            return [log]
        return [log, *self._restart(c, now)]

    # -- internals ------------------------------------------------------------------------

    def _known(self, id: str) -> Child:
        c = self.child(id)
        if c is None:
            raise KeyError(id)
        return c

    def _within_intensity(self, now: float) -> bool:
        """Count a restart at ``now``; False once there are more than the intensity
        within the period."""
        restarts = self._restarts
        restarts.append(now)
        while restarts and now - restarts[0] > self.period:
            restarts.popleft()
        return len(restarts) <= self.intensity

    def _restart(self, failed: Child, now: float) -> list[SupervisorEffect]:
        if not self._within_intensity(now):
            return [Log("error", "reached_max_restart_intensity",
                        {"intensity": self.intensity, "period": self.period,
                         "child": failed.id}),
                    *self.stop_all(), StopSupervisor("shutdown")]
        if self.strategy == ONE_FOR_ONE:
            group = [failed]
        elif self.strategy == ONE_FOR_ALL:
            group = list(self.children)
        else:
            group = self.children[self.children.index(failed):]
        plan: list[SupervisorEffect] = []
        for c in reversed(group):
            if c.pid is not None:
                plan.append(StopChild(c.id, c.pid, c.shutdown))
                c.pid = None
            if c.restart == TEMPORARY and c is not failed:
                self.children.remove(c)
        plan += [StartChild(c.id) for c in group if c in self.children]
        return plan
