"""The distributed cache against Redis, in the same run, alternating.

Run:  python -m bench.bench_cache [--quick] [--runs N] [--out PATH]

The harness starts ``redis-server`` on a free loopback port (no persistence) and talks to
it with redis-py's asyncio client (``redis.asyncio``); without ``redis-server`` or
redis-py it prints why and exits 0 without figures. fabric's side: three owner nodes as
OS processes (``fabric.cache.Cache``, replicas=2, write_acks=2), and this process as a
fourth node that does not own keys. Values are ``VALUE_SIZE`` bytes on both sides; keys
are ``NKEYS`` preloaded keys. Each round runs every measurement once on each side, the
side that goes first rotating:

* **get / put latency**: sequential operations from this process (one in flight), p50
  and p99 per operation. fabric's are all remote (this node owns nothing): a get is one
  round trip to the key's primary; a put goes to both owners at once and returns when
  both acknowledged it (Redis keeps one copy). With them, fabric's transport floor: the
  raw pyzmq DEALER/ROUTER echo on asyncio from ``bench.baselines`` (no fabric).
* **throughput**: three processes at once, each with ``CONCURRENCY`` tasks doing 90% get
  and 10% put on random keys for ``LOAD_S`` seconds from a shared start time. fabric's
  are the three owner nodes themselves (the cache is embedded: a third of the gets are
  owner-local); Redis's are three client processes against the one server.
* **owner-local get rate**: sequential gets on a node that owns every key (a one-node
  cache in this process), against Redis's sequential get rate in the same round.

Then once: a fourth owner joins, and the entries handed off (the sum of the nodes'
``handoffs``) over the copies held (``NKEYS * 2``) is compared with the ideal 1/4.
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench import _fabric as fb
from bench import _harness as h

#: Bytes per value, on both sides.
VALUE_SIZE = 100
#: Keys preloaded on both sides (reads and writes pick among them at random).
NKEYS = 10_000
#: Concurrent tasks per load process.
CONCURRENCY = 16
CACHE = "bench"
#: Longest wait for any one step: a stall means a broken benchmark.
STALL_S = 30.0


def redis_available() -> str | None:
    """None when the Redis baseline can run, else why not."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed"
    if importlib.util.find_spec("redis") is None:
        return "redis-py is not installed"
    return None


# --------------------------------------------------------------------------- children


def _owner(port: int, seed: str | None, index: int, nkeys: int) -> dict[str, Any]:
    """An owner node: serves the cache and runs load on request, until told to stop."""
    from fabric.cache import Cache

    async def main() -> dict[str, Any]:
        node = fb.new_node(f"owner{index}", port)
        await node.start()
        if seed is not None and not await node.connect(seed):
            raise RuntimeError(f"cannot reach {seed}")
        cache = Cache(node, CACHE, replicas=2)
        box = node.new_mailbox()
        node.register("bench_cache", box.self)
        h.emit("ready", name=node.name)
        while True:  # ends on ("stop",)
            msg = await box.receive()
            if msg[0] == "stop":
                break
            if msg[0] == "load":
                _, start_at, seconds, concurrency, reply_to = msg
                ops = await _load(cache.get, cache.put, start_at, seconds, concurrency, nkeys)
                node.send(reply_to, ("loaded", node.name, ops / seconds))
            elif msg[0] == "stats":
                node.send(msg[1], ("stats", node.name, cache.stats(), len(cache.core.placement)))
        await node.stop()
        return {}

    return fb.run_child(main)


def _redis_loader(port: int, start_at: float, seconds: float, concurrency: int,
                  nkeys: int) -> float:
    """A Redis client process: the same load as an owner node's, against redis-server."""
    import redis.asyncio as aioredis

    async def main() -> float:
        client = aioredis.Redis(host="127.0.0.1", port=port, max_connections=concurrency)
        try:
            ops = await _load(client.get, client.set, start_at, seconds, concurrency, nkeys)
        finally:
            await client.aclose()
        return ops / seconds

    return asyncio.run(main())


async def _load(get: Callable[[str], Awaitable[Any]], put: Callable[[str, bytes], Awaitable[Any]],
                start_at: float, seconds: float, concurrency: int, nkeys: int) -> int:
    value = b"v" * VALUE_SIZE
    await asyncio.sleep(max(0.0, start_at - h.shared_clock()))
    end = start_at + seconds

    async def worker(seed: int) -> int:
        rng = random.Random(seed)
        done = 0
        while h.shared_clock() < end:  # bounded by the deadline
            key = f"k{rng.randrange(nkeys)}"
            if done % 10 == 9:
                await put(key, value)
            else:
                await get(key)
            done += 1
            if done % 64 == 0:
                await asyncio.sleep(0)  # owner-local gets never yield by themselves
        return done

    return sum(await asyncio.gather(*(worker(i) for i in range(concurrency))))


