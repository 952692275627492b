"""Discovery configuration: one frozen dataclass per strategy, and the one-line spec.

Theory of operation
-------------------
Every strategy is configured by a dataclass whose fields are its options, validated at
construction (:class:`ConfigError` names the option and the strategy). The same options
can be written as a *spec*, one line usable on a command line (``--discovery``) and in the
``FABRIC_DISCOVERY`` environment variable::

    KIND[:KEY=VALUE[,KEY=VALUE...]][;KIND...]

    gossip
    gossip:port=45900,ttl=0,if_addr=127.0.0.1
    dns:name=myapp-headless.default.svc.cluster.local,basename=myapp,port=9100
    dns:name=_fabric._tcp.myapp.default.svc.cluster.local,record=srv,basename=myapp
    static:nodes=n1@10.0.0.1:9100+n2@10.0.0.2:9100;hosts:path=/etc/fabric/hosts

Values are converted by the field's type (``true``/``false`` for booleans); a list (the
static strategy's ``nodes``) is written with ``+`` between items, as neither names nor
hosts contain it. Several strategies run at once when separated by ``;`` (libcluster's
topologies).
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Final

from fabric.config import add_field_check
from fabric.errors import ConfigError
from fabric.types import parse_node_name

__all__ = ["DnsConfig", "GossipConfig", "HostsFileConfig", "StaticConfig", "StrategyConfig",
           "parse_specs"]


@dataclass(frozen=True)
class _Common:
    """Options every strategy has.

    Attributes:
        disconnect: end the session with a node when this source stops listing it
            (libcluster's ``disconnect`` on removal).
    """

    KIND: ClassVar[str] = ""
    disconnect: bool = False

    def _positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value) and value > 0):
                raise ConfigError(f"discovery {self.KIND}: {name} must be a number > 0, "
                                  f"not {value!r}")

    def _port(self, name: str, optional: bool = False) -> None:
        value = getattr(self, name)
        if optional and value is None:
            return
        if type(value) is not int or not 0 < value < 65536:
            raise ConfigError(f"discovery {self.KIND}: {name} must be a port 1-65535, "
                              f"not {value!r}")

    def _ipv4(self, name: str) -> ipaddress.IPv4Address:
        value = getattr(self, name)
        try:
            return ipaddress.IPv4Address(value)
        except ValueError:
            raise ConfigError(f"discovery {self.KIND}: {name} must be an IPv4 address, "
                              f"not {value!r}") from None


@dataclass(frozen=True)
class StaticConfig(_Common):
    """A fixed list of full node names (libcluster's Epmd strategy)."""

    KIND: ClassVar[str] = "static"
    nodes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ConfigError("discovery static: nodes must list at least one node name")
        for name in self.nodes:
            if parse_node_name(name).port is None:
                raise ConfigError(f"discovery static: {name!r} needs its port")


@dataclass(frozen=True)
class HostsFileConfig(_Common):
    """A file of full node names, one a line (``#`` comments), re-read when it changes
    (Erlang's ``.hosts.erlang``, with names instead of hosts: a name carries its port)."""

    KIND: ClassVar[str] = "hosts"
    path: str = ""
    interval: float = 1.0

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("discovery hosts: path is required")
        self._positive("interval")


@dataclass(frozen=True)
class GossipConfig(_Common):
    """Authenticated UDP beacons on a multicast group (libcluster's Gossip defaults).

    Attributes:
        group / port / ttl: where beacons go; TTL 1 keeps them on the local network
            (0: this host only).
        if_addr: the address of the interface that joins the group (``0.0.0.0``: the
            kernel's choice).
        multicast_if: the interface address beacons leave by (default: ``if_addr`` if
            set). On a host whose default route leaves the machine, set it.
        broadcast_only: send to ``broadcast_addr`` instead of the group (networks without
            multicast).
        interval: seconds between two beacons.
        expire: a name not heard from for this long is no longer listed.
        secret: the cluster's secret (default: the node's cookie); only a key derived
            from it is used.
        window: how far a beacon's clock may be from ours, seconds (replay protection).
    """

    KIND: ClassVar[str] = "gossip"
    group: str = "233.252.1.32"
    port: int = 45892
    ttl: int = 1
    if_addr: str = "0.0.0.0"
    multicast_if: str | None = None
    broadcast_only: bool = False
    broadcast_addr: str = "255.255.255.255"
    interval: float = 1.0
    expire: float = 10.0
    secret: str | None = None
    window: float = 30.0

    def __post_init__(self) -> None:
        if not self.broadcast_only and not self._ipv4("group").is_multicast:
            raise ConfigError(f"discovery gossip: group {self.group!r} is not a multicast "
                              "address (224.0.0.0/4); use broadcast_only=true to broadcast")
        self._port("port")
        if type(self.ttl) is not int or not 0 <= self.ttl <= 255:
            raise ConfigError(f"discovery gossip: ttl must be 0-255, not {self.ttl!r}")
        self._ipv4("if_addr")
        self._ipv4("broadcast_addr")
        if self.multicast_if is not None:
            self._ipv4("multicast_if")
        self._positive("interval", "expire", "window")
        if self.expire < 2 * self.interval:
            raise ConfigError("discovery gossip: expire must be at least twice interval "
                              "(one lost beacon must not drop a node)")
        if self.secret is not None and not self.secret:
            raise ConfigError("discovery gossip: secret must not be empty")

    @property
    def outgoing_if(self) -> str | None:
        """The interface address beacons are sent from, or None for the kernel's choice."""
        if self.multicast_if is not None:
            return self.multicast_if
        return None if self.if_addr == "0.0.0.0" else self.if_addr


@dataclass(frozen=True)
class DnsConfig(_Common):
    """Node names from DNS, polled (libcluster's DNSPoll / Kubernetes.DNS / DNSSRV).

    Attributes:
        name: the DNS name queried (a headless Service, or its SRV name).
        basename: the part before ``@`` of every node name.
        record: ``a``, ``aaaa`` (addresses: node ``basename@ip:port``) or ``srv`` (node
            ``basename@target:port``, the target a pod's DNS name in a StatefulSet).
        port: the nodes' ROUTER port; required for ``a``/``aaaa``, and for ``srv`` it
            overrides the record's port.
        resolver / resolver_port: the DNS server asked (default: the system's).
        interval: seconds between two polls. timeout: of one query.
    """

    KIND: ClassVar[str] = "dns"
    name: str = ""
    basename: str = ""
    record: str = "a"
    port: int | None = None
    resolver: str | None = None
    resolver_port: int = 53
    interval: float = 5.0
    timeout: float = 2.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("discovery dns: name (the DNS name to query) is required")
        if not self.basename:
            raise ConfigError("discovery dns: basename (the node name before '@') is "
                              "required")
        parse_node_name(f"{self.basename}@localhost")  # a clear error for a bad basename
        if self.record not in ("a", "aaaa", "srv"):
            raise ConfigError(f"discovery dns: record must be a, aaaa or srv, not "
                              f"{self.record!r}")
        if self.record != "srv" and self.port is None:
            raise ConfigError(f"discovery dns: record={self.record} needs port (the "
                              "nodes' ROUTER port)")
        self._port("port", optional=True)
        self._port("resolver_port")
        if self.resolver is not None:
            try:
                ipaddress.ip_address(self.resolver)
            except ValueError:
                raise ConfigError(f"discovery dns: resolver must be an IP address, not "
                                  f"{self.resolver!r}") from None
        self._positive("interval", "timeout")


StrategyConfig = StaticConfig | HostsFileConfig | GossipConfig | DnsConfig

KINDS: Final[dict[str, type[StrategyConfig]]] = {
    c.KIND: c for c in (StaticConfig, HostsFileConfig, GossipConfig, DnsConfig)}


def parse_specs(text: str) -> list[StrategyConfig]:
    """Parse ``KIND[:K=V,...][;KIND...]`` into strategy configs (empty text: none).

    Raises:
        ConfigError: unknown strategy or option, a bad value, a missing option.
    """
    return [parse_spec(part) for part in text.split(";") if part.strip()]


def parse_spec(text: str) -> StrategyConfig:
    """Parse one ``KIND[:K=V,...]``."""
    kind, _, rest = text.strip().partition(":")
    cls = KINDS.get(kind.strip())
    if cls is None:
        raise ConfigError(f"discovery: unknown strategy {kind!r} in {text!r} "
                          f"(one of {', '.join(sorted(KINDS))})")
    types = {f.name: str(f.type) for f in fields(cls)}
    values: dict[str, Any] = {}
    for item in (i for i in rest.split(",") if i.strip()):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or key not in types:
            raise ConfigError(f"discovery {kind}: {item.strip()!r} is not KEY=VALUE with "
                              f"KEY one of {', '.join(sorted(types))}")
        values[key] = _convert(kind, key, types[key], raw.strip())
    return cls(**values)


def _convert(kind: str, key: str, type_text: str, raw: str) -> Any:
    try:
        if type_text.startswith("bool"):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if type_text.startswith("int"):
            return int(raw)
        if type_text.startswith("float"):
            return float(raw)
        if type_text.startswith("tuple"):
            return tuple(x for x in raw.split("+") if x)
    except ValueError:
        raise ConfigError(f"discovery {kind}: {key}={raw!r} is not a valid "
                          f"{type_text.split(' ')[0]}") from None
    return raw


# NodeConfig.discovery is a spec of this grammar: a bad one fails at construction.
add_field_check("discovery", parse_specs)
