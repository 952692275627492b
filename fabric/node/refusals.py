"""Why a connection failed below fabric's handshake: ZeroMQ's CURVE/ZAP handshake.

Theory of operation
-------------------
The data plane is CURVE, vetted by this node's ZAP handler (DECISIONS D18). A peer whose
key is wrong or not admitted never gets a frame to fabric's handshake, so the mesh core
alone would only see a connect that times out. Two places learn more, and tell this object:

* a channel's socket monitor reports a failed ZeroMQ handshake on our DEALER
  (:meth:`channel_failed`: the reason comes from the event, see
  :func:`fabric.transport.security.handshake_failure`);
* our ZAP handler refuses a client key (:meth:`zap_refused`): ZAP names an address, not a
  node, so the address is remembered for a while (bounded: strangers choose addresses).

When the mesh core reports a failed ``ConnectDone``, :meth:`reason` replaces its generic
reason by what was learnt: ``key_refused``, ``bad_cookie`` or ``security_mismatch``. A
refusal from the peer's host within one handshake timeout is taken as the peer's key
refused as it dialled back (two nodes on one host refused at the same moment could be
confused: the mesh has no per-attempt hook for it yet).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fabric.node.metrics import Metrics
from fabric.transport.security import DATA_DOMAIN, handshake_failure
from fabric.types import parse_node_name

__all__ = ["TransportRefusals"]

_MAX_ADDRESSES = 64  # addresses remembered; a stranger picks them, so the set is bounded


class TransportRefusals:
    """Reasons of failed ZeroMQ handshakes, per peer and per refused address."""

    def __init__(self, metrics: Metrics, encrypting: bool, window: float,
                 bad: Callable[..., None], clock: Callable[[], float]) -> None:
        self._metrics = metrics
        self._encrypting = encrypting
        self._window = window  # how long a ZAP refusal explains a failed connect
        self._bad = bad
        self._clock = clock
        self._by_peer: dict[str, str] = {}  # peer -> why its handshake failed
        self._addresses: dict[str, float] = {}  # address ZAP refused -> when

    def channel_failed(self, peer: str, event: int) -> None:
        """Our DEALER's ZeroMQ handshake with ``peer`` failed (a monitor ``event``)."""
        self._metrics.handshake_failed += 1
        self._by_peer[peer] = handshake_failure(event, self._encrypting)

    def router_failed(self) -> None:
        """A ZeroMQ handshake at our ROUTER failed (wrong or refused key, stall)."""
        self._metrics.handshake_failed += 1

    def zap_refused(self, domain: str, address: str, *_: Any) -> None:
        """Our ZAP handler refused a client key: count it, remember where from."""
        self._metrics.key_refused += 1
        if domain == DATA_DOMAIN:
            if len(self._addresses) >= _MAX_ADDRESSES:
                self._addresses.clear()
            self._addresses[address] = self._clock()
        self._bad("key_refused", domain=domain, address=address)

    def reason(self, peer: str, ok: bool, reason: str) -> str:
        """A connect's reason, told more precisely when ZeroMQ's handshake failed."""
        why = self._by_peer.pop(peer, None)
        if ok:
            return reason
        if why is not None:
            return why
        refused_at = self._addresses.get(parse_node_name(peer).host.strip("[]"))
        if refused_at is not None and self._clock() - refused_at <= self._window:
            return "key_refused"
        return reason
