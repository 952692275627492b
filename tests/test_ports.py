"""A node's ports come from its configured range (one firewall rule covers it)."""

from __future__ import annotations

import contextlib
import socket

import pytest
from _exported import COOKIE, async_test, free_port

from fabric import ConfigError, Node, parse_node_name

pytestmark = pytest.mark.io


def router_port(node: Node) -> int:
    port = parse_node_name(node.name).port
    assert port is not None
    return port


def free_block(size: int) -> tuple[int, int]:
    """``size`` consecutive ports that were all free a moment ago (below the ephemeral
    range, so no outgoing connection takes one meanwhile)."""
    for lo in range(21000, 32000, size):
        with contextlib.ExitStack() as held:
            try:
                for port in range(lo, lo + size):
                    s = held.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return lo, lo + size - 1
    pytest.skip("no block of free ports")


@async_test
async def test_router_and_pub_ports_both_come_from_the_range() -> None:
    lo, hi = free_block(6)
    async with Node("a@127.0.0.1", cookie=COOKIE, port_range=(lo, hi)) as a, \
            Node("b@127.0.0.1", cookie=COOKIE, port_range=(lo, hi)) as b:
        ports = [router_port(a), a.pub_port, router_port(b), b.pub_port]
        assert all(lo <= p <= hi for p in ports), (ports, lo, hi)
        assert len(set(ports)) == 4
        assert (router_port(a), router_port(b)) == (lo, lo + 1)  # ROUTER ports from the bottom
        assert {a.pub_port, b.pub_port} == {hi, hi - 1}  # PUB ports from the top
        assert await a.connect(b.name)


@async_test
async def test_a_named_port_still_takes_its_pub_port_from_the_range() -> None:
    lo, hi = free_block(3)
    router = free_port()
    async with Node(f"a@127.0.0.1:{router}", cookie=COOKIE, port_range=(lo, hi)) as a:
        assert (router_port(a), a.pub_port) == (router, hi)


@async_test
async def test_an_explicit_pub_port_is_used_as_given() -> None:
    lo, hi = free_block(2)
    pub = free_port()
    async with Node("a@127.0.0.1", cookie=COOKIE, port_range=(lo, hi), pub_port=pub) as a:
        assert (router_port(a), a.pub_port) == (lo, pub)


@async_test
async def test_a_full_range_is_a_config_error() -> None:
    lo, hi = free_block(2)
    async with Node("a@127.0.0.1", cookie=COOKIE, port_range=(lo, hi)) as a:
        assert (router_port(a), a.pub_port) == (lo, hi)  # a node needs two ports
        with pytest.raises(ConfigError, match="cannot bind"):
            await Node("b@127.0.0.1", cookie=COOKIE, port_range=(lo, hi)).start()
