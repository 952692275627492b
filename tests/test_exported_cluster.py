"""The test helper ``_exported.cluster`` on a busy machine: a node whose picked port was
taken before its bind (by another process) is started on a newly picked port."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import _exported
import pytest
from _exported import async_test, cluster

from fabric.testing import free_port

pytestmark = pytest.mark.io  # in-process nodes on 127.0.0.1


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port held by a listening socket for the test's duration."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_a_port_taken_before_the_bind_is_picked_again(
        monkeypatch: pytest.MonkeyPatch, taken_port: int) -> None:
    ports = iter([taken_port, free_port()])
    monkeypatch.setattr(_exported, "new_name",
                        lambda prefix: f"{prefix}@127.0.0.1:{next(ports)}")

    @async_test
    async def body() -> None:
        async with cluster(1) as (node,):
            assert node.started and not node.name.endswith(f":{taken_port}")

    body()
