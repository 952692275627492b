"""Discovery configuration: the one-line spec, the dataclasses' checks, NodeConfig/env."""

from __future__ import annotations

import pytest

from fabric.config import NodeConfig
from fabric.discovery import DnsConfig, GossipConfig, HostsFileConfig, StaticConfig, parse_specs
from fabric.errors import ConfigError


def test_gossip_defaults_are_libclusters() -> None:
    [cfg] = parse_specs("gossip")
    assert cfg == GossipConfig()
    assert (cfg.group, cfg.port, cfg.ttl, cfg.if_addr) == ("233.252.1.32", 45892, 1, "0.0.0.0")
    assert cfg.outgoing_if is None
    assert GossipConfig(if_addr="127.0.0.1").outgoing_if == "127.0.0.1"


def test_several_strategies_with_options() -> None:
    specs = ("gossip:port=45900,ttl=0,if_addr=127.0.0.1,broadcast_only=false;"
             "dns:name=app.svc,basename=app,port=9100,resolver=127.0.0.1,resolver_port=5353;"
             "dns:name=_f._tcp.app,record=srv,basename=app,interval=0.5,disconnect=true;"
             "static:nodes=a@10.0.0.1:9100+b@[::1]:9100;hosts:path=/etc/fabric/hosts")
    assert parse_specs(specs) == [
        GossipConfig(port=45900, ttl=0, if_addr="127.0.0.1"),
        DnsConfig(name="app.svc", basename="app", port=9100, resolver="127.0.0.1",
                  resolver_port=5353),
        DnsConfig(name="_f._tcp.app", record="srv", basename="app", interval=0.5,
                  disconnect=True),
        StaticConfig(nodes=("a@10.0.0.1:9100", "b@[::1]:9100")),
        HostsFileConfig(path="/etc/fabric/hosts"),
    ]
    assert parse_specs("") == [] and parse_specs(" ; ") == []


@pytest.mark.parametrize("spec, says", [
    ("mdns", "unknown strategy 'mdns'"),
    ("gossip:prot=1", "'prot=1' is not KEY=VALUE"),
    ("gossip:port", "'port' is not KEY=VALUE"),
    ("gossip:port=x", "port='x' is not a valid int"),
    ("gossip:port=70000", "port must be a port"),
    ("gossip:ttl=300", "ttl must be 0-255"),
    ("gossip:group=10.0.0.1", "not a multicast address"),
    ("gossip:if_addr=eth0", "if_addr must be an IPv4 address"),
    ("gossip:interval=0", "interval must be a number > 0"),
    ("gossip:interval=1,expire=1", "expire must be at least twice interval"),
    ("gossip:broadcast_only=maybe", "broadcast_only='maybe' is not a valid bool"),
    ("dns:basename=app,port=1", "name (the DNS name to query) is required"),
    ("dns:name=x,port=1", "basename"),
    ("dns:name=x,basename=app", "record=a needs port"),
    ("dns:name=x,basename=app,record=mx", "record must be a, aaaa or srv"),
    ("dns:name=x,basename=a@b,port=1", "node name"),
    ("dns:name=x,basename=app,port=1,resolver=ns.example", "resolver must be an IP"),
    ("static", "nodes must list at least one"),
    ("static:nodes=a@h", "needs its port"),
    ("hosts", "path is required"),
])
def test_a_bad_spec_says_what_is_wrong(spec: str, says: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        parse_specs(spec)
    assert says in str(info.value)


def test_node_config_takes_a_spec_from_the_environment() -> None:
    cfg = NodeConfig.from_env({"FABRIC_DISCOVERY": "gossip:port=45901"})
    assert cfg.discovery == "gossip:port=45901"
    assert NodeConfig.from_env({}).discovery == ""
    with pytest.raises(ConfigError, match="unknown strategy"):
        NodeConfig.from_env({"FABRIC_DISCOVERY": "carrier-pigeon"})
