"""Effects: what a sans-I/O core asks its runtime to do.

Theory of operation
-------------------
A protocol core never touches a socket, a clock or a logger. Each input method takes the
current time (``now``, seconds on a monotonic clock) where time matters and returns a list
of effects. The runtime (``fabric.node``) executes them against real sockets; the simulator
(``fabric.testing``) executes them against a scripted network with a virtual clock. The
same core therefore runs unchanged in production and in deterministic tests.

Service cores (pg, global, ...) all share one input interface, :class:`ServiceCore`, so the
node and the simulator can host any of them the same way: a service only ever talks to the
same service on other nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from fabric.types import Pid

__all__ = [
    "CancelTimer",
    "Complete",
    "Deliver",
    "DeliverMany",
    "Effect",
    "Log",
    "Publish",
    "Send",
    "ServiceCore",
    "SetTimer",
    "Subscribe",
    "Unsubscribe",
]


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``payload`` to the same service on node ``peer`` over the ordered mesh."""

    peer: str
    payload: Any


@dataclass(frozen=True, slots=True)
class Deliver:
    """Put ``message`` in the mailbox of the local process ``pid``."""

    pid: Pid
    message: Any


@dataclass(frozen=True, slots=True)
class DeliverMany:
    """Put ``message`` in the mailbox of each local process in ``pids`` (a fan-out: one
    effect for the whole group instead of one per member)."""

    pids: tuple[Pid, ...]
    message: Any


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish ``payload`` under ``topic`` on this node's PUB socket (best effort)."""

    topic: bytes
    payload: Any


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Start receiving ``topic`` from every peer's PUB socket."""

    topic: bytes


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Stop receiving ``topic``."""

    topic: bytes


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Call the core's ``on_timer(key, now)`` at time ``at`` (replaces a timer with that key)."""

    key: Any
    at: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    """Forget the timer ``key`` if it is set."""

    key: Any


@dataclass(frozen=True, slots=True)
class Complete:
    """A request the runtime started (identified by ``token``) has finished with ``result``."""

    token: Any
    result: Any


@dataclass(frozen=True, slots=True)
class Log:
    """A structured log event (``event`` is a snake_case fact)."""

    level: str
    event: str
    fields: dict[str, Any]


Effect = (
    Send | Deliver | DeliverMany | Publish | Subscribe | Unsubscribe | SetTimer | CancelTimer
    | Complete | Log
)


class ServiceCore(Protocol):
    """The inputs every service core accepts. Each returns the effects to execute.

    ``peer`` is always a full node name. The runtime guarantees the ordering contract of
    the mesh: ``on_nodeup(peer)`` comes before any ``on_message`` from ``peer`` and
    ``on_nodedown(peer)`` after the last one; messages from one peer arrive in order.
    """

    service: str

    def on_nodeup(self, peer: str, now: float) -> list[Effect]: ...

    def on_nodedown(self, peer: str, reason: str, now: float) -> list[Effect]: ...

    def on_message(self, peer: str, payload: Any, now: float) -> list[Effect]: ...

    def on_timer(self, key: Any, now: float) -> list[Effect]: ...

    def on_process_exit(self, pid: Pid, reason: Any, now: float) -> list[Effect]: ...
