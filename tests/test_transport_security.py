"""The data plane's keys and allowlist (fabric.transport.security) and the ZAP handler
(fabric.transport.zap), without the network: ZAP requests come over inproc, as libzmq
sends them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import zmq
from zmq.utils import z85

from fabric.errors import ConfigError
from fabric.protocol import handshake as hs
from fabric.testing import async_wait_until
from fabric.transport.security import DATA_DOMAIN, PUB_DOMAIN, SocketSecurity
from fabric.transport.zap import ZAP_ENDPOINT, ZapHandler

COOKIE = b"security-cookie"


def pair() -> tuple[str, str]:
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


def raw(key: str) -> bytes:
    return z85.decode(key.encode())


def test_by_default_the_cookie_derived_keys_are_admitted_and_nothing_else() -> None:
    sec = SocketSecurity(COOKIE)
    shared = sec.shared_public_key
    assert sec.public_key == shared and sec.allowed_keys() == {shared}
    expected = zmq.curve_public(z85.encode(hs.data_plane_secrets(COOKIE)[1])).decode()
    assert shared == expected
    other, _ = pair()
    assert sec.admits(DATA_DOMAIN, raw(shared))
    assert not sec.admits(DATA_DOMAIN, raw(other))
    assert not sec.admits(PUB_DOMAIN, raw(shared))  # a data-plane key opens no PUB
    pub_client = zmq.curve_public(z85.encode(hs.pub_plane_secrets(COOKIE)[1]))
    assert sec.admits(PUB_DOMAIN, z85.decode(pub_client))
    assert not sec.admits("another domain", raw(shared))


def test_an_allowlist_replaces_the_shared_key_and_changes_at_run_time() -> None:
    a_pub, a_sec = pair()
    b_pub, _ = pair()
    sec = SocketSecurity(COOKIE, secret_key=a_sec, allowed_keys=[a_pub])
    assert sec.public_key == a_pub
    assert not sec.admits(DATA_DOMAIN, raw(sec.shared_public_key))
    sec.allow(b_pub)
    assert sec.allowed_keys() == {a_pub, b_pub} and sec.admits(DATA_DOMAIN, raw(b_pub))
    sec.revoke(a_pub)
    assert sec.allowed_keys() == {b_pub} and not sec.admits(DATA_DOMAIN, raw(a_pub))
    sec.use_secret_key(None)
    assert sec.public_key == sec.shared_public_key


@pytest.mark.parametrize("call", ["allow", "revoke", "use_secret_key"])
def test_malformed_keys_raise_config_error(call: str) -> None:
    with pytest.raises(ConfigError, match="Z85"):
        getattr(SocketSecurity(COOKIE), call)("not a key")


@pytest.mark.io  # an inproc REP socket and its REQ: ZeroMQ sockets
def test_the_zap_handler_answers_200_400_and_500() -> None:
    allowed, _ = pair()
    refused_key, _ = pair()

    async def body() -> None:
        ctx: zmq.Context[Any] = zmq.Context()
        refusals: list[tuple[str, str]] = []
        handler = ZapHandler(asyncio.get_running_loop(), ctx,
                             lambda domain, key: domain == "d" and key == raw(allowed),
                             lambda domain, address: refusals.append((domain, address)))
        req = ctx.socket(zmq.REQ)
        req.connect(ZAP_ENDPOINT)
        try:
            async def ask(*frames: bytes) -> list[bytes]:
                req.send_multipart(list(frames))
                # The handler answers on this loop: wait for it here, never block.
                await async_wait_until(lambda: req.poll(0), 5, message="a ZAP answer")
                return req.recv_multipart()

            base = [b"1.0", b"7", b"d", b"10.0.0.9", b"", b"CURVE"]
            assert (await ask(*base, raw(allowed)))[:3] == [b"1.0", b"7", b"200"]
            assert (await ask(*base, raw(refused_key)))[2] == b"400"
            assert (await ask(*base[:5], b"NULL"))[2] == b"400"  # not CURVE: no key
            assert (await ask(b"2.0", b"8", b"d"))[:3] == [b"1.0", b"8", b"500"]
            assert handler.admitted == 1 and handler.refused == {"d": 2}
            assert refusals == [("d", "10.0.0.9")] * 2
        finally:
            handler.close()
            ctx.destroy(linger=0)

    asyncio.run(asyncio.wait_for(body(), 10))
