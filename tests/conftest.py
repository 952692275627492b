"""The whole suite's configuration: which ``fabric`` is under test, and where ``nodes``
and ``bench`` come from.

tox installs fabric (as a user's ``pip install`` would) and runs the suite from a folder
outside the checkout, with ``FABRIC_TEST_INSTALLED=1``: the tests then exercise what users
get, and a module missing from the wheel fails them. The checkout is *appended* to
``sys.path`` so that the tests can import the demo (``nodes``) and the benchmarks
(``bench``), which are not installed, without its ``fabric/`` shadowing the installed one.
Run from a checkout without that variable (``python -m pytest``), the source tree is tested.

Tiers (markers declared in setup.cfg), each runnable alone:

* ``unit``: pure tests (cores, simulators, codecs, fakes). Given automatically to every
  test with none of the markers below; such a test that opens a ZeroMQ or TCP socket or
  starts a process fails (:func:`_unit_tests_open_no_socket`), so ``-m unit`` (or
  ``-m "not io"``) opens no socket;
* ``io``: real sockets on 127.0.0.1, nodes in this process or as OS processes;
* ``procs``: the subset of ``io`` that starts OS processes (``-m "io and not procs"`` runs
  the in-process socket tier);
* ``lab``: network namespaces (root only).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

CHECKOUT = Path(__file__).resolve().parent.parent

if str(CHECKOUT) not in sys.path:
    sys.path.append(str(CHECKOUT))


def pytest_configure(config: pytest.Config) -> None:
    import fabric

    where = Path(fabric.__file__).resolve().parent
    if os.environ.get("FABRIC_TEST_INSTALLED") == "1" and where == CHECKOUT / "fabric":
        raise pytest.UsageError(
            f"FABRIC_TEST_INSTALLED=1 but fabric was imported from the checkout ({where}): "
            "run the tests from a folder outside it so the installed package is tested")


def pytest_report_header(config: pytest.Config) -> str:
    import fabric

    return f"fabric under test: {Path(fabric.__file__).resolve().parent}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("procs") is not None:
            item.add_marker(pytest.mark.io)
        elif all(item.get_closest_marker(m) is None for m in ("io", "lab")):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def _unit_tests_open_no_socket(request: pytest.FixtureRequest,
                               monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A ``unit`` test may not open a ZeroMQ socket or bind or connect a TCP socket, and
    only ``procs`` (and ``lab``) tests may start a process: each tier runs alone."""
    marker = request.node.get_closest_marker
    name = request.node.nodeid

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{name} opens a socket or starts a process its tier forbids: "
                             "mark it io (in-process sockets) or procs (OS processes)")

    if marker("unit") is not None:
        monkeypatch.setattr(zmq.Context, "socket", refuse)
        monkeypatch.setattr(socket.socket, "bind", refuse)
        monkeypatch.setattr(socket.socket, "connect", refuse)
    if marker("procs") is None and marker("lab") is None:
        monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    yield
