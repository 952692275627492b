"""A ZAP handler on the node's event loop: libzmq asks it who may finish a CURVE handshake.

Theory of operation
-------------------
ZeroMQ's authentication protocol (ZAP, RFC 27) lets a process vet every incoming
connection of a context's security-enabled server sockets: during a CURVE handshake,
after the client proved it holds the secret key matching its public key, libzmq sends a
request to whatever REP socket is bound at ``inproc://zeromq.zap.01`` in that context and
waits for the answer. ``200`` lets the handshake finish; anything else fails it (the
client sees ``EVENT_HANDSHAKE_FAILED_AUTH``), and no message of that connection ever
reaches the application.

A request is ``[version, request_id, domain, address, routing_id, mechanism,
credentials...]``; for CURVE the one credential is the client's 32-byte public key. The
answer is ``[version, request_id, status_code, status_text, user_id, metadata]``.

:class:`ZapHandler` binds that REP socket in the node's context and answers on the node's
event loop through a :class:`~fabric.transport.zeromq.Reader`, so the policy it consults
(``admits(domain, public_key)``) is plain state of the event loop: changing it needs no
lock, and a change applies to the next handshake. A malformed request (which only libzmq
itself can send on inproc) is answered with ``500``. Every refusal is counted per domain
(:attr:`ZapHandler.refused`) and reported to ``on_refused``, which the node rate-limits
before logging (an attacker controls the rate).

The handler must be bound before any server socket accepts a connection: libzmq skips
ZAP when nothing is bound, and would then admit anyone holding the server key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import zmq

from fabric.transport.zeromq import Reader

__all__ = ["ZAP_ENDPOINT", "ZapHandler"]

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_ZAP_VERSION = b"1.0"
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_MAX_REQUESTS = 256  # answered per wakeup before yielding to other callbacks


class ZapHandler:
    """Answers ZAP requests of ``ctx`` with ``admits(domain, curve_public_key)``.

    Args:
        loop: the event loop that owns ``admits``' state.
        ctx: the context whose CURVE servers are vetted (ZAP is per context).
        admits: True if a client with that raw 32-byte public key may connect to a server
            socket of that ZAP domain.
        on_refused: called with ``(domain, address)`` after each refusal.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        ctx: zmq.Context[Any],
        admits: Callable[[str, bytes], bool],
        on_refused: Callable[[str, str], None] | None = None,
    ) -> None:
        self._admits = admits
        self._on_refused = on_refused
        self.refused: dict[str, int] = {}
        self.admitted = 0
        self._sock: zmq.Socket[Any] = ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(ZAP_ENDPOINT)
        self._reader = Reader(loop, self._sock, self._on_ready)

    def _on_ready(self, sock: zmq.Socket[Any]) -> bool:
        for _ in range(_MAX_REQUESTS):
            if not sock.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
                return False
            sock.send_multipart(self._answer(sock.recv_multipart(zmq.NOBLOCK)))
        return True

    def _answer(self, request: list[bytes]) -> list[bytes]:
        if len(request) < 6 or request[0] != _ZAP_VERSION:
            request_id = request[1] if len(request) > 1 else b""
            return [_ZAP_VERSION, request_id, b"500", b"malformed ZAP request", b"", b""]
        _, request_id, domain_raw, address_raw, _, mechanism, *credentials = request
        domain = domain_raw.decode("utf-8", "replace")
        if mechanism == b"CURVE" and len(credentials) == 1 and len(credentials[0]) == 32 \
                and self._admits(domain, credentials[0]):
            self.admitted += 1
            return [_ZAP_VERSION, request_id, b"200", b"OK", b"", b""]
        self.refused[domain] = self.refused.get(domain, 0) + 1
        if self._on_refused is not None:
            self._on_refused(domain, address_raw.decode("utf-8", "replace"))
        return [_ZAP_VERSION, request_id, b"400", b"key not allowed", b"", b""]

    def close(self) -> None:
        """Stop answering. Only as the node's sockets close: with no handler bound,
        libzmq admits any client that holds the server key."""
        self._reader.close()
        self._sock.close(0)
