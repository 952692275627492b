"""The event loop fabric picks (fabric.loop) and its ZeroMQ context (D31)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys

import pytest
import zmq

import fabric.loop
from fabric.transport.zeromq import IO_SCHED_BATCH_ENV, new_context


async def _answer() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


def test_run_uses_uvloop_exactly_when_installed_and_not_disabled(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The oracle is the import system, not the function under test (which could miss it).
    monkeypatch.delenv(fabric.loop.ENV_VAR, raising=False)
    installed = importlib.util.find_spec("uvloop") is not None
    assert fabric.loop.run(_answer()).startswith("uvloop") == installed
    loop = fabric.loop.new_event_loop()
    try:
        assert type(loop).__module__.startswith("uvloop") == installed
    finally:
        loop.close()
    monkeypatch.setenv(fabric.loop.ENV_VAR, "0")
    assert fabric.loop.uvloop_module() is None
    assert fabric.loop.run(_answer()).startswith("asyncio")


def test_run_propagates_the_coroutines_exception() -> None:
    async def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        fabric.loop.run(fail())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_BATCH is Linux's")
def test_node_context_runs_its_io_thread_under_sched_batch() -> None:
    ctx = new_context()
    try:
        if os.sched_getscheduler(0) == os.SCHED_OTHER:
            assert ctx.get(zmq.THREAD_SCHED_POLICY) == os.SCHED_BATCH
        else:  # never applied under another policy: libzmq would abort
            assert ctx.get(zmq.THREAD_SCHED_POLICY) == -1
    finally:
        ctx.term()


def test_node_context_keeps_the_default_policy_when_told(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(IO_SCHED_BATCH_ENV, "0")
    ctx = new_context()
    try:
        assert ctx.get(zmq.THREAD_SCHED_POLICY) == -1
    finally:
        ctx.term()
