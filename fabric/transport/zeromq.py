"""The ZeroMQ transport: sockets, their options, and edge-triggered readiness on asyncio.

Theory of operation
-------------------
A node binds one ROUTER (its inbox: every peer's DEALER connects to it) and one PUB
(heartbeats and group topics), and holds one SUB connected to every peer's PUB plus one
DEALER per peer. This module owns those sockets and nothing else: it knows no protocol.

ZeroMQ signals readiness through one file descriptor per socket, edge-triggered: after a
wakeup the socket must be drained until EAGAIN, and any send may consume the edge, so
after a send the socket's ``EVENTS`` are checked again. :class:`Reader` wraps that dance:
the owner's callback is called with the socket when it may have input, and must read until
the socket's ``EVENTS`` show no input (bounded per call; the reader re-arms itself if input
remains). Checking ``EVENTS`` first is cheaper than reading until ``zmq.Again``.

Both planes are CURVE-secured (:func:`curve_server`, :func:`curve_client`); which keys
they use and who is admitted is :mod:`fabric.transport.security`'s job.

Socket monitors report a closed TCP connection as soon as the kernel does, which is how a
killed peer is noticed within milliseconds instead of at the next heartbeat.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any, Final

import zmq
from zmq.utils import z85

__all__ = [
    "HANDSHAKE_EVENTS",
    "PART_SIZE",
    "Reader", "bind_in_range", "configure", "curve_client", "curve_server",
    "limit_inbound_parts", "new_context", "open_monitor", "split_frame",
]

# A data-plane frame longer than this crosses as a multipart message of parts this long
# (the last may be shorter), so that the ROUTER's MAXMSGSIZE, which every connection gets
# before it authenticates, can be small: what a stranger can make libzmq buffer before
# its handshake fails is one part, not one max_frame (docs/PROTOCOL.md section 2).
PART_SIZE: Final = 64 * 1024
# Room for CURVE's framing around a part (MESSAGE command, nonce, MAC) and for the
# handshake's commands, which are below 300 bytes.
_PART_SLACK: Final = 1024


def limit_inbound_parts(sock: zmq.Socket[Any], max_frame: int) -> None:
    """A socket that strangers can connect to (ROUTER, PUB): frames of one part at most,
    enforced by libzmq during and after ZeroMQ's handshake."""
    sock.setsockopt(zmq.MAXMSGSIZE, min(max_frame, PART_SIZE) + _PART_SLACK)


def split_frame(frame: bytes) -> list[memoryview]:
    """The parts a frame longer than :data:`PART_SIZE` is sent as."""
    view = memoryview(frame)
    return [view[i:i + PART_SIZE] for i in range(0, len(frame), PART_SIZE)]


# Monitor events of ZeroMQ's own handshake (CURVE, then ZAP) on a connection.
HANDSHAKE_FAILED_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                           | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                           | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
HANDSHAKE_EVENTS = HANDSHAKE_FAILED_EVENTS | zmq.EVENT_HANDSHAKE_SUCCEEDED


#: Environment variable: "0" keeps the I/O thread under the default policy (new_context).
IO_SCHED_BATCH_ENV: Final = "FABRIC_IO_SCHED_BATCH"


def new_context() -> zmq.Context[Any]:
    """The node's ZeroMQ context; on Linux its I/O thread runs under ``SCHED_BATCH``.

    Why (docs/DECISIONS.md D31): every send wakes the context's I/O thread, and the
    scheduler then often preempts the event loop's thread for it in the middle of its
    turn (wakeup preemption), on the CPU the loop was using, so the loop's own work
    (the rest of the turn, its next wakeup) waits behind the I/O thread's. A
    ``SCHED_BATCH`` thread still runs at once on an idle CPU but never preempts the
    thread that woke it. Measured in the same run, alternating (8 rounds, 2 shared
    cores): a GenServer call's p50 fell by 16-21%, with and without uvloop.

    Applied only when this thread runs under ``SCHED_OTHER`` (libzmq aborts if it
    cannot apply the policy, and a real-time priority inherited by the I/O thread would
    be invalid under ``SCHED_BATCH``); must be set before the first socket starts the
    I/O thread. ``FABRIC_IO_SCHED_BATCH=0`` in the environment leaves the default.
    """
    ctx: zmq.Context[Any] = zmq.Context()
    # Every socket of this context closes without lingering, including the ones that
    # configure() never sees (monitor pairs, ZAP): a context dropped without close (a node
    # never stopped) is then destroyed by the garbage collector without blocking on unsent
    # frames, instead of hanging the process wherever the collector happens to run.
    ctx.setsockopt(zmq.LINGER, 0)
    batch = getattr(os, "SCHED_BATCH", None)
    policy = getattr(zmq, "THREAD_SCHED_POLICY", None)
    if (batch is not None and policy is not None
            and os.environ.get(IO_SCHED_BATCH_ENV, "1") != "0"
            and os.sched_getscheduler(0) == os.SCHED_OTHER):
        ctx.set(policy, batch)
    return ctx