# --------------------------------------------------------------------------- measurements


async def _sequential(op: Callable[[str], Awaitable[Any]], n: int, nkeys: int) -> dict[str, float]:
    rng = random.Random(n)
    keys = [f"k{rng.randrange(nkeys)}" for _ in range(n)]
    for key in keys[:200]:  # warm-up
        await op(key)
    samples: list[float] = []
    t0 = time.perf_counter()
    for key in keys:
        s = time.perf_counter_ns()
        await op(key)
        samples.append((time.perf_counter_ns() - s) / 1000.0)
    elapsed = time.perf_counter() - t0
    samples.sort()
    return {"p50": h.percentile(samples, 50), "p99": h.percentile(samples, 99),
            "rate": n / elapsed}


async def _raw_floor(n: int) -> dict[str, float]:
    """The raw pyzmq + asyncio round trip (no fabric), in child processes."""
    from bench import baselines

    got = await asyncio.to_thread(baselines.roundtrip_raw_asyncio, n)
    return {"p50": got.p50_us, "p99": got.p99_us, "rate": got.calls_per_s}


class RedisServer:
    """redis-server on a free loopback port, no persistence; stopped by pid."""

    def __init__(self) -> None:
        self.port = h.free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def wait(self, client: Any) -> None:
        deadline = h.Deadline(10.0)
        while not deadline.expired():
            try:
                if await client.ping():
                    return
            except OSError:
                pass
            except Exception as exc:  # redis.ConnectionError is not an OSError
                if "connect" not in str(exc).lower():
                    raise
            await asyncio.sleep(0.05)
        raise h.BenchError("redis-server did not answer within 10 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _ask_all(node: Any, box: Any, names: list[str], message: tuple[Any, ...],
                   tag: str) -> list[tuple[Any, ...]]:
    for name in names:
        node.send(("bench_cache", name), message)
    return [await box.receive(match=lambda m: m[0] == tag, timeout=STALL_S) for _ in names]


