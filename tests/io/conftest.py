"""Fixtures for the real-socket tests: node processes never outlive a test, and async test
bodies run on a fresh event loop with a deadline (pytest-asyncio is not a dependency)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from fabric.testing import kill_leftovers

T = TypeVar("T")


@pytest.fixture(autouse=True)
def _reap_node_processes() -> Iterator[None]:
    """Kill, by pid, every node process a test started and left running (a failed
    assertion skips the test's own cleanup)."""
    yield
    kill_leftovers()


@pytest.fixture
def arun() -> Callable[..., Any]:
    """Run a coroutine to completion on a new loop, failing after ``timeout`` seconds."""

    def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run(asyncio.wait_for(coro, timeout))

    return run
