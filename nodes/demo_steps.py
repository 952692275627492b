"""The steps of ``python -m nodes.demo``: what the walkthrough shows, one function each.

Each step is an async function of the narrator (:class:`nodes.demo_cluster.Demo`) that
narrates what it does and returns a one-line result for the summary table, or raises
:class:`~nodes.demo_cluster.StepFailed` saying what it could not show. They run in the
order of :data:`nodes.demo.STEPS` and share the cluster, so a step that kills a member
either restarts it or comes last (the leader election does). The process functions they
spawn on the members are in :mod:`nodes.demo_member` (the ``SPEC + name`` specs).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import statistics
import subprocess
import time
from collections import Counter
from typing import Any

import fabric
from fabric.testing import NodeProcess
from nodes.demo_cluster import (
    MEMBERS,
    REPO,
    Demo,
    Member,
    Report,
    StepFailed,
    per_node,
    short,
    spid,
    tagged,
)
from nodes.demo_member import HITS, HOST, SEEN, SINGLETON, SPEC, WAIT

ROUND_TRIPS = 100  # hello/world round trips (and counter calls) timed after the first
COUNTER = "counter"  # the local name of the counter GenServer (step 3)
EVENTS = "events"  # the process group of step 4
SUBSCRIBERS = 3  # members of EVENTS per member node
ELECTION = "scheduler"  # the leader election group of step 9
DSUP_JOBS = 9  # children of the distributed supervisor (step 8)


def how_learned(m: Member, peer: str, members: list[Member]) -> str:
    """How member ``m`` met ``peer``: one was the other's seed, or the mesh introduced them."""
    if m.seed is not None and m.seed.short == peer:
        return "its seed"
    if any(o.short == peer and o.seed is m for o in members):
        return f"{peer}'s seed"
    return "transitively"


async def step_mesh(demo: Demo) -> str:
    """Launch the members, each with one seed, and watch the full mesh form."""
    mark = len(demo.reports)
    for m in demo.members:
        demo.launch(m)
    started: list[Report] = []
    for m in demo.members:
        def has_started(m: Member = m) -> list[Report]:
            return demo.since(mark, "started", m.short, m.run)
        started.append((await demo.wait_for(f"{m.short} to start", has_started))[0])
    for r in sorted(started, key=lambda r: r.t):
        demo.say(f"{r.source} is listening, creation {r.data['creation']:#010x}", r.t)
    # The narrator joins last, as a hidden node: it connects to each member explicitly,
    # and nobody connects onward to it.
    node = fabric.Node(demo.node_name, cookie=demo.cookie, hidden=True,
                       pub_port=demo.node_pub_port, drain_timeout=1.0)
    await node.start()
    demo.node = node
    asyncio.get_running_loop().create_task(demo.watch_own_node(node))
    for m in demo.members:
        if not await node.connect(m.name, timeout=WAIT / 2):
            raise StepFailed(f"the narrator could not connect to {m.short}: "
                             f"{node.last_connect_error(m.name)}")
    await demo.wait_for("every member to see the two others", demo.full_mesh)
    done = time.monotonic()
    ups = demo.since(mark, "nodeup")
    for r in sorted(ups, key=lambda r: r.t):
        if r.source == "demo":
            continue
        m = demo.member(r.source)
        view = ", ".join(sorted(short(p) for p in r.data.get("view", [])))
        demo.say(f"  {r.source:<4} nodeup   {r.peer:<4} {how_learned(m, r.peer, demo.members):<16} "
                 f"view: {view}", r.t)
    # A link is reported by both of its ends: count each pair once.
    made = sorted({"-".join(sorted((r.source, r.peer))) for r in ups if r.source != "demo"
                   and how_learned(demo.member(r.source), r.peer, demo.members)
                   == "transitively"})
    demo.say(f"full mesh: each of the {MEMBERS} members sees the {MEMBERS - 1} others; "
             f"never configured, made by the mesh: {', '.join(made) or 'none'}", done)
    visible = sorted(short(n) for n in node.nodes())
    demo.say(f"narrator (hidden) is connected to {', '.join(visible)}; members do not "
             "list it")
    first = min(r.t for r in started)
    return (f"{MEMBERS} members, one seed each, full mesh {done - first:.2f} s "
            "after the first was listening")


async def step_spawn(demo: Demo) -> str:
    """Spawn an exported function on n2 and time hello/world round trips with it."""
    node = demo.node
    assert node is not None
    target = demo.member("n2")
    spec = SPEC + "hello_worker"
    mbox = node.new_mailbox()  # the narrator's own mailbox: a pid the worker can answer
    try:
        t = time.monotonic()
        pid = await node.spawn_on(target.name, spec, timeout=WAIT / 2)
        spawned = time.monotonic() - t
        demo.say(f"spawn_on {target.short} {spec} -> {pid!r} ({spawned * 1000:.1f} ms)")
        ref = mbox.monitor(pid)

        async def round_trip() -> tuple[float, Any]:
            t = time.monotonic()
            node.send(pid, ("hello", mbox.self))
            reply = await mbox.receive(
                match=lambda msg: type(msg) is tuple and msg[:1] == ("world",),
                timeout=WAIT / 2)
            return time.monotonic() - t, reply

        first, reply = await round_trip()
        if reply != ("world", target.name):
            raise StepFailed(f"expected ('world', {target.name!r}), got {reply!r}")
        demo.say(f"sent ('hello', {mbox.self!r}) -> got {reply!r} in {first * 1000:.2f} ms")
        samples = [(await round_trip())[0] for _ in range(ROUND_TRIPS)]
        p50 = statistics.median(samples) * 1000
        worst = max(samples) * 1000
        demo.say(f"{ROUND_TRIPS} more round trips: median {p50:.2f} ms, max {worst:.2f} ms")
        node.send(pid, "stop")
        down = await mbox.receive(
            match=lambda msg: isinstance(msg, fabric.Down) and msg.ref == ref,
            timeout=WAIT / 2)
        demo.say(f"worker stopped; the narrator's monitor on it fired: reason {down.reason!r}")
    except fabric.ReceiveTimeout as exc:
        raise StepFailed(f"no answer from the worker on {target.short}: {exc}") from None
    finally:
        node.close_mailbox(mbox)
    return f"('world', {target.short}) in {first * 1000:.2f} ms; median {p50:.2f} ms"


