"""The Prometheus exporter, scraped over HTTP like Prometheus does, on real nodes.

A node with a ``metrics_address`` serves ``/metrics`` on it; after messages flow between
two nodes the scrape shows the per-peer series with the right values, the exposition
parses, and the port closes when the node stops. A node without the option opens no port
but its two ZeroMQ ones; a node configured for metrics without ``prometheus_client`` fails
to start with a clear error.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fabric import Node
from fabric.errors import ConfigError
from fabric.process import Process
from fabric.testing import async_wait_until, free_port
from fabric.types import parse_node_name

pytestmark = pytest.mark.io

COOKIE = "metrics-test"


def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        body: bytes = resp.read()
        return body.decode()


async def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape by (name, sorted labels). The HTTP request runs in a
    thread, as a real scraper's would: the node's loop must stay free to answer it."""
    text = await asyncio.to_thread(_scrape, address)
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def _listening_ports() -> set[int]:
    """TCP ports this process listens on (Linux: its socket fds in /proc/net/tcp*)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            next(fh)
            for line in fh:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


async def _sink(proc: Process) -> None:
    """A registered process that never reads its mailbox: its depth is a known gauge."""
    await asyncio.Event().wait()


async def _return(proc: Process) -> None:
    """Ends at once: its pid is a dead one."""


async def _echo_n(proc: Process, n: int) -> None:
    """Receive one message, then send ``n`` back to its sender."""
    _, sender = await proc.receive()
    for i in range(n):
        proc.send(sender, ("back", i))


def test_scrape_shows_counters_and_per_peer_series(arun: Any) -> None:
    async def body() -> None:
        port = free_port()
        a = Node("a@127.0.0.1", COOKIE, port_range=(20000, 60000),
                 metrics_address=f"127.0.0.1:{port}")
        b = Node("b@127.0.0.1", COOKIE, port_range=(20000, 60000))
        async with a, b:
            exporter = a.metrics_exporter
            assert exporter is not None and exporter.address == f"127.0.0.1:{port}"
            assert await a.connect(b.name)
            sent, returned, parked = 300, 40, 7
            sink = b.spawn(_sink, name="sink")
            for i in range(sent):
                a.send(sink, ("to-b", i))
            back = a.new_mailbox()
            echo = b.spawn(_echo_n, returned)
            a.send(echo, ("go", back.self))
            for _ in range(returned):
                await back.receive(timeout=10)
            local_sink = a.spawn(_sink, name="parked")
            for i in range(parked):
                a.send(local_sink, i)
            dead = a.spawn(_return)
            await async_wait_until(lambda: not a.is_alive(dead), 10)
            a.send(dead, "nobody home")  # one undeliverable
            await exporter.rtt.probe_once()

            s = await scrape(exporter.address)
            peer = (("peer", b.name),)
            assert s[("fabric_up", ())] == 1
            assert s[("fabric_node_info", (("creation", str(a.creation)), ("node", a.name)))] == 1
            assert s[("fabric_peers", (("hidden", "false"),))] == 1
            assert s[("fabric_peer_up", peer)] == 1
            assert s[("fabric_peer_sent_messages_total", peer)] >= sent + 1
            assert 1 <= s[("fabric_peer_sent_batches_total", peer)] <= sent + 1
            assert s[("fabric_peer_sent_bytes_total", peer)] > 10 * sent
            assert s[("fabric_peer_received_messages_total", peer)] >= returned
            assert s[("fabric_peer_received_bytes_total", peer)] > 0
            assert s[("fabric_peer_queued_messages", peer)] == 0
            assert 0 < s[("fabric_peer_rtt_seconds", peer)] < 10
            assert 0 <= s[("fabric_peer_heartbeat_age_seconds", peer)] < 10
            assert s[("fabric_registered_mailbox_messages", (("name", "parked"),))] == parked
            assert s[("fabric_mailbox_max_messages", ())] >= parked
            assert s[("fabric_processes", ())] == a.processes.count()
            assert s[("fabric_dropped_total", (("reason", "undeliverable"),))] == 1
            assert s[("fabric_dropped_total", (("reason", "unknown_kind"),))] == 0
            # b's view, through the same numbers: what a sent is what b received.
            assert b.metrics.traffic_with(a.name).messages_in == \
                a.metrics.traffic_with(b.name, a.channels.outbound(b.name)).messages_out
        await asyncio.to_thread(_refused, port)

    arun(body())


def test_a_blocked_loop_gives_no_snapshot_instead_of_a_torn_one(arun: Any) -> None:
    async def body() -> None:
        node = Node("blocked@127.0.0.1", COOKIE, port_range=(20000, 60000),
                    metrics_address="127.0.0.1:0")
        async with node:
            exporter = node.metrics_exporter
            assert exporter is not None
            answered = threading.Event()
            got: list[Any] = []

            def scraper() -> None:
                got.append(exporter.snapshot(timeout=0.2))
                answered.set()

            thread = threading.Thread(target=scraper)
            thread.start()
            # Block the loop (as a long synchronous callback would) until the scraper
            # has given up: its snapshot request is still queued behind us.
            assert answered.wait(10)
            thread.join(10)
            assert got == [None]
            s = await scrape(exporter.address)  # the loop is free again: a real snapshot
            assert s[("fabric_up", ())] == 1
            assert ("fabric_processes", ()) in s

    arun(body())


def _refused(port: int) -> None:
    with pytest.raises(OSError):
        _scrape(f"127.0.0.1:{port}")


def test_sent_counts_outlive_the_channel(arun: Any) -> None:
    async def body() -> None:
        a = Node("a@127.0.0.1", COOKIE, port_range=(20000, 60000),
                 metrics_address="127.0.0.1:0")
        b = Node("b@127.0.0.1", COOKIE, port_range=(20000, 60000))
        async with a, b:
            assert a.metrics_exporter is not None
            assert await a.connect(b.name)
            sink = b.spawn(_sink)
            for i in range(25):
                a.send(sink, i)
            await async_wait_until(lambda: b.metrics.traffic_with(a.name).messages_in >= 25, 10)
            a.disconnect(b.name)
            await async_wait_until(lambda: a.channels.outbound(b.name) is None, 10)
            s = await scrape(a.metrics_exporter.address)
            assert s[("fabric_peer_up", (("peer", b.name),))] == 0
            assert s[("fabric_peer_sent_messages_total", (("peer", b.name),))] >= 25

    arun(body())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_node_without_metrics_opens_only_its_zeromq_ports(arun: Any) -> None:
    async def body() -> None:
        before = _listening_ports()
        node = Node("quiet@127.0.0.1", COOKIE, port_range=(20000, 60000))
        async with node:
            assert node.config.metrics_address == "" and node.metrics_exporter is None
            opened = _listening_ports() - before
            assert opened == {parse_node_name(node.name).port, node.pub_port}
        loud = Node("loud@127.0.0.1", COOKIE, port_range=(20000, 60000),
                    metrics_address="127.0.0.1:0")
        async with loud:
            assert loud.metrics_exporter is not None
            metrics_port = int(loud.metrics_exporter.address.rsplit(":", 1)[1])
            assert metrics_port in _listening_ports() - before  # the check can see one
        assert metrics_port not in _listening_ports()

    arun(body())


def test_metrics_configured_without_prometheus_client_is_a_clear_error(
        arun: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails

    async def body() -> None:
        node = Node("m@127.0.0.1", COOKIE, port_range=(20000, 60000),
                    metrics_address="127.0.0.1:0")
        with pytest.raises(ConfigError, match=r"pip install fabric-dist\[metrics\]"):
            await node.start()
        assert not node.started

    arun(body())
