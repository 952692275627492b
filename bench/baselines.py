"""Raw pyzmq + msgpack baselines: the floor every fabric benchmark is divided by.

Each public function takes ONE measurement and returns its figure(s).  Senders and
receivers are separate OS processes on 127.0.0.1 (started with :class:`_harness.Children`),
because that is how fabric nodes run and because one process would share the GIL between
both ends.  The message is the one fabric sends for ``send(pid, ("msg", pid, 42, "hello"))``
minus fabric's envelope: the msgpack array ``["msg", [node, id, creation], 42, "hello"]``.

How each figure is counted (the same rules apply to the fabric side of each benchmark):

* one-way throughput: ``n / (t_last_received - t_first_sent)``.  ``t_first_sent`` is read
  by the sender just before its first data send (after a hello/go handshake, so connection
  setup is excluded); ``t_last_received`` by the receiver after decoding and delivering
  the last message.  Both come from CLOCK_MONOTONIC (:func:`_harness.shared_clock`), which
  is one clock for the whole machine, so the interval spans both processes and includes
  the pipeline fill and drain.
* round trip: per-call latency measured in the client around send + receive reply +
  decode; calls/s is calls over the whole timed loop; warm-up calls are excluded.
* pub/sub fan-out: deliveries (messages x subscribers x members) over the interval from
  the publisher's first data send to the last subscriber's last delivery.
* codec: in-process, packb + unpackb per message.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, NamedTuple

import msgpack  # type: ignore[import-untyped,unused-ignore]
import zmq
import zmq.asyncio

from bench._harness import BenchError, Children, free_port, percentile, shared_clock

#: The pid part of the message: [node name, id, creation], as fabric's Pid carries.
PID = ["bench@127.0.0.1", 1, 1]
#: The tuple-like message of the issue: ("msg", pid, 42, "hello").
MESSAGE: list[Any] = ["msg", PID, 42, "hello"]
#: Messages per frame for the batched one-way baseline.
BATCH = 64
#: Pub/sub topic prefix; subscribers filter on it, as fabric's group topics would.
TOPIC = b"g:bench\x00"

#: A blocking socket call that waits longer than this means the benchmark is broken; the
#: child raises (zmq.Again) instead of hanging, so every wait is bounded.
STALL_MS = 5000
#: Socket linger on close, in ms (see _socket).
LINGER_MS = 1000
#: How long the parent waits for a child's result before giving up (whole measurement).
CHILD_TIMEOUT_S = 45.0
#: Bounded slow-joiner wait: all subscribers must answer a probe within this time.
PROBE_WAIT_S = 10.0
#: Delivered messages are kept in mailboxes (lists) but cleared this often, so memory stays
#: bounded while each delivery still costs a real append.
MAILBOX_CLEAR_MASK = 0xFFF


def _socket(ctx: zmq.Context[zmq.Socket[bytes]], kind: int) -> zmq.Socket[bytes]:
    """A socket whose every blocking call, and its close, is bounded."""
    sock = ctx.socket(kind)
    # Long enough to flush the last control message ("done", "stop") on close, short
    # enough that a vanished peer cannot hold a child up.
    sock.linger = LINGER_MS
    sock.rcvtimeo = STALL_MS
    sock.sndtimeo = STALL_MS
    # Reconnect fast if the connecting side started before the binding side.
    sock.setsockopt(zmq.RECONNECT_IVL, 10)
    return sock


def _async_socket(ctx: zmq.asyncio.Context, kind: int) -> zmq.asyncio.Socket:
    """As :func:`_socket`, for asyncio."""
    sock = ctx.socket(kind)
    sock.linger = LINGER_MS
    sock.rcvtimeo = STALL_MS
    sock.sndtimeo = STALL_MS
    sock.setsockopt(zmq.RECONNECT_IVL, 10)
    return sock


# =========================================================================== one-way


def _oneway_receiver(port: int, n_msgs: int, batch: int) -> dict[str, Any]:
    """Child: ROUTER bound on ``port``; receive ``n_msgs`` messages, decode and deliver each."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = _socket(ctx, zmq.ROUTER)
    try:
        sock.bind(f"tcp://127.0.0.1:{port}")
        # Handshake: the sender's hello proves the connection is up; our reply lets it
        # start the clock, so connection setup is not in the figure.
        ident, _hello = sock.recv_multipart()
        sock.send_multipart([ident, b"go"])
        unpackb = msgpack.unpackb
        recv = sock.recv_multipart
        mailbox: list[Any] = []
        count = 0
        # Two loops rather than one with a branch: this is the floor, keep it tight.
        if batch == 1:
            while count < n_msgs:
                mailbox.append(unpackb(recv()[1]))
                count += 1
                if not count & MAILBOX_CLEAR_MASK:
                    mailbox.clear()
        else:
            while count < n_msgs:
                msgs = unpackb(recv()[1])
                mailbox.extend(msgs)  # deliver every message of the frame
                count += len(msgs)
                if len(mailbox) > MAILBOX_CLEAR_MASK:
                    mailbox.clear()
        t_last = shared_clock()
        # Tell the sender it may close: closing earlier could drop data still queued.
        sock.send_multipart([ident, b"done"])
        return {"count": count, "t_last": t_last}
    finally:
        sock.close()
        ctx.term()