async def step_genserver(demo: Demo) -> str:
    """Start a counter GenServer on n1; call it from the narrator and from n2; make it
    raise, and see the RemoteError (and the crash) on the calling side."""
    node = demo.node_up()
    home, other = demo.member("n1"), demo.member("n2")
    server = (COUNTER, home.name)
    mbox = node.new_mailbox()
    try:
        await node.spawn_on(home.name, SPEC + "start_counter", mbox.self, COUNTER,
                            timeout=WAIT / 2)
        started = await demo.receive(mbox, f"the counter to start on {home.short}",
                                     tagged("counter_started", "counter_failed"))
        if started[0] == "counter_failed":
            raise StepFailed(f"the counter did not start on {home.short}: {started[2]}")
        pid = started[2]
        demo.say(f"spawn_on {home.short} start_counter -> Counter GenServer {spid(pid)}, "
                 f"registered on {home.short} as {COUNTER!r}")
        expected = 0
        for _ in range(3):
            t = time.monotonic()
            value = await fabric.call(node, server, ("incr", 5), timeout=WAIT / 2)
            ms = (time.monotonic() - t) * 1000
            expected += 5
            demo.say(f"  narrator call(({COUNTER!r}, {home.short}), ('incr', 5)) -> "
                     f"{value:<3} in {ms:5.2f} ms")
            if value != expected:
                raise StepFailed(f"expected {expected}, the counter answered {value!r}")
        # The same call from a process on another member: spawn a caller there, which
        # reports its reply and its own timing back to our mailbox.
        await node.spawn_on(other.name, SPEC + "call_counter", mbox.self, COUNTER,
                            home.name, ("incr", 5), timeout=WAIT / 2)
        _, _, _, outcome, secs = await demo.receive(
            mbox, f"the call from {other.short}", tagged("called"))
        expected += 5
        if outcome != ("ok", expected):
            raise StepFailed(f"the call from {other.short} got {outcome!r}, "
                             f"expected ('ok', {expected})")
        demo.say(f"  {other.short:<8} call(({COUNTER!r}, {home.short}), ('incr', 5)) -> "
                 f"{outcome[1]:<3} in {secs * 1000:5.2f} ms")
        samples = []
        for _ in range(ROUND_TRIPS):
            t = time.monotonic()
            await fabric.call(node, server, "get", timeout=WAIT / 2)
            samples.append(time.monotonic() - t)
        p50 = statistics.median(samples) * 1000
        demo.say(f"{ROUND_TRIPS} more calls ('get') from the narrator: median {p50:.2f} ms, "
                 f"max {max(samples) * 1000:.2f} ms")
        # handle_call raising: the caller gets RemoteError with the remote type name, and
        # the server crashes (Erlang's policy): a monitor on it shows the exit reason.
        ref = mbox.monitor(pid)
        try:
            await fabric.call(node, server, ("div", 0), timeout=WAIT / 2)
        except fabric.RemoteError as exc:
            error = exc
        else:
            raise StepFailed("('div', 0) did not raise")
        frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', error.remote_traceback)
        where = (f"{os.path.relpath(frames[-1][0], REPO)}:{frames[-1][1]} in {frames[-1][2]}"
                 if frames else "?")
        demo.say(f"  narrator call(({COUNTER!r}, {home.short}), ('div', 0))  -> RemoteError, "
                 f"remote type {error.type_name}")
        demo.say(f"    message {error.message!r}, raised at {where}")
        down = await demo.receive(mbox, "the counter's Down",
                                  lambda m: isinstance(m, fabric.Down) and m.ref == ref)
        # The reason is ("error", type, message): the message was just shown.
        reason = (repr(down.reason[:2])[:-1] + ", ...)" if type(down.reason) is tuple
                  else repr(down.reason))
        demo.say(f"    the server crashed, as in Erlang: Down reason {reason}")
        if error.type_name != "ZeroDivisionError":
            raise StepFailed(f"expected a remote ZeroDivisionError, got {error.type_name}")
    finally:
        node.close_mailbox(mbox)
    return (f"5..{expected} from 2 nodes, p50 {p50:.2f} ms; "
            f"RemoteError({error.type_name})")


