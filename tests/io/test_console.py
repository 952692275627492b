"""The interactive node (``fabric node``): code run at start, its banner, and output at a
terminal that never lands in the middle of the prompt."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

import fabric
from fabric import Node
from fabric.testing import NodeProcess, child_pythonpath, free_port
from fabric.testing.cluster import DEFAULT_COOKIE

pytestmark = [pytest.mark.io, pytest.mark.procs]


def printed(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["event"] == "stdout" and text in e["line"]


def test_run_starts_a_node_programs_genservers(arun: Callable[..., Any]) -> None:
    with NodeProcess("kv", extra_args=["--run", "_exported:start_kv"]) as kv:
        kv.wait_ready()  # READY comes after the start code has run

        async def body() -> None:
            async with Node(f"client@127.0.0.1:{free_port()}",
                            cookie=DEFAULT_COOKIE) as client:
                assert await fabric.call(client, ("kv", kv.name), ("put", "k", 1)) == "ok"
                assert await fabric.call(client, ("kv", kv.name), ("get", "k")) == 1

        arun(body())


def test_failing_start_code_stops_the_node_with_its_traceback() -> None:
    env = dict(os.environ, PYTHONPATH=child_pythonpath(), FABRIC_COOKIE="c")
    done = subprocess.run(
        [sys.executable, "-m", "fabric.console", "--name", "bad@127.0.0.1", "--no-repl",
         "--eval", "x = 1", "--eval", "await asyncio.sleep(0); 1 / x / 0"],
        env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "ZeroDivisionError" in done.stderr and "<--eval>" in done.stderr
    assert "READY" not in done.stdout and '"stopped"' in done.stdout


def test_eval_names_stay_visible_and_the_banner_pings_another_node() -> None:
    with NodeProcess("repl", repl=True, extra_args=["--eval", "answer = 6 * 7"]) as repl:
        repl.wait_ready()
        repl.send_line("answer")
        repl.wait_event(printed("42"), 10, "the --eval name printed")
        banner = repl.stderr_text()
        suggestion = banner.split("await node.ping(", 1)[1].split(")", 1)[0]
        assert suggestion.startswith("'other@127.0.0.1:") and repl.name not in suggestion
        repl.send_line("exit()")
        assert repl.wait_exit(10) == 0


def read_until(fd: int, wanted: bytes, seen: bytearray, timeout: float = 15.0) -> None:
    """Read the terminal into ``seen`` until ``wanted`` appears in it."""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{wanted!r} not seen in {bytes(seen)!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                chunk = b""
            assert chunk, f"terminal closed before {wanted!r}: {bytes(seen)!r}"
            seen += chunk


def test_at_a_terminal_events_are_printed_above_the_prompt(arun: Callable[..., Any]) -> None:
    """The node's output while the REPL waits goes above the prompt, which is redrawn."""
    port = free_port()
    name = f"tty@127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=child_pythonpath(), FABRIC_COOKIE=DEFAULT_COOKIE,
               TERM="dumb")
    master, slave = pty.openpty()
    child = subprocess.Popen([sys.executable, "-m", "fabric.console", "--name", name],
                             stdin=slave, stdout=slave, stderr=slave, env=env,
                             start_new_session=True)
    os.close(slave)
    seen = bytearray()
    try:
        read_until(master, b">>> ", seen)
        typed = b"1 + "
        os.write(master, typed)  # half a statement: the user is typing
        read_until(master, typed, seen)

        async def connect() -> None:
            async with Node(f"peer@127.0.0.1:{free_port()}", cookie=DEFAULT_COOKIE) as peer:
                assert await peer.connect(name)
                mark = len(seen)
                read_until(master, b'"nodeup"', seen)
                # The event line erased the prompt line first, then the prompt and the
                # typed text were drawn again under it.
                after = bytes(seen[mark:])
                line_start = after.index(b'{"event": "nodeup"')
                assert after[:line_start].endswith(b"\r\x1b[2K")
                read_until(master, b">>> 1 + ", seen)
                assert bytes(seen).rindex(b">>> 1 + ") > len(seen) - 80

        arun(connect())
        os.write(master, b"1\n")
        read_until(master, b"2\r\n>>> ", seen)
        os.write(master, b"exit()\n")
        assert child.wait(timeout=15) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(master)
