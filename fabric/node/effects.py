"""The node's one effect executor: a table from effect type to the object that runs it.

Theory of operation
-------------------
Every protocol core (the mesh core, pg, global, ...) returns a list of effects, frozen
dataclasses that say what should happen (open a channel, send to a peer, deliver to a
process, set a timer...). The node runs all of them through :meth:`EffectExecutor.run`,
which looks each effect's type up in one table and calls the handler that the owning
object registered when the node was wired (:mod:`fabric.node.node`): the channels run
``OpenChannel`` and ``Control``, the sockets ``Publish``, the process table ``Deliver``,
the service host ``SetTimer``, and so on. A type nobody registered is a bug in the node,
so it raises instead of being passed around.

Handlers take ``(service, effect)``: the name of the service whose core returned the
effect (``""`` for the mesh core), because some effects are scoped to their service (a
``Send`` travels as ``[K_SERVICE, service, payload]``, a timer fires back into its core).
A service may teach the node an effect type of its own (``node.on_effect``): it goes into
the same table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fabric.errors import ConfigError

__all__ = ["EffectExecutor", "Handler"]

Handler = Callable[[str, Any], None]
"""``handler(service, effect)``: runs one effect returned by ``service``'s core."""


class EffectExecutor:
    """Runs effects by type; see the module docstring."""

    def __init__(self) -> None:
        self._handlers: dict[type, Handler] = {}  # effect type -> who runs it

    def register(self, effect_type: type, handler: Handler, *, replace: bool = False) -> None:
        """Make ``handler`` run every effect of ``effect_type``.

        Raises:
            ConfigError: the type has a handler already (and ``replace`` is False).
        """
        if effect_type in self._handlers and not replace:
            raise ConfigError(f"effect type {effect_type.__name__} already has a handler")
        self._handlers[effect_type] = handler

    def handles(self, effect_type: type) -> bool:
        return effect_type in self._handlers

    def run(self, effects: Iterable[Any], service: str = "") -> None:
        """Run ``effects`` in order.

        Raises:
            TypeError: an effect of a type no object registered.
        """
        handlers = self._handlers
        for eff in effects:
            handler = handlers.get(type(eff))
            if handler is None:
                raise TypeError(f"node cannot execute {eff!r}")
            handler(service, eff)