async def step_groups(demo: Demo) -> str:
    """Subscribers on every member join a pg group; the narrator watches the group
    converge, broadcasts to it (reliable, then best effort) and sends to one member."""
    node = demo.node_up()
    mbox = node.new_mailbox()
    try:
        token, _ = node.pg.monitor(EVENTS, mbox.self)
        t0 = time.monotonic()
        pids = list(await asyncio.gather(*(
            node.spawn_on(m.name, SPEC + "subscriber", EVENTS, mbox.self, timeout=WAIT / 2)
            for m in demo.members for _ in range(SUBSCRIBERS))))
        demo.say(f"spawn_on subscriber x{SUBSCRIBERS} on each member: {len(pids)} processes "
                 f"join {EVENTS!r} ({per_node(pids)})")
        # The group monitor turns every change of the narrator's view into a PgJoin /
        # PgLeave event, delivered as the view changes: once the view is complete,
        # every notification is already in the mailbox, and they replay its growth.
        def note(m: Any) -> bool:
            return type(m) in (fabric.PgJoin, fabric.PgLeave) and m.token == token

        size, sizes = 0, []
        while True:
            if sorted(node.pg.get_members(EVENTS)) != sorted(pids):
                change = await demo.receive(
                    mbox, f"get_members({EVENTS!r}) to list all of them", note)
            elif (change := await mbox.receive(note, timeout=0, default=None)) is None:
                break
            size += len(change.pids) * (1 if type(change) is fabric.PgJoin else -1)
            sizes.append(size)
        done = time.monotonic()
        node.pg.demonitor(token)
        demo.say(f"narrator's get_members({EVENTS!r}): {' '.join(map(str, sizes))} pids "
                 f"(PgJoin events), all {len(pids)} after {(done - t0) * 1000:.1f} ms")

        async def deliveries(msg: Any, what: str, timeout: float,
                             want: int = len(pids)) -> list[Any]:
            """The ``delivered`` reports of ``msg``, until ``want`` came (default: one
            per subscriber) or ``timeout`` passed (a best-effort broadcast may reach
            fewer)."""
            got: list[Any] = []
            end = min(time.monotonic() + timeout, demo.deadline)
            while len(got) < want and (left := end - time.monotonic()) > 0:
                report = await mbox.receive(lambda m: tagged("delivered")(m) and m[2] == msg,
                                            timeout=min(0.1, left), default=None)
                if report is None:
                    demo.check_alive(what)  # a dead member is the reason, not the count
                else:
                    got.append(report)
            return got

        msg: Any = ("event", 1)
        t = time.monotonic()
        node.pg.broadcast_reliable(EVENTS, msg)
        got = await deliveries(msg, "the reliable broadcast", WAIT / 2)
        if sorted(r[1] for r in got) != sorted(pids):
            raise StepFailed(f"broadcast_reliable reached {len(got)} of {len(pids)}")
        slowest = (max(r[3] for r in got) - t) * 1000
        demo.say(f"broadcast_reliable {msg!r}: {len(got)}/{len(pids)} reported it "
                 f"({per_node([r[1] for r in got])}) within {slowest:.1f} ms")
        msg = ("event", 2)
        node.pg.broadcast(EVENTS, msg)
        # One publish on the narrator's PUB socket, fanned out by each node's SUB: it may
        # drop at the high-water mark, so it is counted here, never required.
        best = await deliveries(msg, "the best-effort broadcast", 1.0)
        demo.say(f"broadcast {msg!r}:          {len(best)}/{len(pids)} reported it "
                 "(best effort: one PUB/SUB publish, may drop)")
        # send_to_one from a process on n2, local first: one of n2's own subscribers.
        sender = demo.member("n2")
        msg = ("event", 3)
        await node.spawn_on(sender.name, SPEC + "send_one", EVENTS, msg, "local_first",
                            mbox.self, timeout=WAIT / 2)
        chosen = (await demo.receive(mbox, "send_one's report", tagged("sent_one")))[2]
        got = await deliveries(msg, "the send_to_one delivery", WAIT / 2, want=1)
        if chosen is None or short(chosen.node) != sender.short or [r[1] for r in got] \
                != [chosen]:
            raise StepFailed(f"send_to_one(local_first) from {sender.short} chose "
                             f"{chosen!r}; delivered to {[r[1] for r in got]!r}")
        demo.say(f"send_to_one {msg!r} local_first from {sender.short} -> {spid(chosen)}, "
                 f"one of {sender.short}'s own members (it reported it)")
        first, again = (node.pg.send_to_one(EVENTS, ("event", 4 + i),
                                            strategy="hash", key="user:42") for i in range(2))
        if first is None or again != first:
            raise StepFailed(f"strategy hash chose {first!r}, then {again!r} for one key")
        demo.say(f"send_to_one hash of key 'user:42' from the narrator, twice -> "
                 f"{spid(first)} both times")
    finally:
        node.close_mailbox(mbox)
    return (f"{len(pids)} members; reliable {len(pids)}/{len(pids)}, best effort "
            f"{len(best)}/{len(pids)}; local_first on {sender.short}")


async def step_kill(demo: Demo) -> str:
    """kill -9 n3; every survivor must see NodeDown(connection_closed), and quickly; n3's
    members of the process group must leave it in the narrator's view."""
    victim = demo.member("n3")
    survivors = [m.short for m in demo.members if m is not victim] + ["demo"]
    mark = len(demo.reports)
    assert victim.proc is not None
    node = demo.node_up()
    before = node.pg.get_members(EVENTS)
    demo.say(f"kill -9 {victim.short} (pid {victim.proc.pid})")
    t_kill = demo.kill9(victim)

    def all_down() -> list[Report] | None:
        found = [demo.first(mark, "nodedown", s, victim.short) for s in survivors]
        downs = [r for r in found if r is not None]
        return downs if len(downs) == len(survivors) else None

    downs = await demo.wait_for(f"every survivor's nodedown for {victim.short}", all_down)
    with contextlib.suppress(subprocess.TimeoutExpired):
        victim.proc.wait(WAIT)  # reap it
    delays = []
    for r in sorted(downs, key=lambda r: r.t):
        ms = (r.t - t_kill) * 1000
        delays.append(ms)
        who = "demo (hidden)" if r.source == "demo" else r.source
        demo.say(f"  {who:<13} nodedown {r.peer:<4} reason {r.data['reason']:<18} "
                 f"noticed after {ms:6.1f} ms", r.t)
    wrong = [r for r in downs if r.data["reason"] != "connection_closed"]
    if wrong:
        raise StepFailed("expected reason connection_closed, got " + ", ".join(
            f"{r.source}: {r.data['reason']}" for r in wrong))
    for m in demo.members:
        if m is not victim:
            demo.say(f"  {m.short} now sees: {', '.join(sorted(demo.view(m) or ())) or '-'}")
    # pg drops every member of a node on its nodedown: nothing needs to come from it.
    after = node.pg.get_members(EVENTS)
    if any(p.node == victim.name for p in after):
        raise StepFailed(f"{victim.short}'s members are still in {EVENTS!r}: {after!r}")
    demo.say(f"  group {EVENTS!r} in the narrator's view: {len(before)} -> {len(after)} "
             f"members ({per_node(after)}); {victim.short}'s left with its nodedown")
    return (f"{', '.join(sorted(r.source for r in downs))}: connection_closed within "
            f"{max(delays):.1f} ms; {EVENTS} {len(before)} -> {len(after)}")