def _oneway_sender(port: int, n_msgs: int, batch: int) -> dict[str, Any]:
    """Child: DEALER; after the handshake send ``n_msgs`` messages, ``batch`` per frame."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = _socket(ctx, zmq.DEALER)
    try:
        sock.connect(f"tcp://127.0.0.1:{port}")
        sock.send(b"hello")
        if sock.recv() != b"go":
            raise BenchError("bad handshake")
        packb = msgpack.packb
        send = sock.send
        msg = MESSAGE
        t_start = shared_clock()
        if batch == 1:
            for _ in range(n_msgs):
                send(packb(msg))  # encode per message, as a real sender must
        else:
            full, rest = divmod(n_msgs, batch)
            frame_msgs = [msg] * batch
            for _ in range(full):
                send(packb(frame_msgs))
            if rest:
                send(packb([msg] * rest))
        t_sent = shared_clock()
        if sock.recv() != b"done":
            raise BenchError("receiver did not confirm")
        return {"t_start": t_start, "t_sent": t_sent}
    finally:
        sock.close()
        ctx.term()


def oneway_raw(n_msgs: int, batch: int = 1) -> float:
    """One-way throughput DEALER -> ROUTER, two processes; messages/s (see module doc).

    ``batch=1`` sends one msgpack message per frame; ``batch=64`` packs 64 messages into
    one msgpack array per frame (the receiver still delivers each one).
    """
    if n_msgs < 1 or batch < 1:
        raise ValueError("n_msgs and batch must be >= 1")
    port = free_port()
    with Children() as kids:
        rx = kids.function(_oneway_receiver, port=port, n_msgs=n_msgs, batch=batch)
        tx = kids.function(_oneway_sender, port=port, n_msgs=n_msgs, batch=batch)
        got = rx.result(CHILD_TIMEOUT_S)
        sent = tx.result(CHILD_TIMEOUT_S)
    if got["count"] != n_msgs:
        raise BenchError(f"received {got['count']} of {n_msgs}")
    rate: float = n_msgs / (got["t_last"] - sent["t_start"])
    return rate


# =========================================================================== round trip


class RoundTrip(NamedTuple):
    """Result of a round-trip measurement."""

    p50_us: float
    p99_us: float
    calls_per_s: float


def _reply_for(request: list[Any]) -> bytes:
    # The echo server decodes the request and encodes a fresh reply, as a GenServer would
    # (["reply", ref, result]), rather than bouncing the bytes back untouched.
    reply: bytes = msgpack.packb(["reply", request[2], "pong"])
    return reply


def _echo_server_sync(port: int, max_calls: int) -> dict[str, Any]:
    """Child: blocking ROUTER echo server; stops on a "stop" request or after ``max_calls``."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = _socket(ctx, zmq.ROUTER)
    try:
        sock.bind(f"tcp://127.0.0.1:{port}")
        unpackb = msgpack.unpackb
        served = 0
        while served < max_calls:
            ident, frame = sock.recv_multipart()
            request = unpackb(frame)
            if request[0] == "stop":
                break
            sock.send_multipart([ident, _reply_for(request)])
            served += 1
        return {"served": served}
    finally:
        sock.close()
        ctx.term()


def _timed_calls_result(samples_ns: list[int], elapsed_s: float) -> dict[str, float]:
    samples_ns.sort()
    return {
        "p50_us": percentile(samples_ns, 50) / 1000.0,
        "p99_us": percentile(samples_ns, 99) / 1000.0,
        "calls_per_s": len(samples_ns) / elapsed_s,
    }


