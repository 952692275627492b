"""Identifiers that cross the wire: node names, pids and refs.

A node is named ``name@host:port``. The port is the node's ROUTER port: with it the
name is also the address, which is what makes fabric EPMD-less (no port mapper is needed
to reach a node whose full name you know). ``name@host`` without a port is accepted where
a node is *created* (it then binds a port from a range) but every running node's full name
carries its port.

A :class:`Pid` is ``(node, id, creation)``. ``creation`` is drawn anew every time a node
starts, so a pid minted before a restart never reaches a process of the restarted node:
it is "noproc" there, as in Erlang. A :class:`Ref` has the same shape and is unique per
node run.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Final, NamedTuple, TypeVar

from fabric.errors import ConfigError

__all__ = ["Answer", "GlobalName", "NodeName", "Pid", "Ref", "parse_node_name"]

_NAME_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")
_HOST_RE: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-.]{0,252})")
# A routing identity is name@host + NUL + 8 random bytes and ZeroMQ caps it at 255 bytes.
_MAX_BASE: Final = 255 - 9


class NodeName(NamedTuple):
    """A parsed node name: ``name@host`` plus an optional port."""

    name: str
    host: str
    port: int | None

    @property
    def short(self) -> bool:
        """True for Erlang-style short names (a host without dots that is not an IP)."""
        return "." not in self.host and ":" not in self.host

    @property
    def base(self) -> str:
        """``name@host``: the part that must be unique within a cluster."""
        return f"{self.name}@{self.host}"

    def with_port(self, port: int) -> NodeName:
        return NodeName(self.name, self.host, port)

    def endpoint(self, port: int | None = None) -> str:
        """A ZeroMQ tcp endpoint for ``port`` (default: the ROUTER port)."""
        p = self.port if port is None else port
        if p is None:
            raise ConfigError(f"node name {self.base!r} has no port")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{p}"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port is None:
            return f"{self.name}@{host}"
        return f"{self.name}@{host}:{self.port}"


def parse_node_name(text: str) -> NodeName:
    """Parse ``name@host``, ``name@host:port`` or ``name@[v6addr]:port``.

    Raises:
        ConfigError: the text is not a valid node name; the message says which part.
    """
    if not isinstance(text, str):
        raise ConfigError(f"node name must be a str, not {type(text).__name__}")
    name, sep, rest = text.partition("@")
    if not sep:
        raise ConfigError(f"node name {text!r} must look like name@host or name@host:port")
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"node name {text!r}: the part before '@' must be 1-64 letters, digits, '_', '-' or '.'"
        )
    port: int | None = None
    if rest.startswith("["):
        host, close, tail = rest[1:].partition("]")
        if not close:
            raise ConfigError(f"node name {text!r}: unterminated '[' in host")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"node name {text!r}: {host!r} is not an IPv6 address") from None
        if tail:
            if not tail.startswith(":"):
                raise ConfigError(f"node name {text!r}: expected ':port' after ']'")
            port = _parse_port(text, tail[1:])
    else:
        host, colon, port_text = rest.rpartition(":")
        if not colon:
            host = rest
        else:
            port = _parse_port(text, port_text)
        if not host or not _HOST_RE.fullmatch(host):
            raise ConfigError(f"node name {text!r}: {host!r} is not a valid host")
    if len(f"{name}@{host}".encode()) > _MAX_BASE:
        raise ConfigError(f"node name {text!r}: name@host must be at most {_MAX_BASE} bytes")
    return NodeName(name, host, port)


def _parse_port(text: str, port_text: str) -> int:
    if not (port_text.isascii() and port_text.isdigit()):
        raise ConfigError(f"node name {text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ConfigError(f"node name {text!r}: port {port} is out of range 1-65535")
    return port


_I = TypeVar("_I", bound="_Id")


class _Id(tuple):  # type: ignore[type-arg]
    """Shared shape of Pid and Ref: an immutable ``(node, id, creation)`` triple.

    A tuple subclass because construction and hashing then happen in C: pids are created
    for every decoded message, so this is on the hot path. Equality also checks the type,
    so a Pid never equals a Ref or a plain tuple with the same fields.
    """

    __slots__ = ()

    def __new__(cls: type[_I], node: str, id: int, creation: int) -> _I:
        return tuple.__new__(cls, (node, id, creation))

    @property
    def node(self) -> str:
        """The full name of the node the process (or ref) belongs to."""
        return self[0]  # type: ignore[no-any-return]

    @property
    def id(self) -> int:
        """The number of the process (or ref) within its node run."""
        return self[1]  # type: ignore[no-any-return]

    @property
    def creation(self) -> int:
        """The node run: drawn anew each time the node starts."""
        return self[2]  # type: ignore[no-any-return]

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:  # not via __eq__: one Python call, not two
        return type(other) is not type(self) or tuple.__ne__(self, other)

    __hash__ = tuple.__hash__

    def __getnewargs__(self) -> tuple[Any, ...]:
        return tuple(self)


class Pid(_Id):
    """A process identifier: which node, which process, which run of that node.

    Pids are immutable, hashable, compare equal only to pids, and are safe to send in
    messages.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<{self[0]}.{self[1]}.{self[2]}>"


class Ref(_Id):
    """A unique reference (monitor refs, call tags). Unique per node run."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"#Ref<{self[0]}.{self[1]}.{self[2]}>"


class GlobalName(NamedTuple):
    """A cluster-wide name registered with ``node.global_``, usable wherever a server or
    a destination is expected: ``await fabric.call(node, GlobalName("scheduler"), req)``,
    ``node.send(GlobalName("scheduler"), msg)``. Resolved on the caller's node with no
    round trip."""

    name: Any


class Answer(str):
    """An answer in Erlang's words that is also a truth value.

    ``node.ping`` answers ``"pong"`` or ``"pang"`` and ``global_.register_name`` ``"yes"``
    or ``"no"``, as ``net_adm:ping`` and ``global:register_name`` do, so a reader of
    Erlang finds the words she knows, printed and compared as strings (``answer ==
    "pong"``). A plain ``"no"`` would be true in an ``if``, a trap: an :class:`Answer` is
    true for ``"yes"`` and ``"pong"`` only, so ``if await node.ping(peer):`` means what it
    says. Every other yes-or-no answer of the API is a ``bool`` (docs/API.md).
    """

    __slots__ = ()

    def __bool__(self) -> bool:
        return str.__eq__(self, "yes") or str.__eq__(self, "pong")


YES: Final = Answer("yes")
NO: Final = Answer("no")
PONG: Final = Answer("pong")
PANG: Final = Answer("pang")