async def step_restart(demo: Demo) -> str:
    """Restart n3 on the same port; every survivor must see it come back."""
    m = demo.member("n3")
    old = m.creation
    mark = len(demo.reports)
    t = time.monotonic()
    demo.launch(m)
    started = await demo.wait_for(f"{m.short} to restart",
                                  lambda: demo.since(mark, "started", m.short, m.run))
    demo.say(f"{m.short} is listening again on port {m.port}, creation "
             f"{m.creation:#010x} (was {old:#010x})", started[0].t)
    others = [o.short for o in demo.members if o is not m] + ["demo"]

    def healed() -> list[Report] | None:
        found = [demo.first(mark, "nodeup", s, m.short) for s in others]
        ups = [r for r in found if r is not None]
        return ups if len(ups) == len(others) and demo.full_mesh() else None

    ups = await demo.wait_for(f"every node to see {m.short} up again", healed)
    own = demo.since(mark, "nodeup", m.short, m.run)
    for r in sorted(ups + own, key=lambda r: r.t):
        who = "demo (hidden)" if r.source == "demo" else r.source
        demo.say(f"  {who:<13} nodeup   {r.peer:<4} {(r.t - t) * 1000:7.1f} ms after "
                 "the restart", r.t)
    if m.creation == old:
        raise StepFailed(f"{m.short} came back with the same creation {old:#x}")
    done = max(r.t for r in ups)
    demo.say(f"healed: full mesh again, {done - started[0].t:.2f} s after {m.short} "
             f"was listening; {m.short} dialed its seed {m.seed.short if m.seed else '-'}, "
             "the mesh did the rest")
    # Nobody dials a hidden node, so the narrator's nodeup proves the reconnect loop that
    # every node runs for a peer lost abnormally (connection_closed, peer_reset,
    # heartbeat_timeout).
    demo.say("the hidden narrator, which nobody dials, came back by its own reconnect loop")
    return f"{m.short} back with a new creation; nodeup everywhere in {done - t:.2f} s"


