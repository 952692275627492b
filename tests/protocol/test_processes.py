"""Process signals (links, monitors, exits, calls, spawns) through the sans-I/O core.

Scenario tests run N cores in :class:`fabric.testing.ProcessSim` (messages go through the
real codec) and are named after what they check; unit tests pin the control messages the
core asks for, which must stay today's wire (PROTOCOL.md section 6.2). Property tests run
random operations across three nodes with partitions and crashes.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabric.protocol.effects import Deliver
from fabric.protocol.mesh_effects import Control
from fabric.protocol.messages import K_CALL
from fabric.protocol.processes import (
    Down,
    Exit,
    Kill,
    ProcessCore,
    RegName,
    ServeSpawn,
    SpawnLost,
    SpawnReplied,
)
from fabric.testing import ProcessSim
from fabric.types import Pid, Ref

A, B, C = NAMES = ["a@h:1", "b@h:2", "c@h:3"]


def sim(*names: str) -> ProcessSim:
    return ProcessSim(list(names or NAMES))


def empty(s: ProcessSim) -> None:
    """No node holds a link, a monitor or a pending spawn (live processes may remain)."""
    for name in s.names():
        left = {k: v for k, v in s.core(name).bookkeeping().items()
                if v and k not in ("processes", "names")}
        assert left == {}, f"{name} still holds {left}"


def downs_of(s: ProcessSim, pid: Pid) -> list[Down]:
    return [d for p, d in s.downs if p == pid]


# -- links --------------------------------------------------------------------------------


def _linked_pair(trap_exits: bool = False) -> tuple[ProcessSim, Pid, Pid]:
    """A process of A linked to one of B, the link in place: ``(sim, a, b)``."""
    s = sim(A, B)
    a, b = s.spawn(A, trap_exits=trap_exits), s.spawn(B, trap_exits=trap_exits)
    s.link(a, b)
    s.run()
    return s, a, b


def test_a_link_across_a_partition_exits_both_sides_with_noconnection() -> None:
    s, a, b = _linked_pair(trap_exits=True)
    s.partition(A, B)
    s.run()
    assert s.mailbox(a) == [Exit(b, "noconnection")]
    assert s.mailbox(b) == [Exit(a, "noconnection")]
    empty(s)
    s, a, b = _linked_pair(trap_exits=False)  # not trapping: both end
    s.partition(A, B)
    s.run()
    assert s.ended == {a: "noconnection", b: "noconnection"}
    empty(s)


def test_a_link_to_a_node_that_is_down_is_noconnection_at_once() -> None:
    s = sim(A, B)
    s.partition(A, B)
    s.run()
    a = s.spawn(A, trap_exits=True)
    s.link(a, Pid(B, 1, s.creation(B)))
    assert s.mailbox(a) == [Exit(Pid(B, 1, s.creation(B)), "noconnection")]
    empty(s)


def test_trap_exits_turns_an_exit_signal_into_a_message_and_otherwise_it_kills() -> None:
    s = sim(A, B)
    crash = s.spawn(A)
    trapping, plain = s.spawn(B, trap_exits=True), s.spawn(B)
    s.link(trapping, crash)
    s.link(plain, crash)
    s.run()
    s.end(crash, "boom")
    s.run()
    assert s.mailbox(trapping) == [Exit(crash, "boom")]
    assert s.ended[plain] == "boom" and s.alive(trapping)


def test_kill_ends_even_a_trapping_process_as_killed() -> None:
    s = sim(A, B)
    target = s.spawn(B, trap_exits=True)
    watcher = s.spawn(A, trap_exits=True)
    s.link(watcher, target)
    s.run()
    s.exit(A, target, "kill")
    s.run()
    assert s.ended[target] == "killed"
    assert s.mailbox(watcher) == [Exit(target, "killed")]


def test_a_process_ending_with_kill_sends_a_trappable_kill_along_its_links() -> None:
    s = sim(A, B)
    ending = s.spawn(A)
    trapping, plain = s.spawn(B, trap_exits=True), s.spawn(A, link_to=ending)
    s.link(trapping, ending)
    s.run()
    s.end(ending, "kill")  # proc.exit("kill"): not exit(pid, "kill")
    s.run()
    assert s.mailbox(trapping) == [Exit(ending, "kill")] and s.alive(trapping)
    assert s.ended[plain] == "kill"


def test_an_explicit_exit_to_a_trapping_process_comes_from_itself() -> None:
    s = sim(A)
    p = s.spawn(A, trap_exits=True)
    s.exit(A, p, "shutdown")
    s.run()
    assert s.mailbox(p) == [Exit(p, "shutdown")]


def test_an_explicit_exit_names_its_sender_and_leaves_links_alone() -> None:
    s, sender, remote = _linked_pair(trap_exits=True)
    local = s.spawn(A, trap_exits=True)
    s.exit(A, local, "shutdown", sender)
    s.exit(A, remote, "shutdown", sender)  # travels as exit2: not a link's signal
    s.run()
    assert s.mailbox(local) == [Exit(sender, "shutdown")]
    assert s.mailbox(remote) == [Exit(sender, "shutdown")]
    s.end(sender, "later")  # the link is still there and carries the sender's end
    s.run()
    assert s.mailbox(remote) == [Exit(sender, "shutdown"), Exit(sender, "later")]


def test_an_explicit_exit_to_itself_with_normal_ends_a_process_that_does_not_trap() -> None:
    s = sim(A)
    p, other = s.spawn(A), s.spawn(A)
    s.exit(A, other, "normal", p)  # to another: nothing
    s.exit(A, p, "normal", p)  # exit(self(), normal): the process ends
    s.run()
    assert s.alive(other) and s.ended == {p: "normal"}


def test_a_normal_exit_does_not_propagate_to_non_trapping_linked_processes() -> None:
    s = sim(A, B)
    ending = s.spawn(A)
    local, remote = s.spawn(A, link_to=ending), s.spawn(B)
    trapping = s.spawn(B, trap_exits=True)
    s.link(remote, ending)
    s.link(trapping, ending)
    s.run()
    s.end(ending, "normal")
    s.run()
    assert s.alive(local) and s.alive(remote)
    assert s.mailbox(local) == [] and s.mailbox(remote) == []
    assert s.mailbox(trapping) == [Exit(ending, "normal")]
    # The links are gone with their dead end: a later crash of theirs reaches nobody.
    assert s.core(A).state(local) is not None and not s.core(A).state(local).links  # type: ignore[union-attr]
    s.end(local, "boom")
    s.end(remote, "boom")
    s.end(trapping, "boom")
    s.run()
    empty(s)


def test_exit_signals_about_unknown_pids_are_noproc_or_nothing() -> None:
    s = sim(A, B)
    a = s.spawn(A, trap_exits=True)
    ghost_here, ghost_there = Pid(A, 999, s.creation(A)), Pid(B, 999, s.creation(B))
    s.link(a, ghost_here)
    s.link(a, ghost_there)  # the peer answers "link" with an exit signal "noproc"
    s.run()
    assert s.mailbox(a) == [Exit(ghost_here, "noproc"), Exit(ghost_there, "noproc")]
    ref = s.monitor(a, ghost_there)
    s.run()
    assert s.mailbox(a)[-1] == Down(ref, ghost_there, "noproc")
    # An exit signal to, or the end of, a pid nobody knows changes nothing.
    s.exit(A, ghost_here, "kill")
    s.exit(A, ghost_there, "kill")
    s.run()
    assert s.core(A).exited(ghost_here, "boom") == []
    assert s.alive(a) and len(s.mailbox(a)) == 3
    s.end(a)
    empty(s)


def test_an_exit_signal_that_arrives_after_an_unlink_is_ignored() -> None:
    s, a, b = _linked_pair()
    s.end(b, "boom")  # its exit signal is on the wire...
    s.unlink(a, b)  # ...when a unlinks
    s.run()
    assert s.alive(a)
    s.end(a)
    empty(s)


# -- monitors -----------------------------------------------------------------------------


def _name_moved_after_a_monitor() -> tuple[ProcessSim, Pid, Pid, Ref]:
    """A process of A monitors ("db", B); then "db" moves to a new process of B:
    ``(sim, first holder, watcher, ref)``."""
    s = sim(A, B)
    first = s.spawn(B, name="db")
    watcher = s.spawn(A)
    ref = s.monitor(watcher, ("db", B))
    s.run()
    s.unregister(B, "db")
    s.spawn(B, name="db")
    return s, first, watcher, ref


def test_a_monitor_on_a_name_watches_the_pid_the_name_held_not_a_new_holder() -> None:
    s, first, watcher, ref = _name_moved_after_a_monitor()
    second = s.whereis(B, "db")
    assert second is not None and second != first
    s.end(second, "boom")  # the new holder: not what the monitor watches
    s.run()
    assert downs_of(s, watcher) == []
    s.end(first, "shutdown")
    s.run()
    assert downs_of(s, watcher) == [Down(ref, first, "shutdown")]
    empty(s)


def test_a_local_monitor_on_a_name_watches_the_pid_it_held() -> None:
    s = sim(A)
    first = s.spawn(A, name="db")
    watcher = s.spawn(A)
    ref = s.monitor(watcher, ("db", A))
    s.unregister(A, "db")
    s.spawn(A, name="db")
    s.end(first, "boom")
    s.run()
    assert s.mailbox(watcher) == [Down(ref, first, "boom")]


def test_a_monitor_on_an_unregistered_name_is_noproc_with_the_name() -> None:
    s = sim(A, B)
    watcher = s.spawn(A)
    here, there = s.monitor(watcher, ("nobody", A)), s.monitor(watcher, ("nobody", B))
    s.run()
    assert s.mailbox(watcher) == [Down(here, RegName("nobody", A), "noproc"),
                                  Down(there, ("nobody", B), "noproc")]
    empty_but_watcher = s.core(A).bookkeeping()
    assert empty_but_watcher["monitors"] == 0 and empty_but_watcher["monitors_there"] == 0


def test_a_demonitor_by_name_after_the_name_moved_releases_the_old_holder() -> None:
    s, first, watcher, ref = _name_moved_after_a_monitor()
    s.demonitor(watcher, ref)
    s.run()
    assert s.core(B).state(first).monitored_by == {}  # type: ignore[union-attr]
    assert s.core(B).peer_bookkeeping(A) == (0, 0, 0)


def test_demonitor_drops_a_down_that_is_on_its_way() -> None:
    s = sim(A, B)
    target, watcher = s.spawn(B), s.spawn(A)
    ref = s.monitor(watcher, target)
    s.run()
    s.end(target, "boom")  # the down is on the wire...
    s.demonitor(watcher, ref)  # ...when the watcher demonitors
    s.run()
    assert s.mailbox(watcher) == [] and s.downs == []
    s.end(watcher)
    empty(s)


def test_demonitor_flushes_a_down_already_in_the_mailbox() -> None:
    s = sim(A, B)
    target, watcher = s.spawn(B), s.spawn(A)
    ref = s.monitor(watcher, target)
    s.run()
    s.end(target, "boom")
    s.run()
    assert s.mailbox(watcher) == [Down(ref, target, "boom")]
    s.demonitor(watcher, ref)
    assert s.mailbox(watcher) == []


def test_nodedown_fires_each_monitor_exactly_once() -> None:
    s = sim(A, B)
    targets = [s.spawn(B) for _ in range(3)]
    watchers = [s.spawn(A) for _ in range(2)]
    refs = {(w, s.monitor(w, t)) for w in watchers for t in targets}
    s.run()
    s.partition(A, B)
    s.run()
    s.heal(A, B)
    s.run()
    for t in targets:  # after the heal their ends reach no old monitor
        s.end(t, "boom")
    s.run()
    fired = [(w, d.ref) for w, d in s.downs]
    assert sorted(fired) == sorted(refs)
    assert {d.reason for _, d in s.downs} == {"noconnection"}
    for w in watchers:
        s.end(w)
    empty(s)


def test_a_watcher_that_ends_releases_its_monitors_on_local_targets() -> None:
    s = sim(A)
    target = s.spawn(A)
    watcher = s.spawn(A)
    s.monitor(watcher, target)
    s.end(watcher)
    assert s.core(A).state(target).monitored_by == {}  # type: ignore[union-attr]


# -- calls --------------------------------------------------------------------------------


def _call_arrived() -> tuple[ProcessSim, Pid, Pid, Ref]:
    """A call from a process of A reached its server on B: ``(sim, server, caller, ref)``."""
    s = sim(A, B)
    server, caller = s.spawn(B), s.spawn(A)
    ref = s.call(caller, server, "get")
    s.run()
    return s, server, caller, ref


def _serve(s: ProcessSim, server: Pid) -> tuple[Pid, Ref]:
    (from_,) = s.pending_calls(server)
    return from_


def test_a_call_whose_server_dies_before_replying_gets_its_exit_reason() -> None:
    s = sim(A, B)
    server, caller = s.spawn(B, name="srv"), s.spawn(A)
    for target in (server, ("srv", B)):
        ref = s.call(caller, target, "get")
        s.run()
        assert s.pending_calls(server)[-1][1] == ref
    first, second = [ref for _, ref in s.pending_calls(server)]
    s.end(server, "boom")
    s.run()
    assert s.finish(caller, first) == Down(first, server, "boom")
    assert s.finish(caller, second) == Down(second, server, "boom")  # resolved by name
    assert s.mailbox(caller) == []
    s.end(caller)
    empty(s)


def test_a_call_whose_server_dies_after_replying_gets_the_reply_and_no_down() -> None:
    s, server, caller, ref = _call_arrived()
    s.reply(server, _serve(s, server), 42)
    s.run()
    assert s.core(B).bookkeeping()["monitored_by"] == 0  # released with the reply
    s.end(server, "boom")
    s.run()
    assert s.finish(caller, ref) == ("$reply", ref, True, 42, True)
    assert s.mailbox(caller) == [] and s.downs == []
    s.end(caller)
    empty(s)


def test_a_call_whose_reply_had_to_wait_still_fires_if_the_server_dies() -> None:
    s, server, caller, ref = _call_arrived()
    caller_pid, call_ref = _serve(s, server)
    assert s.core(B).call_released(server, caller_pid, call_ref)
    s.core(B).call_held(server, caller_pid, call_ref)  # the caller's buffer was full
    s.end(server, "boom")
    s.run()
    assert s.finish(caller, ref) == Down(ref, server, "boom")


def test_a_call_to_a_server_that_does_not_exist_is_noproc() -> None:
    s = sim(A, B)
    caller = s.spawn(A)
    by_pid = s.call(caller, Pid(B, 77, s.creation(B)), "get")
    by_name = s.call(caller, ("nobody", B), "get")
    s.run()
    assert s.finish(caller, by_pid) == Down(by_pid, Pid(B, 77, s.creation(B)), "noproc")
    assert s.finish(caller, by_name) == Down(by_name, ("nobody", B), "noproc")
    s.end(caller)
    empty(s)


def test_a_call_across_a_partition_is_noconnection() -> None:
    s = sim(A, B)
    server, caller = s.spawn(B), s.spawn(A)
    ref = s.call(caller, server, "get")
    s.partition(A, B)  # the request is lost in flight
    s.run()
    assert s.finish(caller, ref) == Down(ref, server, "noconnection")
    late = s.call(caller, server, "get")  # the node is down: at once
    assert s.finish(caller, late) == Down(late, server, "noconnection")
    s.end(caller)
    s.end(server)
    empty(s)


def test_a_call_that_times_out_leaves_nothing_behind_on_either_side() -> None:
    s, server, caller, ref = _call_arrived()
    assert s.finish(caller, ref) is None  # gave up: demonitor
    s.run()
    assert s.core(A).peer_bookkeeping(B) == (0, 0, 0)
    assert s.core(B).peer_bookkeeping(A) == (0, 0, 0)
    s.reply(server, _serve(s, server), 1)  # a late reply: released is False now
    s.run()
    assert s.mailbox(caller) == [("$reply", ref, True, 1, False)]


def test_a_local_call_is_a_monitor_and_a_send() -> None:
    s = sim(A)
    server, caller = s.spawn(A), s.spawn(A)
    ref = s.call(caller, server, "get")
    s.reply(server, _serve(s, server), "ok")
    assert s.finish(caller, ref) == ("$reply", ref, True, "ok", True)
    empty_counts = s.core(A).bookkeeping()
    assert empty_counts["monitors"] == 0 and empty_counts["monitored_by"] == 0


def test_a_call_from_another_run_of_the_peer_is_malformed() -> None:
    core = ProcessCore(B, 2)
    server = Pid(B, 1, 2)
    core.started(server)
    with pytest.raises(ValueError):
        core.call_received(A, 5, [K_CALL, server, 4, 1, 1, "x"])
    with pytest.raises(ValueError):
        core.call_received(A, 5, [K_CALL, server, 5, 1, 1 << 64, "x"])
    with pytest.raises(TypeError):
        core.call_received(A, 5, [K_CALL, server, 5, "1", 1, "x"])
    assert core.bookkeeping()["monitored_by"] == 0


# -- spawns -------------------------------------------------------------------------------


def _linked_spawn_asked(trap_exits: bool = False) -> tuple[ProcessSim, Pid, Ref]:
    """A process of A asked B for a linked spawn: ``(sim, requester, ref)``."""
    s = sim(A, B)
    parent = s.spawn(A, trap_exits=trap_exits)
    return s, parent, s.spawn_on(A, B, "app:worker", link_to=parent)


def test_a_linked_spawn_links_both_sides() -> None:
    s, parent, ref = _linked_spawn_asked(trap_exits=True)
    s.run()
    result = s.spawn_results[ref]
    assert type(result) is SpawnReplied and result.ok
    child = result.value
    s.end(child, "boom")
    s.run()
    assert s.mailbox(parent) == [Exit(child, "boom")]
    s.end(parent)
    empty(s)


def test_a_kill_of_the_requester_during_a_linked_spawn_takes_the_child_down() -> None:
    s, parent, ref = _linked_spawn_asked()
    s.exit(A, parent, "kill")  # killed before the reply arrives
    s.run()
    child = s.spawn_results[ref].value  # type: ignore[union-attr]
    assert s.ended == {parent: "killed", child: "killed"}
    empty(s)


def test_a_kill_of_the_child_during_a_linked_spawn_reaches_the_requester() -> None:
    s, parent, ref = _linked_spawn_asked(trap_exits=True)
    s.run(for_seconds=s.latency * 1.5)  # the request arrived, the reply is on its way
    (child,) = s.processes(B)
    s.exit(B, child, "kill")
    s.run()
    assert s.spawn_results[ref] == SpawnReplied(ref, True, child)
    assert s.mailbox(parent) == [Exit(child, "killed")]
    s.end(parent)
    empty(s)


def test_an_abandoned_linked_spawn_still_completes_its_link() -> None:
    s, parent, ref = _linked_spawn_asked()
    s.abandon_spawn(A, ref)
    s.run()
    assert ref not in s.spawn_results
    s.end(parent, "boom")
    s.run()
    (child,) = [p for p in s.ended if p.node == B]
    assert s.ended[child] == "boom"
    empty(s)


def test_a_refused_spawn_and_a_spawn_across_a_nodedown() -> None:
    s = sim(A, B)
    refused = s.spawn_on(A, B, "refused:os.system")
    s.run()
    assert s.spawn_results[refused] == SpawnReplied(refused, False,
                                                    "refused:os.system is not exported")
    lost = s.spawn_on(A, B, "app:worker")
    s.partition(A, B)
    s.run()
    assert s.spawn_results[lost] == SpawnLost(lost, B, "noconnection")
    late = s.spawn_on(A, B, "app:worker")
    assert s.spawn_results[late] == SpawnLost(late, B, "noconnection")
    empty(s)


# -- the wire: what each request asks to send (PROTOCOL.md section 6.2) --------------------


def test_requests_send_todays_control_messages() -> None:
    core = ProcessCore(A, 1)
    core.nodeup(B)
    p, remote = Pid(A, 1, 1), Pid(B, 3, 2)
    core.started(p)
    assert core.link(p, remote) == [Control(B, [4, "link", p, remote])]
    assert core.unlink(p, remote) == [Control(B, [4, "unlink", p, remote])]
    ref, effects = core.monitor(p, remote)
    assert effects == [Control(B, [4, "mon", p, remote, ref])]
    assert core.demonitor(p, ref) == [Control(B, [4, "demon", p, remote, ref])]
    ref, effects = core.monitor(p, ("db", B))
    assert effects == [Control(B, [4, "mon", p, RegName("db", B), ref])]
    assert core.exit(remote, "kill") == [Control(B, [4, "exit", None, remote, "kill"])]
    assert core.exit(remote, "bye", p) == [Control(B, [4, "exit2", p, remote, "bye"])]
    assert core.on_control(B, [4, "spawn", remote, ref, "m:f", [1], True]) == [
        ServeSpawn(B, remote, ref, "m:f", [1], True)]
    core.link(p, remote)
    assert core.exited(p, "boom") == [Control(B, [4, "exit", p, remote, "boom"])]


def test_an_ended_process_answers_down_and_exit_on_the_wire() -> None:
    core = ProcessCore(B, 2)
    core.nodeup(A)
    server, watcher = Pid(B, 1, 2), Pid(A, 5, 1)
    ref = Ref(A, 7, 1)
    core.started(server)
    assert core.on_control(A, [4, "mon", watcher, server, ref]) == []
    assert core.on_control(A, [4, "link", watcher, server]) == []
    assert core.exited(server, "boom") == [
        Control(A, [4, "down", ref, server, "boom", watcher]),
        Control(A, [4, "exit", server, watcher, "boom"]),
    ]
    assert core.on_control(A, [4, "link", watcher, server]) == [
        Control(A, [4, "exit", server, watcher, "noproc"])]
    with pytest.raises(ValueError):
        core.on_control(A, [4, "nonsense"])


def test_a_kill_effect_is_asked_once_per_signal_and_the_end_reports_back() -> None:
    core = ProcessCore(A, 1)
    p = Pid(A, 1, 1)
    core.started(p)
    assert core.exit(p, "shutdown") == [Kill(p, "shutdown")]
    assert core.exit(p, "normal") == []
    core.set_trap_exits(p, True)
    assert core.exit(p, "normal") == [Deliver(p, Exit(p, "normal"))]
    assert core.exited(p, "shutdown") == [] and core.state(p) is None


# -- properties ---------------------------------------------------------------------------


def _op(kind: str, *params: Any) -> tuple[Any, ...]:
    return (kind, *params)


node_i = st.integers(0, 2)
pick = st.integers(0, 1 << 16)
operations = st.lists(st.one_of(
    st.tuples(st.just("spawn"), node_i, st.booleans(), st.booleans()),
    st.tuples(st.just("link"), pick, pick),
    st.tuples(st.just("unlink"), pick, pick),
    st.tuples(st.just("monitor"), pick, pick, st.booleans()),
    st.tuples(st.just("demonitor"), pick),
    st.tuples(st.just("end"), pick, st.sampled_from(["normal", "boom", "shutdown"])),
    st.tuples(st.just("exit"), node_i, pick, st.sampled_from(["normal", "boom", "kill"])),
    st.tuples(st.just("call"), pick, pick),
    st.tuples(st.just("reply"), pick),
    st.tuples(st.just("finish"), pick),
    st.tuples(st.just("spawn_on"), pick, node_i, st.booleans()),
    st.tuples(st.just("register"), pick, st.sampled_from(["x", "y"])),
    st.tuples(st.just("partition"), node_i, node_i),
    st.tuples(st.just("heal"), node_i, node_i),
    st.tuples(st.just("crash"), node_i),
    st.tuples(st.just("restart"), node_i),
    st.tuples(st.just("run"), st.sampled_from([0.0005, 0.002, 0.7, 2.0])),
), min_size=10, max_size=80)


def _play(s: ProcessSim, ops: list[tuple[Any, ...]]) -> dict[Ref, Pid]:
    """Play ``ops``; returns every monitor ref handed out -> its watcher."""
    # Three processes per node to start with (one trapping exits, one named "x").
    pids = [s.spawn(node, trap_exits=i == 0, name="x" if i == 1 else None)
            for node in NAMES for i in range(3)]
    refs: dict[Ref, Pid] = {}
    calls: list[tuple[Pid, Ref]] = []

    def live(i: int) -> Pid | None:
        alive = [p for p in pids if s.alive(p)]
        return alive[i % len(alive)] if alive else None

    for op in ops:
        kind = op[0]
        if kind == "spawn":
            node = NAMES[op[1]]
            if node in s.names():
                pids.append(s.spawn(node, trap_exits=op[2]))
        elif kind in ("link", "unlink", "monitor", "call"):
            a = live(op[1])
            b = pids[op[2] % len(pids)] if pids else None  # possibly dead: noproc
            if a is None or b is None:
                continue
            if kind == "link":
                s.link(a, b)
            elif kind == "unlink":
                s.unlink(a, b)
            elif kind == "monitor":
                target: Any = ("x", b.node) if op[3] else b
                refs[s.monitor(a, target)] = a
            elif b != a:
                ref = s.call(a, b, "req")
                refs[ref] = a
                calls.append((a, ref))
        elif kind == "demonitor":
            if refs:
                ref = list(refs)[op[1] % len(refs)]
                if s.alive(refs[ref]):
                    s.demonitor(refs[ref], ref)
        elif kind == "end":
            p = live(op[1])
            if p is not None:
                s.end(p, op[2])
        elif kind == "exit":
            if pids and NAMES[op[1]] in s.names():
                s.exit(NAMES[op[1]], pids[op[2] % len(pids)], op[3])
        elif kind == "reply":
            servers = [p for p in pids if s.alive(p) and s.pending_calls(p)]
            if servers:
                server = servers[op[1] % len(servers)]
                from_ = s.pending_calls(server)[0]
                s.mailbox(server).remove(("$call", from_, "req"))
                s.reply(server, from_, "ok")
        elif kind == "finish":
            waiting = [(p, r) for p, r in calls if s.alive(p)]
            if waiting:
                caller, ref = waiting[op[1] % len(waiting)]
                calls.remove((caller, ref))
                s.finish(caller, ref)
        elif kind == "spawn_on":
            p = live(op[1])
            if p is not None:
                s.spawn_on(p.node, NAMES[op[2]], "app:worker", link_to=p if op[3] else None)
        elif kind == "register":
            p = live(op[1])
            if p is not None:
                s.register(op[2], p)
        elif kind == "partition":
            if op[1] != op[2]:
                s.partition(NAMES[op[1]], NAMES[op[2]])
        elif kind == "heal":
            if op[1] != op[2]:
                s.heal(NAMES[op[1]], NAMES[op[2]])
        elif kind == "crash":
            if NAMES[op[1]] in s.names() and len(s.names()) > 1:
                s.crash(NAMES[op[1]])
        elif kind == "restart":
            if NAMES[op[1]] not in s.names():
                s.restart(NAMES[op[1]])
        elif kind == "run":
            s.run(for_seconds=op[1])
    return refs


PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=100,
                    suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(operations)
def test_every_monitor_fires_at_most_once_and_nothing_is_left_once_all_have_ended(
        ops: list[tuple[Any, ...]]) -> None:
    s = sim()
    refs = _play(s, ops)
    s.run()
    fired = [d.ref for _, d in s.downs]
    assert len(fired) == len(set(fired))
    for name in s.names():
        for pid in s.processes(name):
            s.end(pid, "shutdown")
    s.run()
    empty(s)
    assert all(s.core(n).bookkeeping() == dict.fromkeys(s.core(n).bookkeeping(), 0)
               for n in s.names())
    fired = [d.ref for _, d in s.downs]
    assert len(fired) == len(set(fired)) and set(fired) <= set(refs)


@PROPERTY
@given(operations)
def test_nothing_is_left_once_every_peer_is_gone(ops: list[tuple[Any, ...]]) -> None:
    s = sim()
    _play(s, ops)
    for a, b in [(A, B), (A, C), (B, C)]:
        s.partition(a, b)
    s.run()
    fired = [d.ref for _, d in s.downs]
    assert len(fired) == len(set(fired))
    for name in s.names():
        core = s.core(name)
        for peer in NAMES:
            assert core.peer_bookkeeping(peer) == (0, 0, 0), (name, peer)
        left = core.bookkeeping()
        assert left["spawns"] == 0
        # Whatever is left is local: links and monitors between live local processes.
        for state in core.procs.values():
            assert all(p.node == name for p in state.links)
            assert all(w.node == name for w in state.monitored_by.values())


@PROPERTY
@given(operations)
def test_links_and_monitors_are_symmetric_between_live_processes(
        ops: list[tuple[Any, ...]]) -> None:
    s = sim()
    _play(s, ops)
    s.run()
    states = {st_.pid: st_ for n in s.names() for st_ in s.core(n).procs.values()}
    for pid, state in states.items():
        for other in state.links:
            if other in states:
                assert pid in states[other].links, (pid, other)
        # A call answered with ``released`` keeps the caller's half until it takes the
        # reply (fabric.calls.call then forgets it).
        released = {m[1] for m in s.mailbox(pid)
                    if type(m) is tuple and m[0] == "$reply" and m[4]}
        for ref, target in state.monitors.items():
            if target in states and ref not in released:
                assert states[target].monitored_by.get(ref) == pid
