"""The gossip strategy: authenticated UDP beacons on a multicast group (or broadcast).

Theory of operation
-------------------
Like libcluster's Gossip strategy, every node sends a beacon carrying its full name to a
multicast group every ``interval`` seconds, and lists the names it hears. Unlike it (its
``secret`` encrypts without a MAC), beacons are authenticated and fresh
(:mod:`fabric.protocol.beacon`, PROTOCOL.md §12): a datagram that fails the check is
counted under ``gossip.refused.<reason>`` and never dialled.

One UDP socket both receives and sends. It binds the group's address and port with
``SO_REUSEADDR`` (every node of a host gets every beacon), joins the group on
``if_addr``, and sends with ``IP_MULTICAST_IF``/TTL from the configuration; loopback is on
so nodes of one host hear each other. In ``broadcast_only`` mode it binds the port on every
address and sends to ``broadcast_addr``.

The first beacon goes out as soon as the socket is bound, so a node that starts after the
others is dialled by them within one datagram's trip; the others' next beacons (at most
``interval`` later) reach it too. A name not heard from for ``expire`` seconds is no longer
listed. A node's own beacons are heard and ignored.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from typing import Any

import structlog

from fabric.discovery.config import GossipConfig
from fabric.discovery.source import Report, count
from fabric.errors import ConfigError
from fabric.protocol.beacon import BeaconCodec

__all__ = ["GossipSource", "open_gossip_socket"]


def open_gossip_socket(config: GossipConfig) -> socket.socket:
    """A non-blocking UDP socket bound and joined as ``config`` says.

    Raises:
        ConfigError: the address cannot be bound or the group joined.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if config.broadcast_only:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.bind(("", config.port))
        else:
            sock.bind((config.group, config.port))
            mreq = struct.pack("4s4s", socket.inet_aton(config.group),
                               socket.inet_aton(config.if_addr))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, config.ttl)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            if config.outgoing_if is not None:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                                socket.inet_aton(config.outgoing_if))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        where = "broadcast" if config.broadcast_only else f"group {config.group}"
        raise ConfigError(f"discovery gossip: cannot listen on {where} port {config.port} "
                          f"(if_addr {config.if_addr}): {exc}") from None
    return sock


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Any) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.on_datagram(data)


class GossipSource:
    """Sends this node's beacons (unless ``name`` is None: listen only) and lists the
    names of the fresh, authentic beacons it hears.

    Args:
        config: the strategy's options.
        secret: the cluster's secret when ``config.secret`` is not set (the cookie).
        name / creation: this node's full name and run, announced in beacons.
        counters: where ``gossip.*`` counters go.
    """

    def __init__(self, config: GossipConfig, secret: bytes, counters: dict[str, int],
                 name: str | None = None, creation: int = 0) -> None:
        self.config = config
        self.name = name
        self.creation = creation
        self.counters = counters
        key_source = config.secret.encode() if config.secret is not None else secret
        self.codec = BeaconCodec(key_source, window=config.window)
        self.log: Any = structlog.get_logger("fabric.discovery").bind(strategy="gossip")
        self._heard: dict[str, float] = {}  # name -> loop time last heard
        self._report: Report | None = None

    async def run(self, report: Report) -> None:
        loop = asyncio.get_running_loop()
        self._report = report
        sock = open_gossip_socket(self.config)
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Receiver(self._on_datagram), sock=sock)
        dest = (self.config.broadcast_addr if self.config.broadcast_only
                else self.config.group, self.config.port)
        try:
            report(frozenset())
            while True:
                if self.name is not None:
                    self._send(transport, dest)
                self._expire(loop.time())
                await asyncio.sleep(self.config.interval)
        finally:
            transport.close()

    def _send(self, transport: asyncio.DatagramTransport, dest: tuple[str, int]) -> None:
        assert self.name is not None
        beacon = self.codec.seal(self.name, self.creation, time.time())
        try:
            transport.sendto(beacon, dest)
            count(self.counters, "gossip.sent")
        except OSError as exc:  # e.g. no route for the group: keep listening
            count(self.counters, "gossip.send_errors")
            self.log.warning("beacon_send_failed", error=str(exc))

    def _on_datagram(self, data: bytes) -> None:
        result = self.codec.check(data, time.time())
        if result.name is None:
            count(self.counters, f"gossip.refused.{result.refused}")
            return
        if result.name == self.name:
            return
        count(self.counters, "gossip.accepted")
        new = result.name not in self._heard
        self._heard[result.name] = asyncio.get_running_loop().time()
        if new and self._report is not None:
            self._report(frozenset(self._heard))

    def _expire(self, now: float) -> None:
        old = [n for n, t in self._heard.items() if now - t > self.config.expire]
        for name in old:
            del self._heard[name]
        if old and self._report is not None:
            self._report(frozenset(self._heard))