async def step_crdt(demo: Demo) -> str:
    """The seed's "Partition-Tolerant Writes with CRDTs": a replicated counter and set on
    every member; n1 is cut off from n2 and n3 (``Node.block``); both sides keep writing;
    after the heal every replica holds the exact sum and every element."""
    node = demo.node_up()
    mbox = node.new_mailbox()
    cut, rest = demo.member("n1"), [demo.member("n2"), demo.member("n3")]
    members = [cut, *rest]
    workers: dict[str, fabric.Pid] = {}

    async def ask(m: Member, request: tuple[Any, ...], answer: str) -> tuple[Any, ...]:
        node.send(workers[m.short], request)
        reply: tuple[Any, ...] = await demo.receive(
            mbox, f"{answer} from {m.short}",
            lambda msg: tagged(answer)(msg) and msg[1] == m.name)
        return reply[2:]

    async def write(m: Member, kind: str, arg: Any, level: str = "local") -> Any:
        status, value = (await ask(m, (kind, arg, level), "crdt_wrote"))[3]
        shown = f"-> {value}" if status == "ok" else f"-> {status}: {value}"
        demo.say(f"  {m.short} {kind} {arg!r} write={level!r:<10} {shown}")
        return status

    try:
        for m in members:
            workers[m.short] = await node.spawn_on(m.name, SPEC + "crdt_worker", mbox.self,
                                                   timeout=WAIT / 2)
        for m in members:
            (count,) = await ask(m, ("members", len(members), WAIT / 2), "crdt_members")
            if count != len(members):
                raise StepFailed(f"{m.short}'s replicator sees {count} of {len(members)}")
        demo.say(f"a Replicator on each member (delta interval 0.1 s): counter "
                 f"{HITS.name!r} (GCounter), set {SEEN.name!r} (ORSet); {len(members)} "
                 "members, majority 2")
        for m in members:
            await write(m, "incr", 1)
        for m in members:
            await ask(m, ("await", 3, [], WAIT / 2), "crdt_values")
        demo.say("  every member reads counter = 3")

        # The partition: n1 alone against n2 + n3.
        mark = len(demo.reports)
        await ask(cut, ("block", [m.name for m in rest], WAIT), "crdt_blocked")
        demo.say(f"partition: {cut.short} blocks {rest[0].short} and {rest[1].short} "
                 "(Node.block: sessions torn down, reconnects refused)")

        def split() -> list[Report] | None:
            found = [demo.first(mark, "nodedown", cut.short, m.short) for m in rest]
            found += [demo.first(mark, "nodedown", m.short, cut.short) for m in rest]
            downs = [r for r in found if r is not None]
            return downs if len(downs) == len(found) else None

        for r in sorted(await demo.wait_for("both sides to see the partition", split),
                        key=lambda r: r.t):
            demo.say(f"  {r.source} nodedown {r.peer} reason {r.data['reason']}", r.t)
        sums: dict[str, int] = {}
        for m, step, times in ((cut, 1, 5), (rest[0], 10, 3), (rest[1], 100, 2)):
            for _ in range(times):
                await write(m, "incr", step)
            sums[m.short] = step * times
        apple, plum = f"apple@{cut.short}", f"plum@{rest[1].short}"
        await write(cut, "add", apple)
        await write(rest[1], "add", plum)
        kiwi, pear = f"kiwi@{cut.short}", f"pear@{rest[0].short}"
        if await write(cut, "add", kiwi, "majority") == "ok":
            raise StepFailed(f"a majority write on the cut-off {cut.short} succeeded")
        if await write(rest[0], "add", pear, "majority") != "ok":
            raise StepFailed(f"a majority write on {rest[0].short} (with "
                             f"{rest[1].short}) failed")
        demo.say(f"  (the failed majority write is still applied on {cut.short}: it is "
                 "not acknowledged, and not rolled back either)")
        expected_sides = ((cut, 3 + sums[cut.short], [apple, kiwi]),
                          (rest[1], 3 + sums[rest[0].short] + sums[rest[1].short],
                           [plum, pear]))
        sides = await asyncio.gather(*(ask(m, ("await", c, e, WAIT / 2), "crdt_values")
                                       for m, c, e in expected_sides))
        for (m, c, e), (counter, seen, _) in zip(expected_sides, sides, strict=True):
            if (counter, sorted(seen)) != (c, sorted(e)):
                raise StepFailed(f"during the partition {m.short} holds {counter}, {seen}; "
                                 f"expected {c}, {sorted(e)}")
        demo.say(f"  during the partition: {cut.short} reads {sides[0][0]}, "
                 f"{rest[1].short} reads {sides[1][0]} (each side has its own writes)")
        elements = [apple, kiwi, plum, pear]

        # The heal.
        mark = len(demo.reports)
        (t_heal,) = await ask(cut, ("unblock", [m.name for m in rest]), "crdt_unblocked")
        await demo.wait_for("the members to meet again", lambda: (
            all(demo.first(mark, "nodeup", cut.short, m.short) for m in rest)
            and demo.full_mesh()))
        total = 3 + sum(sums.values())
        demo.say(f"heal: {cut.short} unblocks them; full mesh again; expected counter "
                 f"3 + {' + '.join(str(v) for v in sums.values())} = {total}")
        results = await asyncio.gather(*(
            ask(m, ("await", total, elements, WAIT / 2), "crdt_values") for m in members))
        for m, (counter, seen, t) in zip(members, results, strict=True):
            demo.say(f"  {m.short} counter = {counter}, set = {sorted(seen)}   "
                     f"{(t - t_heal) * 1000:.0f} ms after the heal", t)
            if counter != total or sorted(seen) != sorted(elements):
                raise StepFailed(f"{m.short} holds counter {counter}, set {seen}; expected "
                                 f"{total}, {sorted(elements)}")
        slowest = max(t for _, _, t in results) - t_heal
        for pid in workers.values():
            node.send(pid, "stop")
    finally:
        node.close_mailbox(mbox)
    return (f"both sides wrote during the partition; all 3 agree on {total} and "
            f"{len(elements)} elements {slowest * 1000:.0f} ms after the heal")


async def step_leader(demo: Demo) -> str:
    """A candidate on every member stands for one group; kill -9 the leader's node and
    time the election of a new leader, whose term must be higher."""
    node = demo.node_up()
    mbox = node.new_mailbox()
    latest: dict[fabric.Pid, tuple[Any, ...]] = {}  # candidate -> its last report

    def agreed(cands: list[fabric.Pid], above: int) -> tuple[fabric.Pid, int] | None:
        """The (leader, term) all of ``cands`` were last told, if one and > ``above``."""
        if any(c not in latest for c in cands):
            return None
        told = {latest[c][2][2:4] for c in cands if latest[c][2][0] == "leader_elected"}
        if len(told) != 1:
            return None
        leader, term = told.pop()
        return (leader, term) if term > above else None

    async def election(cands: list[fabric.Pid], above: int, what: str) -> tuple[fabric.Pid, int]:
        while (result := agreed(cands, above)) is None:
            report = await demo.receive(mbox, what, tagged("candidate"))
            latest[report[1]] = report
        return result

    try:
        t0 = time.monotonic()
        # All at once, so that they race: global lets exactly one register the name.
        cands = list(await asyncio.gather(*(
            node.spawn_on(m.name, SPEC + "candidate", ELECTION, mbox.self, timeout=WAIT / 2)
            for m in demo.members)))
        demo.say(f"spawn_on candidate on each member: {', '.join(map(spid, cands))} "
                 f"stand for {ELECTION!r} at once")
        leader, term = await election(cands, 0, "every candidate to agree on a leader")
        last = max(latest[c][3] for c in cands)
        demo.say(f"  all {len(cands)} told ('leader_elected', {ELECTION!r}, {spid(leader)}, "
                 f"{term}) within {(last - t0) * 1000:.1f} ms; narrator: {_leader_str(node)}")
        victim = next(m for m in demo.members if m.name == leader.node)
        assert victim.proc is not None
        survivors = [c for c in cands if c.node != victim.name]
        demo.say(f"kill -9 {victim.short} (pid {victim.proc.pid}), the leader's node")
        t_kill = demo.kill9(victim)
        new, new_term = await election(survivors, term, "a new leader with a higher term")
        with contextlib.suppress(subprocess.TimeoutExpired):
            victim.proc.wait(WAIT)  # reap it
        for c in sorted(survivors, key=lambda c: latest[c][3]):
            demo.say(f"  {spid(c):<7} told ('leader_elected', {ELECTION!r}, {spid(new)}, "
                     f"{new_term}) {(latest[c][3] - t_kill) * 1000:6.1f} ms after the kill")
        elected = max(latest[c][3] for c in survivors) - t_kill
        if new.node == victim.name:
            raise StepFailed(f"the new leader {new!r} is on the killed node")
        demo.say(f"new leader {spid(new)} on {short(new.node)}, higher term {new_term} > {term} "
                 f"(a fencing token), {elected * 1000:.1f} ms after the kill")
        demo.say(f"  narrator: {_leader_str(node)}")
    finally:
        node.close_mailbox(mbox)
    return (f"leader on {victim.short} (term {term}) killed; {short(new.node)} leads, "
            f"term {new_term}, after {elected * 1000:.0f} ms")


