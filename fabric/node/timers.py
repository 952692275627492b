"""Timers that send a message later: Erlang's ``send_after`` and ``cancel_timer``.

Theory of operation
-------------------
``node.send_after(dest, message, delay)`` (or ``proc.send_after``) schedules one plain
send on the node's event loop and returns a :class:`~fabric.types.Ref` naming the timer,
as ``erlang:send_after/3`` returns a timer reference. When it fires, the message goes
exactly as ``node.send(dest, message)`` would: to a pid, a local name, ``(name, node)`` or
a ``GlobalName``, resolved *then*; a dead or unknown destination drops it silently, as in
Erlang. A send refused at that moment (a full mailbox, a full buffer to the peer) cannot
be reported to anybody: it is logged (``timer_message_dropped``) and counted
``undeliverable``.

``cancel_timer(ref)`` returns the seconds that were left (>= 0.0), or None when the timer
already fired, was cancelled, or never existed on this node (Erlang's ``false``); after it
returns, the message will not be sent. ``read_timer(ref)`` tells the seconds left without
cancelling. Timers belong to the node, not to a process (unlike Erlang, a timer whose
destination is a pid is not cancelled when that process ends: the message is then simply
dropped); they are all cancelled when the node stops.

The one object here, :class:`Timers`, owns the table from ref to the loop's timer handle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fabric.errors import BackpressureError, LocalProtocolError
from fabric.node.metrics import Metrics
from fabric.types import Ref

__all__ = ["Timers"]


class Timers:
    """The node's message timers (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, send: Callable[[Any, Any], None],
                 make_ref: Callable[[], Ref], log: Any, metrics: Metrics) -> None:
        self._loop = loop
        self._send = send
        self._make_ref = make_ref
        self._log = log
        self._metrics = metrics
        # ref -> (the loop's handle, the delay asked for: what is left never exceeds it,
        # though the float ``(now + delay) - now`` can round above it)
        self._pending: dict[Ref, tuple[asyncio.TimerHandle, float]] = {}

    def send_after(self, dest: Any, message: Any, delay: float) -> Ref:
        """Send ``message`` to ``dest`` in ``delay`` seconds; the timer's ref.

        Raises:
            LocalProtocolError: ``delay`` is negative.
        """
        if delay < 0:
            raise LocalProtocolError(f"send_after: negative delay {delay!r}")
        ref = self._make_ref()
        self._pending[ref] = (self._loop.call_later(delay, self._fire, ref, dest, message),
                              delay)
        return ref

    def cancel(self, ref: Ref) -> float | None:
        """Cancel the timer ``ref``: the seconds it had left, None if it is not pending."""
        timer = self._pending.pop(ref, None)
        if timer is None:
            return None
        timer[0].cancel()
        return self._left(timer)

    def read(self, ref: Ref) -> float | None:
        """Seconds left before ``ref`` fires, None if it is not pending."""
        timer = self._pending.get(ref)
        return None if timer is None else self._left(timer)

    def pending(self) -> int:
        """How many timers have not fired yet."""
        return len(self._pending)

    def close(self) -> None:
        """Cancel every timer (the node stops)."""
        for handle, _ in self._pending.values():
            handle.cancel()
        self._pending.clear()

    def _left(self, timer: tuple[asyncio.TimerHandle, float]) -> float:
        handle, delay = timer
        return min(delay, max(0.0, handle.when() - self._loop.time()))

    def _fire(self, ref: Ref, dest: Any, message: Any) -> None:
        self._pending.pop(ref, None)
        try:
            self._send(dest, message)
        except (BackpressureError, LocalProtocolError) as exc:
            self._metrics.undeliverable += 1
            self._log.warning("timer_message_dropped", dest=repr(dest), error=repr(exc))
