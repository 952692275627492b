"""fabric.lowlevel: what service authors need beyond the public API (as ``trio.lowlevel``).

Theory of operation
-------------------
The public API (``fabric``, ``Node``'s methods, docs/API.md) is what applications use and
what fabric promises to keep. A *service* (process groups, global names, replicated data,
a cache: anything that runs a sans-I/O core on every node and talks to its peers) needs
more: to host its core on a node, run the effects its core returns, wait for a
completion, read a peer's session state or encode a message as the wire will. Those
hooks live here, as functions of a node, so that ``Node`` itself shows applications only
their API. ``fabric/pg.py``, ``fabric/global_.py``, ``fabric/ddata.py``,
``fabric/registry.py`` and ``fabric/cache.py`` are written against this module and
nothing below it.

A service is built in three parts:

* a core that satisfies :class:`ServiceCore` (``fabric/protocol/service.py``): pure
  inputs that return lists of effects (:mod:`fabric.protocol.effects`, re-exported here);
* a facade that calls :func:`add_service` once, then for each API call gets effects from
  a core method (called with ``now(node)``) and hands them to :func:`run_service`, which
  returns the value of their ``Reply``; an answer that needs other nodes is a
  ``Complete(token, result)`` awaited with :func:`expect` (register the future *before*
  running the effects that may complete it);
* optionally, effect types of its own, taught to the node with :func:`on_effect`.

The node's objects (:func:`mesh`, :func:`codec`, :func:`sockets`) are for reading state
and for tools (``fabric status``, benchmarks, tests); ARCHITECTURE.md section 8 lists the
methods of each that code outside ``fabric/node/`` may call. This interface is documented
and tested, but it may change between minor releases where the public API would not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fabric.protocol import effects as _effects
from fabric.protocol.effects import *  # noqa: F403  (the effects are part of this interface)
from fabric.protocol.effects import Effect
from fabric.protocol.service import ServiceCore

if TYPE_CHECKING:
    from fabric.node import Node
    from fabric.node.sockets import Sockets
    from fabric.protocol.codec import Codec
    from fabric.protocol.mesh import MeshCore

__all__ = [*_effects.__all__, "ServiceCore", "add_service", "codec", "expect", "mesh",
           "now", "on_effect", "on_topic", "run_service", "service", "sockets"]


# -- hosting a service core ---------------------------------------------------------------


def add_service(node: Node, core: ServiceCore) -> None:
    """Host ``core`` on the started ``node``: it gets nodeups, nodedowns, its messages,
    the publications under its ``topic_prefix``, its timers and local process exits.

    Raises:
        ConfigError: a service of that name already runs there.
    """
    node.services.add_service(core)


def service(node: Node, name: str) -> Any:
    """The core hosted on ``node`` as ``name`` (KeyError if none)."""
    return node.services.service(name)


def run_service(node: Node, service: str, effects: list[Effect]) -> Any:
    """Execute the effects a facade got from its core's API method (called with
    :func:`now`); returns the value of their ``Reply`` effect, else None."""
    return node.services.run_service(service, effects)


def expect(node: Node, token: Any) -> asyncio.Future[Any]:
    """A future that the ``Complete(token, result)`` effect of a service resolves."""
    return node.services.expect(token)


def on_topic(node: Node, prefix: bytes, handler: Any) -> None:
    """Route PUB/SUB messages whose topic starts with ``prefix`` to
    ``handler(topic, data, now)`` (a core with a ``topic_prefix`` needs none)."""
    node.services.on_topic(prefix, handler)


def on_effect(node: Node, effect_type: type, handler: Callable[[str, Any], None]) -> None:
    """Teach ``node`` a service-specific effect type: ``handler(service, effect)``."""
    node.services.on_effect(effect_type, handler)


def now(node: Node) -> float:
    """The node's clock (its event loop's time): the ``now`` a core's inputs take."""
    return node.loop.time()


# -- the node's objects, for reading ------------------------------------------------------


def mesh(node: Node) -> MeshCore:
    """The node's mesh core; read it through its queries only (``is_up``, ``knows``,
    ``nodes``, ``reconnecting``, ``stats``...: ARCHITECTURE.md section 8)."""
    return node.mesh


def codec(node: Node) -> Codec:
    """The node's wire codec (``encode``/``decode`` as the wire does, with its limits)."""
    return node.codec


def sockets(node: Node) -> Sockets:
    """The node's sockets: ``ctx``, ``router``, ``pub``, ``sub``, ``hb_sub``, ports."""
    return node.sockets