async def step_supervision(demo: Demo) -> str:
    """Every member started its application (a supervision tree) with a worker; crash
    n2's and see its supervisor restart it in place, under the same name."""
    node = demo.node_up()
    before = {}
    for m in demo.members:
        where, pid = await fabric.call(node, ("worker", m.name), "whoami", timeout=WAIT / 2)
        before[m.short] = pid
        demo.say(f"{m.short}'s tree: worker {spid(pid)} registered as 'worker' on {short(where)}")
    target = demo.member("n2")
    old = before[target.short]
    t = time.monotonic()
    try:
        await fabric.call(node, ("worker", target.name), "crash", timeout=WAIT / 2)
    except fabric.RemoteError as exc:
        demo.say(f"call(('worker', {target.short}), 'crash') -> RemoteError({exc.type_name}); "
                 "the worker crashed")
    else:
        raise StepFailed("the worker did not crash")
    end = time.monotonic() + WAIT
    while True:  # until the restarted worker answers under its name (bounded)
        with contextlib.suppress(fabric.FabricError):
            where, pid = await fabric.call(node, ("worker", target.name), "whoami",
                                           timeout=WAIT / 4)
            if pid != old:
                break
        if time.monotonic() > end:
            raise StepFailed(f"no restarted worker answered on {target.short}")
        await asyncio.sleep(0.002)
    took = (time.monotonic() - t) * 1000
    if short(where) != target.short:
        raise StepFailed(f"the worker came back on {short(where)}, not {target.short}")
    demo.say(f"restarted in place: {spid(pid)} on {short(where)} answers as 'worker', "
             f"{took:.1f} ms after the crash")
    return f"{len(before)} trees; n2's worker crashed, restarted in place in {took:.1f} ms"


async def step_dsupervisor(demo: Demo) -> str:
    """Start jobs under the distributed supervisor; kill -9 the member holding the most;
    every job answers again, by its global name, from a survivor. Then restart it."""
    node = demo.node_up()
    keys = [f"job-{i}" for i in range(DSUP_JOBS)]
    mbox = node.new_mailbox()
    try:
        await node.spawn_on(demo.member("n1").name, SPEC + "start_jobs", mbox.self, keys,
                            timeout=WAIT / 2)
        reply = await demo.receive(mbox, "the jobs to start",
                                   tagged("jobs_started", "jobs_failed"))
    finally:
        node.close_mailbox(mbox)
    if reply[0] == "jobs_failed":
        raise StepFailed(f"start_child failed: {reply[1]}")
    placed = dict(reply[1])
    by_node = sorted(Counter(short(n) for n in placed.values()).items())
    demo.say(f"start_child x{len(keys)} from n1: placed by the hash ring on "
             f"{', '.join(f'{n} x{c}' for n, c in by_node)}; each registered globally")
    victim = max(demo.members, key=lambda m: sum(1 for n in placed.values() if n == m.name))
    lost = sorted(k for k, n in placed.items() if n == victim.name)
    assert victim.proc is not None
    demo.say(f"kill -9 {victim.short} (pid {victim.proc.pid}), which holds {len(lost)}: "
             f"{', '.join(lost)}")
    t_kill = demo.kill9(victim)

    async def answering() -> dict[str, str]:
        out = {}
        for key in keys:
            with contextlib.suppress(fabric.FabricError):
                out[key] = await fabric.call(node, fabric.GlobalName(key), "where",
                                             timeout=WAIT / 4)
        return out

    end = time.monotonic() + WAIT
    while True:
        homes = await answering()
        if len(homes) == len(keys) and victim.name not in homes.values():
            break
        if time.monotonic() > end:
            raise StepFailed(f"jobs not answering from survivors: {homes!r}")
        await asyncio.sleep(0.002)
    took = (time.monotonic() - t_kill) * 1000
    moved = ", ".join(f"{k} -> {short(homes[k])}" for k in lost)
    demo.say(f"all {len(keys)} jobs answer again {took:.1f} ms after the kill; {moved}")
    with contextlib.suppress(subprocess.TimeoutExpired):
        victim.proc.wait(WAIT)  # reap it
    mark = len(demo.reports)
    demo.launch(victim)
    await demo.wait_for(f"{victim.short} to restart",
                        lambda: demo.since(mark, "started", victim.short, victim.run))
    await demo.wait_for("the full mesh again, the narrator included", lambda: (
        demo.full_mesh() and demo.first(mark, "nodeup", "demo", victim.short)) or None)
    demo.say(f"{victim.short} restarted (its tree too) and rejoined the mesh")
    return (f"{len(keys)} jobs; kill -9 {victim.short} ({len(lost)} of them): all answer "
            f"again in {took:.0f} ms")


def _leader_str(node: fabric.Node) -> str:
    """The narrator node's own view of the election's leader, for the narration."""
    seen = node.global_.leader(ELECTION)
    return "no leader" if seen is None else f"{spid(seen[0])} term {seen[1]}"


