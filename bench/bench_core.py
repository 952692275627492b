"""Pure-core costs, no sockets: what fabric's Python costs per message, per handshake, per tick.

Run:  python -m bench.bench_core [--quick] [--runs N] [--out PATH]
      (or python bench/bench_core.py)

Everything runs in this process; every figure is the best-of-:data:`REPEATS` time of a
bounded loop divided by its count (best-of, because in-process micro-timings are only
ever slowed down by noise, never sped up), and each run repeats that.

* codec: ``fabric.protocol.codec.Codec`` encoding and decoding a batch frame of
  :data:`BATCH` one-way messages ``[K_SEND, dest_pid, ("msg", pid, 42, "hello")]``, per
  message, against raw ``msgpack.packb``/``unpackb`` of the same batch with pids and the
  tuple as plain arrays.  The ratio is the codec's overhead (tuples and pids are msgpack
  extension types decoded by a Python hook).  Also one message per frame, against the
  raw baseline ``baselines.codec_raw`` (packb + unpackb of one message).  And a wide
  tuple, ``("ints", [0 .. WIDE-1])`` (large tuples are measured for the nesting bound),
  per item, against raw msgpack of the same value as arrays.
* receive path: decode one batch frame, dispatch it (``Reactor.dispatch``: process table
  lookup, ``Process.deliver``) and take every message with ``await proc.receive()``; per
  message.  Send path: ``node.send`` of the message to a remote pid plus the batch flush
  (``Outbound.flush``: encode + socket send, the socket being a stub); per message.  Both
  use a node started on loopback with no peer (its sockets stay idle) and its documented
  low-level objects (``node.reactor``, ``node.channels``).
* handshake: two ``fabric.protocol.mesh.MeshCore`` instances driven by hand through HELLO,
  CHALLENGE, ANSWER and BIND until both see the other up; per handshake.  Baseline: the 6
  HMAC-SHA256 proofs a handshake computes (its crypto floor).
* membership step: ``MeshCore.tick`` with :data:`PEERS` peers up, after a heartbeat from
  each (so nobody times out); per tick.
* mailbox: ``Process.deliver`` + ``await Process.receive()`` per message in one process,
  1000 at a time, against a bare ``collections.deque`` append/popleft (the floor) and
  ``asyncio.Queue`` (the stdlib's mailbox); and a ping-pong where the receiver waits on
  an empty mailbox for every message (a future per message: the worst case).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if not __package__:  # started as `python bench/bench_core.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack  # noqa: E402

from bench import _fabric as fb  # noqa: E402
from bench import _harness as h  # noqa: E402
from bench import baselines  # noqa: E402
from fabric.protocol import mesh as m  # noqa: E402
from fabric.protocol.codec import Codec  # noqa: E402
from fabric.protocol.messages import K_SEND  # noqa: E402
from fabric.types import Pid  # noqa: E402

#: Messages per batch frame (the outbound queue caps frames at 1024).
BATCH = 1000
#: Peers up for the membership step.
PEERS = 64
#: Best-of count inside one run.
REPEATS = 5

SRC = Pid("tx@127.0.0.1:40000", 1, 0x12345678)
DEST = Pid("rx@127.0.0.1:40001", 1, 0x23456789)
MESSAGE = ("msg", SRC, 42, "hello")
RAW_SRC = [SRC.node, SRC.id, SRC.creation]
RAW_DEST = [DEST.node, DEST.id, DEST.creation]
RAW_MESSAGE = ["msg", RAW_SRC, 42, "hello"]


def best_us_per(fn: Callable[[], Any], count: int, loops: int) -> float:
    """Best of :data:`REPEATS` timings of ``loops`` calls of ``fn``; µs per ``count`` items."""
    fn()  # warm caches (pid caches, packers) outside the timing
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best / (loops * count) * 1e6


# --------------------------------------------------------------------------- codec


def codec_figures(n_msgs: int) -> dict[str, float]:
    """µs per message: fabric and raw encode/decode of batches, and single messages."""
    loops = max(1, n_msgs // BATCH)
    codec = Codec()
    batch = [[K_SEND, DEST, MESSAGE] for _ in range(BATCH)]
    raw_batch = [[K_SEND, RAW_DEST, RAW_MESSAGE] for _ in range(BATCH)]
    frame = codec.encode(batch)
    raw_frame = msgpack.packb(raw_batch)
    if codec.decode(frame) != batch:
        raise h.BenchError("codec round trip changed the batch")
    single = codec.encode(MESSAGE)
    packb, unpackb = msgpack.packb, msgpack.unpackb
    enc, dec = codec.encode, codec.decode
    return {
        "fabric_encode": best_us_per(lambda: enc(batch), BATCH, loops),
        "fabric_decode": best_us_per(lambda: dec(frame), BATCH, loops),
        "raw_encode": best_us_per(lambda: packb(raw_batch), BATCH, loops),
        "raw_decode": best_us_per(lambda: unpackb(raw_frame), BATCH, loops),
        "fabric_single": best_us_per(lambda: (enc(MESSAGE), dec(single)), 1, n_msgs // 4),
        **wide_tuple_figures(codec, n_msgs),
    }


WIDE = 10_000


def wide_tuple_figures(codec: Codec, n_items: int) -> dict[str, float]:
    """µs per item: encode and decode of one tuple holding a list of WIDE ints."""
    loops = max(1, n_items // WIDE)
    wide = ("ints", list(range(WIDE)))
    raw = ["ints", list(range(WIDE))]
    frame, raw_frame = codec.encode(wide), msgpack.packb(raw)
    if codec.decode(frame) != wide:
        raise h.BenchError("codec round trip changed the wide tuple")
    return {
        "wide_encode": best_us_per(lambda: codec.encode(wide), WIDE, loops),
        "wide_decode": best_us_per(lambda: codec.decode(frame), WIDE, loops),
        "wide_raw_encode": best_us_per(lambda: msgpack.packb(raw), WIDE, loops),
        "wide_raw_decode": best_us_per(lambda: msgpack.unpackb(raw_frame), WIDE, loops),
    }


# --------------------------------------------------------------------------- node paths


class _StubSocket:
    """Stands in for the DEALER: accepts every frame (counts them)."""

    def __init__(self) -> None:
        self.frames = 0

    def send(self, data: bytes, flags: int = 0) -> None:
        self.frames += 1


def _idle_node(loop: asyncio.AbstractEventLoop) -> Any:
    """A Node started on loopback with no peer: its sockets stay idle during the paths."""
    import fabric

    node = fabric.Node("rx@127.0.0.1", cookie=fb.COOKIE)
    loop.run_until_complete(node.start())
    return node


def node_paths(n_msgs: int) -> dict[str, float]:
    """µs per message of the receive path and the send path (see module doc)."""
    from fabric.outbound import Outbound

    loop = asyncio.new_event_loop()
    try:
        node = _idle_node(loop)
        proc = node.new_mailbox()
        codec = node.codec
        frame = codec.encode([[K_SEND, proc.self, MESSAGE] for _ in range(BATCH)])
        dispatch = node.reactor.dispatch

        async def drain() -> None:
            receive = proc.receive
            for _ in range(BATCH):
                await receive()

        def receive_path() -> None:
            dispatch("tx@127.0.0.1:40000", codec.decode(frame), 0.0)
            loop.run_until_complete(drain())

        loops = max(1, n_msgs // BATCH)
        rx = best_us_per(receive_path, BATCH, loops)

        # Send path: a channel whose socket is a stub; flush runs when the loop turns.
        sock = _StubSocket()
        out = Outbound(loop, SRC.node, sock, codec.encode, 10 * BATCH, lambda: None)  # type: ignore[arg-type]
        out.open = True

        class _Channel:
            pass

        channel = _Channel()
        channel.out = out  # type: ignore[attr-defined]
        node.channels.by_peer[SRC.node] = channel
        send = node.send
        target = SRC  # remote for this node
        message = ("msg", DEST, 42, "hello")

        async def send_batch() -> None:
            for _ in range(BATCH):
                send(target, message)
            await asyncio.sleep(0)  # the flush scheduled by the first send runs here

        def send_path() -> None:
            loop.run_until_complete(send_batch())

        tx = best_us_per(send_path, BATCH, loops)
        if out.queue or sock.frames == 0:
            raise h.BenchError("send path did not flush")
        del node.channels.by_peer[SRC.node]
        loop.run_until_complete(node.stop())
        return {"receive_path": rx, "send_path": tx}
    finally:
        loop.close()


# --------------------------------------------------------------------------- handshake


def _core(i: int) -> m.MeshCore:
    return m.MeshCore(f"n{i}@127.0.0.1:{20000 + i}", 1000 + i, b"cookie", 30000 + i, os.urandom)


def _handshake(a: m.MeshCore, b: m.MeshCore, now: float) -> None:
    """Drive a handshake from ``a`` to ``b`` to completion, by hand (frames as values)."""
    a_id: bytes | None = None  # a's DEALER identity at b's ROUTER
    b_id: bytes | None = None
    pending: list[tuple[str, Any]] = [("a", e) for e in a.connect(b.name, now)]
    for _ in range(64):  # bounded: a handshake is 4 legs
        if not pending:
            break
        side, eff = pending.pop(0)
        src, dst = (a, b) if side == "a" else (b, a)
        other = "b" if side == "a" else "a"
        t = type(eff)
        if t is m.OpenChannel:
            if side == "a":
                a_id = eff.identity
            else:
                b_id = eff.identity
        elif t is m.ChannelSend:  # src's DEALER -> dst's ROUTER
            ident = a_id if side == "a" else b_id
            assert ident is not None
            pending += [(other, e) for e in dst.router_frame(ident, eff.frame, now)]
        elif t is m.RouterSend:  # src's ROUTER -> the owner of that identity's channel
            pending += [(other, e) for e in dst.channel_frame(src.name, eff.frame, now)]
    if not (a.is_up(b.name) and b.is_up(a.name)):
        raise h.BenchError("handshake did not complete")


def handshake_us(count: int) -> float:
    """µs per complete handshake between two fresh cores."""
    best = float("inf")
    for _ in range(REPEATS):
        pairs = [(_core(2 * i), _core(2 * i + 1)) for i in range(count)]
        t0 = time.perf_counter()
        for a, b in pairs:
            _handshake(a, b, 1.0)
        best = min(best, time.perf_counter() - t0)
    return best / count * 1e6


def hmac_floor_us(count: int) -> float:
    """µs for the 6 HMAC-SHA256 proofs one handshake computes (3 proofs, each made and
    checked on the other side)."""
    key, challenge = b"cookie", os.urandom(32)

    def six() -> None:
        for _ in range(6):
            mac = hmac.new(key, b"label", hashlib.sha256)
            mac.update(challenge)
            mac.update(b"\x00\x00\x00\x10n0@127.0.0.1:20000")
            mac.update(b"\x00\x00\x00\x10n1@127.0.0.1:20001")
            mac.digest()

    return best_us_per(six, 1, count)


# --------------------------------------------------------------------------- membership


def tick_us(count: int) -> dict[str, float]:
    """µs per ``MeshCore.tick`` with :data:`PEERS` peers up, and per heartbeat handled."""
    hub = _core(0)
    others = [_core(i) for i in range(1, PEERS + 1)]
    for peer in others:
        _handshake(peer, hub, 0.0)
    if len(hub.nodes()) != PEERS:
        raise h.BenchError(f"{len(hub.nodes())} of {PEERS} peers up")
    beats = [(p.name, p.creation) for p in others]
    now = [0.0]

    def heartbeats() -> None:
        t = now[0]
        for name, creation in beats:
            hub.heartbeat(name, creation, t)

    def ticks() -> float:
        # The heartbeats that keep every peer alive are outside the timed region: only
        # the tick itself is measured (each advances time by one TICK, 0.05 s).
        spent = 0.0
        for _ in range(count):
            now[0] += 0.05
            heartbeats()
            t0 = time.perf_counter()
            hub.tick(now[0])
            spent += time.perf_counter() - t0
        return spent / count * 1e6

    beats_only = best_us_per(heartbeats, PEERS, count)
    tick_only = min(ticks() for _ in range(REPEATS))
    if len(hub.nodes()) != PEERS:
        raise h.BenchError("peers timed out during the membership step")
    return {"heartbeat": beats_only, "tick": tick_only}


# --------------------------------------------------------------------------- mailbox


def mailbox_figures(n_msgs: int) -> dict[str, float]:
    """µs per message through a mailbox: fabric Process, bare deque, asyncio.Queue."""
    loop = asyncio.new_event_loop()
    try:
        node = _idle_node(loop)
        proc = node.new_mailbox()
        msg = MESSAGE

        async def fabric_burst() -> None:
            deliver, receive = proc.deliver, proc.receive
            for _ in range(BATCH):
                deliver(msg)
            for _ in range(BATCH):
                await receive()

        box: deque[Any] = deque()

        async def deque_burst() -> None:
            append, popleft = box.append, box.popleft
            for _ in range(BATCH):
                append(msg)
            for _ in range(BATCH):
                popleft()

        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def queue_burst() -> None:
            put, get = queue.put_nowait, queue.get
            for _ in range(BATCH):
                put(msg)
            for _ in range(BATCH):
                await get()

        async def fabric_pingpong() -> None:
            # The receiver waits on an empty mailbox each time: one future per message.
            async def receiver() -> None:
                receive = proc.receive
                for _ in range(BATCH):
                    await receive()

            task = loop.create_task(receiver())
            deliver = proc.deliver
            for _ in range(BATCH):
                await asyncio.sleep(0)  # let the receiver block on the empty mailbox
                deliver(msg)
            await task

        loops = max(1, n_msgs // BATCH)

        def run(coro_fn: Callable[[], Any]) -> Callable[[], None]:
            return lambda: loop.run_until_complete(coro_fn())

        figures = {
            "fabric": best_us_per(run(fabric_burst), BATCH, loops),
            "deque": best_us_per(run(deque_burst), BATCH, loops),
            "queue": best_us_per(run(queue_burst), BATCH, loops),
            "pingpong": best_us_per(run(fabric_pingpong), BATCH, max(1, loops // 10)),
        }
        loop.run_until_complete(node.stop())
        return figures
    finally:
        loop.close()


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the pure-core costs; print the table and write the JSON."""
    args = h.parse_args(__doc__, argv)
    n = h.sized(args, full=200_000, quick=50_000)
    n_handshakes = h.sized(args, full=500, quick=100)
    n_ticks = h.sized(args, full=2_000, quick=500)

    report = fb.Report("bench_core", args)
    report.extra = {"batch": BATCH, "peers": PEERS, "best_of": REPEATS}
    measurements: dict[str, Callable[[], Any]] = {
        "codec_raw": lambda: baselines.codec_raw(n),
        "codec": lambda: codec_figures(n),
        "paths": lambda: node_paths(n),
        "handshake": lambda: handshake_us(n_handshakes),
        "hmac": lambda: hmac_floor_us(n_handshakes),
        "tick": lambda: tick_us(n_ticks),
        "mailbox": lambda: mailbox_figures(n),
    }
    got = h.run_interleaved(measurements, args.runs)

    def col(key: str, name: str) -> list[float]:
        return [float(r[name]) for r in got[key]]

    batch_note = f"batch of {BATCH} one-way messages, per message"
    report.add("codec raw msgpack", "encode", "us/msg", col("codec", "raw_encode"),
               note=batch_note + "; pids and tuple as arrays")
    report.add("codec raw msgpack", "decode", "us/msg", col("codec", "raw_decode"),
               note=batch_note)
    report.add("codec fabric", "encode", "us/msg", col("codec", "fabric_encode"),
               baseline="codec raw msgpack", note=batch_note + "; tuple and pids as ext types")
    report.add("codec fabric", "decode", "us/msg", col("codec", "fabric_decode"),
               baseline="codec raw msgpack", note=batch_note)
    wide_note = f"one tuple of a list of {WIDE} ints, per item"
    report.add("codec raw wide", "encode", "us/item", col("codec", "wide_raw_encode"),
               note=wide_note + "; as arrays")
    report.add("codec raw wide", "decode", "us/item", col("codec", "wide_raw_decode"),
               note=wide_note)
    report.add("codec fabric wide", "encode", "us/item", col("codec", "wide_encode"),
               baseline="codec raw wide", note=wide_note + "; measured for the nesting bound")
    report.add("codec fabric wide", "decode", "us/item", col("codec", "wide_decode"),
               baseline="codec raw wide", note=wide_note)
    report.add("codec raw", "pack+unpack", "us/msg", [float(v) for v in got["codec_raw"]],
               note="baselines.codec_raw: one message per packb/unpackb")
    report.add("codec fabric single", "pack+unpack", "us/msg", col("codec", "fabric_single"),
               baseline="codec raw", note="Codec.encode + decode of one message")
    report.add("node receive path", "per message", "us/msg", col("paths", "receive_path"),
               note="decode + Reactor.dispatch + Process.deliver + await receive()")
    report.add("node send path", "per message", "us/msg", col("paths", "send_path"),
               note="node.send to a remote pid + Outbound.flush (encode), stub socket")
    report.add("hmac floor", "handshake", "us", [float(v) for v in got["hmac"]],
               note="6 HMAC-SHA256 proofs")
    report.add("mesh handshake", "handshake", "us", [float(v) for v in got["handshake"]],
               baseline="hmac floor", note="two MeshCores, HELLO..BIND, frames as values")
    report.add("mesh tick", "tick", "us", col("tick", "tick"),
               note=f"MeshCore.tick with {PEERS} peers up")
    report.add("mesh heartbeat", "per heartbeat", "us", col("tick", "heartbeat"),
               note="MeshCore.heartbeat for one peer")
    report.add("mailbox deque", "deliver+receive", "us/msg", col("mailbox", "deque"),
               note=f"append/popleft, {BATCH} at a time (floor)")
    report.add("mailbox asyncio.Queue", "deliver+receive", "us/msg", col("mailbox", "queue"),
               baseline="mailbox deque", note="put_nowait + await get()")
    report.add("mailbox fabric", "deliver+receive", "us/msg", col("mailbox", "fabric"),
               baseline="mailbox deque", note="Process.deliver + await receive()")
    report.add("mailbox fabric ping-pong", "deliver+receive", "us/msg",
               col("mailbox", "pingpong"), baseline="mailbox deque",
               note="receiver blocked on an empty mailbox each time (a future per message)")
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
