"""The node's inputs: what its sockets deliver, read and handed to the cores and processes.

Theory of operation
-------------------
Each socket has a :class:`~fabric.transport.zeromq.Reader` that calls one of these
methods when the socket may be readable (ZeroMQ's descriptor is edge-triggered: a method
returns False only after it saw no input, True when it stopped early and wants to run
again). The ROUTER carries every peer's batches (``_on_router``, then ``_dispatch`` by
message kind); each DEALER carries the handshake replies of its session
(``_on_channel``) and has a monitor socket for connect and disconnect events
(``_on_monitor``); the SUBs carry heartbeats and group topics (``_on_sub``). Everything
read is bounded per wakeup (frames, messages and time), so a flood cannot starve the
heartbeats, and bad input is counted and dropped, never raised (``_bad``).

A mixin of :class:`fabric.node.Node`: the state it reads is the node's.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import msgpack
import structlog
import zmq
from zmq.utils.monitor import parse_monitor_message

from fabric.errors import RemoteProtocolError
from fabric.protocol.messages import (
    HEARTBEAT_TOPIC,
    K_CALL,
    K_CTRL,
    K_REG_SEND,
    K_REPLY,
    K_SEND,
    K_SEND_TUPLE,
    K_SERVICE,
)
from fabric.transport.security import SocketSecurity, handshake_failure
from fabric.transport.zeromq import HANDSHAKE_FAILED_EVENTS, PART_SIZE

if TYPE_CHECKING:
    from fabric.protocol.codec import Codec
    from fabric.protocol.mesh import MeshCore

__all__ = ["Inputs"]

_MAX_READS = 512  # frames handled per wakeup before yielding to other callbacks
# Messages dispatched per wakeup: a frame is a batch of up to 1024 messages, so a frame
# budget alone would let a flood hold the loop for seconds and starve the heartbeats.
_MAX_MESSAGES = 2048
# And a time budget per wakeup, whatever a message costs (one pg broadcast is delivered
# to every local member): other callbacks, heartbeats among them, run in between.
_MAX_BUSY = 0.005
_MAX_HANDSHAKE_FRAME = 4096
_EVENTS = int(zmq.EVENTS)  # plain ints: the enum members cost a Python-level conversion
_RCVMORE = int(zmq.RCVMORE)
# Parts of an over-long message dropped per wakeup (each is freed as it is read).
_MAX_DISCARDS = 16384
_POLLIN = int(zmq.POLLIN)  # bytes; the largest frame decoded from an unknown identity


class Inputs:
    """Mixin of :class:`fabric.node.Node`: reads its sockets. Not used on its own."""

    # provided by Node / ProcessRuntime
    loop: asyncio.AbstractEventLoop
    mesh: MeshCore
    codec: Codec
    log: structlog.typing.FilteringBoundLogger
    metrics: dict[str, int]
    _channels: dict[str, Any]
    _bad_input: int
    _bad_input_logged: float
    _router_draining: bool  # the ROUTER reader yielded after a batch: see _on_router
    # [transport hook] the ROUTER reader is dropping the rest of an over-long message
    _router_discarding: bool = False
    transport_refusals: dict[str, str]
    security: SocketSecurity

    if TYPE_CHECKING:
        def _exec(self, effects: list[Any]) -> None: ...
        def _deliver_pid(self, pid: Any, message: Any) -> None: ...
        def _deliver_name(self, name: Any, message: Any) -> None: ...
        def _on_service_message(self, peer: str, service: Any, payload: Any,
                                now: float) -> None: ...
        def _on_ctrl(self, peer: str, msg: list[Any]) -> None: ...
        def _on_call(self, peer: str, msg: list[Any]) -> None: ...
        def _on_reply(self, msg: list[Any]) -> None: ...
        def _on_topic(self, topic: bytes, data: bytes, now: float) -> None: ...

    def _on_router(self, sock: zmq.Socket[Any]) -> bool:
        mesh = self.mesh
        now = self.loop.time()
        budget = _MAX_MESSAGES
        clock = time.monotonic
        give_up = clock() + _MAX_BUSY
        if self._router_discarding and self._discard_parts(sock):
            return True
        for _ in range(_MAX_READS):
            if budget <= 0 or clock() > give_up:
                return True  # more may be waiting: the reader runs again next turn
            if self._router_draining:
                # Ask before reading: a read that finds nothing raises zmq.Again, which
                # costs twice the readiness check, and here it nearly always finds nothing.
                if not sock.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
                    self._router_draining = False
                    return False
                identity = sock.recv(zmq.NOBLOCK)
            else:
                # A fresh wakeup: input is all but certain (3 empty of 16,549 in the call
                # benchmark), so read without asking and spare the request that check.
                try:
                    identity = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    return False
            # [transport hook] Part by part, never recv_multipart: a message is the
            # identity and a frame, the frame in parts if it is long; a message that
            # breaks the rules is dropped as it is read, never collected (MAXMSGSIZE
            # bounds parts, not their number).
            if not sock.getsockopt(_RCVMORE):
                self._bad("router_frame_count")
                continue
            data = sock.recv(zmq.NOBLOCK)
            peer = mesh.authenticated.get(identity)
            if sock.getsockopt(_RCVMORE):
                joined = self._rest_of_frame(sock, data, peer is not None)
                if joined is None:
                    if self._router_discarding:
                        return True
                    continue
                data = joined
            if peer is None and len(data) > _MAX_HANDSHAKE_FRAME:
                # Handshake frames are tiny: never spend a full decode on a stranger.
                self._bad("oversized_stranger_frame", size=len(data))
                continue
            try:
                value = self.codec.decode(data)
            except RemoteProtocolError as exc:
                self._bad("undecodable", error=str(exc), peer=peer)
                continue
            if peer is None:
                self._exec(mesh.router_frame(identity, value, now))
                continue
            mesh.heard(peer, now)
            if type(value) is not list:
                self._bad("not_a_batch", peer=peer)
                continue
            budget -= len(value)
            self._dispatch(peer, value, now)
            if not self._router_draining:
                # Latency first: the processes this batch woke run in the next loop turn,
                # and the readiness check that usually finds nothing more would delay them
                # (a pyzmq EVENTS read costs microseconds). So yield now; the re-run the
                # Reader schedules looks again and drains whatever came meanwhile.
                self._router_draining = True
                return True
        return True

    def _rest_of_frame(self, sock: zmq.Socket[Any], first: bytes,
                       authenticated: bool) -> bytes | None:
        """[transport hook] Join a frame sent in parts: every part but the last is
        exactly PART_SIZE bytes, and the whole at most max_frame. Otherwise, or from an
        identity that did not authenticate (its handshake frames are tiny), the rest of
        the message is dropped and None returned."""
        parts = [first]
        max_frame = self.codec.max_frame
        while True:
            # parts[-1] has a successor: it must be a full part, with room after it.
            if not authenticated or len(parts[-1]) != PART_SIZE \
                    or len(parts) * PART_SIZE >= max_frame:
                self._bad("bad_frame_parts", parts=len(parts))
                self._discard_parts(sock)
                return None
            parts.append(sock.recv(zmq.NOBLOCK))
            if not sock.getsockopt(_RCVMORE):
                return b"".join(parts)

    def _discard_parts(self, sock: zmq.Socket[Any]) -> bool:
        """Drop the remaining parts of the message being read, a bounded number per call;
        True if some remain (call again before reading another message)."""
        for _ in range(_MAX_DISCARDS):
            sock.recv(zmq.NOBLOCK, copy=False)
            if not sock.getsockopt(_RCVMORE):
                self._router_discarding = False
                return False
        self._router_discarding = True
        return True

    def _dispatch(self, peer: str, batch: list[Any], now: float) -> None:
        deliver = self._deliver_pid
        for msg in batch:
            try:
                kind = msg[0]
                if kind == K_SEND_TUPLE:
                    deliver(msg[1], tuple(msg[2:]))
                elif kind == K_SEND:
                    deliver(msg[1], msg[2])
                elif kind == K_REG_SEND:
                    self._deliver_name(msg[1], msg[2])
                elif kind == K_SERVICE:
                    self._on_service_message(peer, msg[1], msg[2], now)
                elif kind == K_CTRL:
                    self._on_ctrl(peer, msg)
                elif kind == K_REPLY:
                    self._on_reply(msg)
                elif kind == K_CALL:
                    self._on_call(peer, msg)
                else:
                    self._exec(self.mesh.control(peer, msg, now))
            except (AttributeError, IndexError, TypeError, KeyError, ValueError) as exc:
                self._bad("bad_message", peer=peer, error=repr(exc)[:200])

    def _on_channel(self, peer: str, sock: zmq.Socket[Any]) -> bool:
        for _ in range(_MAX_READS):
            if not sock.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
                return False
            data = sock.recv(zmq.NOBLOCK)
            try:
                value = self.codec.decode(data)
            except RemoteProtocolError as exc:
                self._bad("undecodable", error=str(exc), peer=peer)
                continue
            self._exec(self.mesh.channel_frame(peer, value, self.loop.time()))
            if self._channels.get(peer) is None or self._channels[peer].sock is not sock:
                return False  # the channel was replaced or closed by that frame
        return True

    def _on_monitor(self, peer: str, sock: zmq.Socket[Any], mon: zmq.Socket[Any]) -> bool:
        for _ in range(64):
            if not mon.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
                return False
            msg = parse_monitor_message(mon.recv_multipart(zmq.NOBLOCK))
            ch = self._channels.get(peer)
            if ch is None or ch.sock is not sock:
                return False
            event = msg["event"]
            now = self.loop.time()
            if event == zmq.EVENT_CONNECTED:
                ch.connected = True
            elif event & HANDSHAKE_FAILED_EVENTS:
                # [transport hook] ZeroMQ's handshake (CURVE, ZAP) failed: fail the connect
                # now with the reason, instead of waiting for the handshake timeout.
                self.transport_refusals[peer] = handshake_failure(
                    event, self.security.encrypt)
                effects = self.mesh.channel_refused(peer, now)
                if not effects and self.mesh.is_up(peer):
                    # We accepted it, but it refuses our key as we dial back with BIND.
                    effects = self.mesh.disconnect(peer, now)
                self._exec(effects)
            elif event == zmq.EVENT_DISCONNECTED:
                self._exec(self.mesh.channel_closed(peer, now))
            elif event == zmq.EVENT_CONNECT_RETRIED and not ch.connected:
                self._exec(self.mesh.channel_refused(peer, now))
        return True

    def _on_router_monitor(self, mon: zmq.Socket[Any]) -> bool:
        """[transport hook] Count ZeroMQ handshakes that failed at our ROUTER: wrong
        keys, refused keys, protocol errors, stalls past ``HANDSHAKE_IVL``."""
        for _ in range(_MAX_READS):
            if not mon.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
                return False
            event = parse_monitor_message(mon.recv_multipart(zmq.NOBLOCK))["event"]
            if event & HANDSHAKE_FAILED_EVENTS:
                self.metrics["handshake_failed"] = self.metrics.get("handshake_failed", 0) + 1
        return True

    def _on_sub(self, sock: zmq.Socket[Any]) -> bool:
        now = self.loop.time()
        give_up = time.monotonic() + _MAX_BUSY
        for _ in range(_MAX_READS):
            if time.monotonic() > give_up:
                return True
            try:
                if not sock.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
                    return False
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                return False
            if len(frames) != 2:
                self._bad("sub_frame_count")
                continue
            topic, data = frames
            if topic == HEARTBEAT_TOPIC:
                try:
                    name, creation = msgpack.unpackb(data)
                    self.mesh.heartbeat(name, creation, now)
                except Exception:
                    self._bad("bad_heartbeat")
            else:
                self._on_topic(topic, data, now)
        return True

    def _bad(self, what: str, **fields: Any) -> None:
        """Count bad input; log it at most once a second (an attacker controls the rate)."""
        self._bad_input += 1
        self.metrics["bad_input"] = self._bad_input
        t = time.monotonic()
        if t - self._bad_input_logged >= 1.0:
            self._bad_input_logged = t
            self.log.warning("bad_input", what=what, total=self._bad_input, **fields)