async def _run(args: Any, report: h.Report, kids: h.Children, redis_server: RedisServer) -> None:
    import redis.asyncio as aioredis

    from fabric.cache import Cache

    n = h.sized(args, full=5000, quick=800)
    load_s = 1.0 if args.quick else 3.0
    nkeys = 2000 if args.quick else NKEYS
    value = b"v" * VALUE_SIZE
    rclient = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    await redis_server.wait(rclient)
    await rclient.mset({f"k{i}": value for i in range(nkeys)})

    ports = fb.free_ports(6)
    first = fb.node_name("owner0", ports[0])
    names: list[str] = []
    for i in range(3):  # the seed first: the others connect to it
        owner = kids.function(_owner, port=ports[i], seed=None if i == 0 else first, index=i,
                              nkeys=nkeys, name=f"owner{i}")
        names.append(owner.expect("ready", STALL_S)["name"])
    client_node = fb.new_node("client", ports[3])
    solo_node = fb.new_node("solo", ports[4])
    await client_node.start()
    await solo_node.start()
    try:
        assert await client_node.connect(first)
        cache = Cache(client_node, CACHE, owner=False)
        solo = Cache(solo_node, "solo", replicas=1)
        deadline = h.Deadline(STALL_S)
        while len(cache.core.placement) < 3 and not deadline.expired():
            await asyncio.sleep(0.05)
        if len(cache.core.placement) < 3:
            raise h.BenchError("the three owners did not form the cache")
        for i in range(0, nkeys, 500):
            await cache.put_many({f"k{j}": value for j in range(i, min(nkeys, i + 500))})
            await solo.put_many({f"k{j}": value for j in range(i, min(nkeys, i + 500))})
        box = client_node.new_mailbox()

        async def fabric_load() -> float:
            start_at = h.shared_clock() + 0.3
            got = await _ask_all(client_node, box, names,
                                 ("load", start_at, load_s, CONCURRENCY, box.self), "loaded")
            return float(sum(g[2] for g in got))

        async def redis_load() -> float:
            start_at = h.shared_clock() + 1.5  # a fresh interpreter imports redis first
            loaders = [kids.function(_redis_loader, port=redis_server.port, start_at=start_at,
                                     seconds=load_s, concurrency=CONCURRENCY, nkeys=nkeys,
                                     name=f"redis-loader{i}") for i in range(3)]
            total = 0.0
            for loader in loaders:
                total += float(await asyncio.to_thread(loader.result, STALL_S))
            return total

        async def fabric_put(key: str) -> None:
            await cache.put(key, value)

        measures: dict[str, Callable[[], Awaitable[Any]]] = {
            "raw floor": lambda: _raw_floor(n),
            "redis get": lambda: _sequential(rclient.get, n, nkeys),
            "fabric get": lambda: _sequential(cache.get, n, nkeys),
            "redis put": lambda: _sequential(lambda k: rclient.set(k, value), n, nkeys),
            "fabric put": lambda: _sequential(fabric_put, n, nkeys),
            "fabric local get": lambda: _sequential(solo.get, n * 20, nkeys),
            "redis throughput": redis_load,
            "fabric throughput": fabric_load,
        }
        results: dict[str, list[Any]] = {k: [] for k in measures}
        groups = [("redis get", "fabric get", "raw floor"), ("redis put", "fabric put"),
                  ("fabric local get",), ("redis throughput", "fabric throughput")]
        for round_no in range(args.runs):
            for group in groups:
                turn = round_no % len(group)  # who goes first rotates every round
                for name in group[turn:] + group[:turn]:
                    t0 = time.monotonic()
                    results[name].append(await measures[name]())
                    print(f"  {name}: run {round_no + 1}/{args.runs} = {results[name][-1]} "
                          f"({time.monotonic() - t0:.2f} s)", file=sys.stderr, flush=True)

        for op in ("get", "put"):
            for metric in ("p50", "p99"):
                report.add(f"redis {op}", metric, "us", [r[metric] for r in results[f"redis {op}"]])
                report.add(f"fabric remote {op}", metric, "us",
                           [r[metric] for r in results[f"fabric {op}"]], baseline=f"redis {op}",
                           note="goal: p50 <= 1.2x, p99 <= 2x" + (
                               "; acknowledged by 2 copies" if op == "put" else ""))
        for metric in ("p50", "p99"):
            report.add("raw pyzmq asyncio round trip", metric, "us",
                       [r[metric] for r in results["raw floor"]], baseline="redis get",
                       note="fabric's transport floor: DEALER/ROUTER echo, msgpack, asyncio")
        report.add("redis get", "rate", "ops/s", [r["rate"] for r in results["redis get"]])
        report.add("fabric owner-local get", "rate", "ops/s",
                   [r["rate"] for r in results["fabric local get"]], baseline="redis get",
                   note="goal: >= 20x")
        report.add("redis 3 clients", "throughput", "ops/s", results["redis throughput"])
        report.add("fabric 3 nodes", "throughput", "ops/s", results["fabric throughput"],
                   baseline="redis 3 clients",
                   note=f"90% get / 10% put, {CONCURRENCY} tasks per process; goal: >= 1x")

        # A fourth owner joins: how many entries move?
        before = await _ask_all(client_node, box, names, ("stats", box.self), "stats")
        handed_before = sum(s[2]["handoffs"] for s in before)
        fourth = kids.function(_owner, port=ports[5], seed=first, index=3, nkeys=nkeys,
                               name="owner3")
        names.append(fourth.expect("ready", STALL_S)["name"])
        deadline = h.Deadline(STALL_S)
        previous = -1
        while not deadline.expired():  # until the hand-off stops moving
            await asyncio.sleep(1.0)
            got = await _ask_all(client_node, box, names, ("stats", box.self), "stats")
            handed = sum(s[2]["handoffs"] for s in got) - handed_before
            if all(s[3] == 4 and s[2]["handoff_pending"] == 0 for s in got) and \
                    handed == previous > 0:
                break
            previous = handed
        fraction = previous / (nkeys * 2)
        report.add("keys moved on a 4th join", "fraction", "of copies", [fraction],
                   note=f"ideal 0.25; goal <= 0.30 ({fraction / 0.25:.2f}x ideal)")
        for name in names:
            client_node.send(("bench_cache", name), ("stop",))
        await rclient.aclose()
    finally:
        await client_node.stop()
        await solo_node.stop()


def main(argv: list[str] | None = None) -> int:
    args = h.parse_args(__doc__, argv)
    why = redis_available()
    if why is not None:
        print(f"bench_cache: skipped, {why}")
        return 0
    report = h.Report("bench_cache", args)
    server = RedisServer()
    try:
        with h.Children() as kids:
            fb.quiet_logs()
            asyncio.run(_run(args, report, kids, server))
    finally:
        server.stop()
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "redis_available"]
