"""Node configuration: one frozen, validated dataclass, and where the cookie comes from.

Every setting has a sane default; ``FABRIC_*`` environment variables override defaults
(explicit arguments override both). Invalid values raise :class:`ConfigError` at
construction, never later on the event loop.
"""

from __future__ import annotations

import math
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fabric.errors import ConfigError

__all__ = ["NodeConfig", "load_cookie"]  # add_field_check: for fabric's own packages

# field name -> check(value) that raises ConfigError, added by the package that interprets
# the field (fabric.discovery.config checks the discovery spec): this module depends on
# no feature package; they depend on it (D26).
_FIELD_CHECKS: dict[str, Callable[[Any], object]] = {}


def add_field_check(name: str, check: Callable[[Any], object]) -> None:
    """Validate field ``name`` of every :class:`NodeConfig` with ``check(value)`` (which
    raises :class:`ConfigError`), from now on."""
    _FIELD_CHECKS[name] = check


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:port"`` for IPv6) as ``(host, port)``.

    Raises:
        ConfigError: no host, or no port in 0..65535.
    """
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{address!r} is not a host:port address")
    return host, int(port)


@dataclass(frozen=True)
class NodeConfig:
    """Tuning knobs of a node. Times are in seconds.

    Attributes:
        port_range: the node's ports come from this range (``lo``, ``hi``), like Erlang's
            ``inet_dist_listen_min/max``: the ROUTER port, when the node name has none, is
            the lowest free one; the PUB port, unless ``pub_port`` is set, the highest.
        pub_port: the PUB (heartbeat and group topic) port; 0 takes one from
            ``port_range``.
        bind_host: the address the sockets bind to (default: the name's host).
        hidden: a hidden node connects only where told and is not listed by peers.
        heartbeat_interval: how often the node publishes a heartbeat.
        heartbeat_timeout: silence after which a peer is declared down
            (``heartbeat_timeout``). Like Erlang's net_ticktime, lower detects faster
            and risks false downs on a starved machine.
        handshake_timeout: how long a connection attempt may take (an attempt the peer
            answered late gets up to ``min(handshake_timeout, 1 s)`` more for its last
            step; automatic reconnects allow at most 1 s).
        reconnect_window: for this long after a peer is lost abnormally, reconnect
            attempts pause at most ``reconnect_max_backoff``; 0 turns automatic
            reconnects off. Retries do not stop when it ends (see below).
        reconnect_max_backoff: the longest pause between two reconnect attempts during
            ``reconnect_window``.
        reconnect_idle_backoff: the longest pause between two reconnect attempts after
            ``reconnect_window``: a partition of any length heals to a full mesh within
            about this plus a handshake of the network healing.
        reconnect_give_up: forget a lost peer after this long without a session; 0 (the
            default) retries until ``disconnect`` or a refusal that would repeat.
        max_frame: the largest frame accepted from the network, bytes.
        outbound_limit: messages queued for one peer before sends are refused (or
            ``send_wait`` suspends): Erlang's dist buffer busy limit.
        mailbox_limit: messages a process's mailbox holds before sends to it are
            refused (``MailboxFullError``; ``send_wait`` waits) and messages from other
            nodes are dropped, counted and reported to their node (``spawn`` takes a
            per-process value; see DECISIONS D23).
        sndhwm / rcvhwm: ZeroMQ high-water marks, in frames.
        drain_timeout: after the drain (``stop_grace``), how long a stop waits for the
            local processes to end, and then for peers to acknowledge its goodbye (each
            wait up to this long). Despite its name it does not bound the drain itself.
        stop_grace: how long a graceful stop may take to drain before it says goodbye:
            refuse new work, unregister names and groups, let calls in flight finish,
            run the drain hooks (:mod:`fabric.node.drain`).
        allow_remote_spawn: module:function names remote nodes may spawn or rpc,
            on top of functions marked with ``@fabric.export``.
        discovery: strategies that find peers, as a spec (``"gossip"``,
            ``"dns:name=...,basename=...,port=..."``, several joined by ``;``; see
            :mod:`fabric.discovery.config`); empty: none.
        metrics_address: ``host:port`` where the node serves its Prometheus metrics
            over HTTP (docs/METRICS.md; needs ``pip install fabric-dist[metrics]``).
            Empty (the default): no exporter, no port. Port 0 picks a free one.
        encrypt_data_plane: the ROUTER/DEALER plane is CURVE-encrypted and only peers
            with an accepted key complete ZeroMQ's handshake (default). False sends it
            in clear, authenticated by the cookie handshake only: every node of a cluster
            must agree, and the traffic is readable and forgeable on the network.
        curve_secret_key: this node's own CURVE secret key (Z85, 40 characters) on the
            data plane; None derives the key every node shares from the cookie. A
            secret like the cookie: prefer ``FABRIC_CURVE_SECRET_KEY`` to source code.
        curve_allowed_keys: the CURVE public keys (Z85) allowed to connect to this
            node's data plane; empty allows the cookie-derived key only. Change it at
            run time with ``node.security.allow()`` / ``revoke()``.
    """

    port_range: tuple[int, int] = (9100, 9199)
    pub_port: int = 0
    bind_host: str | None = None
    hidden: bool = False
    heartbeat_interval: float = 0.2
    heartbeat_timeout: float = 1.0
    handshake_timeout: float = 3.0
    reconnect_window: float = 60.0
    reconnect_max_backoff: float = 1.0
    reconnect_idle_backoff: float = 5.0
    reconnect_give_up: float = 0.0
    max_frame: int = 64 * 1024 * 1024
    outbound_limit: int = 100_000
    mailbox_limit: int = 10_000
    sndhwm: int = 10_000
    rcvhwm: int = 10_000
    drain_timeout: float = 2.0
    stop_grace: float = 10.0
    allow_remote_spawn: frozenset[str] = field(default_factory=frozenset)
    discovery: str = ""
    metrics_address: str = ""
    encrypt_data_plane: bool = True
    curve_secret_key: str | None = field(default=None, repr=False)  # a secret
    curve_allowed_keys: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            expected = {"float": (int, float), "int": (int,), "bool": (bool,),
                        "str": (str,)}.get(str(f.type))
            if expected is not None and (not isinstance(value, expected)
                                         or (f.type != "bool" and isinstance(value, bool))):
                raise ConfigError(f"{f.name} must be {f.type}, not {type(value).__name__}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number, not {value}")
        if (not isinstance(self.port_range, tuple) or len(self.port_range) != 2
                or not all(isinstance(p, int) for p in self.port_range)):
            raise ConfigError(f"port_range must be a (lo, hi) pair of ints, not "
                              f"{self.port_range!r}")
        lo, hi = self.port_range
        if not (0 < lo <= hi < 65536):
            raise ConfigError(f"port_range {self.port_range} must satisfy 0 < lo <= hi < 65536")
        if not 0 <= self.pub_port < 65536:
            raise ConfigError(f"pub_port {self.pub_port} out of range")
        for name in ("heartbeat_interval", "heartbeat_timeout", "handshake_timeout",
                     "drain_timeout", "stop_grace", "reconnect_max_backoff",
                     "reconnect_idle_backoff"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0")
        if self.heartbeat_timeout < 2 * self.heartbeat_interval:
            raise ConfigError("heartbeat_timeout must be at least twice heartbeat_interval")
        for name in ("reconnect_window", "reconnect_give_up"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0")
        for name in ("max_frame", "outbound_limit", "mailbox_limit", "sndhwm", "rcvhwm"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if not isinstance(self.discovery, str):
            raise ConfigError("discovery must be a spec string (see fabric.discovery)")
        for name, check in _FIELD_CHECKS.items():
            check(getattr(self, name))  # a bad discovery spec fails here, not on the loop
        if self.metrics_address:
            parse_address(self.metrics_address)
        if self.curve_secret_key is not None:
            check_z85_key("curve_secret_key", self.curve_secret_key)
        if not isinstance(self.curve_allowed_keys, frozenset):
            raise ConfigError("curve_allowed_keys must be a frozenset of Z85 public keys")
        for key in self.curve_allowed_keys:
            check_z85_key("curve_allowed_keys", key)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> NodeConfig:
        """Defaults, overridden by ``FABRIC_<FIELD>`` variables, overridden by ``overrides``."""
        env = dict(os.environ) if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"FABRIC_{f.name.upper()}")
            if raw is None:
                continue
            try:
                if f.name == "port_range":
                    lo, _, hi = raw.partition("-")
                    values[f.name] = (int(lo), int(hi or lo))
                elif f.name in ("hidden", "encrypt_data_plane"):
                    values[f.name] = raw.lower() in ("1", "true", "yes")
                elif f.name in ("bind_host", "discovery", "metrics_address",
                                "curve_secret_key"):
                    values[f.name] = raw
                elif f.name in ("allow_remote_spawn", "curve_allowed_keys"):
                    values[f.name] = frozenset(x for x in raw.split(",") if x)
                elif isinstance(getattr(cls, f.name, None), float) or f.type == "float":
                    values[f.name] = float(raw)
                else:
                    values[f.name] = int(raw)
            except ValueError:
                raise ConfigError(f"FABRIC_{f.name.upper()}={raw!r} is not valid") from None
        values.update(overrides)
        for name in ("allow_remote_spawn", "curve_allowed_keys"):
            if name in values:
                values[name] = frozenset(values[name])
        return cls(**values)


_Z85_ALPHABET = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                          ".-:+=^!/*?&<>()[]{}@%$#")


def check_z85_key(name: str, key: object) -> None:
    """A CURVE key in Z85 is 40 characters of Z85's alphabet (32 bytes).

    Raises:
        ConfigError: it is not.
    """
    if not isinstance(key, str) or len(key) != 40 or not set(key) <= _Z85_ALPHABET:
        raise ConfigError(f"{name}: a CURVE key is 40 Z85 characters (as printed by "
                          f"zmq.curve_keypair()), not {str(key)[:8]!r}...")


def load_cookie(cookie: str | bytes | None = None, *, home: Path | None = None) -> bytes:
    """The cookie: the argument, else ``FABRIC_COOKIE``, else ``~/.fabric.cookie``.

    The file is created with mode 0600 and a random value on first use, as Erlang does
    with ``~/.erlang.cookie``. A cookie file readable by others is refused.

    Raises:
        ConfigError: the cookie is empty or its file is unsafe.
    """
    if cookie is None:
        cookie = os.environ.get("FABRIC_COOKIE")
    if cookie is None:
        path = (home or Path.home()) / ".fabric.cookie"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(24))
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{path} must not be readable by group or others (chmod 600)")
        cookie = path.read_text().strip()
    if isinstance(cookie, str):
        cookie = cookie.encode()
    if not cookie:
        raise ConfigError("the cookie is empty")
    return cookie
