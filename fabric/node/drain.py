"""A graceful drain: what ``node.stop()`` (and SIGTERM in ``fabric node``) does before it
says goodbye.

Theory of operation
-------------------
A node that stops while it serves loses the work in flight: a call that arrived a moment
before the stop used to fail with ``ProcessDeadError('shutdown')``, and peers kept
routing to names and groups that were about to vanish. :class:`Drain` runs, in order,
before the processes are ended:

1. **Refuse new work.** ``signals.draining`` is set: a call from another node gets the
   ``down`` of its monitor with reason ``"draining"`` (the caller raises
   :class:`~fabric.errors.NodeDrainingError`, a ``NodeDownError``: nothing was done,
   call elsewhere), a remote spawn is refused likewise. Local processes keep working
   (the hooks below need them); messages (``send``) are still delivered. Every local
   candidate of a leader election resigns (``global_.resign``): a leader that refuses
   work from other nodes is no leader, and resigning now lets the others elect a
   successor while this node is still connected, instead of after its goodbye. The node
   does not stand again (``global_.stand`` is ignored from here on).
2. **Hand-off hooks.** Each hook registered with ``on_drain(hook, handoff=True)`` runs,
   in registration order, while the node still holds its global names and pg
   memberships: a participant that moves its work with its state (a distributed
   supervisor's member) must do so before step 3, or the others would see it leave
   and start its work afresh elsewhere. Such a hook withdraws from routing itself.
3. **Stop being routed to.** Every global name a local process holds is unregistered
   (leader names excepted: the resignation of step 1 gives them up), and every pg
   membership of a local process is left, so peers' lookups stop returning this node.
4. **Finish the calls in flight.** It waits until every call that other nodes' processes
   made to local servers before step 1 has been answered
   (:meth:`~fabric.node.signals.Signals.calls_in_flight`), or the server is gone.
5. **Drain hooks.** Each other ``await hook()`` registered with :meth:`Node.on_drain
   <fabric.node.Node.on_drain>` runs, in registration order (singletons hand over). A
   hook that raises is logged and the drain goes on; hooks run while the node is fully
   connected.
6. **Wait for successors.** For each group this node led at step 1, it waits until
   a leader on another node is known, for at most ``SUCCESSOR_WAIT`` seconds (no other
   node may have a candidate: the wait must not cost every lone leader's stop the whole
   budget), so the goodbye does not interrupt the election.

All of it shares one budget, ``NodeConfig.stop_grace`` seconds; whatever is left at the
deadline is logged (``drain_incomplete``) and the stop goes on: processes are ended with
reason ``shutdown``, peers get the goodbye (``NodeDown(reason="shutdown")``), sockets
close. Calls made by local processes to local servers are not waited for (their callers
end with the node), but an application (``fabric.application``) stops its tree in
reverse start order in a step-5 hook, as OTP does: a process started after the servers
it calls is stopped before them.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fabric.protocol.leader import leader_name

if TYPE_CHECKING:
    from fabric.node import Node

__all__ = ["Drain", "DrainHook"]

DrainHook = Callable[[], Awaitable[None]]
"""An ``async def hook() -> None`` run by a graceful stop (see the module docstring)."""

_POLL = 0.005  # how often steps 4 and 6 look at the calls in flight, the leaders (seconds)
SUCCESSOR_WAIT = 1.0
"""Seconds step 6 waits at most for another node to lead a group this node led."""


class Drain:
    """The graceful drain of one node (``node.drain``); see the module docstring."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._hooks: list[DrainHook] = []
        self._handoff_hooks: list[DrainHook] = []  # step 2, before the names and groups go
        self.started = False  # True from step 1 on: the node refuses new work
        self.done = False  # True once the last step ended (or timed out)

    def add_hook(self, hook: DrainHook, handoff: bool = False) -> Callable[[], None]:
        """Run ``await hook()`` at step 5 (step 2 if ``handoff``); returns a function that
        removes it again."""
        hooks = self._handoff_hooks if handoff else self._hooks
        hooks.append(hook)

        def remove() -> None:
            if hook in hooks:
                hooks.remove(hook)

        return remove

    async def run(self, grace: float) -> bool:
        """Steps 1 to 5 within ``grace`` seconds; True if all finished in time."""
        node = self._node
        loop = node.loop
        deadline = loop.time() + grace
        self.started = True
        node.signals.draining = True
        node.log.info("drain_started", calls_in_flight=node.signals.calls_in_flight())
        led = self._resign_leaderships()
        complete = True
        for hook in list(self._handoff_hooks):
            complete = await self._run_hook(hook, deadline) and complete
        complete = await self._deregister(deadline) and complete
        while node.signals.calls_in_flight() and loop.time() < deadline:
            await asyncio.sleep(_POLL)
        left = node.signals.calls_in_flight()
        for hook in list(self._hooks):
            complete = await self._run_hook(hook, deadline) and complete
        await self._wait_for_successors(led, min(deadline, loop.time() + SUCCESSOR_WAIT))
        self.done = True
        if left or not complete:
            node.log.warning("drain_incomplete", calls_unanswered=left,
                             hooks_or_names_timed_out=not complete)
        else:
            node.log.info("drain_done")
        return complete and not left

    def _resign_leaderships(self) -> list[Any]:
        """Step 1's resignation of every local candidate; the groups this node led."""
        global_ = self._node.global_
        led = []
        for group in global_.leaders.groups():
            current = global_.leader(group)
            if current is not None and _is_local(self._node, current[0]):
                led.append(group)
            for pid in global_.leaders.candidates(group):
                global_.resign(group, pid)
        if led:
            self._node.log.info("drain_resigned_leadership", groups=led)
        return led

    async def _wait_for_successors(self, led: list[Any], until: float) -> None:
        node = self._node

        def led_elsewhere(group: Any) -> bool:
            current = node.global_.leader(group)
            return current is not None and not _is_local(node, current[0])

        while (not all(led_elsewhere(g) for g in led) and node.loop.time() < until
               and node.nodes()):
            await asyncio.sleep(_POLL)

    async def _deregister(self, deadline: float) -> bool:
        node = self._node
        for scope, group, pid in node.pg.core.local_memberships():
            node.pg.leave(group, pid, scope)
        names = [name for name in node.global_.registered_names()
                 if _is_local(node, node.global_.whereis_name(name))
                 and not _is_leader_name(name)]
        if not names:
            return True
        remaining = max(0.0, deadline - node.loop.time())
        results = await asyncio.gather(
            *(node.global_.unregister_name(name, timeout=remaining) for name in names),
            return_exceptions=True)
        return not any(isinstance(r, BaseException) for r in results)

    async def _run_hook(self, hook: DrainHook, deadline: float) -> bool:
        node = self._node
        remaining = max(0.0, deadline - node.loop.time())
        try:
            await asyncio.wait_for(hook(), remaining)
            return True
        except asyncio.TimeoutError:
            node.log.warning("drain_hook_timeout", hook=_name_of(hook))
        except Exception as exc:  # a hook's bug must not keep the node from stopping
            node.log.error("drain_hook_failed", hook=_name_of(hook), error=repr(exc),
                           traceback=traceback.format_exc())
        return False


def _is_local(node: Node, pid: Any) -> bool:
    return pid is not None and pid.node == node.name


def _is_leader_name(name: Any) -> bool:
    return type(name) is tuple and len(name) == 2 and name == leader_name(name[1])


def _name_of(hook: DrainHook) -> str:
    return getattr(hook, "__qualname__", None) or repr(hook)