def _rt_client_sync(port: int, n_calls: int, warmup: int) -> dict[str, float]:
    """Child: blocking DEALER client; ``warmup`` untimed calls, then ``n_calls`` timed ones."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = _socket(ctx, zmq.DEALER)
    try:
        sock.connect(f"tcp://127.0.0.1:{port}")
        packb, unpackb = msgpack.packb, msgpack.unpackb
        send, recv = sock.send, sock.recv
        clock = time.perf_counter_ns
        for ref in range(warmup):
            send(packb(["call", PID, ref, "ping"]))
            unpackb(recv())
        samples = [0] * n_calls
        t0 = time.perf_counter()
        for i in range(n_calls):
            start = clock()
            send(packb(["call", PID, i, "ping"]))
            reply = unpackb(recv())
            samples[i] = clock() - start
            if reply[1] != i:  # a crossed reply would make every figure meaningless
                raise BenchError(f"reply for {reply[1]} to call {i}")
        elapsed = time.perf_counter() - t0
        send(packb(["stop"]))
        return _timed_calls_result(samples, elapsed)
    finally:
        sock.close()
        ctx.term()


async def _echo_server_async_main(port: int, max_calls: int) -> dict[str, Any]:
    ctx = zmq.asyncio.Context()
    sock = _async_socket(ctx, zmq.ROUTER)
    try:
        sock.bind(f"tcp://127.0.0.1:{port}")
        unpackb = msgpack.unpackb
        served = 0
        while served < max_calls:
            ident, frame = await sock.recv_multipart()
            request = unpackb(frame)
            if request[0] == "stop":
                break
            await sock.send_multipart([ident, _reply_for(request)])
            served += 1
        return {"served": served}
    finally:
        sock.close()
        ctx.term()


def _echo_server_async(port: int, max_calls: int) -> dict[str, Any]:
    """Child: asyncio (zmq.asyncio) ROUTER echo server."""
    return asyncio.run(_echo_server_async_main(port, max_calls))


async def _rt_client_async_main(port: int, n_calls: int, warmup: int) -> dict[str, float]:
    ctx = zmq.asyncio.Context()
    sock = _async_socket(ctx, zmq.DEALER)
    try:
        sock.connect(f"tcp://127.0.0.1:{port}")
        packb, unpackb = msgpack.packb, msgpack.unpackb
        send, recv = sock.send, sock.recv
        clock = time.perf_counter_ns
        for ref in range(warmup):
            await send(packb(["call", PID, ref, "ping"]))
            unpackb(await recv())
        samples = [0] * n_calls
        t0 = time.perf_counter()
        for i in range(n_calls):
            start = clock()
            await send(packb(["call", PID, i, "ping"]))
            reply = unpackb(await recv())
            samples[i] = clock() - start
            if reply[1] != i:
                raise BenchError(f"reply for {reply[1]} to call {i}")
        elapsed = time.perf_counter() - t0
        await send(packb(["stop"]))
        return _timed_calls_result(samples, elapsed)
    finally:
        sock.close()
        ctx.term()


def _rt_client_async(port: int, n_calls: int, warmup: int) -> dict[str, float]:
    """Child: asyncio (zmq.asyncio) DEALER client."""
    return asyncio.run(_rt_client_async_main(port, n_calls, warmup))


def _roundtrip(n_calls: int, warmup: int, asynchronous: bool) -> RoundTrip:
    if n_calls < 1 or warmup < 0:
        raise ValueError("n_calls must be >= 1 and warmup >= 0")
    port = free_port()
    server = _echo_server_async if asynchronous else _echo_server_sync
    client = _rt_client_async if asynchronous else _rt_client_sync
    with Children() as kids:
        # +1: the server also reads the client's "stop", so neither side is left waiting.
        srv = kids.function(server, port=port, max_calls=n_calls + warmup + 1)
        cli = kids.function(client, port=port, n_calls=n_calls, warmup=warmup)
        got = cli.result(CHILD_TIMEOUT_S)
        srv.result(CHILD_TIMEOUT_S)
    return RoundTrip(got["p50_us"], got["p99_us"], got["calls_per_s"])


def roundtrip_raw_sync(n: int, warmup: int = 200) -> RoundTrip:
    """Blocking DEALER <-> ROUTER echo, msgpack request and reply, one call in flight."""
    return _roundtrip(n, warmup, asynchronous=False)


def roundtrip_raw_asyncio(n: int, warmup: int = 200) -> RoundTrip:
    """As :func:`roundtrip_raw_sync` but both ends on asyncio (zmq.asyncio), like fabric."""
    return _roundtrip(n, warmup, asynchronous=True)


# =========================================================================== pub/sub


def _publisher(port: int, ack_port: int, n_msgs: int, subscribers: int) -> dict[str, Any]:
    """Child: PUB on ``port`` + PULL for acks on ``ack_port``; probe, then publish."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pub = _socket(ctx, zmq.PUB)
    # Unlimited queue: PUB drops at its high-water mark when subscribers are slower than
    # the publisher, and a dropped message would be counted as never delivered.
    pub.sndhwm = 0
    acks = _socket(ctx, zmq.PULL)
    try:
        pub.bind(f"tcp://127.0.0.1:{port}")
        acks.bind(f"tcp://127.0.0.1:{ack_port}")
        packb, unpackb = msgpack.packb, msgpack.unpackb
        # Slow-joiner guard: a SUB's subscription reaches the PUB some time after connect,
        # and PUB silently drops what it sends before that.  Probe until every subscriber
        # has answered one, bounded by PROBE_WAIT_S.
        acked: set[int] = set()
        seq = 0
        t_end = time.monotonic() + PROBE_WAIT_S
        while len(acked) < subscribers:
            if time.monotonic() > t_end:
                raise BenchError(f"only {len(acked)}/{subscribers} subscribers joined")
            pub.send(TOPIC + packb(["probe", seq]))
            seq += 1
            if acks.poll(20):
                while acks.poll(0):
                    acked.add(unpackb(acks.recv())[1])
        send = pub.send
        t_start = shared_clock()
        for _ in range(n_msgs):
            send(TOPIC + packb(MESSAGE))
        # Stay until every subscriber has everything: the queue may hold far more than
        # LINGER_MS can flush.
        done: set[int] = set()
        while len(done) < subscribers:
            kind, index = unpackb(acks.recv())[:2]  # bounded by rcvtimeo
            if kind == "done":
                done.add(index)
        return {"t_start": t_start, "probes": seq}
    finally:
        pub.close()
        acks.close()
        ctx.term()


