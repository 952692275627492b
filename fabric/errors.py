"""One exception hierarchy for everything fabric raises.

Errors are split by whose fault they are, as h11 does: :class:`LocalProtocolError` means
this program misused fabric; :class:`RemoteProtocolError` means a peer sent something
invalid. Everything derives from :class:`FabricError`.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BackpressureError",
    "CacheError",
    "CacheUnavailableError",
    "CacheValueError",
    "CallTimeout",
    "ConfigError",
    "ConsistencyError",
    "FabricError",
    "FabricTimeout",
    "LocalProtocolError",
    "MailboxFullError",
    "NameConflictError",
    "NodeDownError",
    "NodeDrainingError",
    "NotExportedError",
    "OutcomeUnknown",
    "ProcessDeadError",
    "ProtocolError",
    "ReceiveTimeout",
    "RemoteError",
    "RemoteProtocolError",
    "SpawnTimeout",
]


class FabricError(Exception):
    """Base class of every exception fabric raises on purpose."""


class ConfigError(FabricError, ValueError):
    """Raised at construction when a node name, a setting or an argument is invalid."""


class ProtocolError(FabricError):
    """A message broke the protocol."""


class LocalProtocolError(ProtocolError):
    """Raised when this program uses fabric wrongly (for example joining a remote pid)."""


class RemoteProtocolError(ProtocolError):
    """Raised (and counted) when a peer sent bytes that are not a valid message."""


class AuthenticationError(FabricError):
    """Raised when a handshake fails because the cookies differ."""


class NodeDownError(FabricError):
    """Raised by calls whose target node is down, unreachable or went down meanwhile."""

    def __init__(self, node: str, reason: str = "noconnection") -> None:
        super().__init__(f"node {node} is down ({reason})")
        self.node = node
        self.reason = reason


class NodeDrainingError(NodeDownError):
    """A node that is stopping gracefully refused new work (a call or a remote spawn):
    nothing was done; route it to another node. A :class:`NodeDownError` with reason
    ``"draining"``, so code that already fails over on a node down does so here too."""

    def __init__(self, node: str) -> None:
        super().__init__(node, "draining")


class ProcessDeadError(FabricError):
    """Raised by calls whose target process does not exist or exited before replying."""

    def __init__(self, target: object, reason: object = "noproc") -> None:
        super().__init__(f"process {target!r} is dead ({reason!r})")
        self.target = target
        self.reason = reason


class FabricTimeout(FabricError, TimeoutError):
    """Raised when a wait with a deadline ran out (``NodeMonitor.next``, ``global_``
    requests, ``SyncNode.run``, ...); the base of every timeout fabric raises.

    It is the builtin ``TimeoutError`` on every supported Python (before 3.11,
    ``asyncio.TimeoutError`` is not), so ``except TimeoutError`` catches it.
    """


class ConsistencyError(FabricError):
    """Raised by a replicated-data write or read whose consistency level was not met
    (too few replicas reachable, or not enough answers before the timeout). The write
    was still applied locally and spreads like any other."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CallTimeout(FabricTimeout):
    """Raised by ``call`` (and ``rpc.call``) when no reply came within the timeout."""


class ReceiveTimeout(FabricTimeout):
    """Raised by ``receive`` when no matching message came within the timeout."""


class SpawnTimeout(FabricTimeout):
    """Raised by ``spawn_on`` when the node is up but did not answer within the timeout."""


class OutcomeUnknown(FabricTimeout):
    """Raised when an operation that changes cluster state timed out after it was started:
    it may still take effect later, or not (``global.register_name`` whose answer did not
    come in time: check ``whereis_name``). A ``FabricTimeout`` (so a builtin
    ``TimeoutError``): existing handlers still catch it."""


class NameConflictError(FabricError):
    """Raised when a name is already registered to another process."""


class NotExportedError(FabricError):
    """Raised when a remote spawn or rpc names a function the target node does not export."""


class BackpressureError(FabricError):
    """Raised by a non-waiting send when the peer's outbound buffer is full."""

    def __init__(self, node: str, queued: int) -> None:
        super().__init__(f"outbound buffer to {node} is full ({queued} messages queued)")
        self.node = node
        self.queued = queued


class MailboxFullError(BackpressureError):
    """Raised by a non-waiting send when the destination process's mailbox is full: a
    local process at its ``mailbox_limit``, or a process on another node whose node
    reported it busy (PROTOCOL.md section 6.2, ``busy``). ``send_wait`` waits for room
    instead.

    Attributes:
        dest: the destination as addressed (a pid, a name, or ``(name, node)``).
        node: the node the process lives on.
        queued: its mailbox length (-1 when it lives on another node).
        dropped: messages to ``dest`` its node reported dropped in this episode (the
            ones that were already on their way when the mailbox filled up).
    """

    def __init__(self, dest: object, node: str, queued: int = -1, dropped: int = 0) -> None:
        FabricError.__init__(
            self, f"mailbox of {dest!r} is full"
            + (f" ({queued} messages)" if queued >= 0 else f" (reported by {node})")
            + (f"; {dropped} messages to it were dropped" if dropped else ""))
        self.dest = dest
        self.node = node
        self.queued = queued
        self.dropped = dropped


class RemoteError(FabricError):
    """An exception raised by remote code, carried back to the caller.

    Attributes:
        type_name: the remote exception's qualified type name, e.g. ``"ValueError"``.
        message: ``str()`` of the remote exception.
        remote_traceback: the formatted remote traceback.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback


class CacheError(FabricError):
    """A distributed cache operation failed (``fabric.cache``; the message says why)."""


class CacheUnavailableError(CacheError):
    """Every owner of a cache key is down (or the cache has no owners): raised at once."""


class CacheValueError(CacheError, ValueError):
    """A value a cache refuses: msgpack cannot carry it, or the entry is over the size
    bound (``max_entry_bytes``, or the whole store's ``max_bytes``)."""