def configure(sock: zmq.Socket[Any], *, max_frame: int, sndhwm: int, rcvhwm: int) -> None:
    """Options every fabric socket gets: no linger on close, bounded frames and queues."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_frame)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    # Reconnect quickly after a drop; fabric decides when a peer is gone, not ZeroMQ.
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    # Keep a dead TCP peer from stalling traffic for minutes after a partition.
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 10)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 5)


def curve_server(sock: zmq.Socket[Any], secret: bytes, zap_domain: str) -> None:
    """Make ``sock`` a CURVE server with this raw secret key, vetted in ``zap_domain``."""
    sock.curve_secretkey = z85.encode(secret)
    sock.curve_server = True
    sock.zap_domain = zap_domain.encode()


def curve_client(sock: zmq.Socket[Any], server_secret: bytes, client_secret: bytes) -> None:
    """Make ``sock`` a CURVE client of the servers keyed with ``server_secret``."""
    client_secret_z85 = z85.encode(client_secret)
    sock.curve_serverkey = zmq.curve_public(z85.encode(server_secret))
    sock.curve_publickey = zmq.curve_public(client_secret_z85)
    sock.curve_secretkey = client_secret_z85


def bind_in_range(sock: zmq.Socket[Any], host: str, lo: int, hi: int, *,
                  from_top: bool = False) -> int:
    """Bind ``sock`` to the first free port in ``[lo, hi]`` (the last with ``from_top``);
    returns it.

    Raises:
        zmq.ZMQError: no port in the range is free.
    """
    last: zmq.ZMQError | None = None
    h = f"[{host}]" if ":" in host else host
    for port in (range(hi, lo - 1, -1) if from_top else range(lo, hi + 1)):
        try:
            sock.bind(f"tcp://{h}:{port}")
            return port
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE:
                raise
            last = exc
    assert last is not None
    raise last


def open_monitor(ctx: zmq.Context[Any], sock: zmq.Socket[Any], events: int) -> zmq.Socket[Any]:
    """A PAIR socket receiving ``sock``'s monitor events (see ``zmq.utils.monitor``)."""
    mon = sock.get_monitor_socket(events)
    mon.setsockopt(zmq.LINGER, 0)
    return mon


class Reader:
    """Calls ``on_ready(sock)`` whenever ``sock`` may be readable, on the event loop.

    ``on_ready`` reads what it can and returns True if more may be waiting (it stopped on
    a budget), False once it has seen the socket without ``POLLIN``: ZeroMQ's descriptor
    is edge-triggered, so it may only stop on that evidence. Whoever sends on the socket
    must check ``EVENTS`` afterwards (or call :meth:`poke`): a send can consume the edge.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: zmq.Socket[Any],
        on_ready: Callable[[zmq.Socket[Any]], bool],
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._on_ready = on_ready
        self._scheduled = False
        self._closed = False
        self._fd: int = sock.getsockopt(zmq.FD)  # type: ignore[assignment]
        loop.add_reader(self._fd, self._wake)
        self.poke()  # input may already be queued: the edge could be gone

    def poke(self) -> None:
        """Re-check readiness soon (call after sending on the socket)."""
        if not self._scheduled and not self._closed:
            self._scheduled = True
            self._loop.call_soon(self._run)

    def _wake(self) -> None:
        # Called by the selector: read now rather than one loop iteration later (a
        # round trip pays this twice), unless a read is already scheduled.
        if not self._scheduled:
            self._run()

    def _run(self) -> None:
        self._scheduled = False
        if self._closed:
            return
        try:
            if self._on_ready(self._sock):
                self.poke()
        except zmq.ZMQError as exc:
            if exc.errno not in (zmq.ENOTSOCK, zmq.ETERM):
                raise

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self._fd)
