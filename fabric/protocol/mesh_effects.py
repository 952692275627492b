"""The effects the mesh core returns: what the node must do with sockets and events.

Each is a frozen dataclass; :mod:`fabric.node` executes them against ZeroMQ sockets and
:mod:`fabric.testing.meshsim` against a simulated network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "ChannelSend",
    "CloseChannel",
    "ConnectDone",
    "Control",
    "OpenChannel",
    "PeerDown",
    "PeerUp",
    "Pong",
    "PublishHeartbeat",
    "RouterSend",
    "SubConnect",
    "SubDisconnect",
]



@dataclass(frozen=True, slots=True)
class OpenChannel:
    """Open a DEALER with routing ``identity`` connected to ``endpoint`` (peer's ROUTER)."""

    peer: str
    endpoint: str
    identity: bytes


@dataclass(frozen=True, slots=True)
class CloseChannel:
    """Close our DEALER to ``peer``; ``flush`` lets queued frames out first.

    ``handover`` means the session is not ending, only this attempt's socket: messages
    queued on it must be kept for the channel that replaces it.
    """

    peer: str
    flush: bool = False
    handover: bool = False


@dataclass(frozen=True, slots=True)
class ChannelSend:
    """Send a handshake ``frame`` on our DEALER to ``peer``, ahead of any batch."""

    peer: str
    frame: list[Any]


@dataclass(frozen=True, slots=True)
class RouterSend:
    """Send ``frame`` from our ROUTER to the DEALER with routing ``identity``."""

    identity: bytes
    frame: list[Any]


@dataclass(frozen=True, slots=True)
class Control:
    """Queue the mesh message ``message`` in the ordered batch stream to ``peer``."""

    peer: str
    message: list[Any]


@dataclass(frozen=True, slots=True)
class SubConnect:
    """Connect our SUB to ``peer``'s PUB at ``endpoint``."""

    peer: str
    endpoint: str


@dataclass(frozen=True, slots=True)
class SubDisconnect:
    peer: str
    endpoint: str


@dataclass(frozen=True, slots=True)
class PublishHeartbeat:
    """Publish this node's heartbeat now."""


@dataclass(frozen=True, slots=True)
class PeerUp:
    peer: str
    creation: int
    hidden: bool


@dataclass(frozen=True, slots=True)
class PeerDown:
    peer: str
    reason: str
    hidden: bool = False


@dataclass(frozen=True, slots=True)
class ConnectDone:
    """An attempt to reach ``peer`` ended: ``ok``, or not and why (``reason``)."""

    peer: str
    ok: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Pong:
    """A ping with ``token`` was answered by ``peer``."""

    peer: str
    token: int