def _subscriber(port: int, ack_port: int, index: int, n_msgs: int, members: int) -> dict[str, Any]:
    """Child: SUB on the topic; deliver each message to ``members`` local mailboxes."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sub = _socket(ctx, zmq.SUB)
    sub.rcvhwm = 0  # see the publisher: no drops anywhere on the path
    push = _socket(ctx, zmq.PUSH)
    try:
        sub.setsockopt(zmq.SUBSCRIBE, TOPIC)
        sub.connect(f"tcp://127.0.0.1:{port}")
        push.connect(f"tcp://127.0.0.1:{ack_port}")
        packb, unpackb = msgpack.packb, msgpack.unpackb
        skip = len(TOPIC)
        unpackb(sub.recv()[skip:])  # the first probe: the subscription is in place
        push.send(packb(["ack", index]))
        mailboxes: list[list[Any]] = [[] for _ in range(members)]
        recv = sub.recv
        count = 0
        while count < n_msgs:
            msg = unpackb(recv()[skip:])
            if msg[0] != "msg":  # a probe sent before the publisher saw every ack
                continue
            for box in mailboxes:
                box.append(msg)
            count += 1
            if not count & MAILBOX_CLEAR_MASK:
                for box in mailboxes:
                    box.clear()
        t_last = shared_clock()
        push.send(packb(["done", index]))  # flushed by the linger on close
        return {"count": count, "deliveries": count * members, "t_last": t_last}
    finally:
        sub.close()
        push.close()
        ctx.term()


def pubsub_fanout_raw(n_msgs: int, subscribers: int = 3, members_per_sub: int = 10) -> float:
    """PUB -> ``subscribers`` SUB processes, each delivering to ``members_per_sub`` lists.

    Returns deliveries/s over all subscribers (see module doc for the interval).
    """
    if n_msgs < 1 or subscribers < 1 or members_per_sub < 1:
        raise ValueError("n_msgs, subscribers and members_per_sub must be >= 1")
    port, ack_port = free_port(), free_port()
    with Children() as kids:
        pub = kids.function(
            _publisher, port=port, ack_port=ack_port, n_msgs=n_msgs, subscribers=subscribers
        )
        subs = [
            kids.function(
                _subscriber,
                name=f"sub{i}",
                port=port,
                ack_port=ack_port,
                index=i,
                n_msgs=n_msgs,
                members=members_per_sub,
            )
            for i in range(subscribers)
        ]
        results = [s.result(CHILD_TIMEOUT_S) for s in subs]
        started = pub.result(CHILD_TIMEOUT_S)
    deliveries = sum(r["deliveries"] for r in results)
    expected = n_msgs * subscribers * members_per_sub
    if deliveries != expected:
        raise BenchError(f"{deliveries} of {expected} deliveries")
    rate: float = deliveries / (max(r["t_last"] for r in results) - started["t_start"])
    return rate


# =========================================================================== codec


def codec_raw(n: int) -> float:
    """In-process msgpack packb + unpackb of :data:`MESSAGE`; microseconds per message."""
    if n < 1:
        raise ValueError("n must be >= 1")
    packb, unpackb = msgpack.packb, msgpack.unpackb
    msg = MESSAGE
    t0 = time.perf_counter()
    for _ in range(n):
        unpackb(packb(msg))
    return (time.perf_counter() - t0) / n * 1e6
