"""The slow consumer of issue 12, against a node in another OS process: a process that
never reads while a peer sends flat out must not grow its node's memory without bound,
stall the node's other processes or its heartbeats, or lose a message without telling.

Before the mailbox bound (DECISIONS D23) that node went from 31 MB to 1.2-1.7 GB in 20 s.
"""

from __future__ import annotations

import asyncio

import pytest

from fabric.errors import MailboxFullError
from fabric.testing import async_wait_until
from fabric.testing.cluster import LocalCluster, NodeProcess

FLOOD_S = 4.0  # how long the peer sends flat out at the process that does not read
PAYLOAD = b"x" * 200
# What the receiving node's peak RSS may grow by during the flood: a full mailbox of
# 10,000 such messages is ~4 MB in Python objects; the rest is ZeroMQ's and the
# allocator's (measured +13 MiB; before the bound, 4 s of this flood cost +466 MiB: D23).
RSS_GROWTH_BOUND = 64 << 20


def rss(pid: int, field: str = "VmRSS") -> int:
    """A process's resident (``VmRSS``) or peak resident (``VmHWM``) memory, bytes."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


@pytest.mark.procs
@pytest.mark.io
def test_a_process_that_never_reads_bounds_its_nodes_memory_os_process() -> None:
    with NodeProcess("victim", spawn_echo=True) as victim:  # default heartbeats
        victim.wait_ready()

        async def body() -> None:
            async with LocalCluster(1) as (local,):
                assert await local.connect(victim.name)
                box = local.new_mailbox()
                gate = local.new_mailbox()
                sink = await local.spawn_on(victim.name, "tests._slow_consumer:gated_sink",
                                            gate.self, box.self)
                echo = ("echo", victim.name)
                local.send(echo, ("warm", box.self))
                assert await box.receive(timeout=5) == ("echo", "warm")
                base = rss(victim.pid, "VmHWM")
                sent = refused = 0
                flood_end = local.loop.time() + FLOOD_S
                echoes = 0
                # Flat out: a refused send is retried at once; the loop yields every
                # thousand attempts so the node can flush and read. Every 50 ms the
                # other process of that node must answer (promptly: within 2 s).
                next_probe = local.loop.time()
                while local.loop.time() < flood_end:
                    for _ in range(1000):
                        try:
                            local.send(sink, (sent, PAYLOAD))
                            sent += 1
                        except MailboxFullError:
                            refused += 1
                    await asyncio.sleep(0)
                    if local.loop.time() >= next_probe:
                        local.send(echo, (echoes, box.self))
                        assert await box.receive(timeout=2) == ("echo", echoes)
                        echoes += 1
                        next_probe = local.loop.time() + 0.05
                grown = rss(victim.pid, "VmHWM") - base
                assert refused > 0 and local.metrics["busy_received"] >= 1
                assert local.mailboxes.is_congested(sink)
                # send_wait blocks while the process does not read...
                waiting = asyncio.ensure_future(local.send_wait(sink, (sent, PAYLOAD)))
                done, _ = await asyncio.wait([waiting], timeout=0.3)
                assert not done
                # ... and resumes once it reads.
                local.close_mailbox(gate)
                await asyncio.wait_for(waiting, 10)
                sent += 1
                await local.send_wait(sink, "end")
                report = await box.receive(timeout=20)
                assert report[0] == "drained"
                _, received, counters = report
                dropped = counters["mailbox_dropped"]
                assert received + dropped == sent, (received, dropped, sent)
                await async_wait_until(
                    lambda: local.metrics["dropped_by_peers"] == dropped, 10,
                    message="the drops reported to the sender's node")
                assert counters["bad_input"] == 0
                assert not [e for e in victim.events if e["event"] == "nodedown"]
                assert local.nodes() == [victim.name]
                print(f"flood {FLOOD_S} s: sent {sent}, refused {refused}, dropped "
                      f"{dropped}, peak RSS +{grown >> 20} MiB, {echoes} echoes")
                assert grown < RSS_GROWTH_BOUND, f"peak RSS grew by {grown >> 20} MiB"

        asyncio.run(asyncio.wait_for(body(), 60))
        assert victim.stop() == 0
