"""Who may connect to a node's sockets: CURVE keys, the allowlist, and key rotation.

Theory of operation
-------------------
Both planes are ZeroMQ CURVE (docs/DECISIONS.md D13, D18). A CURVE client must know the
server's public key to finish the handshake, and the server learns the client's public
key, which the node's ZAP handler (:mod:`fabric.transport.zap`) checks with
:meth:`SocketSecurity.admits`:

* PUB/SUB (ZAP domain ``fabric-pub``): every PUB serves with the cookie-derived server key
  and every SUB connects with the cookie-derived client key, which is the only key
  admitted. Nothing to configure.
* ROUTER/DEALER, the data plane (ZAP domain ``fabric-data``): every ROUTER serves with the
  cookie-derived data-plane server key. Every DEALER connects with this node's client
  key: the cookie-derived shared one by default, or the node's own (``curve_secret_key``).
  The ROUTER admits the public keys of ``curve_allowed_keys``, by default the
  cookie-derived shared one. Since both directions of a session are dialled (the
  acceptor dials back to send BIND), with per-node keys both ends of every session are
  identified by their key, and a node is shut out by revoking its key everywhere.

A peer without the cookie lacks the server keys and cannot finish either handshake;
with an allowlist, a peer with the cookie but no listed key is refused by ZAP.

Rotation without a restart: the allowlist is state of the event loop, changed with
:meth:`SocketSecurity.allow` and :meth:`SocketSecurity.revoke`, and a node switches its
own key with :meth:`SocketSecurity.use_secret_key`. CURVE vets a connection once, at its
handshake: a change applies to connections made after it, and sessions already up keep
running. The procedure is in README.md ("Security").

``encrypt=False`` leaves the data plane in clear (NULL mechanism, no ZAP); the PUB plane
is CURVE whatever the setting.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import zmq
from zmq.utils import z85

from fabric.config import check_z85_key
from fabric.errors import ConfigError
from fabric.protocol import handshake as hs
from fabric.transport.zeromq import curve_client, curve_server

__all__ = ["DATA_DOMAIN", "PUB_DOMAIN", "SocketSecurity", "handshake_failure"]

PUB_DOMAIN = "fabric-pub"
DATA_DOMAIN = "fabric-data"


def handshake_failure(event: int, encrypting: bool) -> str:
    """The connect error for a DEALER's failed ZeroMQ handshake, by monitor event."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return "key_refused"  # the peer's ZAP handler does not admit our key
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL or not encrypting:
        # ZMTP's mechanism mismatch: one side encrypts and the other does not. (In
        # clear, the peer hanging up mid-handshake means the same, seen from the side
        # whose first frame crossed the peer's refusal.)
        return "security_mismatch"
    # The peer hung up: it could not open our CURVE boxes, sealed for the server key
    # derived from our cookie. Its cookie is another (or it is no fabric node).
    return "bad_cookie"


def _public_of(secret: bytes) -> bytes:
    """The raw 32-byte Curve25519 public key of a raw secret key."""
    return z85.decode(zmq.curve_public(z85.encode(secret)))


def _raw_key(name: str, key: str) -> bytes:
    check_z85_key(name, key)
    return z85.decode(key.encode())


class SocketSecurity:
    """The CURVE keys and allowlists of one node's sockets.

    Args:
        cookie: the cluster's cookie, from which every shared key is derived.
        encrypt: CURVE on the data plane (False: NULL, in clear).
        secret_key: this node's own data-plane client secret key (Z85), or None for the
            cookie-derived shared one.
        allowed_keys: data-plane client public keys (Z85) admitted; empty: the shared one.

    Raises:
        ConfigError: a key is not 40 Z85 characters, or libzmq has no CURVE.
    """

    def __init__(self, cookie: bytes, *, encrypt: bool = True, secret_key: str | None = None,
                 allowed_keys: Iterable[str] = ()) -> None:
        if not zmq.has("curve"):
            raise ConfigError("this libzmq has no CURVE support: fabric's sockets need it "
                              "(pyzmq's wheels include it; rebuild libzmq with libsodium)")
        self.encrypt = encrypt
        self._pub_server, self._pub_client = hs.pub_plane_secrets(cookie)
        self._pub_client_public = _public_of(self._pub_client)
        self._data_server, shared_client = hs.data_plane_secrets(cookie)
        self._shared_client_public = _public_of(shared_client)
        self._shared_client_secret = shared_client
        self._client_secret = (shared_client if secret_key is None
                               else _raw_key("curve_secret_key", secret_key))
        allowed = {_raw_key("curve_allowed_keys", k) for k in allowed_keys}
        self._allowed: set[bytes] = allowed or {self._shared_client_public}

    # -- the allowlist and this node's key (rotation) -------------------------------------

    @property
    def public_key(self) -> str:
        """This node's data-plane client public key (Z85): what peers must allow."""
        return z85.encode(_public_of(self._client_secret)).decode()

    @property
    def shared_public_key(self) -> str:
        """The cookie-derived data-plane client public key (Z85)."""
        return z85.encode(self._shared_client_public).decode()

    def allowed_keys(self) -> frozenset[str]:
        """The data-plane client public keys (Z85) this node admits now."""
        return frozenset(z85.encode(k).decode() for k in self._allowed)

    def allow(self, *keys: str) -> None:
        """Admit these public keys (Z85) from the next handshake on.

        Raises:
            ConfigError: a key is not 40 Z85 characters.
        """
        self._allowed |= {_raw_key("allow", k) for k in keys}

    def revoke(self, *keys: str) -> None:
        """Refuse these public keys (Z85) from the next handshake on. Connections made
        with them stay up until they close (disconnect the node to end them now).

        Raises:
            ConfigError: a key is not 40 Z85 characters.
        """
        self._allowed -= {_raw_key("revoke", k) for k in keys}

    def use_secret_key(self, secret_key: str | None) -> None:
        """Connect with this secret key (Z85; None: the shared one) from now on."""
        self._client_secret = (self._shared_client_secret if secret_key is None
                               else _raw_key("use_secret_key", secret_key))

    def admits(self, domain: str, client_public_key: bytes) -> bool:
        """The ZAP policy: may this client key finish a handshake in ``domain``?"""
        if domain == DATA_DOMAIN:
            return client_public_key in self._allowed
        if domain == PUB_DOMAIN:
            return client_public_key == self._pub_client_public
        return False

    # -- socket options (before bind / connect) -------------------------------------------

    def pub_server(self, sock: zmq.Socket[Any]) -> None:
        curve_server(sock, self._pub_server, PUB_DOMAIN)

    def pub_client(self, sock: zmq.Socket[Any]) -> None:
        curve_client(sock, self._pub_server, self._pub_client)

    def data_server(self, sock: zmq.Socket[Any], handshake_timeout: float) -> None:
        """The ROUTER: CURVE server (unless in clear), and a stranger's handshake ends
        after ``handshake_timeout`` whatever it sends (libzmq's ``HANDSHAKE_IVL``)."""
        sock.setsockopt(zmq.HANDSHAKE_IVL, max(1, round(handshake_timeout * 1000)))
        if self.encrypt:
            curve_server(sock, self._data_server, DATA_DOMAIN)

    def data_client(self, sock: zmq.Socket[Any]) -> None:
        """A DEALER to a peer's ROUTER, with this node's current key."""
        if self.encrypt:
            curve_client(sock, self._data_server, self._client_secret)

