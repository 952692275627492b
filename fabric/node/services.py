"""Hosting service cores (pg, global, ...) on a node.

Theory of operation
-------------------
A service core (:class:`fabric.protocol.service.ServiceCore`) only talks to the same
service on other nodes. The host feeds it node up/down, its messages (``[K_SERVICE,
service, payload]`` on the ordered mesh stream), its timers and local process exits, and
has the node's :class:`~fabric.node.effects.EffectExecutor` run what it returns. The host
itself runs the effects that belong to a service: ``Send`` (on the peer's channel, as
``K_SERVICE``), ``SetTimer`` / ``CancelTimer`` (keyed by service), ``Complete`` (resolves
a future from :meth:`ServiceHost.expect`). Deliveries, publishes and logs are run by their
owners through the same executor. A service may teach the node an effect type of its own
(:meth:`ServiceHost.on_effect`); it goes into the executor's table. A core that declares a
``topic_prefix`` gets the PUB/SUB publications under it, decoded, in its ``on_publish``
(one that does not decode is counted as ``bad_publish``). A facade calls its core's typed
methods and hands the effects to :meth:`run_service`, which runs them and returns the value
of their ``Reply`` (the answer to the local caller).

Entry points for service facades (``fabric/pg.py``, ``fabric/global_.py``):
:meth:`add_service`, :meth:`run_service`, :meth:`execute`, :meth:`on_topic`,
:meth:`on_effect`, :meth:`expect`, :meth:`service`.

Services every node runs (pg as ``node.pg``, global as ``node.global_``) are injected:
their facade module calls :func:`standard_service` when it is imported, and the node
creates each registered facade as it starts, by rank. The node never
imports a facade (D26): the facades depend on the node, not the reverse.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from fabric.errors import ConfigError, RemoteProtocolError
from fabric.node.effects import EffectExecutor
from fabric.node.metrics import Metrics
from fabric.protocol.codec import Codec
from fabric.protocol.effects import CancelTimer, Complete, Effect, Reply, Send, SetTimer
from fabric.protocol.mesh import MeshCore
from fabric.protocol.messages import K_SERVICE
from fabric.protocol.service import ServiceCore, reply_of

__all__ = ["ServiceHost", "standard_service", "standard_services"]

TopicHandler = Callable[[bytes, bytes, float], None]

# node attribute -> (rank, facade factory(node)): see the module docstring
_STANDARD: dict[str, tuple[int, Callable[[Any], Any]]] = {}


def standard_service(attribute: str, factory: Callable[[Any], Any], rank: int) -> None:
    """Run ``factory(node)`` on every node as it starts, as ``node.<attribute>``; lower
    ranks first (the order in which the services are hosted, whatever the import order)."""
    _STANDARD[attribute] = (rank, factory)


def standard_services() -> list[tuple[str, Callable[[Any], Any]]]:
    """The registered services, by rank."""
    return [(attr, factory) for attr, (_, factory)
            in sorted(_STANDARD.items(), key=lambda item: item[1][0])]


class ServiceHost:
    """The service cores of one node, their topics, timers and completions."""

    def __init__(self, loop: asyncio.AbstractEventLoop, mesh: MeshCore,
                 channels: dict[str, Any], executor: EffectExecutor,
                 metrics: Metrics, codec: Codec) -> None:
        self.loop = loop
        self._codec = codec
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
        executor.register(Reply, self._on_reply)

    # -- entry points for service facades -------------------------------------------------

    def add_service(self, core: ServiceCore) -> None:
        """Host a service core (pg, global, ...) on this node."""
        if core.service in self._services:
            raise ConfigError(f"service {core.service!r} is already running")
        self._services[core.service] = core
        prefix = core.topic_prefix
        if prefix is not None:
            self._topic_handlers[prefix] = self._publication_handler(core)
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
        """A future resolved by a service's ``Complete(token, result)`` effect.

        If the waiter gives up first (the future is cancelled, or a facade fails it with
        a timeout), the token is forgotten here, so a completion that never comes holds
        nothing; every facade's timeout gets this without a path of its own."""
        fut: asyncio.Future[Any] = self.loop.create_future()
        self._completions[token] = fut
        fut.add_done_callback(functools.partial(self._given_up, token))
        return fut

    def awaiting(self) -> int:
        """How many tokens wait for their ``Complete`` (observability, tests)."""
        return len(self._completions)

    def _given_up(self, token: Any, fut: asyncio.Future[Any]) -> None:
        if self._completions.get(token) is fut:  # not completed: _on_complete pops first
            del self._completions[token]

    def run_service(self, service: str, effects: list[Effect]) -> Any:
        """Execute the effects that a facade got from its core's API method (called with
        ``now = node.loop.time()``); returns the value of their ``Reply``, else None."""
        self._run(effects, service)
        return reply_of(effects)

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

    def _publication_handler(self, core: ServiceCore) -> TopicHandler:
        """Publications under ``core``'s declared prefix go to its ``on_publish``, decoded."""
        def on_publish(topic: bytes, data: bytes, now: float) -> None:
            try:
                payload = self._codec.decode(data)
            except RemoteProtocolError:
                self._metrics.bad_publish += 1
                return
            self._run(core.on_publish(payload, now), core.service)

        return on_publish

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

    def _on_reply(self, service: str, eff: Reply) -> None:
        pass  # the local caller's answer: run_service returns it

    def _fire_timer(self, service: str, key: Any) -> None:
        self._timers.pop((service, key), None)
        core = self._services.get(service)
        if core is not None:
            self._run(core.on_timer(key, self.loop.time()), service)
