"""The contract between a service core (pg, global, ...) and whatever hosts it.

Theory of operation
-------------------
A *service* is a sans-I/O core that only ever talks to the same service on other nodes.
Two hosts run service cores: the node (:mod:`fabric.services`, real sockets and the event
loop's clock) and :class:`fabric.testing.ServiceSim` (a scripted network and a virtual
clock). Both drive a core through :class:`ServiceCore` only, so a core needs nothing else
from its host and a host knows nothing of any particular core:

* **What a core declares.** Its ``service`` name (the ``service`` field of its mesh
  messages, one core per name per node), and its ``topic_prefix``: the PUB/SUB topic
  prefix its publications use, or None if it never publishes. The host routes every
  received publication whose topic starts with the prefix to the core's ``on_publish``
  (decoded) and never calls ``on_publish`` of a core that declares None.
* **What a core is fed.** Node up and down, its messages from peers (in order, between
  the peer's up and down), publications, its own timers (set and cancelled with the
  ``SetTimer``/``CancelTimer`` effects, keyed by the core; the host scopes keys per
  service) and local process exits.
* **One shape out.** Every input method, the ones above and the local API methods a
  facade calls (``join``, ``register_name``, ...), returns a ``list`` of effects
  (:mod:`fabric.protocol.effects`). An answer to the local caller is itself an effect,
  :class:`~fabric.protocol.effects.Reply`; an answer that comes later (a transaction
  across nodes) is a ``Complete(token, result)`` for a token the caller chose. Reads
  that change nothing (``whereis_name``, ``get_members``) are plain methods.

A facade (``node.pg``, ``node.global_``) calls its core's typed methods directly and
hands the effects to the host (``fabric.lowlevel.run_service(node, service, effects)``),
which executes them and returns the reply's value: no method names as strings, no guessing
at shapes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from fabric.protocol.effects import Effect, Reply
from fabric.types import Pid

__all__ = ["ServiceCore", "reply_of"]


class ServiceCore(Protocol):
    """What every service core is: a name, an optional topic prefix, and its inputs.

    ``peer`` is always a full node name. The host guarantees the ordering contract of the
    mesh: ``on_nodeup(peer)`` comes before any ``on_message`` from ``peer`` and
    ``on_nodedown(peer)`` after the last one; messages from one peer arrive in order.
    """

    @property
    def service(self) -> str:
        """The service's name: the same on every node, unique on one node."""

    @property
    def topic_prefix(self) -> bytes | None:
        """The topic prefix of this service's publications (None: it never publishes)."""

    def on_nodeup(self, peer: str, now: float) -> list[Effect]: ...

    def on_nodedown(self, peer: str, reason: str, now: float) -> list[Effect]: ...

    def on_message(self, peer: str, payload: Any, now: float) -> list[Effect]: ...

    def on_publish(self, payload: Any, now: float) -> list[Effect]:
        """A publication under ``topic_prefix`` from a peer (``payload`` decoded)."""

    def on_timer(self, key: Any, now: float) -> list[Effect]:
        """The timer ``key`` (from this core's ``SetTimer``) fired."""

    def on_process_exit(self, pid: Pid, reason: Any, now: float) -> list[Effect]: ...


def reply_of(effects: Iterable[Effect]) -> Any:
    """The value of the :class:`Reply` among ``effects``, or None if there is none."""
    for eff in effects:
        if type(eff) is Reply:
            return eff.value
    return None
