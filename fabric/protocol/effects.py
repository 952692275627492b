"""Effects: what a sans-I/O core asks its runtime to do.

Theory of operation
-------------------
A protocol core never touches a socket, a clock or a logger. Each input method takes the
current time (``now``, seconds on a monotonic clock) where time matters and returns a list
of effects. The runtime (``fabric.node``) executes them against real sockets; the simulator
(``fabric.testing``) executes them against a scripted network with a virtual clock. The
same core therefore runs unchanged in production and in deterministic tests.

Service cores (pg, global, ...) all share one input interface,
:class:`fabric.protocol.service.ServiceCore`, so the node and the simulator host any of
them the same way, executing only the effects listed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fabric.types import Pid

__all__ = [
    "CancelTimer",
    "Complete",
    "Deliver",
    "DeliverMany",
    "Effect",
    "ExitProcess",
    "Log",
    "Publish",
    "Reply",
    "Send",
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


@dataclass(frozen=True, slots=True)
class ExitProcess:
    """Terminate the *local* process ``pid`` with ``reason`` (as if it called exit).

    Emitted only by the node that owns ``pid``; the runtime then reports the exit through
    ``on_process_exit`` like any other. ``global`` emits it for resolvers that kill the
    loser of a name conflict (reason ``"kill"``, as Erlang's ``random_exit_name``).
    """

    pid: Pid
    reason: Any


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer of the current input to its local caller (a facade method).

    At most one per input, and only from methods the local API calls (``leave``,
    ``monitor``, ...): a facade gets the value back from the host's ``run_service``.
    Inputs from the network, timers and process exits never reply.
    """

    value: Any


Effect = (
    Send | Deliver | DeliverMany | Publish | Subscribe | Unsubscribe | SetTimer | CancelTimer
    | Complete | Log | ExitProcess | Reply
)
