"""Strangers flooding a node's ports cost it a small, bounded amount of memory, no slot a
legitimate peer needs, and nothing once they stop (docs/DECISIONS.md D18, issue 12).

The victim is an OS process (its RSS is read from /proc); the strangers, all on
127.0.0.1, are sockets of this test process that do not know the cookie, each kind at
once for a bounded time: raw TCP connections that speak ZMTP with the CURVE mechanism and
then announce a 60 MB frame (what used to pin 60 MB per connection), half-finished
handshakes renewed every few hundred milliseconds (what used to fill the 256 handshake
slots), ZeroMQ DEALERs in clear and with guessed CURVE keys sending HELLOs and garbage.
Meanwhile a legitimate node connects to the victim and pings it.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from fabric import Node
from fabric.protocol import handshake as hs
from fabric.protocol.codec import Codec
from fabric.protocol.mesh import MAX_PENDING_ACCEPTS
from fabric.testing import (
    LocalCluster,
    NodeProcess,
    async_wait_until,
    process_memory,
    wait_until,
)
from fabric.types import parse_node_name

pytestmark = pytest.mark.io

FLOOD_SECONDS = 4.0
CONNECTIONS_PER_KIND = 16  # 4 kinds: 64 stranger connections at any time
# The documented bound (README "Security"): what the strangers may add to the victim's
# peak RSS, all 64 connections together, and how close to its baseline it must settle.
PEAK_BOUND = 48 << 20
SETTLE_BOUND = 8 << 20


def greeting(mechanism: bytes) -> bytes:
    """A ZMTP 3.0 greeting of a client announcing ``mechanism``."""
    return (b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + mechanism.ljust(20, b"\x00")
            + b"\x00" + b"\x00" * 31)


CURVE_GREETING = greeting(b"CURVE")
# NULL: the greeting, then READY with the socket type; data frames may follow at once.
_READY = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
NULL_HANDSHAKE = greeting(b"NULL") + b"\x04" + bytes([len(_READY)]) + _READY
# Both, as a stranger cannot know which the node speaks.
GREETINGS = (CURVE_GREETING, NULL_HANDSHAKE)
# A frame header (long, no MORE) announcing 60 MB.
BIG_FRAME_HEADER = b"\x02" + struct.pack(">Q", 60 << 20)
codec = Codec()


rss = process_memory


def reset_peak(pid: int) -> None:
    """Start VmHWM afresh from the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")


class Flood:
    """Every kind of stranger at once, for ``seconds``, on a thread of its own."""

    def __init__(self, port: int, seconds: float) -> None:
        self.port = port
        self.until = time.monotonic() + seconds
        self.counts: dict[str, int] = {}
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.rng = random.Random(12)
        self.thread = threading.Thread(target=self._run, name="flood", daemon=True)

    def __enter__(self) -> Flood:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.until = 0.0
        self.thread.join(FLOOD_SECONDS + 10)
        self.ctx.destroy(linger=0)

    def _count(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def _tcp(self, payload: bytes) -> socket.socket | None:
        try:
            conn = socket.create_connection(("127.0.0.1", self.port), timeout=1)
            conn.settimeout(0.05)
            conn.sendall(payload)
            return conn
        except OSError:
            return None

    def _big_frame(self, i: int) -> None:
        """A greeting, then a frame that says it is 60 MB long, then 1 MB of it."""
        conn = self._tcp(GREETINGS[i % 2])
        if conn is None:
            return
        with contextlib.suppress(OSError), conn:
            conn.sendall(BIG_FRAME_HEADER)
            chunk = bytes(64 * 1024)
            for _ in range(16):
                conn.sendall(chunk)
            self._count("big_frame")

    def _dealers(self) -> list[zmq.Socket[Any]]:
        socks = []
        for i in range(2 * CONNECTIONS_PER_KIND):
            sock: zmq.Socket[Any] = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 256)  # what this process may queue: bounded
            sock.setsockopt(zmq.RECONNECT_IVL, 20)
            if i % 2:  # guessed keys: the server key is secret
                server_public, _ = zmq.curve_keypair()
                client_public, client_secret = zmq.curve_keypair()
                sock.curve_serverkey = server_public
                sock.curve_publickey = client_public
                sock.curve_secretkey = client_secret
            sock.connect(f"tcp://127.0.0.1:{self.port}")
            socks.append(sock)
        return socks

    def _run(self) -> None:
        hello = codec.encode(hs.Hello(hs.PROTOCOL_VERSION, "s@127.0.0.1:1", 1, 0, 5555,
                                      bytes(16)).frame())
        dealers = self._dealers()
        stalled: list[socket.socket] = []
        try:
            while time.monotonic() < self.until:
                # Half-finished handshakes, renewed: each greets and then says nothing.
                for conn in stalled:
                    conn.close()
                stalled = [c for c in (self._tcp(GREETINGS[i % 2])
                                       for i in range(CONNECTIONS_PER_KIND)) if c]
                self.counts["stalled"] = self.counts.get("stalled", 0) + len(stalled)
                for i in range(CONNECTIONS_PER_KIND):
                    self._big_frame(i)
                for sock in dealers:  # as many as each socket takes: HELLOs and garbage
                    with contextlib.suppress(zmq.Again):
                        for _ in range(256):
                            frame = hello if self.rng.random() < 0.5 else \
                                self.rng.randbytes(self.rng.randrange(1, 32768))
                            sock.send(frame, zmq.NOBLOCK)
                            self._count("dealer_frames")
        finally:
            for conn in stalled:
                conn.close()


