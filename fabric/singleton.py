"""Cluster singletons: exactly one instance of a named service in the cluster.

Theory of operation
-------------------
Start a :class:`Singleton` with the same name on every node that may host the service
(and, with ``server=None``, on nodes that only call it)::

    class Scheduler(fabric.SingletonServer):
        async def init(self, state=None):        # state: what the previous instance
            self.jobs = state or []              # handed over (None on a fresh start)

        async def handoff(self):                 # called when it moves gracefully
            return self.jobs

        async def handle_call(self, request, from_): ...

    scheduler = await Singleton(node, "scheduler", Scheduler).start()
    await scheduler.call(("add", job))           # wherever it runs now

Where it runs is decided by :class:`~fabric.protocol.singleton.SingletonCore` (sans-I/O:
placement on the oldest candidate, failover, hand-over, the split-brain policy; its
docstring has the rules). This module is the runtime around one core per node and name:

* a **manager process**, registered locally as ``"$singleton:<name>"``, that exchanges
  the core's messages with the managers of the same name on other nodes, feeds it the
  node's ``nodeup``/``nodedown`` events and a tick, and carries out its effects;
* the **instance**, a :class:`SingletonServer` (a GenServer) started with
  ``init(state, *args)``, monitored by the manager, and registered as the global name
  ``("$singleton", name)`` (so ``fabric.GlobalName(("$singleton", name))`` reaches it,
  and two instances after a heal are settled by ``global``'s resolver: the loser gets
  a :class:`~fabric.GlobalNameConflict` event and its manager stops it);
* a **graceful stop** of the instance is a GenServer stop request queued behind the
  calls already in its mailbox: those are answered, then ``terminate`` calls
  :meth:`SingletonServer.handoff` and the state goes to the successor. Calls that arrive
  after the stop request are not served: their monitor fires with the hand-over reason;
* a **drain hook** (:meth:`fabric.Node.on_drain`): when the node stops gracefully, the
  instance is handed over before the node says goodbye;
* the **caller's side**, :meth:`Singleton.call`: it sends to the instance this node knows
  of, and when there is none (a hand-over, a failover) or the call was refused before
  any instance served it (its node was draining, the instance had stopped for a
  hand-over), it waits for the next instance and calls it, within the call's timeout.
  A call whose outcome is unknown (the host died during it) raises, unless
  ``retry_unsure=True``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from fabric.calls import STOP, call
from fabric.errors import (
    BackpressureError,
    CallTimeout,
    NodeDownError,
    NodeDrainingError,
    OutcomeUnknown,
    ProcessDeadError,
    ReceiveTimeout,
)
from fabric.genserver import GenServer
from fabric.node import NodeDown
from fabric.process import Down, Process
from fabric.protocol.events import GlobalNameConflict
from fabric.protocol.singleton import (
    Age,
    HostChanged,
    SendPeer,
    SingletonCore,
    SplitBrainPolicy,
    StartInstance,
    StopInstance,
)
from fabric.timeouts import CALL_TIMEOUT
from fabric.types import Pid

if TYPE_CHECKING:
    from fabric.node import Node

__all__ = ["Singleton", "SingletonServer"]

HANDOVER_TAG: Final = "$singleton_stop"  # an instance's stop reason: (tag, to, token, want, why)
STATE_TAG: Final = "$singleton_state"  # (tag, token, state): what handoff() returned
PEER_TAG: Final = "$singleton"  # (tag, sender node, core message) between managers
_TICK: Final = 0.05
_NAME_TRIES: Final = 10  # a global registration answered "no" is retried this often...
_NAME_RETRY: Final = 0.1  # ... this many seconds apart before the name counts as lost


class SingletonServer(GenServer):
    """The base class of a singleton's instance: a GenServer whose :meth:`init` gets the
    state the previous instance handed over (None on a fresh start) before the
    :class:`Singleton`'s extra arguments, and whose :meth:`handoff` gives that state.

    If you override :meth:`terminate`, call ``await super().terminate(reason)`` first:
    the hand-over happens there. When its manager stops it, the reason is a tuple whose
    last item says why: ``"handover"`` (it moves), ``"leaving"`` (its node drains),
    ``"split_brain"`` (this side of a partition may not run it) or ``"conflict"`` (after
    a heal another instance kept the name; a :class:`~fabric.GlobalNameConflict` was
    delivered to it before, and is ignored by :meth:`handle_info` here).
    """

    async def init(self, state: Any = None, *args: Any) -> None:
        """Set the instance up from ``state`` (None: a fresh start)."""

    async def handoff(self) -> Any:
        """The state to hand to the next instance when this one moves gracefully."""
        return None

    async def terminate(self, reason: Any) -> None:
        if type(reason) is tuple and len(reason) == 5 and reason[0] == HANDOVER_TAG:
            _, reply_to, token, want_state, _why = reason
            state = await self.handoff() if want_state else None
            self.node.send(reply_to, (STATE_TAG, token, state))

    async def handle_info(self, message: Any) -> None:
        if type(message) is GlobalNameConflict:
            return  # the manager stops the instance that lost the name
        await super().handle_info(message)


def _not_served(reason: Any) -> bool:
    """A call's monitor fired with ``reason``: was the request surely not served?"""
    return reason == "noproc" or (type(reason) is tuple and len(reason) == 5
                                  and reason[0] == HANDOVER_TAG)


