"""The ROUTER/DEALER plane is CURVE, vetted by ZAP (docs/DECISIONS.md D18).

Real nodes on 127.0.0.1: a wrong key is refused by ZeroMQ's handshake and surfaces at once
as a connect error on the dialling side and as a counter on the refusing side; per-node
keys with allowlists connect, and a key is rotated without restarting anyone; frames
longer than one part cross (and are joined) with and without encryption.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import zmq

from fabric import Node
from fabric.protocol import handshake as hs
from fabric.testing import async_wait_until, free_port
from fabric.transport.zeromq import PART_SIZE, curve_client

pytestmark = pytest.mark.io

COOKIE = "data-plane-cookie"
FAST: dict[str, Any] = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.6,
                        "handshake_timeout": 2.0, "reconnect_window": 0.0}


def key_pair() -> tuple[str, str]:
    """A fresh CURVE key pair, Z85: ``(public, secret)``."""
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


@contextlib.asynccontextmanager
async def node(name: str, cookie: str = COOKIE, **options: Any) -> AsyncIterator[Node]:
    async with Node(f"{name}@127.0.0.1:{free_port()}", cookie, **FAST, **options) as n:
        yield n


async def connect_fails(dialler: Node, target: Node, *reasons: str) -> None:
    """``dialler`` cannot connect, says why (one of ``reasons``) well before the
    handshake timeout, and neither side lists the other."""
    loop = dialler.loop
    started = loop.time()
    assert await dialler.connect(target.name) is False
    assert dialler.last_connect_error(target.name) in reasons
    assert loop.time() - started < FAST["handshake_timeout"], "failed only by timing out"
    assert dialler.nodes() == [] and target.nodes() == []


def test_a_key_off_the_allowlist_is_refused_at_once(arun: Callable[..., Any]) -> None:
    async def body() -> None:
        allowed_pub, allowed_sec = key_pair()
        _, other_sec = key_pair()
        async with node("guard", curve_allowed_keys=frozenset({allowed_pub})) as guard, \
                node("outsider", curve_secret_key=other_sec) as outsider, \
                node("shared") as shared, \
                node("insider", curve_secret_key=allowed_sec) as insider:
            # The outsider knows the cookie, but its key is not listed: ZAP says no.
            await connect_fails(outsider, guard, "key_refused")
            # The cookie-derived shared key is not listed either once a list is given.
            await connect_fails(shared, guard, "key_refused")
            assert guard.metrics.get("key_refused", 0) >= 2
            assert guard.zap.refused.get("fabric-data", 0) >= 2
            # The listed key gets in (the guard dials back with the shared key, which
            # the insider's default allowlist admits).
            assert await insider.connect(guard.name)
            assert await guard.ping(insider.name) == "pong"

    arun(body())


def test_a_refusal_of_the_dial_back_is_reported(arun: Callable[..., Any]) -> None:
    # The acceptor admits the dialler, then dials back with BIND (PROTOCOL.md 4.3) with
    # a key the dialler does not list: both sides end without a session, and the dialler
    # says whose key was refused instead of timing out silently.
    async def body() -> None:
        a_pub, a_sec = key_pair()
        async with node("strict", curve_secret_key=a_sec,
                        curve_allowed_keys=frozenset({a_pub})) as strict, \
                node("open") as open_:
            open_.security.allow(a_pub)  # open admits strict's key
            assert await strict.connect(open_.name) is False
            assert strict.last_connect_error(open_.name) == "key_refused"
            assert strict.metrics.get("key_refused", 0) >= 1
            await async_wait_until(lambda: open_.nodes() == [] and strict.nodes() == [], 5,
                                   message="no session left on either side")
            # The refusal was open_'s, told by open_: another node of the same host that
            # fails right after fails for its own reason, not "key_refused".
            ghost = f"ghost@127.0.0.1:{free_port()}"
            assert await strict.connect(ghost) is False
            assert strict.last_connect_error(ghost) == "connection_refused"

    arun(body())


def test_another_cookie_fails_zeromqs_handshake(arun: Callable[..., Any]) -> None:
    async def body() -> None:
        async with node("right") as right, node("wrong", cookie="another") as wrong:
            await connect_fails(wrong, right, "bad_cookie")
            await async_wait_until(lambda: right.metrics.get("handshake_failed", 0) >= 1, 5,
                                   message="the ROUTER counts the failed handshake")

    arun(body())


def test_encrypting_and_clear_nodes_do_not_talk(arun: Callable[..., Any]) -> None:
    async def body() -> None:
        async with node("curve") as curve, node("clear", encrypt_data_plane=False) as clear:
            await connect_fails(clear, curve, "security_mismatch")
            # An encrypting dialler often sees only the clear peer hang up, which is all
            # it sees of another cookie too (libzmq reports the mismatch to one side).
            await connect_fails(curve, clear, "security_mismatch", "bad_cookie")
            await async_wait_until(lambda: curve.metrics.get("handshake_failed", 0) >= 1
                                   and clear.metrics.get("handshake_failed", 0) >= 1, 5,
                                   message="each ROUTER counts the failed handshake")

    arun(body())


def test_a_stranger_without_keys_gets_no_reply(arun: Callable[..., Any]) -> None:
    async def body() -> None:
        async with node("victim") as victim:
            port = int(victim.name.rsplit(":", 1)[1])
            ctx: zmq.Context[Any] = zmq.Context()
            try:
                plain = ctx.socket(zmq.DEALER)
                guessed = ctx.socket(zmq.DEALER)
                server_pub, _ = key_pair()  # a guess at the server key
                _, client_sec = key_pair()
                guessed.curve_serverkey = server_pub.encode()
                guessed.curve_secretkey = client_sec.encode()
                guessed.curve_publickey = zmq.curve_public(client_sec.encode())
                hello = victim.codec.encode(hs.Hello(
                    hs.PROTOCOL_VERSION, "s@127.0.0.1:1", 1, 0, 5555, bytes(16)).frame())
                for sock in (plain, guessed):
                    sock.setsockopt(zmq.LINGER, 0)
                    sock.connect(f"tcp://127.0.0.1:{port}")
                    with contextlib.suppress(zmq.Again):  # its connection may be gone
                        sock.send(hello, zmq.NOBLOCK)
                await async_wait_until(
                    lambda: victim.metrics.get("handshake_failed", 0) >= 2, 5,
                    message="both handshakes failed at the victim")
                assert not plain.poll(0) and not guessed.poll(0)
                assert victim.mesh.stats.unauthenticated_frames == 0
                assert not victim.mesh.stats.refused  # the mesh never saw them
            finally:
                ctx.destroy(linger=0)

    arun(body())


def test_per_node_keys_and_a_rotation_without_restart(arun: Callable[..., Any]) -> None:
    async def body() -> None:
        a_old_pub, a_old_sec = key_pair()
        a_new_pub, a_new_sec = key_pair()
        b_pub, b_sec = key_pair()
        async with node("a", curve_secret_key=a_old_sec,
                        curve_allowed_keys=frozenset({b_pub})) as a, \
                node("b", curve_secret_key=b_sec,
                     curve_allowed_keys=frozenset({a_old_pub})) as b:
            assert a.security.public_key == a_old_pub
            assert await a.connect(b.name)
            # 1. Every node that must admit a lists a's new key too.
            b.security.allow(a_new_pub)
            assert b.security.allowed_keys() == {a_old_pub, a_new_pub}
            # 2. a switches: connections it makes from now on use the new key; the
            #    session that is up is not touched.
            a.security.use_secret_key(a_new_sec)
            assert a.security.public_key == a_new_pub and a.nodes() == [b.name]
            # 3. The old key is revoked; a reconnects with its new key.
            b.security.revoke(a_old_pub)
            a.disconnect(b.name)
            await async_wait_until(lambda: b.nodes() == [], 5)
            assert await a.connect(b.name)
            assert await b.ping(a.name) == "pong"
            # The old key no longer gets in.
            async with node("a_old", curve_secret_key=a_old_sec,
                            curve_allowed_keys=frozenset({b_pub})) as stale:
                assert await stale.connect(b.name) is False
                assert stale.last_connect_error(b.name) == "key_refused"

    arun(body())


@pytest.mark.parametrize("encrypt", [True, False], ids=["curve", "clear"])
def test_frames_longer_than_a_part_cross_whole(arun: Callable[..., Any],
                                               encrypt: bool) -> None:
    async def body() -> None:
        async with node("tx", encrypt_data_plane=encrypt) as tx, \
                node("rx", encrypt_data_plane=encrypt) as rx:
            assert await tx.connect(rx.name)
            box = rx.new_mailbox()
            rx.register("box", box.self)
            sizes = [PART_SIZE - 100, PART_SIZE * 3, PART_SIZE * 40 + 7]
            for size in sizes:
                tx.send(("box", rx.name), bytes([size % 251]) * size)
            for size in sizes:
                got = await box.receive(timeout=10)
                assert got == bytes([size % 251]) * size
            assert rx.metrics.get("bad_input", 0) == 0

    arun(body())


def test_an_over_long_multipart_message_is_dropped_part_by_part(
        arun: Callable[..., Any]) -> None:
    # One message of 200,000 parts from a socket that holds the data-plane keys but never
    # authenticated: it is discarded as it is read, and the node carries on.
    async def body() -> None:
        async with node("victim") as victim, node("friend") as friend:
            assert await friend.connect(victim.name)
            port = int(victim.name.rsplit(":", 1)[1])
            ctx: zmq.Context[Any] = zmq.Context()
            try:
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                curve_client(sock, *hs.data_plane_secrets(COOKIE.encode()))
                sock.connect(f"tcp://127.0.0.1:{port}")
                sock.send_multipart([b"x" * PART_SIZE] + [b""] * 200_000)
                await async_wait_until(lambda: victim.metrics.get("bad_input", 0) >= 1, 20,
                                       message="the message was counted")
                assert await friend.ping(victim.name) == "pong"
            finally:
                ctx.destroy(linger=0)

    arun(body())
