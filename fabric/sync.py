"""A blocking facade for scripts and the REPL: a node whose event loop runs on a thread.

Theory of operation
-------------------
A :class:`fabric.Node` is not thread-safe: only its event loop may touch it. A
:class:`SyncNode` starts a private event loop on a daemon thread, creates and starts the
node there, and turns every method into a blocking call by *marshalling* it onto that
loop: coroutines with :func:`asyncio.run_coroutine_threadsafe`, plain functions with
``loop.call_soon_threadsafe`` plus a :class:`concurrent.futures.Future` for the result.
The calling thread then waits for the result; exceptions are re-raised in the caller.
Even ``send`` is marshalled (its result is only "queued", a few microseconds later), so
it can report :class:`~fabric.errors.BackpressureError` like the async ``send``.

Processes spawned on a SyncNode run on its loop thread, as usual. Calling a blocking
method *from* that thread (inside a process) would wait for itself forever, so it raises
``RuntimeError`` instead: inside processes use the async API.

When to use which: async code (servers, anything with many concurrent operations) uses
``fabric.Node`` directly; scripts, notebooks, the REPL and tests of synchronous code use
``SyncNode``. Each blocking call costs a thread hop (tens of microseconds), so loops that
send many messages are better written as a process (``spawn``) or run with :meth:`run`.
See docs/SYNC.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any, Final, TypeVar

from fabric import calls, rpc
from fabric import loop as fabric_loop
from fabric.config import NodeConfig
from fabric.errors import FabricTimeout
from fabric.node import Node
from fabric.process import Process
from fabric.timeouts import CALL_TIMEOUT
from fabric.types import Answer, Pid, Ref

__all__ = ["SyncMailbox", "SyncNode"]

T = TypeVar("T")
_NO_DEFAULT: Final = object()


class SyncNode:
    """A fabric node driven by blocking calls; its loop runs on a background thread.

    Args:
        name: ``name@host:port``, or ``name@host`` to bind a port from the range.
        cookie: the shared secret (default: ``FABRIC_COOKIE`` or ``~/.fabric.cookie``).
        config: a :class:`~fabric.NodeConfig`; keyword ``options`` override its fields.
        start_timeout: seconds to wait for the node to start.

    Attributes:
        node: the underlying async :class:`~fabric.Node`; touch it only from its loop
            (inside processes, or through :meth:`run`).

    Raises:
        ConfigError: invalid name, cookie or option, or no port could be bound.

    Example::

        with fabric.SyncNode("script@127.0.0.1", cookie="secret") as node:
            node.connect("app@127.0.0.1:9100")
            print(node.call(("cache", "app@127.0.0.1:9100"), ("get", "k")))
    """

    def __init__(
        self,
        name: str,
        cookie: str | bytes | None = None,
        *,
        config: NodeConfig | None = None,
        start_timeout: float = 10.0,
        **options: Any,
    ) -> None:
        # uvloop when installed, as the node program (fabric.loop, D31): shorter calls.
        self._loop = fabric_loop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name=f"fabric-{name}", daemon=True)
        self._stopped = False
        self._thread.start()

        async def start() -> Node:
            node = Node(name, cookie, config=config, **options)
            await node.start()
            return node

        try:
            self.node: Node = self._wait(start(), start_timeout)
        except BaseException:
            self._close_loop()
            raise

    # -- plumbing -------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The node's event loop (running on the background thread)."""
        return self._loop

    def _check(self) -> None:
        if threading.get_ident() == self._thread.ident:
            raise RuntimeError("blocking SyncNode method called on its own loop thread: "
                               "inside processes use the async API")
        if self._stopped:
            raise RuntimeError("SyncNode is stopped")

    def _wait(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        try:
            self._check()
        except RuntimeError:
            coro.close()  # never scheduled: spare the "never awaited" warning
            raise
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            if fut.done():
                raise  # the coroutine's own timeout (a CallTimeout, ...), not the wait's
            fut.cancel()  # before 3.11 not the builtin TimeoutError: raise one that is
            raise FabricTimeout(f"SyncNode.run: nothing within {timeout} s") from None
        except BaseException:
            fut.cancel()  # e.g. KeyboardInterrupt in the REPL: do not leave it running
            raise

    def _invoke(self, fn: Callable[..., T], *args: Any) -> T:
        """Run the plain function ``fn(*args)`` on the loop thread and return its result."""
        self._check()
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args))
                except BaseException as exc:
                    fut.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return fut.result()

    def run(self, awaitable: Awaitable[T], timeout: float | None = None) -> T:
        """Run any awaitable on the node's loop and wait for its result.

        The escape hatch to the async API, e.g.
        ``sync.run(MyServer.start(sync.node, name="srv"))``.

        Raises:
            FabricTimeout: ``timeout`` passed first (the awaitable is cancelled); a
                ``TimeoutError``.
        """
        try:
            self._check()
        except RuntimeError:
            if isinstance(awaitable, Coroutine):
                awaitable.close()
            raise

        async def wrapper() -> T:
            return await awaitable

        return self._wait(wrapper(), timeout)

    # -- the node's API, blocking ---------------------------------------------------------

    @property
    def name(self) -> str:
        """The node's full name (with the bound port)."""
        return self.node.name

    def connect(self, peer: str, timeout: float | None = None) -> bool:
        """Connect to ``peer``; True once the session is up (see :meth:`Node.connect`)."""
        return self._wait(self.node.connect(peer, timeout))

    def disconnect(self, peer: str) -> bool:
        """End the session with ``peer``."""
        return self._invoke(self.node.disconnect, peer)

    def nodes(self) -> list[str]:
        """The visible peers with a session up."""
        return self._invoke(self.node.nodes)

    def ping(self, peer: str, timeout: float = CALL_TIMEOUT) -> Answer:
        """``"pong"`` if ``peer`` answers, else ``"pang"``."""
        return self._wait(self.node.ping(peer, timeout))

    def send(self, dest: Any, message: Any) -> None:
        """Send to a pid, a local name or ``(name, node)``; returns once queued.

        Raises:
            BackpressureError: the outbound buffer to the destination's node is full.
        """
        self._invoke(self.node.send, dest, message)

    def send_wait(self, dest: Any, message: Any) -> None:
        """Like :meth:`send`, but waits for room instead of raising BackpressureError."""
        self._wait(self.node.send_wait(dest, message))

    def send_after(self, dest: Any, message: Any, delay: float) -> Ref:
        """Send ``message`` to ``dest`` in ``delay`` seconds; the timer's ref (see
        :meth:`Node.send_after`)."""
        return self._invoke(self.node.send_after, dest, message, delay)

    def cancel_timer(self, ref: Ref) -> float | None:
        """Cancel a timer: the seconds it had left, or None (see :meth:`Node.cancel_timer`)."""
        return self._invoke(self.node.cancel_timer, ref)

    def whereis(self, name: str) -> Pid | None:
        """The pid registered locally under ``name``, or None."""
        return self._invoke(self.node.whereis, name)

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Pid:
        """Start ``async def fn(proc, *args)`` as a process on this node (its loop)."""
        return self._invoke(self.node.spawn, fn, *args)

    def spawn_on(self, peer: str, spec: str, *args: Any, timeout: float = CALL_TIMEOUT) -> Pid:
        """Spawn the exported ``"module:function"`` on ``peer`` (see :meth:`Node.spawn_on`)."""
        return self._wait(self.node.spawn_on(peer, spec, *args, timeout=timeout))

    def call(self, server: calls.Server, request: Any, timeout: float | None = CALL_TIMEOUT) -> Any:
        """:func:`fabric.call` from this node: returns the reply or raises (CallTimeout,
        NodeDownError, ProcessDeadError, RemoteError)."""
        return self._wait(calls.call(self.node, server, request, timeout))

    def cast(self, server: calls.Server, request: Any) -> None:
        """:func:`fabric.cast` from this node; returns once queued."""
        self._invoke(calls.cast, self.node, server, request)

    def rpc(self, target: str, spec: str, args: Sequence[Any] = (),
            timeout: float | None = CALL_TIMEOUT) -> Any:
        """:func:`fabric.rpc.call` from this node."""
        return self._wait(rpc.call(self.node, target, spec, args, timeout))

    def multicall(self, nodes: Iterable[str], spec: str, args: Sequence[Any] = (),
                  timeout: float | None = CALL_TIMEOUT) -> tuple[dict[str, Any], list[str]]:
        """:func:`fabric.rpc.multicall` from this node: ``(results, bad_nodes)``."""
        return self._wait(rpc.multicall(self.node, list(nodes), spec, args, timeout))

    def mailbox(self) -> SyncMailbox:
        """A mailbox with a pid, for receiving messages in this thread."""
        return SyncMailbox(self, self._invoke(self.node.new_mailbox))

    # -- life cycle -----------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the node gracefully (see :meth:`Node.stop`), then the loop and its thread.

        Idempotent.
        """
        if self._stopped:
            return
        try:
            self._wait(self.node.stop())
        finally:
            self._stopped = True
            self._close_loop()

    def _close_loop(self) -> None:
        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(cancel_rest(), self._loop).result(5.0)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(5.0)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> SyncNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return f"<SyncNode {self.node.name if hasattr(self, 'node') else '?'} {state}>"


class SyncMailbox:
    """A pid whose messages a thread takes with a blocking :meth:`receive`.

    Get one from :meth:`SyncNode.mailbox`; close it (or use ``with``) when done.
    """

    def __init__(self, node: SyncNode, proc: Process) -> None:
        self._node = node
        self._proc = proc

    @property
    def pid(self) -> Pid:
        """The mailbox's pid: give it to others so they can send here."""
        return self._proc.self

    def receive(
        self,
        match: Callable[[Any], bool] | None = None,
        timeout: float | None = None,
        default: Any = _NO_DEFAULT,
    ) -> Any:
        """Take the first message ``match`` accepts (it runs on the loop thread).

        Raises:
            ReceiveTimeout: nothing matched within ``timeout`` and no default was given.
        """
        if default is _NO_DEFAULT:
            return self._node._wait(self._proc.receive(match, timeout))
        return self._node._wait(self._proc.receive(match, timeout, default))

    def close(self) -> None:
        """Release the pid (later messages to it are undeliverable)."""
        if not self._node._stopped:
            self._node._invoke(self._node.node.close_mailbox, self._proc)

    def __enter__(self) -> SyncMailbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
