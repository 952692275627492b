"""The node's fixed sockets: the ZeroMQ context, the ROUTER, the PUB and the two SUBs.

Theory of operation
-------------------
:meth:`Sockets.bind` creates and binds them when the node starts (the ROUTER's port is
part of the node's name), and :meth:`Sockets.close` destroys the context, which closes
every socket of the node, the per-peer DEALERs included. This object also runs the effects
that write to the PUB/SUB plane: heartbeats (encoded by
:func:`fabric.protocol.messages.encode_heartbeat`), service publishes, SUB subscriptions
and the SUB connections to each UP peer's PUB. The ROUTER is read, and answered, by the
:class:`~fabric.node.reactor.Reactor`; the DEALERs belong to
:class:`~fabric.node.channels.Channels`.

Two SUB sockets, so two connections to each peer's PUB: heartbeats never queue behind a
backlog of group publishes (nor get dropped with them at the high-water mark).

Both planes are CURVE (DECISIONS D13, D18): :class:`~fabric.transport.security.
SocketSecurity` holds the keys and sets each socket up, and a
:class:`~fabric.transport.zap.ZapHandler`, bound before any socket can accept, admits a
client key or refuses it. The ROUTER and the PUB accept one part of at most 64 KiB per
frame (long frames cross in parts), and the ROUTER has a monitor that reports failed
ZeroMQ handshakes (read by the :class:`~fabric.node.reactor.Reactor`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import zmq

from fabric.config import NodeConfig
from fabric.errors import ConfigError
from fabric.node.effects import EffectExecutor
from fabric.node.metrics import Metrics
from fabric.protocol import mesh as m
from fabric.protocol.codec import Codec
from fabric.protocol.effects import Publish, Subscribe, Unsubscribe
from fabric.protocol.messages import HEARTBEAT_TOPIC, encode_heartbeat
from fabric.transport.security import SocketSecurity
from fabric.transport.zap import ZapHandler
from fabric.transport.zeromq import (
    HANDSHAKE_EVENTS,
    bind_in_range,
    configure,
    limit_inbound_parts,
    new_context,
    open_monitor,
)
from fabric.types import NodeName

__all__ = ["Sockets"]


class Sockets:
    """The context and the bound sockets of one node run."""

    def __init__(self, ctx: zmq.Context[Any], router: zmq.Socket[Any], pub: zmq.Socket[Any],
                 sub: zmq.Socket[Any], hb_sub: zmq.Socket[Any], port: int,
                 pub_port: int, security: SocketSecurity, zap: ZapHandler,
                 router_monitor: zmq.Socket[Any]) -> None:
        self.ctx = ctx
        self.security = security  # this node's CURVE keys and allowlist (node.security)
        self.zap = zap
        self.router_monitor = router_monitor  # failed ZeroMQ handshakes at the ROUTER
        self.router = router
        self.pub = pub
        self.sub = sub  # group publishes and other service topics
        self.hb_sub = hb_sub  # heartbeats only
        self.port = port  # the ROUTER's, in the node's name
        self.pub_port = pub_port  # announced in the handshake
        self._heartbeat = b""  # this run's heartbeat payload, encoded once

    @classmethod
    def bind(cls, requested: NodeName, config: NodeConfig, cookie: bytes,
             loop: asyncio.AbstractEventLoop,
             on_key_refused: Callable[[str, str], None]) -> Sockets:
        """Create the sockets, secure both planes and bind the ROUTER and the PUB.

        ``on_key_refused(domain, address)`` is called when the ZAP handler refuses a key.

        Raises:
            ConfigError: no free port, the address cannot be bound, or a key is invalid.
        """
        cfg = config
        ctx = new_context()  # I/O thread under SCHED_BATCH (D31)
        host = cfg.bind_host or requested.host
        opts = dict(max_frame=cfg.max_frame, sndhwm=cfg.sndhwm, rcvhwm=cfg.rcvhwm)
        # CURVE on both planes, vetted by a ZAP handler bound before any socket can
        # accept a connection (D13, D18).
        try:
            security = SocketSecurity(
                cookie, encrypt=cfg.encrypt_data_plane, secret_key=cfg.curve_secret_key,
                allowed_keys=cfg.curve_allowed_keys)
        except ConfigError:
            ctx.destroy(linger=0)
            raise
        zap = ZapHandler(loop, ctx, security.admits, on_key_refused)
        router = ctx.socket(zmq.ROUTER)
        configure(router, **opts)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        security.data_server(router, cfg.handshake_timeout)
        limit_inbound_parts(router, cfg.max_frame)
        router_monitor = open_monitor(ctx, router, HANDSHAKE_EVENTS)
        pub = ctx.socket(zmq.PUB)
        configure(pub, **opts)
        security.pub_server(pub)
        limit_inbound_parts(pub, cfg.max_frame)  # it only receives subscriptions
        sub = ctx.socket(zmq.SUB)
        configure(sub, **opts)
        hb_sub = ctx.socket(zmq.SUB)
        configure(hb_sub, **opts)
        security.pub_client(sub)
        security.pub_client(hb_sub)
        try:
            if requested.port is not None:
                port = bind_in_range(router, host, requested.port, requested.port)
            else:
                port = bind_in_range(router, host, *cfg.port_range)
            h = f"[{host}]" if ":" in host else host
            if cfg.pub_port:
                pub.bind(f"tcp://{h}:{cfg.pub_port}")
                pub_port = cfg.pub_port
            else:
                # From the range too (one firewall rule covers a node), taken from its top
                # while ROUTER ports are taken from its bottom (and named ports are usually
                # low ones), so the two rarely contend for a port.
                pub_port = bind_in_range(pub, host, *cfg.port_range, from_top=True)
        except zmq.ZMQError as exc:
            zap.close()  # its reader first: its socket closes with the context
            ctx.destroy(linger=0)
            raise ConfigError(f"cannot bind {requested} on {host}: {exc}") from None
        hb_sub.setsockopt(zmq.SUBSCRIBE, HEARTBEAT_TOPIC)
        return cls(ctx, router, pub, sub, hb_sub, port, pub_port, security, zap,
                   router_monitor)

    def attach(self, executor: EffectExecutor, metrics: Metrics, codec: Codec, name: str,
               creation: int) -> None:
        """Register the effects these sockets run (called once, by the node's wiring)."""
        self._heartbeat = encode_heartbeat(name, creation)
        self._metrics = metrics
        self._encode = codec.encode
        executor.register(m.SubConnect, self._sub_connect)
        executor.register(m.SubDisconnect, self._sub_disconnect)
        executor.register(m.PublishHeartbeat, self._publish_heartbeat)
        executor.register(Publish, self._publish)
        executor.register(Subscribe, self._subscribe)
        executor.register(Unsubscribe, self._unsubscribe)

    def close(self) -> None:
        """Close every socket of the node (DEALERs included), dropping what is queued."""
        self.zap.close()
        self.ctx.destroy(linger=0)

    # -- effects --------------------------------------------------------------------------

    def _sub_connect(self, service: str, eff: m.SubConnect) -> None:
        self.sub.connect(eff.endpoint)
        self.hb_sub.connect(eff.endpoint)

    def _sub_disconnect(self, service: str, eff: m.SubDisconnect) -> None:
        try:
            self.sub.disconnect(eff.endpoint)
            self.hb_sub.disconnect(eff.endpoint)
        except zmq.ZMQError:
            pass

    def _publish_heartbeat(self, service: str, eff: m.PublishHeartbeat) -> None:
        try:
            self.pub.send_multipart([HEARTBEAT_TOPIC, self._heartbeat], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # at the high-water mark: the next one is 0.2 s away

    def _publish(self, service: str, eff: Publish) -> None:
        try:
            self.pub.send_multipart([eff.topic, self._encode(eff.payload)])
        except Exception:
            self._metrics.publish_dropped += 1

    def _subscribe(self, service: str, eff: Subscribe) -> None:
        self.sub.setsockopt(zmq.SUBSCRIBE, eff.topic)

    def _unsubscribe(self, service: str, eff: Unsubscribe) -> None:
        self.sub.setsockopt(zmq.UNSUBSCRIBE, eff.topic)
