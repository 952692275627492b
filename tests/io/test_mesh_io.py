"""The mesh on real sockets: nodes as OS processes (``python -m nodes.node``) on 127.0.0.1.

Each scenario starts its own small cluster on fresh ports. Detection times are logged,
not asserted: on a loaded CI machine they vary, and the reasons are the contract.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fabric import Node, NodeDown, NodeUp
from fabric.testing import (
    LocalCluster,
    NodeProcess,
    ProcessCluster,
    async_wait_until,
    child_pythonpath,
    free_port,
    wait_until,
)

pytestmark = pytest.mark.io
log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
# Short heartbeats keep the suite fast; one SIGSTOP test also runs at the defaults.
FAST: dict[str, Any] = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.6}


def nodeups(proc: NodeProcess) -> set[str]:
    return {e["node"] for e in proc.events if e["event"] == "nodeup"}


def nodedowns(proc: NodeProcess, peer: str) -> list[str]:
    return [e["reason"] for e in proc.events
            if e["event"] == "nodedown" and e["node"] == peer]


# -- OS-process clusters ------------------------------------------------------------------


@pytest.mark.procs
def test_mesh_of_five_from_one_seed_each() -> None:
    start = time.monotonic()
    with ProcessCluster(5, **FAST) as procs:
        log.info("5 OS-process nodes formed a full mesh in %.2f s", time.monotonic() - start)
        names = {p.name for p in procs}

        def announced_all(p: NodeProcess) -> bool:
            return nodeups(p) == names - {p.name}

        for p in procs:
            assert sorted(p.nodes()) == sorted(names - {p.name})
            # every peer was announced, including those met only transitively
            wait_until(functools.partial(announced_all, p), 5,
                       message=lambda p=p: (  # type: ignore[misc]
                           f"{p.name} announces nodeup for every peer; its events: "
                           f"{p.events}\n"
                           f"{p.describe(60)}"))
            assert not [e for e in p.events if e["event"] == "nodedown"]


@pytest.mark.procs
def test_kill_9_gives_connection_closed_and_the_restarted_node_rejoins() -> None:
    # Default heartbeats: a connection_closed can only win against the 1 s heartbeat
    # timeout if the closed TCP connection is noticed at once.
    with ProcessCluster(3) as (n1, n2, n3):
        marks = [len(n1.events), len(n2.events)]
        killed_at = time.monotonic()
        n3.kill()
        for p, since in zip((n1, n2), marks, strict=True):
            ev = p.wait_nodedown(n3.name, 10, since)
            assert ev["reason"] == "connection_closed", ev
            log.info("%s saw kill -9 of %s after %.3f s", p.name, n3.name, ev["t"] - killed_at)
        n1.wait_nodes([n2.name], 5)
        n2.wait_nodes([n1.name], 5)

        # The same name again (a new creation): everyone meets it.
        with NodeProcess(n3.name, connect=[n1.name]) as again:
            again.wait_ready()
            for p, peers in ((n1, [n2.name, again.name]), (n2, [n1.name, again.name]),
                             (again, [n1.name, n2.name])):
                p.wait_nodes(peers, 10)
            again.stop()


@pytest.mark.procs
@pytest.mark.parametrize("settings", [FAST, {}], ids=["fast_heartbeat", "default_settings"])
def test_sigstop_gives_heartbeat_timeout_and_sigcont_brings_it_back(
        settings: dict[str, Any]) -> None:
    with ProcessCluster(3, **settings) as (n1, n2, n3):
        marks = [len(n1.events), len(n2.events)]
        frozen_at = time.monotonic()
        n3.freeze()
        for p, since in zip((n1, n2), marks, strict=True):
            ev = p.wait_nodedown(n3.name, 10, since)
            assert ev["reason"] == "heartbeat_timeout", ev
            log.info("%s declared frozen %s down after %.3f s (%s)", p.name, n3.name,
                     ev["t"] - frozen_at, settings or "defaults")
        thawed_at = time.monotonic()
        n3.thaw()
        names = {p.name for p in (n1, n2, n3)}
        for p in (n1, n2, n3):
            p.wait_nodes(names - {p.name}, 10)
        log.info("the thawed node was back everywhere after %.3f s",
                 time.monotonic() - thawed_at)
        # The two live nodes never lost each other.
        assert nodedowns(n1, n2.name) == [] and nodedowns(n2, n1.name) == []


@pytest.mark.procs
def test_sigterm_stops_gracefully_and_peers_see_shutdown() -> None:
    with ProcessCluster(3, **FAST) as (n1, n2, n3):
        marks = [len(n1.events), len(n2.events)]
        assert n3.stop() == 0
        for p, since in zip((n1, n2), marks, strict=True):
            assert p.wait_nodedown(n3.name, 10, since)["reason"] == "shutdown"
        kinds = [e["event"] for e in n3.events]
        assert "stopping" in kinds and kinds[-1] == "stopped"
        assert (n3.status() or {}).get("running") is False
        # A goodbye is final: nobody tries to bring the stopped node back.
        n1.wait_nodes([n2.name], 5)
        n2.wait_nodes([n1.name], 5)
        assert nodedowns(n1, n3.name) == ["shutdown"] and nodedowns(n2, n3.name) == ["shutdown"]


@pytest.mark.procs
def test_hidden_node_is_not_listed_by_its_peers() -> None:
    with ProcessCluster(2, **FAST) as (n1, n2), \
            NodeProcess("hidden", hidden=True, connect=[n1.name], **FAST) as h:
        h.wait_ready()
        assert h.wait_event(lambda e: e["event"] == "connect", 10)["ok"] is True
        wait_until(lambda: (n1.status() or {}).get("hidden_nodes") == [h.name], 5)
        assert n1.nodes() == [n2.name]
        # The hidden node sees the node it connected to, and is not meshed further.
        assert h.nodes() == [n1.name]
        assert (n2.status() or {}).get("hidden_nodes") == []
        assert h.name not in nodeups(n1) | nodeups(n2)


@pytest.mark.procs
def test_repl_runs_top_level_await_on_the_node() -> None:
    with NodeProcess("peer", **FAST) as peer, \
            NodeProcess("repl", repl=True, connect=[], **FAST) as repl:
        peer.wait_ready()
        repl.wait_ready()

        def printed(text: str) -> Callable[[dict[str, Any]], bool]:
            return lambda e: e["event"] == "stdout" and text in e["line"]

        repl.send_line(f"await node.ping({peer.name!r})")
        repl.wait_event(printed("'pong'"), 10, "'pong' printed")
        repl.send_line("sorted(node.nodes())")
        repl.wait_event(printed(repr([peer.name])), 10, "nodes() printed")
        repl.send_line("1 / 0")  # an error is shown, the node keeps running
        repl.send_line("await asyncio.sleep(0) or 'still here'")
        repl.wait_event(printed("'still here'"), 10, "the REPL survives an exception")
        assert "ZeroDivisionError" in repl.stderr_text()
        mark = len(peer.events)
        repl.send_line("exit()")
        assert repl.wait_exit(10) == 0
        assert peer.wait_nodedown(repl.name, 10, mark)["reason"] == "shutdown"


@pytest.mark.procs
def test_bad_command_lines_fail_with_a_clear_message() -> None:
    env = dict(os.environ, PYTHONPATH=child_pythonpath(REPO), FABRIC_COOKIE="c")
    cmd = [sys.executable, "-m", "nodes.node", "--no-repl"]
    bad_name = subprocess.run(cmd + ["--name", "no-at-sign"], env=env, capture_output=True,
                              text=True, timeout=30)
    assert bad_name.returncode == 2
    assert "name@host" in bad_name.stderr
    with NodeProcess("taken") as first:
        first.wait_ready()
        same = subprocess.run(cmd + ["--name", first.name], env=env, capture_output=True,
                              text=True, timeout=30)
        assert same.returncode == 2
        assert "cannot bind" in same.stderr


# -- in-process nodes against OS-process nodes --------------------------------------------


@pytest.mark.procs
def test_ping_and_echo_across_processes(arun: Callable[..., Any]) -> None:
    with NodeProcess("echoer", spawn_echo=True, **FAST) as remote:
        remote.wait_ready()

        async def body() -> None:
            async with LocalCluster(1, **FAST) as (local,):
                assert await local.ping(remote.name) == "pong"
                box = local.new_mailbox()
                for i in range(100):
                    local.send(("echo", remote.name), (i, box.self))
                got = [await box.receive(timeout=5) for _ in range(100)]
                assert got == [("echo", i) for i in range(100)]  # in order, once each

        arun(body())


def test_wrong_cookie_refused_on_both_sides(arun: Callable[..., Any]) -> None:
    async def body() -> None:
        async with LocalCluster(1, cookie="right") as (good,), \
                Node(f"intruder@127.0.0.1:{free_port()}", "wrong") as bad:
            assert await bad.connect(good.name) is False
            # The data plane's CURVE keys derive from the cookie: ZeroMQ's handshake fails
            # before any of fabric's frames crosses, and both sides say so.
            assert bad.last_connect_error(good.name) == "bad_cookie"
            await async_wait_until(
                lambda: good.metrics.get("handshake_failed", 0) >= 1, 5,
                message="the accepting side counts the failed handshake")
            assert good.nodes() == [] and bad.nodes() == []
            assert await bad.ping(good.name, timeout=1) == "pang"

    arun(body())


@pytest.mark.procs
def test_wrong_cookie_from_an_os_process_node(arun: Callable[..., Any]) -> None:
    async def body() -> None:
        async with LocalCluster(1, cookie="right") as (good,):
            with NodeProcess("intruder", cookie="wrong", connect=[good.name]) as bad:
                # Blocking waits go to a thread: this loop must keep serving `good`.
                ev = await asyncio.to_thread(
                    bad.wait_event, lambda e: e["event"] == "connect", 15)
                assert ev["ok"] is False and ev["reason"] == "bad_cookie", ev
                assert ev["attempts"] == 1  # a bad cookie is not retried
                await async_wait_until(
                    lambda: good.metrics.get("handshake_failed", 0) >= 1, 5)
                assert good.nodes() == []

    arun(body())


def test_connect_where_nothing_listens(arun: Callable[..., Any]) -> None:
    async def body() -> None:
        async with LocalCluster(1, handshake_timeout=1.0) as (node,):
            ghost = f"ghost@127.0.0.1:{free_port()}"
            assert await node.connect(ghost) is False
            assert node.last_connect_error(ghost) in {"connection_refused", "timeout"}
            assert await node.ping(ghost, timeout=1.0) == "pang"
            assert node.nodes() == []

    arun(body())


def test_local_cluster_forms_a_mesh_and_delivers(arun: Callable[..., Any]) -> None:
    async def body() -> None:
        async with LocalCluster(3, cookie="c", **FAST) as nodes:
            names = {n.name for n in nodes}
            for n in nodes:
                assert set(n.nodes()) == names - {n.name}
            box = nodes[2].new_mailbox()
            nodes[0].send(box.self, ("hello", nodes[0].name))
            assert await box.receive(timeout=5) == ("hello", nodes[0].name)
            assert await nodes[1].ping(nodes[0].name) == "pong"

    arun(body())


def test_monitor_nodes_may_subscribe_before_start(arun: Callable[..., Any]) -> None:
    # The console's event pump relies on this: a peer that was already dialling can be up
    # after the node's first read, before any task created after start() has run (seen
    # in CI as a missing nodeup line), so the pump subscribes before start().
    async def body() -> None:
        async with LocalCluster(1, cookie="c") as (early,):
            late = Node(f"late@127.0.0.1:{free_port()}", "c")
            events = late.monitor_nodes()
            async with late:
                assert await early.connect(late.name, timeout=5.0) is True
                assert await events.next(timeout=5) == NodeUp(early.name)
            # Our own view of the session ending, then the end of the iteration.
            assert [ev async for ev in events] == [NodeDown(early.name, "shutdown")]

    arun(body())
