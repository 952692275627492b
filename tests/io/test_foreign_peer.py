"""A peer written from PROTOCOL.md alone (raw ZeroMQ sockets, fabric's codec and proof
function only) connects to a real node: the handshake of §4.3 and the first batches of
§7.1 are what the spec says an implementer in another language will see."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from fabric import Node
from fabric.protocol import handshake as hs
from fabric.protocol.codec import Codec
from fabric.testing import async_wait_until, free_port
from fabric.transport.security import DATA_DOMAIN
from fabric.transport.zeromq import curve_client, curve_server

pytestmark = pytest.mark.io

COOKIE = b"foreign-test-cookie"
codec = Codec()


async def recv(sock: zmq.Socket[Any], timeout: float = 10.0) -> list[bytes]:
    """The next multipart message of a non-blocking socket, within ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            frames: list[bytes] = sock.recv_multipart(zmq.NOBLOCK)
            return frames
        except zmq.Again:
            assert asyncio.get_running_loop().time() < deadline, "nothing received"
            await asyncio.sleep(0.005)


def test_a_peer_built_from_the_spec_sees_bind_then_the_documented_first_batches(
        arun: Callable[..., Any]) -> None:
    async def body() -> None:
        ctx: zmq.Context[Any] = zmq.Context()
        try:
            async with Node(f"b@127.0.0.1:{free_port()}", cookie=COOKIE) as real:
                me = f"f@127.0.0.1:{free_port()}"
                # §2.1: the data plane is CURVE, with keys derived from the cookie: our
                # ROUTER is a server with the plane's server key (the real node dials it
                # for BIND), our DEALER a client with the shared client key.
                server_key, client_key = hs.data_plane_secrets(COOKIE)
                router = ctx.socket(zmq.ROUTER)  # where the real node's BIND will come
                router.setsockopt(zmq.LINGER, 0)
                curve_server(router, server_key, DATA_DOMAIN)
                router.bind(f"tcp://{me.partition('@')[2]}")
                dealer = ctx.socket(zmq.DEALER)
                dealer.setsockopt(zmq.LINGER, 0)
                dealer.setsockopt(zmq.ROUTING_ID, b"f@127.0.0.1\x00" + os.urandom(8))
                curve_client(dealer, server_key, client_key)
                dealer.connect(f"tcp://127.0.0.1:{real.name.rpartition(':')[2]}")

                c_a = os.urandom(16)  # §4.3 leg 1: HELLO (flags 0: a visible node)
                dealer.send(codec.encode(["hello", 3, me, 7, 0, free_port(), c_a]))
                (raw,) = await recv(dealer)  # leg 2: CHALLENGE, checked as §4.3 says
                kind, version, name, _creation, _flags, _pub, c_b, proof = codec.decode(raw)
                assert (kind, version, name) == ("challenge", 3, real.name)
                assert proof == hs.proof(COOKIE, "challenge", c_a, real.name, me)
                dealer.send(codec.encode(["answer", hs.proof(COOKIE, "answer", c_b, me,
                                                             real.name)]))

                # Leg 4: BIND on our ROUTER from a new identity, then the first batches.
                identity, raw = await recv(router)
                assert codec.decode(raw) == ["bind", real.name, hs.proof(
                    COOKIE, "bind", c_a + c_b, real.name, me, identity)]
                first: list[Any] = []
                while not any(m[0] == 10 for m in first):
                    sender, raw = await recv(router)
                    assert sender == identity  # the session's identity, behind BIND
                    batch = codec.decode(raw)
                    assert type(batch) is list
                    first += batch
                # §7.1: pg's sync, global's sync, then K_PEERS (no other peers here).
                assert first == [[3, "pg", ("sync", [])],
                                 [3, "global", ("sync", [], [], [])],
                                 [10, []]]
                await async_wait_until(lambda: me in real.nodes(), 5,
                                       message="the real node lists the foreign peer")
        finally:
            ctx.destroy(linger=0)

    arun(body())
