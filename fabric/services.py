"""Hosting service cores (pg, global, ...) on a node: the generic effect executor.

Theory of operation
-------------------
A service core (:class:`fabric.protocol.service.ServiceCore`) only talks to the same
service on other nodes. The host feeds it node up/down, its messages (``[K_SERVICE,
service, payload]`` on the ordered mesh stream), its timers and local process exits, and
executes what it returns: sends, local deliveries, PUB/SUB publishes and subscriptions,
timers, completions of requests the runtime is waiting for, logs. A service may teach the
host an effect type of its own with :meth:`ServiceHost.on_effect`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import zmq

from fabric.errors import ConfigError, RemoteProtocolError
from fabric.protocol.effects import (
    CancelTimer,
    Complete,
    Deliver,
    DeliverMany,
    Effect,
    Publish,
    Reply,
    Send,
    SetTimer,
    Subscribe,
    Unsubscribe,
)
from fabric.protocol.messages import K_SERVICE
from fabric.protocol.service import ServiceCore, reply_of

__all__ = ["ServiceHost"]


class ServiceHost:
    """Mixin of :class:`fabric.Node`: runs service cores. Not used on its own."""

    # provided by Node / ProcessRuntime
    loop: asyncio.AbstractEventLoop
    metrics: dict[str, int]
    mesh: Any
    codec: Any
    pub: Any
    sub: Any
    _channels: dict[str, Any]

    def __init__(self) -> None:
        self._services: dict[str, ServiceCore] = {}  # service name -> its core
        # PUB/SUB topic prefix -> handler(topic, data, now)
        self._topic_handlers: dict[bytes, Callable[[bytes, bytes, float], None]] = {}
        self._timers: dict[tuple[str, Any], asyncio.TimerHandle] = {}  # (service, key)
        self._completions: dict[Any, asyncio.Future[Any]] = {}  # token -> waiting future
        # effect types a service taught the host -> handler(service, effect)
        self._effect_handlers: dict[type, Callable[[str, Any], None]] = {}

    def _deliver_pid(self, pid: Any, message: Any) -> None:
        raise NotImplementedError  # provided by ProcessRuntime

    def _exec(self, effects: list[Any]) -> None:
        raise NotImplementedError  # provided by Node

    # -- services -------------------------------------------------------------------------

    def add_service(self, core: ServiceCore) -> None:
        """Host a service core (pg, global, ...) on this node."""
        if core.service in self._services:
            raise ConfigError(f"service {core.service!r} is already running")
        self._services[core.service] = core
        prefix = core.topic_prefix
        if prefix is not None:
            # Publications under the core's declared prefix go to its on_publish, decoded.
            def on_publish(topic: bytes, data: bytes, now: float) -> None:
                try:
                    payload = self.codec.decode(data)
                except RemoteProtocolError:
                    self.metrics["bad_publish"] = self.metrics.get("bad_publish", 0) + 1
                    return
                self._exec_service(core.service, core.on_publish(payload, now))

            self._topic_handlers[prefix] = on_publish
        now = self.loop.time()
        for peer in self.mesh.nodes() + self.mesh.hidden_nodes():
            self._exec_service(core.service, core.on_nodeup(peer, now))

    def service(self, name: str) -> Any:
        return self._services[name]

    def on_topic(self, prefix: bytes, handler: Callable[[bytes, bytes, float], None]) -> None:
        """Route PUB/SUB messages whose topic starts with ``prefix`` to ``handler``."""
        self._topic_handlers[prefix] = handler

    def on_effect(self, effect_type: type, handler: Callable[[str, Any], None]) -> None:
        """Teach the node a service-specific effect type."""
        self._effect_handlers[effect_type] = handler

    def expect(self, token: Any) -> asyncio.Future[Any]:
        """A future resolved by a service's ``Complete(token, result)`` effect."""
        fut: asyncio.Future[Any] = self.loop.create_future()
        self._completions[token] = fut
        return fut

    def run_service(self, service: str, effects: list[Effect]) -> Any:
        """Execute the effects that a facade got from its core's API method (called with
        ``now = node.loop.time()``); returns the value of their ``Reply``, else None."""
        self._exec_service(service, effects)
        return reply_of(effects)

    def _on_service_message(self, peer: str, service: str, payload: Any, now: float) -> None:
        core = self._services.get(service)
        if core is None:
            self.metrics["undeliverable"] += 1
            return
        self._exec_service(service, core.on_message(peer, payload, now))

    def _on_topic(self, topic: bytes, data: bytes, now: float) -> None:
        self.metrics["topic_in"] = self.metrics.get("topic_in", 0) + 1
        for prefix, handler in self._topic_handlers.items():
            if topic.startswith(prefix):
                handler(topic, data, now)
                return

    def _exec_service_effect(self, eff: Any) -> None:
        raise TypeError(f"node cannot execute {eff!r}")

    def _exec_service(self, service: str, effects: list[Any]) -> None:
        for eff in effects:
            t = type(eff)
            if t is Send:
                if self.mesh.is_up(eff.peer):
                    self._channels[eff.peer].out.push_control([K_SERVICE, service, eff.payload])
            elif t is DeliverMany:
                deliver, message = self._deliver_pid, eff.message
                for pid in eff.pids:
                    deliver(pid, message)
            elif t is Deliver:
                self._deliver_pid(eff.pid, eff.message)
            elif t is Publish:
                try:
                    self.pub.send_multipart([eff.topic, self.codec.encode(eff.payload)])
                except Exception:
                    self.metrics["publish_dropped"] = self.metrics.get("publish_dropped", 0) + 1
            elif t is Subscribe:
                self.sub.setsockopt(zmq.SUBSCRIBE, eff.topic)
            elif t is Unsubscribe:
                self.sub.setsockopt(zmq.UNSUBSCRIBE, eff.topic)
            elif t is SetTimer:
                key = (service, eff.key)
                old = self._timers.pop(key, None)
                if old is not None:
                    old.cancel()
                self._timers[key] = self.loop.call_at(
                    eff.at, self._fire_timer, service, eff.key)
            elif t is CancelTimer:
                old = self._timers.pop((service, eff.key), None)
                if old is not None:
                    old.cancel()
            elif t is Complete:
                fut = self._completions.pop(eff.token, None)
                if fut is not None and not fut.done():
                    fut.set_result(eff.result)
            elif t is Reply:
                pass  # the caller's answer: run_service returns it
            elif t in self._effect_handlers:
                self._effect_handlers[t](service, eff)
            else:
                self._exec([eff])

    def _fire_timer(self, service: str, key: Any) -> None:
        self._timers.pop((service, key), None)
        core = self._services.get(service)
        if core is not None:
            self._exec_service(service, core.on_timer(key, self.loop.time()))