async def step_gossip(demo: Demo) -> str:
    """Start 3 more nodes with gossip discovery and no names given; they find each other."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        udp_port = s.getsockname()[1]
    # Loopback multicast: the interface is 127.0.0.1 and TTL 0, so nothing leaves the host.
    spec = f"gossip:port={udp_port},ttl=0,if_addr=127.0.0.1,interval=0.5"
    nodes = [fabric.Node(f"g{i}@127.0.0.1", port_range=(20000, 60000), discovery=spec)
             for i in range(1, 4)]
    try:
        for node in nodes:
            await node.start()
        t_last = time.monotonic()
        demo.say(f"started {', '.join(n.name for n in nodes)} with discovery {spec!r}; "
                 "no --connect, no names")
        deadline = t_last + WAIT
        while any(len(n.nodes()) < 2 for n in nodes):
            if time.monotonic() > deadline:
                raise StepFailed(f"no full mesh by gossip within {WAIT} s: "
                                 f"{[n.nodes() for n in nodes]}")
            await asyncio.sleep(0.005)
        took = (time.monotonic() - t_last) * 1000
        for node in nodes:
            disc = node.discovery
            assert disc is not None
            demo.say(f"{node.name.split('@')[0]} sees {', '.join(sorted(node.nodes()))}; "
                     f"beacons accepted {disc.metrics.get('gossip.accepted', 0)}, "
                     f"handed to the mesh {disc.metrics['learned']}")
        demo.say(f"full mesh of the 3 by gossip {took:.0f} ms after the last start")
    finally:
        for node in nodes:
            await node.stop()
    return f"3 nodes, no names given: full mesh by gossip in {took:.0f} ms"


async def step_singleton(demo: Demo) -> str:
    """Three more nodes (``fabric node`` processes) are candidates for a singleton; the
    narrator calls it through an observer. kill -9 its node: a survivor runs it and
    answers. SIGTERM the next host while four callers call it: none fails and the ticket
    numbers go on (the state was handed over)."""
    node = demo.node_up()
    spec = ["--run", "nodes.demo_member:start_singleton_candidate"]
    procs: list[NodeProcess] = []
    try:
        for i in range(1, 4):
            seed = [procs[0].name] if procs else []
            proc = NodeProcess(f"s{i}", cookie=demo.cookie, connect=seed, extra_args=spec)
            procs.append(proc)
            proc.start()
            await asyncio.to_thread(proc.wait_ready, WAIT)
        for proc in procs:  # the narrator is hidden: it connects where it is told
            if not await node.connect(proc.name):
                raise StepFailed(f"cannot connect to {proc.name}")
        tickets = await fabric.Singleton(node, SINGLETON, None).start()
        demo.say(f"started {', '.join(short(p.name) for p in procs)} (fabric node --run "
                 f"...start_singleton_candidate); the narrator follows {SINGLETON!r}")
        where = await tickets.call("where", timeout=WAIT)
        first = [await tickets.call("next", timeout=WAIT) for _ in range(3)]
        demo.say(f"one instance, on {short(where)}: call('next') x3 -> {first}")

        victim = next(p for p in procs if p.name == where)
        demo.say(f"kill -9 {short(where)} (pid {victim.pid})")
        t_kill = time.monotonic()
        victim.kill()
        where2 = await tickets.call("where", timeout=WAIT, retry_unsure=True)
        t_answer = time.monotonic()
        host2 = next(p for p in procs if p.name == where2)
        down = await asyncio.to_thread(host2.wait_nodedown, where, WAIT)
        detect_ms = (float(down["t"]) - t_kill) * 1000
        answer_ms = (t_answer - t_kill) * 1000
        demo.say(f"  {short(where2)} saw {short(where)} down after {detect_ms:.1f} ms and "
                 f"answers {answer_ms:.1f} ms after the kill (a fresh start: "
                 f"next -> {await tickets.call('next', timeout=WAIT)})")

        answers: list[int] = []
        failures: list[str] = []
        stop = asyncio.Event()

        async def caller() -> None:
            while not stop.is_set():
                try:
                    answers.append(await tickets.call("next", timeout=WAIT))
                except fabric.FabricError as exc:
                    failures.append(repr(exc))

        callers = [asyncio.ensure_future(caller()) for _ in range(4)]
        await demo.wait_for("calls flowing", lambda: len(answers) >= 50 or None)
        demo.say(f"4 callers call next back to back; SIGTERM {short(where2)} "
                 f"(pid {host2.pid}), a graceful stop")
        os.kill(host2.pid, signal.SIGTERM)
        at_stop = len(answers)
        await demo.wait_for(f"{short(where2)} to exit",
                            lambda: host2.returncode is not None or None)
        await demo.wait_for("calls on the next instance",
                            lambda: len(answers) >= at_stop + 50 or None)
        stop.set()
        await asyncio.gather(*callers)
        where3 = await tickets.call("where", timeout=WAIT)
        lo = min(answers)
        continuous = sorted(answers) == list(range(lo, lo + len(answers)))
        demo.say(f"  {len(answers)} calls, {len(failures)} failed; now on {short(where3)}; "
                 f"ticket numbers {lo}..{max(answers)} "
                 f"{'without a gap or a repeat' if continuous else 'NOT continuous'}")
        if failures or not continuous:
            raise StepFailed(f"the graceful hand-over lost calls: {failures[:3]}, "
                             f"continuous={continuous}")
    finally:
        for proc in procs:
            proc.kill()
            proc.close()
    return (f"kill -9 {short(where)}: {short(where2)} answers after {answer_ms:.0f} ms "
            f"(detection {detect_ms:.0f} ms); SIGTERM {short(where2)}: "
            f"{len(answers)} calls, 0 lost, state moved to {short(where3)}")
# -- the distributed cache ----------------------------------------------------------------------

CACHE_KEYS = 1000  # keys the cache step writes (2 copies each)


async def _cache_call(demo: Demo, mbox: fabric.Process, m: Member, op: str, *args: Any) -> Any:
    """Run ``op`` on member ``m``'s cache (through the exported ``cache_op``)."""
    node = demo.node_up()
    await node.spawn_on(m.name, SPEC + "cache_op", mbox.self, op, list(args), timeout=WAIT / 2)
    reply = await demo.receive(mbox, f"{op} on {m.short}'s cache",
                               tagged("cache_result", "cache_failed"))
    if reply[0] == "cache_failed":
        raise StepFailed(f"{op} on {m.short} failed: {reply[3]}")
    return reply[3]