class Singleton:
    """One node's part of the singleton ``name`` (see the module docstring).

    Args:
        node: a started node.
        name: the singleton's name (a string), the same on every node.
        server: the instance's class; None: this node never hosts it, it only calls it.
        *args: more arguments for the instance's ``init`` (after the state).
        policy: the split-brain policy (default keep-majority: never two at once).
        margin: seconds the view must be stable before an instance starts after a
            change that may be a partition (default: the node's heartbeat timeout plus
            two heartbeat intervals).
        min_members: candidates that must be reachable for it to run at all.
        rank: placement rule ``rank(node_name, age)`` (smallest hosts); default oldest.
        handover_timeout: seconds a graceful stop of the instance may take before it is
            killed (its state is then lost).
    """

    def __init__(self, node: Node, name: str, server: type[SingletonServer] | None,
                 *args: Any, policy: SplitBrainPolicy | None = None,
                 margin: float | None = None, min_members: int = 1,
                 rank: Callable[[str, Age], Any] | None = None,
                 handover_timeout: float = 5.0) -> None:
        self.node = node
        self.name = name
        self._server = server
        self._args = args
        self._handover_timeout = handover_timeout
        cfg = node.config
        self.core = SingletonCore(
            node.name, (time.time(), node.name), node.loop.time(),
            policy=policy, min_members=min_members, candidate=server is not None,
            rank=rank, margin=(cfg.heartbeat_timeout + 2 * cfg.heartbeat_interval
                               if margin is None else margin))
        self.local_name = f"$singleton:{name}"
        self.global_name: tuple[str, str] = ("$singleton", name)
        self._manager: Pid | None = None
        self._instance: Pid | None = None
        self._instance_ref: Any = None
        self._stopping = False  # a StopInstance is being carried out
        self._registered: Pid | None = None  # the instance that holds the global name
        self._changed = asyncio.Event()
        self._remove_hook: Callable[[], None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> Singleton:
        """Start this node's manager; returns self."""
        node = self.node
        events = node.monitor_nodes()
        self._manager = node.spawn(self._manage, name=self.local_name)
        self._spawn(self._pump(events))
        for peer in node.nodes():
            self._apply(self.core.nodeup(peer, node.loop.time()))
        self._remove_hook = node.on_drain(self._drain)
        return self

    async def stop(self, timeout: float = 10.0) -> None:
        """Leave: hand the instance over (if it runs here) and stop this node's manager."""
        if self._remove_hook is not None:
            self._remove_hook()
        await asyncio.wait_for(self._drain(), timeout)
        if self._manager is not None:
            self.node.exit(self._manager, "kill")
        for task in self._tasks:
            task.cancel()

    # -- the caller's side ----------------------------------------------------------------

    def host(self) -> Pid | None:
        """The instance's pid as this node knows it, or None (none runs, or it moves)."""
        return self.core.host()

    async def wait_for_host(self, timeout: float | None = CALL_TIMEOUT, *,
                            other_than: Pid | None = None) -> Pid:
        """Wait until an instance (other than ``other_than``) is known; its pid.

        Raises:
            CallTimeout: none within ``timeout``.
        """
        loop = self.node.loop
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            pid = self.core.host()
            if pid is not None and pid != other_than:
                return pid
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise CallTimeout(f"no instance of singleton {self.name!r} within {timeout} s")
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def call(self, request: Any, timeout: float | None = CALL_TIMEOUT, *,
                   retry_unsure: bool = False) -> Any:
        """GenServer-call the instance, wherever it runs; wait through a hand-over.

        Args:
            retry_unsure: also retry a call whose host died during it (it may then have
                been served twice).

        Raises:
            CallTimeout: no instance answered within ``timeout``.
            NodeDownError: the host died during the call (unless ``retry_unsure``).
            ProcessDeadError: the instance crashed during the call.
            RemoteError: its ``handle_call`` raised.
        """
        loop = self.node.loop
        deadline = None if timeout is None else loop.time() + timeout
        refused: Pid | None = None
        while True:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            pid = await self.wait_for_host(left, other_than=refused)
            left = None if deadline is None else max(0.0, deadline - loop.time())
            if pid.node != self.node.name and not self.node.mesh.is_up(pid.node):
                # Its session is gone (the nodedown is on its way): a call would try to
                # reconnect to a dead node first. Wait for the next instance instead.
                refused = pid
                continue
            try:
                return await call(self.node, pid, request, timeout=left)
            except NodeDrainingError:
                refused = pid  # refused unseen: its node hands the instance over
            except ProcessDeadError as exc:
                if not _not_served(exc.reason):
                    raise
                refused = pid
            except NodeDownError:
                if not retry_unsure:
                    raise
                refused = pid

    # -- the manager ----------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = self.node.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pump(self, events: Any) -> None:
        """Node events into the core (ends when the node stops)."""
        async for event in events:
            now = self.node.loop.time()
            if isinstance(event, NodeDown):
                self._apply(self.core.nodedown(event.node, event.reason, now))
            else:
                self._apply(self.core.nodeup(event.node, now))

    async def _manage(self, proc: Process) -> None:
        loop = self.node.loop
        next_tick = loop.time() + _TICK
        while True:
            try:
                msg = await proc.receive(timeout=max(0.0, next_tick - loop.time()))
            except ReceiveTimeout:
                msg = None
            now = loop.time()
            if type(msg) is tuple and len(msg) == 3 and msg[0] == PEER_TAG:
                try:
                    self._apply(self.core.on_message(msg[1], msg[2], now))
                except ValueError as exc:
                    self.node.log.warning("singleton_bad_message", singleton=self.name,
                                          peer=msg[1], error=str(exc))
            elif type(msg) is Down and msg.ref == self._instance_ref:
                self._instance_ended()
            if now >= next_tick:
                next_tick = now + _TICK
                self._check_name()
                self._apply(self.core.tick(now))

    def _apply(self, effects: list[Any]) -> None:
        for effect in effects:
            t = type(effect)
            if t is SendPeer:
                try:
                    self.node.send((self.local_name, effect.node),
                                   (PEER_TAG, self.node.name, effect.message))
                except BackpressureError:
                    self.node.log.warning("singleton_send_refused", singleton=self.name,
                                          peer=effect.node)
            elif t is HostChanged:
                self._changed.set()
                self._changed = asyncio.Event()
            elif t is StartInstance:
                self._spawn(self._start_instance(effect.state))
            elif t is StopInstance:
                self._stopping = True
                self._spawn(self._stop_instance(effect))

    async def _start_instance(self, state: Any) -> None:
        assert self._server is not None and self._manager is not None
        node = self.node
        try:
            pid = await self._server.start(node, state, *self._args)
        except Exception as exc:
            node.log.error("singleton_start_failed", singleton=self.name, error=repr(exc))
            self._apply(self.core.instance_ended(node.loop.time()))
            return
        manager = node.processes.get(self._manager)
        if manager is None:  # the manager is gone (the node stops): so is the instance
            node.exit(pid, "kill")
            return
        self._instance = pid
        self._instance_ref = manager.monitor(pid)
        node.log.info("singleton_started", singleton=self.name, pid=repr(pid))
        self._apply(self.core.instance_started(pid, node.loop.time()))
        self._spawn(self._register_name(pid))

    def _instance_ended(self) -> None:
        """The instance ended by itself (a crash): unless a stop is under way, which
        reports its own outcome."""
        self._instance = self._instance_ref = self._registered = None
        if not self._stopping:
            self._apply(self.core.instance_ended(self.node.loop.time()))

    async def _stop_instance(self, effect: StopInstance) -> None:
        node = self.node
        pid = self._instance
        state: Any = None
        if pid is not None:
            state = await self._stop_gracefully(pid, effect)
        self._instance = self._instance_ref = self._registered = None
        self._stopping = False
        node.log.info("singleton_stopped", singleton=self.name, reason=effect.reason,
                      handover_to=effect.handover_to)
        now = node.loop.time()
        if effect.handover_to is not None:
            self._apply(self.core.handed_off(effect.handover_to, state, now))
        else:
            self._apply(self.core.instance_ended(now))

    async def _stop_gracefully(self, pid: Pid, effect: StopInstance) -> Any:
        """Queue a stop behind the instance's calls; its handed-over state (or None)."""
        node = self.node
        box = node.new_mailbox()
        try:
            token = node.make_ref()
            ref = box.monitor(pid)
            reason = (HANDOVER_TAG, box.self, token, effect.handover_to is not None,
                      effect.reason)
            node.send(pid, (STOP, reason))
            state: Any = None
            deadline = node.loop.time() + self._handover_timeout
            while True:
                left = deadline - node.loop.time()
                try:
                    msg = await box.receive(timeout=max(0.0, left))
                except ReceiveTimeout:
                    node.log.warning("singleton_stop_timeout", singleton=self.name)
                    node.exit(pid, "kill")
                    return None
                if type(msg) is tuple and len(msg) == 3 and msg[0] == STATE_TAG \
                        and msg[1] == token:
                    state = msg[2]
                elif type(msg) is Down and msg.ref == ref:
                    return state
        finally:
            node.close_mailbox(box)

    async def _register_name(self, pid: Pid) -> None:
        """Take the global name for ``pid``; retried while it runs (a name the previous
        instance's node has not released yet), then counted lost."""
        glob = self.node.global_
        for _ in range(_NAME_TRIES):
            if self._instance != pid:
                return
            try:
                if await glob.register_name(self.global_name, pid, wait_all=False) == "yes":
                    self._registered = pid
                    return
            except (OutcomeUnknown, ProcessDeadError):
                pass
            except Exception as exc:  # the instance ended meanwhile, most likely
                self.node.log.info("singleton_name_not_taken", singleton=self.name,
                                   error=repr(exc))
                return
            await asyncio.sleep(_NAME_RETRY)
        if self._instance == pid:
            self._apply(self.core.name_lost(self.node.loop.time()))

    def _check_name(self) -> None:
        """After a heal, ``global``'s resolver may give the name to another instance."""
        pid = self._registered
        if pid is None or pid != self._instance or self.node.draining:
            return
        if self.node.global_.whereis_name(self.global_name) != pid:
            self._registered = None
            self._apply(self.core.name_lost(self.node.loop.time()))

    async def _drain(self) -> None:
        """The drain hook: hand the instance over, say ``leaving``, wait until done."""
        self._apply(self.core.drain(self.node.loop.time()))
        while not self.core.drained:
            await asyncio.sleep(0.005)
