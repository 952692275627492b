"""The socket reactor: reads the node's sockets and hands what they carry to its owners.

Theory of operation
-------------------
Each socket has a :class:`~fabric.transport.zeromq.Reader` that calls one of these
methods when the socket may be readable (ZeroMQ's descriptor is edge-triggered: a method
returns False only after it saw no input, True when it stopped early and wants to run
again). The ROUTER carries every peer's batches (:meth:`Reactor.on_router`, then
:meth:`Reactor.dispatch` by message kind to the mailboxes, the signals, the service
host or the mesh core); each DEALER carries the handshake replies of its session
(:meth:`Reactor.on_channel`) and has a monitor socket for connect and disconnect events
(:meth:`Reactor.on_monitor`); the SUBs carry heartbeats and service topics
(:meth:`Reactor.on_sub`). Everything read is bounded per wakeup (frames, messages and
time), so a flood cannot starve the heartbeats, and bad input is counted and dropped,
never raised (:meth:`Reactor.bad`). The reactor also answers strangers on the ROUTER
(the mesh core's ``RouterSend``), since it owns that socket's reader.

It owns no protocol state: only the readers and the ROUTER's draining flag.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
import zmq
from zmq.utils.monitor import parse_monitor_message

from fabric.errors import RemoteProtocolError
from fabric.node.channels import Channel
from fabric.node.effects import EffectExecutor
from fabric.node.mailboxes import Mailboxes
from fabric.node.metrics import Metrics
from fabric.node.refusals import TransportRefusals
from fabric.node.services import ServiceHost
from fabric.node.signals import Signals
from fabric.node.sockets import Sockets
from fabric.protocol import mesh as m
from fabric.protocol.codec import Codec
from fabric.protocol.flow import FLOW_OPS
from fabric.protocol.messages import (
    HEARTBEAT_TOPIC,
    K_CALL,
    K_CTRL,
    K_REG_SEND,
    K_REPLY,
    K_SEND,
    K_SEND_TUPLE,
    K_SERVICE,
    MESH_KINDS,
    decode_heartbeat,
)
from fabric.transport.zeromq import HANDSHAKE_FAILED_EVENTS, PART_SIZE, Reader

__all__ = ["Reactor"]

_MAX_READS = 512  # frames handled per wakeup before yielding to other callbacks
# Messages dispatched per wakeup: a frame is a batch of up to 1024 messages, so a frame
# budget alone would let a flood hold the loop for seconds and starve the heartbeats.
_MAX_MESSAGES = 2048
# And a time budget per wakeup, whatever a message costs (one pg broadcast is delivered
# to every local member): other callbacks, heartbeats among them, run in between.
_MAX_BUSY = 0.005
_MAX_HANDSHAKE_FRAME = 4096  # bytes; the largest frame decoded from an unknown identity
_EVENTS = int(zmq.EVENTS)  # plain ints: the enum members cost a Python-level conversion
_POLLIN = int(zmq.POLLIN)
_RCVMORE = int(zmq.RCVMORE)
# Parts of an over-long message dropped per wakeup (each is freed as it is read).
_MAX_DISCARDS = 16384


class Reactor:
    """Reads the node's sockets; see the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sockets: Sockets, mesh: m.MeshCore,
                 codec: Codec, executor: EffectExecutor, metrics: Metrics,
                 log: structlog.typing.FilteringBoundLogger, mailboxes: Mailboxes,
                 signals: Signals, services: ServiceHost,
                 refusals: TransportRefusals) -> None:
        self.loop = loop
        self._sockets = sockets
        self.mesh = mesh
        self.codec = codec
        self._run_effects = executor.run
        self.metrics = metrics
        self._traffic = metrics.traffic  # per-peer batches in (on_router)
        self.log = log
        self._deliver_remote = mailboxes.deliver_remote  # under the mailbox bound
        self._deliver_remote_name = mailboxes.deliver_remote_name
        self._on_flow = mailboxes.on_notice
        self._on_service_message = services.on_message
        self._on_topic = services.on_topic_message
        self._on_ctrl = signals.on_ctrl
        self._on_call = signals.on_call
        self._on_reply = signals.on_reply
        self._bad_input_logged = 0.0
        self._router_draining = False  # the ROUTER reader yielded after a batch: see on_router
        self._router_discarding = False  # dropping the rest of an over-long message
        self._refusals = refusals
        self._router_reader = Reader(loop, sockets.router, self.on_router)
        self._router_monitor_reader = Reader(loop, sockets.router_monitor,
                                             self.on_router_monitor)
        self._sub_reader = Reader(loop, sockets.sub, self.on_sub)
        self._hb_reader = Reader(loop, sockets.hb_sub, self.on_sub)
        executor.register(m.RouterSend, self._on_router_send)

    def close(self) -> None:
        """Stop reading the node's fixed sockets (the channels close their own)."""
        self._router_reader.close()
        self._router_monitor_reader.close()
        self._sub_reader.close()
        self._hb_reader.close()

    def read_heartbeats(self) -> None:
        """Drain the heartbeat SUB now (before the failure detector judges peers)."""
        self.on_sub(self._sockets.hb_sub)

    def _on_router_send(self, service: str, eff: m.RouterSend) -> None:
        try:
            self._sockets.router.send_multipart([eff.identity, self.codec.encode(eff.frame)],
                                                zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # peer gone or full: a refusal is best effort
        self._router_reader.poke()

    def on_router(self, sock: zmq.Socket[Any]) -> bool:
        """Read peers' frames on the ROUTER: handshakes from strangers, batches from
        authenticated peers (see ARCHITECTURE.md section 4)."""
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
            # Part by part, never recv_multipart: a message is the identity and a frame,
            # the frame in parts if it is long; a message that breaks the rules is dropped
            # as it is read, never collected (MAXMSGSIZE bounds parts, not their number).
            if not sock.getsockopt(_RCVMORE):
                self.bad("router_frame_count")
                continue
            peer = mesh.peer_of(identity)
            if peer is None:  # a stranger: where from bounds its handshakes (mesh core)
                part = sock.recv(zmq.NOBLOCK, copy=False)
                data, source = part.bytes, _peer_address(part)
            else:
                data = sock.recv(zmq.NOBLOCK)
            if sock.getsockopt(_RCVMORE):
                joined = self._rest_of_frame(sock, data, peer is not None)
                if joined is None:
                    if self._router_discarding:
                        return True
                    continue
                data = joined
            if peer is None and len(data) > _MAX_HANDSHAKE_FRAME:
                # Handshake frames are tiny: never spend a full decode on a stranger.
                self.bad("oversized_stranger_frame", size=len(data))
                continue
            try:
                value = self.codec.decode(data)
            except RemoteProtocolError as exc:
                self.bad("undecodable", error=str(exc), peer=peer)
                continue
            if peer is None:
                self._run_effects(mesh.router_frame(identity, value, now, source))
                continue
            mesh.heard(peer, now)
            if type(value) is not list:
                self.bad("not_a_batch", peer=peer)
                continue
            budget -= len(value)
            traffic = self._traffic.get(peer) or self.metrics.received_from(peer)
            traffic.batches_in += 1  # per batch, never per message: the hot path
            traffic.messages_in += len(value)
            traffic.bytes_in += len(data)
            self.dispatch(peer, value, now)
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
        """Join a frame sent in parts: every part but the last is exactly PART_SIZE
        bytes, and the whole at most max_frame. Otherwise, or from an identity that did
        not authenticate (its handshake frames are tiny), the rest of the message is
        dropped and None returned."""
        parts = [first]
        max_frame = self.codec.max_frame
        while True:
            # parts[-1] has a successor: it must be a full part, with room after it.
            if not authenticated or len(parts[-1]) != PART_SIZE \
                    or len(parts) * PART_SIZE >= max_frame:
                self.bad("bad_frame_parts", parts=len(parts))
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

    def on_router_monitor(self, mon: zmq.Socket[Any]) -> bool:
        """Count ZeroMQ handshakes that failed at our ROUTER: wrong keys, refused keys,
        protocol errors, stalls past ``HANDSHAKE_IVL``."""
        for _ in range(_MAX_READS):
            if not mon.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
                return False
            event = parse_monitor_message(mon.recv_multipart(zmq.NOBLOCK))["event"]
            if event & HANDSHAKE_FAILED_EVENTS:
                self._refusals.router_failed()
        return True

    def dispatch(self, peer: str, batch: list[Any], now: float) -> None:
        """Hand each message of an authenticated peer's batch to its owner, in order."""
        deliver = self._deliver_remote
        for msg in batch:
            if type(msg) is not list:
                self.metrics.not_a_message += 1
                self.bad("not_a_message", peer=peer)
                continue
            try:
                kind = msg[0]
                if kind == K_SEND_TUPLE:
                    deliver(peer, msg[1], tuple(msg[2:]))
                elif kind == K_SEND:
                    deliver(peer, msg[1], msg[2])
                elif kind == K_REG_SEND:
                    self._deliver_remote_name(peer, msg[1], msg[2])
                elif kind == K_SERVICE:
                    self._on_service_message(peer, msg[1], msg[2], now)
                elif kind == K_CTRL:
                    if msg[1] in FLOW_OPS:  # busy/room: mailbox flow control (D23)
                        self._on_flow(peer, msg)
                    else:
                        self._on_ctrl(peer, msg)
                elif kind == K_REPLY:
                    self._on_reply(msg)
                elif kind == K_CALL:
                    self._on_call(peer, msg)
                elif type(kind) is int and kind in MESH_KINDS:
                    self._run_effects(self.mesh.control(peer, msg, now))
                else:
                    self.metrics.unknown_kind += 1
                    self.bad("unknown_kind", peer=peer, kind=repr(kind)[:20])
            except (AttributeError, IndexError, TypeError, KeyError, ValueError) as exc:
                self.bad("bad_message", peer=peer, error=repr(exc)[:200])

    def on_channel(self, ch: Channel, sock: zmq.Socket[Any]) -> bool:
        """Read handshake replies on the DEALER of channel ``ch``."""
        peer = ch.peer
        for _ in range(_MAX_READS):
            if not sock.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
                return False
            data = sock.recv(zmq.NOBLOCK)
            try:
                value = self.codec.decode(data)
            except RemoteProtocolError as exc:
                self.bad("undecodable", error=str(exc), peer=peer)
                continue
            self._run_effects(self.mesh.channel_frame(peer, value, self.loop.time()))
            if ch.closed:
                return False  # the channel was replaced or closed by that frame
        return True

    def on_monitor(self, ch: Channel, mon: zmq.Socket[Any]) -> bool:
        """Read the socket-monitor events of channel ``ch``'s DEALER."""
        for _ in range(64):
            if not mon.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
                return False
            msg = parse_monitor_message(mon.recv_multipart(zmq.NOBLOCK))
            if ch.closed:
                return False
            event = msg["event"]
            now = self.loop.time()
            if event == zmq.EVENT_CONNECTED:
                ch.connected = True
            elif event & HANDSHAKE_FAILED_EVENTS:
                # ZeroMQ's handshake (CURVE, ZAP) failed: fail the connect now with the
                # reason, instead of waiting for the handshake timeout.
                # Attributed to the peer this DEALER dialled (and, when it is the
                # dial-back of a session we accepted, told to that peer).
                reason = self._refusals.channel_failed(event)
                self._run_effects(self.mesh.transport_refused(ch.peer, reason, now))
            elif event == zmq.EVENT_DISCONNECTED:
                self._run_effects(self.mesh.channel_closed(ch.peer, now))
            elif event == zmq.EVENT_CONNECT_RETRIED and not ch.connected:
                self._run_effects(self.mesh.channel_refused(ch.peer, now))
        return True

    def on_sub(self, sock: zmq.Socket[Any]) -> bool:
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
                self.bad("sub_frame_count")
                continue
            topic, data = frames
            if topic == HEARTBEAT_TOPIC:
                try:
                    name, creation = decode_heartbeat(data)
                except ValueError:
                    self.bad("bad_heartbeat")
                else:
                    self.mesh.heartbeat(name, creation, now)
            else:
                self._on_topic(topic, data, now)
        return True

    def bad(self, what: str, **fields: Any) -> None:
        """Count bad input; log it at most once a second (an attacker controls the rate)."""
        self.metrics.bad_input += 1
        t = time.monotonic()
        if t - self._bad_input_logged >= 1.0:
            self._bad_input_logged = t
            self.log.warning("bad_input", what=what, total=self.metrics.bad_input, **fields)


def _peer_address(part: zmq.Frame) -> str:
    """The address a message part came from (ZeroMQ's ``Peer-Address``), or ""."""
    try:
        return str(part.get("Peer-Address"))
    except (zmq.ZMQError, ValueError):
        return ""
