"""The handshake frames and the cookie proofs.

Theory of operation
-------------------
Node A (the initiator) opens a DEALER to B's ROUTER with a fresh random routing identity
``I_A`` and runs a four-leg exchange; the cookie itself never crosses the wire:

1. A -> B ``HELLO``: version, A's full name, creation, flags, PUB port, challenge ``c_a``.
2. B -> A ``CHALLENGE`` (over B's ROUTER, to ``I_A``): B's name, creation, flags, PUB port,
   challenge ``c_b`` and ``proof(cookie, "challenge", c_a, B, A)``: B knows the cookie.
3. A -> B ``ANSWER``: ``proof(cookie, "answer", c_b, A, B)``: A knows the cookie. B now
   trusts frames arriving from ``I_A``.
4. B opens its own DEALER to A's ROUTER with identity ``I_B`` and sends ``BIND`` with
   ``proof(cookie, "bind", c_a + c_b, B, A, I_B)`` as its first frame. A now trusts
   frames from ``I_B``; both directions are authenticated and the session is up.

Each proof is an HMAC-SHA256 keyed by the cookie over a label, both fresh challenges or
one of them, both names and (for BIND) the routing identity, so no proof can be replayed
into another session, another direction or another socket. Either side refuses with a
``REFUSE`` frame carrying a reason (``bad_cookie``, ``name_in_use``, ``version``,
``simultaneous``, ``not_connected``...). Every frame is a msgpack array whose first item
is the frame's type as a string; data-plane batches are arrays of arrays, so the first
item tells the two apart.

The PUB/SUB plane has no handshake of its own: it is ZeroMQ CURVE with keys derived from
the cookie (:func:`pub_plane_secrets`). Every PUB is a CURVE server with the same secret
key and every SUB a CURVE client with the same client key, so a SUB that does not know
the cookie cannot complete CURVE's handshake with any node's PUB, and reads nothing.

The ROUTER/DEALER plane under this handshake is CURVE too (:func:`data_plane_secrets`):
every ROUTER is a CURVE server with a cookie-derived key, every DEALER a CURVE client whose
key a ZAP handler checks against an allowlist (by default the cookie-derived client key).
A peer without the cookie cannot finish ZeroMQ's handshake, so none of the frames above
reach a node from it; the cookie proofs still run, inside the encrypted connection.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Final

from fabric.errors import RemoteProtocolError

__all__ = [
    "PROTOCOL_VERSION",
    "Answer",
    "Bind",
    "Challenge",
    "Hello",
    "Refuse",
    "parse_handshake",
    "proof",
    "data_plane_secrets",
    "pub_plane_secrets",
]

PROTOCOL_VERSION: Final = 3  # 3: CURVE data plane, frames in parts (PROTOCOL.md section 9)
CHALLENGE_SIZE: Final = 16
FLAG_HIDDEN: Final = 1


def proof(cookie: bytes, label: str, challenge: bytes, *parts: str | bytes) -> bytes:
    """HMAC-SHA256 of the cookie over a label, a challenge and the given names/ids."""
    mac = hmac.new(cookie, label.encode(), hashlib.sha256)
    mac.update(challenge)
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        mac.update(len(data).to_bytes(4, "big"))  # length-prefixed: no ambiguity
        mac.update(data)
    return mac.digest()


def proofs_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def pub_plane_secrets(cookie: bytes) -> tuple[bytes, bytes]:
    """The CURVE secret keys (32 bytes each) of the PUB/SUB plane: ``(server, client)``.

    Both are HMAC-SHA256 of the cookie over a label, so every node of a cluster derives
    the same pair and nobody without the cookie can. The public keys follow from them
    (Curve25519 scalar multiplication, done by the transport: this module is pure).
    """
    return (hmac.new(cookie, b"fabric pub-plane curve server", hashlib.sha256).digest(),
            hmac.new(cookie, b"fabric pub-plane curve client", hashlib.sha256).digest())


def data_plane_secrets(cookie: bytes) -> tuple[bytes, bytes]:
    """The CURVE secret keys of the ROUTER/DEALER plane: ``(server, shared client)``.

    Derived like :func:`pub_plane_secrets` over other labels, so a key of one plane opens
    nothing on the other. A node may replace the client key with its own (per-node keys);
    the server key is always this one.
    """
    return (hmac.new(cookie, b"fabric data-plane curve server", hashlib.sha256).digest(),
            hmac.new(cookie, b"fabric data-plane curve client", hashlib.sha256).digest())


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    name: str
    creation: int
    flags: int
    pub_port: int
    challenge: bytes

    def frame(self) -> list[Any]:
        return ["hello", self.version, self.name, self.creation, self.flags, self.pub_port,
                self.challenge]


@dataclass(frozen=True, slots=True)
class Challenge:
    version: int
    name: str
    creation: int
    flags: int
    pub_port: int
    challenge: bytes
    proof: bytes

    def frame(self) -> list[Any]:
        return ["challenge", self.version, self.name, self.creation, self.flags,
                self.pub_port, self.challenge, self.proof]


@dataclass(frozen=True, slots=True)
class Answer:
    proof: bytes

    def frame(self) -> list[Any]:
        return ["answer", self.proof]


@dataclass(frozen=True, slots=True)
class Bind:
    name: str
    proof: bytes

    def frame(self) -> list[Any]:
        return ["bind", self.name, self.proof]


@dataclass(frozen=True, slots=True)
class Refuse:
    reason: str
    detail: str = ""

    def frame(self) -> list[Any]:
        return ["refuse", self.reason, self.detail]


HandshakeFrame = Hello | Challenge | Answer | Bind | Refuse


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise RemoteProtocolError(f"malformed handshake frame: {what}")


def parse_handshake(value: Any) -> HandshakeFrame:
    """Validate a decoded frame's shape and types.

    Raises:
        RemoteProtocolError: not a handshake frame, or fields of the wrong type.
    """
    _check(type(value) is list and len(value) >= 2 and type(value[0]) is str, "shape")
    kind = value[0]
    if kind == "hello":
        _check(len(value) == 7, "hello arity")
        _, v, name, creation, flags, pub, ch = value
        _check(type(v) is int and type(name) is str and type(creation) is int
               and type(flags) is int and type(pub) is int and type(ch) is bytes
               and len(ch) == CHALLENGE_SIZE and 0 < pub < 65536, "hello fields")
        return Hello(v, name, creation, flags, pub, ch)
    if kind == "challenge":
        _check(len(value) == 8, "challenge arity")
        _, v, name, creation, flags, pub, ch, pr = value
        _check(type(v) is int and type(name) is str and type(creation) is int
               and type(flags) is int and type(pub) is int and type(ch) is bytes
               and len(ch) == CHALLENGE_SIZE and type(pr) is bytes and 0 < pub < 65536,
               "challenge fields")
        return Challenge(v, name, creation, flags, pub, ch, pr)
    if kind == "answer":
        _check(len(value) == 2 and type(value[1]) is bytes, "answer")
        return Answer(value[1])
    if kind == "bind":
        _check(len(value) == 3 and type(value[1]) is str and type(value[2]) is bytes, "bind")
        return Bind(value[1], value[2])
    if kind == "refuse":
        _check(len(value) == 3 and type(value[1]) is str and type(value[2]) is str, "refuse")
        return Refuse(value[1], value[2])
    raise RemoteProtocolError(f"unknown handshake frame {kind[:32]!r}")
