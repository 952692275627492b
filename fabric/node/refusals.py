"""Why a connection failed below fabric's handshake: ZeroMQ's CURVE/ZAP handshake.

Theory of operation
-------------------
The data plane is CURVE, vetted by this node's ZAP handler (DECISIONS D18). A peer whose
key is wrong or not admitted never gets a frame to fabric's handshake, so the mesh core
alone would only see a connect that times out. This object counts and names what ZeroMQ
reports:

* a channel's socket monitor reports a failed ZeroMQ handshake on our DEALER to a peer
  (:meth:`channel_failed`): the reason (``key_refused``, ``security_mismatch``,
  ``bad_cookie``, see :func:`fabric.transport.security.handshake_failure`) goes to the
  mesh core as ``MeshCore.transport_refused(peer, reason)``, for the one peer that
  channel dialled. When we had accepted that peer's session (our DEALER is the dial-back
  of PROTOCOL.md 4.3), the core tells the peer why with a ``REFUSE`` on its own channel,
  so the dialler learns that its key was refused, precisely and at once;
* a ZeroMQ handshake failed at our ROUTER (:meth:`router_failed`), or our ZAP handler
  refused a client key (:meth:`zap_refused`): counted and logged. ZAP names an address,
  not a node, so nothing is attributed to a peer from it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fabric.node.metrics import Metrics
from fabric.transport.security import handshake_failure

__all__ = ["TransportRefusals"]


class TransportRefusals:
    """Counts and names failed ZeroMQ handshakes; see the module docstring."""

    def __init__(self, metrics: Metrics, encrypting: bool,
                 bad: Callable[..., None]) -> None:
        self._metrics = metrics
        self._encrypting = encrypting
        self._bad = bad

    def channel_failed(self, event: int) -> str:
        """Our DEALER's ZeroMQ handshake failed (a monitor ``event``): count it and
        return the reason to give the mesh core."""
        self._metrics.handshake_failed += 1
        return handshake_failure(event, self._encrypting)

    def router_failed(self) -> None:
        """A ZeroMQ handshake at our ROUTER failed (wrong or refused key, stall)."""
        self._metrics.handshake_failed += 1

    def zap_refused(self, domain: str, address: str, *_: Any) -> None:
        """Our ZAP handler refused a client key: count it, log where from."""
        self._metrics.key_refused += 1
        self._bad("key_refused", domain=domain, address=address)