async def _cache_owners_seen(demo: Demo, mbox: fabric.Process, members: list[Member],
                             count: int) -> None:
    """Wait until each of ``members`` sees ``count`` owners of the cache."""
    end = time.monotonic() + WAIT
    while time.monotonic() < end:  # bounded by WAIT
        seen = [len(await _cache_call(demo, mbox, m, "members")) for m in members]
        if all(n == count for n in seen):
            return
        await asyncio.sleep(0.05)
    raise StepFailed(f"the members did not all see {count} cache owners")


async def step_cache(demo: Demo) -> str:
    """The seed's DistributedCache, done properly: put on n1, get on n2, a TTL expiring,
    kill -9 n3 and every key still served from replicas, then a fourth owner joining and
    about a quarter of the copies moving to it."""
    node = demo.node_up()
    n1, n2, n3 = (demo.member(s) for s in ("n1", "n2", "n3"))
    mbox = node.new_mailbox()
    try:
        for m in (n1, n2, n3):
            await node.spawn_on(m.name, SPEC + "cache_start", mbox.self, timeout=WAIT / 2)
            await demo.receive(mbox, f"the cache to start on {m.short}",
                               tagged("cache_started"))
        await _cache_owners_seen(demo, mbox, [n1, n2, n3], 3)
        demo.say("cache 'demo' on n1, n2, n3: consistent-hash ring, 2 copies per key")
        items = {f"user:{i}": i for i in range(CACHE_KEYS)}
        await _cache_call(demo, mbox, n1, "put_many", items)
        value = await _cache_call(demo, mbox, n2, "get", "user:42")
        owners = await _cache_call(demo, mbox, n2, "owners", "user:42")
        demo.say(f"n1 put_many {CACHE_KEYS} keys; n2 get('user:42') -> {value} "
                 f"(owners {', '.join(short(o) for o in owners)}, primary first)")
        if value != 42:
            raise StepFailed(f"n2 read {value!r} for user:42")
        await _cache_call(demo, mbox, n2, "put", "session", "token-1", 0.5)
        fresh = await _cache_call(demo, mbox, n3, "get", "session")
        await asyncio.sleep(0.6)
        stale = await _cache_call(demo, mbox, n3, "get", "session")
        demo.say(f"n2 put('session', ttl=0.5 s); n3 get -> {fresh!r}; 0.6 s later -> {stale!r}")
        if (fresh, stale) != ("token-1", None):
            raise StepFailed(f"the TTL did not behave: {fresh!r} then {stale!r}")

        held = (await _cache_call(demo, mbox, n3, "stats"))["entries"]
        demo.say(f"kill -9 n3, which held {held} copies")
        demo.kill9(n3)
        with contextlib.suppress(subprocess.TimeoutExpired):
            if n3.proc is not None:
                n3.proc.wait(WAIT)
        await _cache_owners_seen(demo, mbox, [n1, n2], 2)
        got = await _cache_call(demo, mbox, n1, "get_many", list(items))
        demo.say(f"n1 get_many of the {CACHE_KEYS} keys -> {len(got)} found, served from "
                 "the replicas")
        if got != items:
            raise StepFailed(f"only {len(got)} of {CACHE_KEYS} keys survived n3's death")
        await step_restart(demo)
        await node.spawn_on(n3.name, SPEC + "cache_start", mbox.self, timeout=WAIT / 2)
        await demo.receive(mbox, "the cache to start on n3 again", tagged("cache_started"))
        await _cache_owners_seen(demo, mbox, [n1, n2, n3], 3)
        moved = await _fourth_owner(demo, mbox, [n1, n2, n3])
        demo.say(f"a fourth owner joined: {moved:.1%} of the {2 * CACHE_KEYS} copies moved "
                 "to it (ideal 25%); it handed them back when it stopped")
    finally:
        node.close_mailbox(mbox)
    return (f"put n1 -> get n2; TTL expired; {CACHE_KEYS}/{CACHE_KEYS} keys after kill -9; "
            f"{moved:.1%} moved to a 4th owner")


async def _fourth_owner(demo: Demo, mbox: fabric.Process, members: list[Member]) -> float:
    """Start a fourth owner in the narrator's process; the share of copies it received."""
    from fabric.cache import Cache

    fourth = fabric.Node(f"n4@{HOST}", cookie=demo.cookie, port_range=(20000, 60000),
                         pub_port=0, discovery="")
    await fourth.start()
    try:
        if not await fourth.connect(members[0].name, timeout=WAIT / 2):
            raise StepFailed(f"n4 could not connect: {fourth.last_connect_error(members[0].name)}")
        cache = Cache(fourth, "demo", replicas=2)
        end = time.monotonic() + WAIT
        previous = -1
        while time.monotonic() < end:  # until the hand-off settles
            await asyncio.sleep(0.1)
            entries = cache.stats()["entries"]
            pending = [(await _cache_call(demo, mbox, m, "stats"))["handoff_pending"]
                       for m in members]
            if len(cache.core.placement) == 4 and entries == previous > 0 and not any(pending):
                break
            previous = entries
        else:
            raise StepFailed("the hand-off to n4 did not settle")
        await cache.handoff()
        return entries / (2 * CACHE_KEYS)
    finally:
        await fourth.stop()
