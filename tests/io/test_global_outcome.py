"""``global.register_name`` that times out says its outcome is unknown (issue 12, "Also").

A registration waits for every connected node's answer. When a peer is silent (frozen),
the caller's timeout can expire while the request is still in flight; once the peer is
declared down the registration goes through. So the timeout cannot mean "not registered":
it raises :class:`fabric.OutcomeUnknown` (a ``TimeoutError``) whose message says so, and
this test shows the documented consequence, the name taking effect afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from fabric import Node, OutcomeUnknown
from fabric.testing import NodeProcess, async_wait_until, free_port

pytestmark = [pytest.mark.io, pytest.mark.procs]

COOKIE = "global-outcome"
FAST: dict[str, Any] = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.6}


async def idle(proc: Any) -> None:
    await proc.receive(timeout=60.0, default=None)


def test_a_timed_out_registration_is_reported_as_unknown_and_may_take_effect(
        arun: Callable[..., Any]) -> None:
    with NodeProcess("silent", cookie=COOKIE, **FAST) as peer:
        peer.wait_ready(15)

        async def main() -> None:
            node = Node(f"asker@127.0.0.1:{free_port()}", COOKIE, **FAST)
            await node.start()
            try:
                assert await node.connect(peer.name)
                pid = node.spawn(idle)
                peer.freeze()  # it keeps its sockets but answers nothing
                # well under the 0.6 s after which the peer is declared down
                with pytest.raises(OutcomeUnknown, match="outcome is unknown") as raised:
                    await node.global_.register_name("svc", pid, timeout=0.2)
                assert isinstance(raised.value, TimeoutError)
                # The request was still in flight: once the silent peer is declared down
                # it completes, as the error said it might.
                await async_wait_until(lambda: node.global_.whereis_name("svc") == pid, 10,
                                       message="the registration took effect after all")
            finally:
                peer.thaw()
                await node.stop()

        arun(main())