@pytest.mark.procs  # the victim is an OS process (its RSS is read)
def test_a_stranger_flood_costs_little_memory_and_no_slot(arun: Callable[..., Any]) -> None:
    with NodeProcess("victim", spawn_echo=True) as victim:  # default max_frame: 64 MiB
        victim.wait_ready()
        port = parse_node_name(victim.name).port
        assert port is not None
        baseline = rss(victim.pid)
        reset_peak(victim.pid)

        async def legitimate_node() -> None:
            async with LocalCluster(1, handshake_timeout=3.0) as (friend,):
                assert await friend.connect(victim.name), friend.last_connect_error(
                    victim.name)
                box = friend.new_mailbox()
                friend.send(("echo", victim.name), ("during the flood", box.self))
                assert await box.receive(timeout=5) == ("echo", "during the flood")

        with Flood(port, FLOOD_SECONDS) as flood:
            wait_until(lambda: flood.counts.get("big_frame", 0) >= CONNECTIONS_PER_KIND, 10,
                       message="the flood is under way")
            arun(legitimate_node())
            flood.thread.join(FLOOD_SECONDS + 10)
        peak = rss(victim.pid, "VmHWM") - baseline
        print(f"strangers: {flood.counts}; RSS baseline {baseline >> 20} MiB, "
              f"peak +{peak / 2**20:.1f} MiB")
        assert flood.counts.get("big_frame", 0) >= 4 * CONNECTIONS_PER_KIND
        assert flood.counts.get("stalled", 0) >= 2 * CONNECTIONS_PER_KIND
        assert peak < PEAK_BOUND, f"peak RSS +{peak >> 20} MiB"
        wait_until(lambda: rss(victim.pid) - baseline < SETTLE_BOUND, 15,
                   message=lambda: f"RSS back near {baseline >> 20} MiB, "
                                   f"is {rss(victim.pid) >> 20} MiB")
        assert victim.stop() == 0


@pytest.mark.procs  # the victim is an OS process (its RSS is read)
def test_a_stranger_cannot_pin_a_large_frame(arun: Callable[..., Any]) -> None:
    """Eight connections that announce a 60 MB frame and send 20 MB of it: ZeroMQ drops
    each at the announcement (MAXMSGSIZE is one 64 KiB part on the ROUTER), so the
    victim holds none of it (this cost 60 MB per connection before D18)."""
    with NodeProcess("victim") as victim:
        victim.wait_ready()
        port = parse_node_name(victim.name).port
        assert port is not None
        baseline = rss(victim.pid)
        reset_peak(victim.pid)
        sent = 0
        for i in range(8):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn, \
                    contextlib.suppress(OSError):  # the victim hangs up early
                conn.sendall(GREETINGS[i % 2])
                conn.sendall(BIG_FRAME_HEADER)
                for _ in range(20):
                    conn.sendall(os.urandom(1 << 20))
                    sent += 1 << 20
        peak = rss(victim.pid, "VmHWM") - baseline
        assert peak < 8 << 20, f"peak RSS +{peak >> 20} MiB after {sent >> 20} MiB sent"
        assert victim.stop() == 0


async def hellos_from_strangers(ctx: zmq.Context[Any], victim: Node, n: int) -> None:
    """``n`` DEALERs in clear, each with a HELLO under a name of its own (so a slot of
    its own); returns once the victim handled every one: answered it (the HELLO took a
    slot) or failed its ZeroMQ handshake (it never reached the mesh)."""
    port = parse_node_name(victim.name).port
    failed_before = victim.metrics.get("handshake_failed", 0)
    socks = []
    for i in range(n):
        sock: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, -1)  # one connection each
        sock.connect(f"tcp://127.0.0.1:{port}")
        # Never block: a DEALER whose only connection already failed (no reconnect) has
        # nowhere to queue; its failed handshake is counted all the same.
        with contextlib.suppress(zmq.Again):
            sock.send(codec.encode(hs.Hello(hs.PROTOCOL_VERSION, f"s{i}@127.0.0.1:1", 1, 0,
                                            5555, bytes(16)).frame()), zmq.NOBLOCK)
        socks.append(sock)
    answered: set[int] = set()

    def all_handled() -> bool:
        answered.update(i for i, s in enumerate(socks) if s.poll(0))
        failed = victim.metrics.get("handshake_failed", 0) - failed_before
        return len(answered) + failed >= n

    await async_wait_until(all_handled, 20, message="every HELLO handled")


def test_half_finished_handshakes_keep_no_one_out(arun: Callable[..., Any]) -> None:
    """More strangers' HELLOs than the node has handshake slots (256), renewed: a
    legitimate node still connects. Without the data plane's keys a HELLO never reaches
    the mesh, so strangers take no slot (before D18, 88 of these were refused ``busy``)."""

    async def body() -> None:
        async with LocalCluster(2, handshake_timeout=3.0) as (victim, friend):
            ctx: zmq.Context[Any] = zmq.Context()
            try:
                for _round in range(2):  # renewed: new identities, new connections
                    friend.disconnect(victim.name)  # LocalCluster connected them
                    await async_wait_until(lambda: victim.nodes() == [], 5)
                    await hellos_from_strangers(ctx, victim, MAX_PENDING_ACCEPTS + 44)
                    assert await friend.connect(victim.name), friend.last_connect_error(
                        victim.name)
                assert victim.mesh.stats.refused.get("busy", 0) == 0
            finally:
                ctx.destroy(linger=0)

    arun(body())
