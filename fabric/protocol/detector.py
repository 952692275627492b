"""The failure detector: heartbeat silence turns into ``heartbeat_timeout``.

Theory of operation
-------------------
Every node publishes a heartbeat each ``interval`` seconds on its PUB socket; every frame
received from a peer (heartbeat or data) counts as a sign of life. ``tick(now)`` returns the
peers not heard from for ``timeout`` seconds. Like Erlang's net_ticktime, the timeout is
the knob between fast detection and false downs.

A detector must not blame peers for its own stalls. When this node itself was not
scheduled (a long GC, a SIGSTOP, an overloaded machine), its own ticks come late and every
peer looks silent although their heartbeats sit unread in the socket. So a tick that comes
more than ``timeout / 2`` after the previous one first grants every peer a fresh grace
period instead of judging it; the runtime also drains the heartbeat socket before it ticks.
"""

from __future__ import annotations

__all__ = ["FailureDetector"]


class FailureDetector:
    """Tracks when each peer was last heard from.

    Args:
        interval: the heartbeat period, seconds.
        timeout: silence after which a peer is reported, seconds.
    """

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        # peer name -> monotonic time of the last frame heard from it
        self._last_heard: dict[str, float] = {}
        # time of the previous tick, to notice our own stalls
        self._last_tick: float | None = None
        # when our next heartbeat is due
        self._next_beat = 0.0

    def watch(self, peer: str, now: float) -> None:
        """Start watching ``peer`` (its session just came up)."""
        self._last_heard[peer] = now

    def forget(self, peer: str) -> None:
        """Stop watching ``peer`` (its session ended)."""
        self._last_heard.pop(peer, None)

    def heard(self, peer: str, now: float) -> None:
        """``peer`` showed a sign of life."""
        if peer in self._last_heard:
            self._last_heard[peer] = now

    def beat_due(self, now: float) -> bool:
        """True when this node should publish a heartbeat now (and schedules the next)."""
        if now >= self._next_beat:
            self._next_beat = now + self.interval
            return True
        return False

    def tick(self, now: float) -> list[str]:
        """The peers whose silence exceeded the timeout; they are no longer watched."""
        last = self._last_tick
        self._last_tick = now
        if last is not None and now - last > self.timeout / 2:
            # We were stalled ourselves: judge nobody on evidence we could not read.
            for peer in self._last_heard:
                self._last_heard[peer] = max(self._last_heard[peer], now - self.interval)
            return []
        expired = [p for p, t in self._last_heard.items() if now - t > self.timeout]
        for peer in expired:
            del self._last_heard[peer]
        return expired

    def silence(self, peer: str, now: float) -> float | None:
        """Seconds since ``peer`` was last heard, or None if it is not watched."""
        t = self._last_heard.get(peer)
        return None if t is None else now - t
