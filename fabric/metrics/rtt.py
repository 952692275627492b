"""Round-trip time to each peer, measured with the mesh's ping while metrics are on.

Theory of operation
-------------------
Heartbeats cannot give a round trip: each node publishes ``[name, creation]`` on its PUB
socket one way (PROTOCOL.md section 7), with no timestamp and no answer, so the failure
detector knows only when a peer was last heard (its *heartbeat age*). A round trip needs
a question and its answer, which the mesh already has: ``K_PING`` / ``K_PONG``
(:meth:`fabric.node.Node.ping`). The probe pings every peer with a session up once per
``interval`` (5 s by default, all peers concurrently) and keeps the last round trip of
each. A ping travels in the peer's ordered batch stream, so the figure includes queueing
behind data already sent to that peer: what a request would wait, which is the point.

The probe runs only while the Prometheus exporter does (off by default), as one asyncio
task on the node's loop; it only reads the node and calls its public ``ping``. A peer is
pinged only while its session is up (checked in the same loop step as the ping, which
would otherwise try to connect), and a peer that does not answer within the interval has
no round trip until it answers again.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from fabric.node import Node

__all__ = ["RTT_INTERVAL", "RttProbe"]

RTT_INTERVAL: Final = 5.0


class RttProbe:
    """Pings ``node``'s peers every ``interval`` seconds; :attr:`last` holds the results."""

    def __init__(self, node: Node, interval: float = RTT_INTERVAL) -> None:
        self.node = node
        self.interval = interval
        self.last: dict[str, float] = {}  # peer -> last round trip, seconds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start probing (on the node's loop)."""
        if self._task is None:
            self._task = self.node.loop.create_task(self._run(), name="fabric-rtt-probe")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def probe_once(self) -> None:
        """Ping every peer with a session up, concurrently; record who answered."""
        node = self.node
        peers = [*node.nodes(), *node.hidden_nodes()]
        results = await asyncio.gather(*(self._measure(p) for p in peers))
        for peer, rtt in zip(peers, results, strict=True):
            if rtt is None:
                self.last.pop(peer, None)
            else:
                self.last[peer] = rtt
        for gone in set(self.last) - set(peers):
            del self.last[gone]

    async def _measure(self, peer: str) -> float | None:
        node = self.node
        if node.stopped or not node.mesh.is_up(peer):
            return None  # stopping, or went down meanwhile (ping would reconnect)
        started = node.loop.time()
        answer = await node.ping(peer, timeout=self.interval)
        return node.loop.time() - started if answer == "pong" else None

    async def _run(self) -> None:
        while True:
            await self.probe_once()
            await asyncio.sleep(self.interval)
