"""Gossip discovery over real multicast on loopback (IP_MULTICAST_IF 127.0.0.1, TTL 0:
nothing leaves the host; see ../shared/netlab/README.md), and the static strategy, the
hosts file and host names in node names."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import fabric
from fabric.discovery import GossipConfig
from fabric.protocol.beacon import BeaconCodec
from fabric.testing import NodeProcess, async_wait_until, free_ports

pytestmark = pytest.mark.io


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gossip_spec(port: int, **extra: Any) -> str:
    opts = {"port": port, "ttl": 0, "if_addr": "127.0.0.1", "interval": 0.2, "expire": 1.0,
            **extra}
    return "gossip:" + ",".join(f"{k}={v}" for k, v in opts.items())


def send_datagram(data: bytes, port: int, group: str = GossipConfig().group) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        s.sendto(data, (group, port))


async def started(name: str, cookie: str, **options: Any) -> fabric.Node:
    node = fabric.Node(name, cookie, port_range=(20000, 60000), **options)
    await node.start()
    return node


@pytest.mark.procs
def test_eight_nodes_started_at_once_with_gossip_form_one_full_mesh() -> None:
    spec = gossip_spec(free_udp_port())
    procs = [NodeProcess(f"g{i}@127.0.0.1:{port}", extra_args=["--discovery", spec])
             for i, port in enumerate(free_ports(8))]
    try:
        for proc in procs:
            proc.start()
        names = {proc.wait_ready(30) for proc in procs}
        for proc in procs:
            proc.wait_nodes(names - {proc.name}, timeout=30)
    finally:
        for proc in procs:
            proc.kill()
            proc.close()


def test_two_clusters_with_different_secrets_on_one_group_never_join(
        arun: Callable[..., Any]) -> None:
    async def body() -> None:
        spec = gossip_spec(free_udp_port())
        blue = [await started(f"blue{i}@127.0.0.1", "blue-cookie", discovery=spec)
                for i in range(2)]
        red = [await started(f"red{i}@127.0.0.1", "red-cookie", discovery=spec)
               for i in range(2)]
        try:
            await async_wait_until(lambda: all(len(n.nodes()) == 1 for n in blue + red), 15,
                                   message="each cluster meshed")
            # Each node has heard the other cluster's beacons, more than once, and refused.
            await async_wait_until(
                lambda: all(n.discovery is not None
                            and n.discovery.metrics.get("gossip.refused.bad_mac", 0) >= 4
                            for n in blue + red), 15, message="foreign beacons refused")
            for node in blue:
                assert set(node.nodes()) == {b.name for b in blue} - {node.name}
                assert node.discovery is not None and node.discovery.wanted() == [
                    b.name for b in blue if b is not node]
            for node in red:
                assert set(node.nodes()) == {r.name for r in red} - {node.name}
        finally:
            for node in blue + red:
                await node.stop()

    arun(body(), timeout=60)


def test_forged_stale_and_replayed_beacons_are_refused_and_counted(
        arun: Callable[..., Any]) -> None:
    async def body() -> None:
        port = free_udp_port()
        listener = await started("listener@127.0.0.1", "cookie",
                                 discovery=gossip_spec(port, interval=0.3))
        # Nodes of the same cluster that announce nothing themselves: whoever dials one
        # gets a session, so "not connected" below means "not dialled".
        bait = [await started(f"bait{i}@127.0.0.1", "cookie") for i in range(3)]
        disc = listener.discovery
        assert disc is not None
        try:
            def refused(reason: str) -> int:
                return disc.metrics.get(f"gossip.refused.{reason}", 0)

            await async_wait_until(lambda: disc.metrics.get("gossip.sent", 0) >= 1, 10,
                                   message="the listener's socket is open")
            # Forged: sealed without the cluster's secret.
            send_datagram(BeaconCodec(b"guess").seal(bait[0].name, 1, time.time()), port)
            await async_wait_until(lambda: refused("bad_mac") >= 1, 10)
            # Stale: authentic, but recorded long ago (the listener never heard of it).
            send_datagram(BeaconCodec(b"cookie").seal(bait[1].name, 1, time.time() - 600),
                          port)
            await async_wait_until(lambda: refused("stale") >= 1, 10)
            # Replayed: an authentic beacon is accepted once; its copy is refused.
            genuine = BeaconCodec(b"cookie").seal(bait[2].name, 1, time.time())
            send_datagram(genuine, port)
            await async_wait_until(lambda: bait[2].name in listener.nodes(), 10)
            send_datagram(genuine, port)
            await async_wait_until(lambda: refused("replay") >= 1, 10)
            assert bait[0].name not in listener.nodes()
            assert bait[1].name not in listener.nodes()
            assert disc.wanted() == [bait[2].name]
            assert disc.metrics["seen"] == 1
        finally:
            for node in [listener, *bait]:
                await node.stop()

    arun(body(), timeout=60)


def test_a_silent_gossip_node_is_forgotten_and_disconnected(arun: Callable[..., Any]) -> None:
    async def body() -> None:
        spec = gossip_spec(free_udp_port(), disconnect="true")
        a = await started("a@127.0.0.1", "cookie", discovery=spec)
        b = await started("b@127.0.0.1", "cookie", discovery=spec)
        try:
            await async_wait_until(lambda: b.name in a.nodes(), 15)
            events = a.discovery.events() if a.discovery else None
            assert events is not None and b.discovery is not None
            await b.discovery.stop()  # b keeps running but stops announcing itself
            # (b still runs, so its mesh may reconnect after the drop: the check is on
            # what a's discovery did.)
            await async_wait_until(lambda: a.discovery is not None
                                   and a.discovery.metrics["disconnected"] == 1, 15,
                                   message="a disconnects b once its beacons stop")
            assert a.discovery.wanted() == []
            kinds = []
            while not events.empty():
                kinds.append(events.get_nowait().kind)
            assert "forgotten" in kinds and "disconnected" in kinds
        finally:
            await a.stop()
            await b.stop()

    arun(body(), timeout=60)


def test_hosts_file_is_followed_and_host_names_resolve(
        arun: Callable[..., Any], tmp_path: Path) -> None:
    async def body() -> None:
        hosts = tmp_path / "fabric.hosts"
        others = [await started(f"h{i}@localhost", "cookie", hidden=True) for i in range(2)]
        hosts.write_text(f"# the cluster\n{others[0].name}\nnot a node name\n")
        node = await started("main@localhost", "cookie", hidden=True,
                             discovery=f"hosts:path={hosts},interval=0.05,disconnect=true")
        try:
            assert node.name.startswith("main@localhost:")
            await async_wait_until(lambda: node.hidden_nodes() == [others[0].name], 10)
            assert node.discovery is not None
            assert node.discovery.metrics["hosts.bad_lines"] == 1
            hosts.write_text(f"{others[1].name}\n{node.name}\n")  # its own name: not dialled
            await async_wait_until(lambda: node.hidden_nodes() == [others[1].name], 10)
            assert node.discovery.wanted() == [others[1].name]
        finally:
            for n in [node, *others]:
                await n.stop()

    arun(body(), timeout=60)


def test_static_list_retries_a_node_that_starts_late(arun: Callable[..., Any]) -> None:
    async def body() -> None:
        [late_port] = free_ports(1)
        late_name = f"late@127.0.0.1:{late_port}"
        node = fabric.Node("early@127.0.0.1", "cookie", port_range=(20000, 60000))
        await node.start()
        disc = fabric.discovery.start(node, f"static:nodes={late_name}")
        late = None
        try:
            # Discovery handed the name to the mesh, which retries it with its own
            # backoff: discovery keeps no retry schedule of its own.
            await async_wait_until(lambda: late_name in node.mesh.reconnecting(), 10,
                                   message="the mesh retries a node not started yet")
            assert disc.metrics["learned"] >= 1
            late = fabric.Node(late_name, "cookie")
            await late.start()
            await async_wait_until(lambda: node.nodes() == [late_name], 10)
        finally:
            await disc.stop()
            await node.stop()
            if late is not None:
                await late.stop()

    arun(body(), timeout=60)


def test_a_name_no_source_lists_any_more_is_no_longer_retried(
        arun: Callable[..., Any], tmp_path: Path) -> None:
    async def body() -> None:
        [dead_port] = free_ports(1)
        dead = f"dead@127.0.0.1:{dead_port}"
        hosts = tmp_path / "fabric.hosts"
        hosts.write_text(f"{dead}\n")
        node = await started("main@127.0.0.1", "cookie",
                             discovery=f"hosts:path={hosts},interval=0.05")
        try:
            await async_wait_until(lambda: dead in node.mesh.reconnecting(), 10,
                                   message="the mesh retries the listed name")
            hosts.write_text("")  # gone from the list (a pod gone from DNS)
            await async_wait_until(lambda: dead not in node.mesh.reconnecting()
                                   and not node.mesh.knows(dead), 10,
                                   message="the mesh stops trying the forgotten name")
            assert node.discovery is not None and node.discovery.wanted() == []
        finally:
            await node.stop()

    arun(body(), timeout=60)


@pytest.mark.procs
def test_fabric_discover_prints_what_a_strategy_sees(tmp_path: Path) -> None:
    import subprocess
    import sys

    from fabric.testing import child_pythonpath

    hosts = tmp_path / "hosts"
    hosts.write_text("a@10.0.0.1:9100\nb@10.0.0.2:9100\n")
    out = subprocess.run(
        [sys.executable, "-m", "fabric.cli", "discover", f"hosts:path={hosts}",
         "--duration", "0.5"], capture_output=True, text=True, timeout=30,
        env={"PYTHONPATH": child_pythonpath(), "FABRIC_COOKIE": "c", "PATH": "/usr/bin"})
    assert out.returncode == 0, out.stderr
    assert "hosts#0: a@10.0.0.1:9100 b@10.0.0.2:9100" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "fabric.cli", "discover", "gossip:ttl=-1"],
                         capture_output=True, text=True, timeout=30,
                         env={"PYTHONPATH": child_pythonpath(), "FABRIC_COOKIE": "c"})
    assert bad.returncode == 2 and "ttl must be 0-255" in bad.stderr


@pytest.mark.procs
def test_fabric_ping_works_from_the_environment_of_a_pod() -> None:
    """The readiness probe of deploy/k8s runs `fabric ping` with the node's FABRIC_*
    variables (a fixed PUB port, a bind host, discovery): the probe must not take them."""
    import subprocess
    import sys

    from fabric.testing import child_pythonpath

    [port, pub_port] = free_ports(2)
    env = {"FABRIC_PUB_PORT": str(pub_port), "FABRIC_BIND_HOST": "0.0.0.0",
           "FABRIC_DISCOVERY": gossip_spec(free_udp_port())}
    with NodeProcess(f"pod@localhost:{port}", env=env) as node:
        name = node.wait_ready(30)
        out = subprocess.run(
            [sys.executable, "-m", "fabric.cli", "ping", name, "--timeout", "5"],
            capture_output=True, text=True, timeout=60,
            env={"PYTHONPATH": child_pythonpath(), "FABRIC_COOKIE": node.cookie or "",
                 **env})
        assert out.stdout.strip() == "pong", out.stderr
