"""Every "dropped and counted" case of PROTOCOL.md moves a counter of ``node.metrics``.

A malformed HELLO and a batch from an identity without a session (section 4.6), a message
of an unknown kind and a batch item that is not an array (section 6): each is dropped,
nothing reaches a process, and the counter named for it moves by exactly one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import zmq

from fabric.protocol import handshake as hs
from fabric.protocol.codec import Codec
from fabric.testing import LocalCluster, async_wait_until
from fabric.testing.cluster import DEFAULT_COOKIE
from fabric.transport.zeromq import curve_client
from fabric.types import parse_node_name

pytestmark = pytest.mark.io

codec = Codec()


def _stranger(ctx: zmq.Context[Any], node_name: str) -> zmq.Socket[Any]:
    """A raw DEALER at the node's ROUTER: knows the wire format, has no session. It holds
    the data plane's CURVE keys (it knows the cookie), so its frames reach fabric's own
    checks; without them ZeroMQ's handshake would refuse it first (test_strangers)."""
    sock: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    curve_client(sock, *hs.data_plane_secrets(DEFAULT_COOKIE.encode()))
    sock.connect(f"tcp://127.0.0.1:{parse_node_name(node_name).port}")
    return sock


async def _counted(node: Any, key: str, before: int, what: str) -> None:
    await async_wait_until(lambda: node.metrics[key] == before + 1, 10,
                           message=lambda: f"{what}: {key} = {node.metrics[key]}")


def _run(body: Any) -> None:
    asyncio.run(body())


def test_a_malformed_hello_is_counted() -> None:
    async def body() -> None:
        async with LocalCluster(1) as (a,):
            ctx: zmq.Context[Any] = zmq.Context()
            try:
                before = a.metrics["bad_mesh_frames"]
                sock = _stranger(ctx, a.name)  # kept: closing it could drop the frame
                sock.send(codec.encode(["hello", "not", "a", "hello"]))
                await _counted(a, "bad_mesh_frames", before, "malformed HELLO")
            finally:
                ctx.destroy(linger=0)
            assert a.nodes() == []

    _run(body)


def test_a_stray_batch_is_refused_and_counted() -> None:
    async def body() -> None:
        async with LocalCluster(1) as (a,):
            sink = a.new_mailbox()
            ctx: zmq.Context[Any] = zmq.Context()
            try:
                before = a.metrics["stray_batches"]
                sock = _stranger(ctx, a.name)
                sock.send(codec.encode([[1, sink.self, "from a stranger"]]))
                await _counted(a, "stray_batches", before, "stray batch")
                assert await asyncio.to_thread(sock.poll, 5000)
                assert codec.decode(sock.recv()) == ["refuse", "not_connected", ""]
            finally:
                ctx.destroy(linger=0)
            assert list(sink.mailbox) == []

    _run(body)


def test_a_message_of_an_unknown_kind_is_counted_and_the_batch_goes_on() -> None:
    async def body() -> None:
        async with LocalCluster(2) as (a, b):
            sink = b.new_mailbox()
            before = b.metrics["unknown_kind"]
            a.channels.push_control(b.name, [99, "from the future"])
            a.send(sink.self, "after it")
            assert await sink.receive(timeout=5) == "after it"
            assert b.metrics["unknown_kind"] == before + 1
            assert b.nodes() == [a.name]  # the session stays up

    _run(body)


def test_a_batch_item_that_is_not_an_array_is_counted() -> None:
    async def body() -> None:
        async with LocalCluster(2) as (a, b):
            sink = b.new_mailbox()
            before = b.metrics["not_a_message"], b.metrics["bad_input"]
            for item in ("\x01text", b"\x01\x02", 7):
                a.channels.push_control(b.name, item)  # type: ignore[arg-type]
            a.send(sink.self, "after them")
            assert await sink.receive(timeout=5) == "after them"
            assert b.metrics["not_a_message"] == before[0] + 3
            assert b.metrics["bad_input"] == before[1] + 3
            assert list(sink.mailbox) == [] and b.metrics["undeliverable"] == 0

    _run(body)
