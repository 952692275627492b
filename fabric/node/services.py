"""Hosting service cores (pg, global, ...) on a node.

Theory of operation
-------------------
A service core (:class:`fabric.protocol.effects.ServiceCore`) only talks to the same
service on other nodes. The host feeds it node up/down, its messages (``[K_SERVICE,
service, payload]`` on the ordered mesh stream), its timers and local process exits, and
has the node's :class:`~fabric.node.effects.EffectExecutor` run what it returns. The host
itself runs the effects that belong to a service: ``Send`` (on the peer's channel, as
``K_SERVICE``), ``SetTimer`` / ``CancelTimer`` (keyed by service), ``Complete`` (resolves
a future from :meth:`ServiceHost.expect`). Deliveries, publishes and logs are run by their
owners through the same executor. A service may teach the node an effect type of its own
(:meth:`ServiceHost.on_effect`); it goes into the executor's table.

Entry points for service facades (``fabric/pg.py``, ``fabric/global_.py``):
:meth:`add_service`, :meth:`run_service`, :meth:`execute`, :meth:`on_topic`,
:meth:`on_effect`, :meth:`expect`, :meth:`service`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fabric.errors import ConfigError
from fabric.node.effects import EffectExecutor
from fabric.node.metrics import Metrics
from fabric.protocol.effects import CancelTimer, Complete, Send, ServiceCore, SetTimer
from fabric.protocol.mesh import MeshCore
from fabric.protocol.messages import K_SERVICE

__all__ = ["ServiceHost"]

TopicHandler = Callable[[bytes, bytes, float], None]


class ServiceHost:
    """The service cores of one node, their topics, timers and completions."""

    def __init__(self, loop: asyncio.AbstractEventLoop, mesh: MeshCore,
                 channels: dict[str, Any], executor: EffectExecutor,
                 metrics: Metrics) -> None:
        self.loop = loop
        self._mesh = mesh
        self._channels = channels  # peer -> Channel (the channels' own dict, read only)
        self._executor = executor
        self._run = executor.run
        self._metrics = metrics
        self._services: dict[str, ServiceCore] = {}  # service name -> its core
        # PUB/SUB topic prefix -> handler(topic, data, now)
        self._topic_handlers: dict[bytes, TopicHandler] = {}
        self._timers: dict[tuple[str, Any], asyncio.TimerHandle] = {}  # (service, key)
        self._completions: dict[Any, asyncio.Future[Any]] = {}  # token -> waiting future
        executor.register(Send, self._on_send)
        executor.register(SetTimer, self._on_set_timer)
        executor.register(CancelTimer, self._on_cancel_timer)
        executor.register(Complete, self._on_complete)

    # -- entry points for service facades -------------------------------------------------

    def add_service(self, core: ServiceCore) -> None:
        """Host a service core (pg, global, ...) on this node."""
        if core.service in self._services:
            raise ConfigError(f"service {core.service!r} is already running")
        self._services[core.service] = core
        now = self.loop.time()
        for peer in self._mesh.nodes() + self._mesh.hidden_nodes():
            self._run(core.on_nodeup(peer, now), core.service)

    def service(self, name: str) -> Any:
        return self._services[name]

    def on_topic(self, prefix: bytes, handler: TopicHandler) -> None:
        """Route PUB/SUB messages whose topic starts with ``prefix`` to ``handler``."""
        self._topic_handlers[prefix] = handler

    def on_effect(self, effect_type: type, handler: Callable[[str, Any], None]) -> None:
        """Teach the node a service-specific effect type: ``handler(service, effect)``."""
        self._executor.register(effect_type, handler, replace=True)

    def expect(self, token: Any) -> asyncio.Future[Any]:
        """A future resolved by a service's ``Complete(token, result)`` effect."""
        fut: asyncio.Future[Any] = self.loop.create_future()
        self._completions[token] = fut
        return fut

    def run_service(self, service: str, method: str, *args: Any) -> Any:
        """Call ``core.method(*args, now)`` and execute its effects; returns the value of
        a ``(value, effects)`` result, else None."""
        result = getattr(self._services[service], method)(*args, self.loop.time())
        if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], list):
            self._run(result[1], service)
            return result[0]
        self._run(result, service)
        return None

    def execute(self, service: str, effects: list[Any]) -> None:
        """Run ``effects`` that ``service``'s core returned."""
        self._run(effects, service)

    # -- inputs from the node -------------------------------------------------------------

    def on_message(self, peer: str, service: str, payload: Any, now: float) -> None:
        """A ``K_SERVICE`` message from ``peer``."""
        core = self._services.get(service)
        if core is None:
            self._metrics.undeliverable += 1
            return
        self._run(core.on_message(peer, payload, now), service)

    def on_topic_message(self, topic: bytes, data: bytes, now: float) -> None:
        """A PUB/SUB message other than a heartbeat."""
        self._metrics.topic_in += 1
        for prefix, handler in self._topic_handlers.items():
            if topic.startswith(prefix):
                handler(topic, data, now)
                return

    def nodeup(self, peer: str) -> None:
        now = self.loop.time()
        for core in list(self._services.values()):
            self._run(core.on_nodeup(peer, now), core.service)

    def nodedown(self, peer: str, reason: str) -> None:
        now = self.loop.time()
        for core in list(self._services.values()):
            self._run(core.on_nodedown(peer, reason, now), core.service)

    def process_exited(self, pid: Any, reason: Any) -> None:
        now = self.loop.time()
        for core in list(self._services.values()):
            self._run(core.on_process_exit(pid, reason, now), core.service)

    # -- effects --------------------------------------------------------------------------

    def _on_send(self, service: str, eff: Send) -> None:
        if self._mesh.is_up(eff.peer):
            self._channels[eff.peer].out.push_control([K_SERVICE, service, eff.payload])

    def _on_set_timer(self, service: str, eff: SetTimer) -> None:
        key = (service, eff.key)
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        self._timers[key] = self.loop.call_at(eff.at, self._fire_timer, service, eff.key)

    def _on_cancel_timer(self, service: str, eff: CancelTimer) -> None:
        old = self._timers.pop((service, eff.key), None)
        if old is not None:
            old.cancel()

    def _on_complete(self, service: str, eff: Complete) -> None:
        fut = self._completions.pop(eff.token, None)
        if fut is not None and not fut.done():
            fut.set_result(eff.result)

    def _fire_timer(self, service: str, key: Any) -> None:
        self._timers.pop((service, key), None)
        core = self._services.get(service)
        if core is not None:
            self._run(core.on_timer(key, self.loop.time()), service)
