"""DNS discovery against a real DNS server: a dnsmasq child this test starts on
127.0.0.1 and a free port (fabric.testing.dnsmasq), whose A and SRV records the test
changes while nodes run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import fabric
from fabric.discovery.config import DnsConfig
from fabric.discovery.dns import DnsSource
from fabric.testing import async_wait_until, free_ports
from fabric.testing.dnsmasq import Dnsmasq, dnsmasq_path

pytestmark = [pytest.mark.io, pytest.mark.procs,
              pytest.mark.skipif(dnsmasq_path() is None,
                                 reason="dnsmasq is not installed (apt-get install dnsmasq)")]

DOMAIN = "fabric.test"


@pytest.fixture
def dns_server() -> Iterator[Dnsmasq]:
    with Dnsmasq(DOMAIN) as server:
        yield server


def test_a_records_added_and_removed_are_followed(dns_server: Dnsmasq,
                                                  arun: Callable[..., Any]) -> None:
    service = f"app.{DOMAIN}"
    addresses = ["127.0.0.21", "127.0.0.22", "127.0.0.23"]
    [port] = free_ports(1)  # free on 127.0.0.1; the others are as unused
    spec = (f"dns:name={service},basename=app,port={port},resolver=127.0.0.1,"
            f"resolver_port={dns_server.port},interval=0.1,disconnect=true")

    async def body() -> None:
        dns_server.set_hosts([(addresses[0], service)])
        # Two pods run discovery; the third does not (it only answers), so what happens to
        # it is the others' doing.
        nodes = [fabric.Node(f"app@{a}:{port}", "cookie", discovery=spec if i < 2 else "")
                 for i, a in enumerate(addresses)]
        for node in nodes:
            await node.start()
        first, second, third = nodes
        try:
            await async_wait_until(lambda: second.nodes() == [first.name], 10,
                                   message="the second pod dials the one in the record")
            await async_wait_until(lambda: first.discovery is not None
                                   and first.discovery.metrics.get("dns.queries", 0) >= 3, 10)
            assert third.nodes() == []
            # A pod appears in the record: the next poll finds it.
            dns_server.set_hosts([(a, service) for a in addresses])
            await async_wait_until(lambda: sorted(third.nodes()) == sorted(
                [first.name, second.name]), 10)
            # Both pods' discovery must have seen it in the record: the mesh connects
            # transitively, so the session alone does not say that a poll found it.
            await async_wait_until(lambda: all(
                n.discovery is not None and third.name in n.discovery.wanted()
                for n in (first, second)), 10, message="both polls found the new pod")
            # A pod disappears from the record: with disconnect=true its peers let it go.
            # (In Kubernetes it is gone; here it still runs, and its mesh may reconnect
            # after the drop, so the check is on what discovery did, not on what follows.)
            dns_server.set_hosts([(a, service) for a in addresses[:2]])
            for node in (first, second):
                disc = node.discovery
                assert disc is not None
                # At least once: the dropped node's mesh retries the lost session, and
                # discovery lets it go again each time it comes back.
                await async_wait_until(lambda d=disc: d.metrics["disconnected"] >= 1, 10)
                assert disc.wanted() == [n.name for n in nodes[:2] if n is not node]
        finally:
            for node in nodes:
                await node.stop()

    arun(body(), timeout=60)


def test_srv_records_give_host_names_and_ports(dns_server: Dnsmasq,
                                               arun: Callable[..., Any]) -> None:
    srv = f"_fabric._tcp.app.{DOMAIN}"
    # In Kubernetes a target is a pod's own DNS name, which the system resolver knows;
    # here the targets are loopback addresses written as names (the system resolver of
    # this host does not ask our dnsmasq), each node named after its record's target.
    targets = ["127.0.0.31", "127.0.0.32", "127.0.0.33"]
    ports = free_ports(3)
    spec = (f"dns:name={srv},record=srv,basename=app,resolver=127.0.0.1,"
            f"resolver_port={dns_server.port},interval=0.1")

    async def body() -> None:
        records = list(zip([srv] * 3, targets, ports, strict=True))
        dns_server.set_srv(records[:2])
        nodes = [fabric.Node(f"app@{t}:{p}", "cookie", discovery=spec if i < 2 else "")
                 for i, (t, p) in enumerate(zip(targets, ports, strict=True))]
        for node in nodes:
            await node.start()
        try:
            await async_wait_until(lambda: nodes[0].nodes() == [nodes[1].name], 10)
            assert nodes[2].nodes() == []
            dns_server.set_srv(records)  # a pod added
            await async_wait_until(
                lambda: all(len(n.nodes()) == 2 for n in nodes), 10)
        finally:
            for node in nodes:
                await node.stop()

    arun(body(), timeout=60)


def test_a_name_that_does_not_exist_lists_no_node_and_a_dead_server_keeps_the_list(
        dns_server: Dnsmasq, arun: Callable[..., Any]) -> None:
    async def body() -> None:
        counters: dict[str, int] = {}
        cfg = DnsConfig(name=f"app.{DOMAIN}", basename="app", port=9100,
                        resolver="127.0.0.1", resolver_port=dns_server.port, timeout=0.5)
        source = DnsSource(cfg, counters)
        assert await source.query() == frozenset()  # NXDOMAIN: a real, empty answer
        dns_server.set_hosts([("127.0.0.9", f"app.{DOMAIN}")])
        await async_wait_until(source.query, 10)
        assert await source.query() == frozenset({"app@127.0.0.9:9100"})
        six = DnsSource(DnsConfig(name=f"app6.{DOMAIN}", basename="app", port=9100,
                                  record="aaaa", resolver="127.0.0.1",
                                  resolver_port=dns_server.port), counters)
        dns_server.set_hosts([("127.0.0.9", f"app.{DOMAIN}"), ("::1", f"app6.{DOMAIN}")])
        await async_wait_until(six.query, 10)
        assert await six.query() == frozenset({"app@[::1]:9100"})
        dns_server.stop()
        assert await source.query() is None  # no answer: the caller keeps its list
        assert counters["dns.errors"] == 1

    arun(body(), timeout=30)
