"""SyncNode: a node on a background thread, driven by blocking calls from plain code."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _exported import COOKIE, new_name

import fabric
from fabric import From, GenServer, Process, SyncNode
from fabric.testing import free_port

pytestmark = pytest.mark.io  # in-process nodes on 127.0.0.1


class KV(GenServer):
    async def init(self) -> None:
        self.data: dict[str, Any] = {}

    async def handle_call(self, request: Any, from_: From) -> Any:
        op, key = request
        assert op == "get"
        return self.data.get(key)

    async def handle_cast(self, request: Any) -> None:
        _, key, value = request
        self.data[key] = value


def wait_until(pred: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``pred`` from this (non-loop) thread until it holds, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.fixture
def pair() -> Iterator[tuple[SyncNode, SyncNode]]:
    with SyncNode(new_name("s1"), cookie=COOKIE) as one, \
            SyncNode(new_name("s2"), cookie=COOKIE) as two:
        yield one, two


def test_sync_node_connects_pings_and_lists_nodes(pair: tuple[SyncNode, SyncNode]) -> None:
    one, two = pair
    assert one.connect(two.name) is True
    assert one.nodes() == [two.name]
    assert one.ping(two.name) == "pong"
    assert one.ping(f"ghost@127.0.0.1:{free_port()}", timeout=0.5) == "pang"
    assert two.disconnect(one.name) is True
    wait_until(lambda: one.nodes() == [], what="one sees the disconnect")
    assert one.ping(two.name) == "pong"  # ping reconnects
    assert one.nodes() == [two.name]


def test_sync_node_spawn_on_send_and_receive_hello_world(
        pair: tuple[SyncNode, SyncNode]) -> None:
    one, two = pair
    pid = one.spawn_on(two.name, "_exported:hello_world")
    with one.mailbox() as box:
        one.send(pid, ("hello", box.pid))
        assert box.receive(timeout=2) == ("world", two.name)
        with pytest.raises(fabric.ReceiveTimeout):
            box.receive(timeout=0.01)
        assert box.receive(timeout=0.01, default="nothing") == "nothing"
    with pytest.raises(fabric.NotExportedError):
        one.spawn_on(two.name, "_exported:not_exported")
    with pytest.raises(fabric.LocalProtocolError):
        one.send(3.14, "not an address")  # errors of the loop thread reach the caller


def test_sync_node_timers(pair: tuple[SyncNode, SyncNode]) -> None:
    one, _ = pair
    with one.mailbox() as box:
        kept = one.send_after(box.pid, "soon", 0.01)
        dropped = one.send_after(box.pid, "never", 30)
        left = one.cancel_timer(dropped)
        assert left is not None and 0 < left <= 30
        assert box.receive(timeout=5) == "soon"
        assert one.cancel_timer(kept) is None  # it fired
        one.send_after(box.pid, "marker", 0)
        assert box.receive(timeout=5) == "marker"  # the cancelled one never came


def test_sync_node_call_cast_rpc_and_multicall(pair: tuple[SyncNode, SyncNode]) -> None:
    one, two = pair
    pid = two.run(KV.start(two.node, name="kv"))
    one.cast(("kv", two.name), ("put", "k", [1, 2]))
    assert one.call(("kv", two.name), ("get", "k")) == [1, 2]
    assert two.call("kv", ("get", "k")) == [1, 2]
    assert two.whereis("kv") == pid
    with pytest.raises(fabric.ProcessDeadError):
        one.call(("nobody", two.name), ("get", "k"))
    assert one.rpc(two.name, "_exported:add", (1, 2)) == 3
    with pytest.raises(fabric.RemoteError):
        one.rpc(two.name, "_exported:boom", ("x",))
    results, bad = one.multicall([one.name, two.name], "_exported:add", (2, 2))
    assert results == {one.name: 4, two.name: 4} and bad == []
    one.send_wait(pid, "info message")  # goes to handle_info; must not break the server
    assert one.call(pid, ("get", "k")) == [1, 2]


def test_sync_node_local_spawn_and_loop_thread_guard() -> None:
    threads_before = set(threading.enumerate())
    with SyncNode(new_name("s"), cookie=COOKIE) as node:
        errors: list[BaseException] = []

        async def inside(proc: Process, report: fabric.Pid) -> None:
            try:
                node.nodes()  # blocking call from the loop thread would deadlock
            except RuntimeError as exc:
                errors.append(exc)
            proc.send(report, "done")

        with node.mailbox() as box:
            node.spawn(inside, box.pid)
            assert box.receive(timeout=2) == "done"
        assert len(errors) == 1 and "loop thread" in str(errors[0])
    node.stop()  # idempotent
    with pytest.raises(RuntimeError):
        node.nodes()
    assert set(threading.enumerate()) <= threads_before  # its loop thread has ended


def test_sync_node_bad_config_raises_and_leaves_no_thread() -> None:
    before = threading.active_count()
    with pytest.raises(fabric.ConfigError):
        SyncNode("not a node name", cookie=COOKIE)
    port = free_port()
    with SyncNode(f"x@127.0.0.1:{port}", cookie=COOKIE), pytest.raises(fabric.ConfigError):
        SyncNode(f"y@127.0.0.1:{port}", cookie=COOKIE)  # port taken
    assert threading.active_count() == before
