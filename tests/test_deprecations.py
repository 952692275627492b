"""Every deprecated spelling still works for one release and warns with its replacement
(docs/API.md, "Deprecations"); and the typed answers and events that replaced tuples."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from _exported import async_test, cluster

import fabric
from fabric import lowlevel
from fabric.types import NO, PANG, PONG, YES, Pid, Ref

PID = Pid("a@127.0.0.1:9100", 1, 7)
REF = Ref("a@127.0.0.1:9100", 7, 1)


# -- events: dataclasses that still read as their old tuples ---------------------------------


def test_an_event_is_a_frozen_dataclass_matched_by_type_and_fields() -> None:
    event = fabric.LeaderElected("g", PID, 3)
    assert (event.group, event.leader, event.term) == ("g", PID, 3)
    assert event == fabric.LeaderElected("g", PID, 3) and hash(event) == hash(
        fabric.LeaderElected("g", PID, 3))
    with pytest.raises(AttributeError):
        event.term = 4  # type: ignore[misc]
    match event:
        case fabric.LeaderElected(group="g", term=term):
            assert term == 3
        case _:
            pytest.fail("no match")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reading fields, testing or comparing never warns
        assert event.as_tuple() == ("leader_elected", "g", PID, 3)
        assert event and event != "stop" and event is not None and repr(event)


@pytest.mark.parametrize("event, old", [
    (fabric.PgJoin(REF, "s", "g", [PID]), ("pg_join", REF, "s", "g", [PID])),
    (fabric.PgLeave(REF, "s", "g", [PID]), ("pg_leave", REF, "s", "g", [PID])),
    (fabric.LeaderElected("g", PID, 2), ("leader_elected", "g", PID, 2)),
    (fabric.LeaderLost("g", 2), ("leader_lost", "g", 2)),
    (fabric.GlobalNameConflict("x", PID), ("global_name_conflict", "x", PID)),
    (fabric.DataChanged("k", 3), ("ddata_changed", "k", 3)),
    (fabric.DataDeleted("k"), ("ddata_deleted", "k")),
])
def test_an_event_still_reads_as_its_old_tuple_with_a_warning(event: Any,
                                                                old: tuple[Any, ...]) -> None:
    with pytest.deprecated_call():
        assert event[0] == old[0]
    with pytest.deprecated_call():
        assert event[:2] == old[:2]
    with pytest.deprecated_call():
        tag, *rest = event
        assert (tag, *rest) == old
    with pytest.deprecated_call():
        assert len(event) == len(old)
    with pytest.deprecated_call():
        assert event == old
    with pytest.deprecated_call():
        assert event != (*old[:-1], "other")


# -- answers: Erlang's words, truthful ------------------------------------------------------


def test_answers_compare_as_erlangs_words_and_are_true_only_for_yes_and_pong() -> None:
    assert (YES, NO, PONG, PANG) == ("yes", "no", "pong", "pang")
    assert YES and PONG and not NO and not PANG
    assert f"{PONG}" == "pong" and str(NO) == "no"
    assert fabric.Answer("no") == NO and not fabric.Answer("no")


# -- Node: what moved to fabric.lowlevel ------------------------------------------------------


@pytest.mark.io
@async_test
async def test_the_node_service_hooks_and_sockets_still_work_with_a_warning() -> None:
    async with cluster(1) as (a,):
        sockets = lowlevel.sockets(a)
        for name in ("ctx", "router", "pub", "sub", "hb_sub"):
            with pytest.deprecated_call(match=rf"Node\.{name} is deprecated"):
                assert getattr(a, name) is getattr(sockets, name)
        with pytest.deprecated_call(match="fabric.lowlevel.service"):
            assert a.service("pg") is lowlevel.service(a, "pg")
        token = a.make_ref()
        with pytest.deprecated_call(match="fabric.lowlevel.expect"):
            fut = a.expect(token)
        with pytest.deprecated_call(match="fabric.lowlevel.run_service"):
            assert a.run_service("pg", [lowlevel.Complete(token, 42),
                                        lowlevel.Reply("r")]) == "r"
        assert await fut == 42
        seen: list[Any] = []

        class Marker:
            pass

        with pytest.deprecated_call(match="fabric.lowlevel.on_effect"):
            a.on_effect(Marker, lambda service, effect: seen.append((service, effect)))
        marker = Marker()
        lowlevel.run_service(a, "pg", [marker])
        assert seen == [("pg", marker)]
        with pytest.deprecated_call(match="fabric.lowlevel.on_topic"):
            a.on_topic(b"zz", lambda *args: None)

        class Core:
            service = "old_spelling"
            topic_prefix = None

        with pytest.deprecated_call(match="fabric.lowlevel.add_service"):
            a.add_service(Core())
        assert type(lowlevel.service(a, "old_spelling")) is Core


@pytest.mark.io
@async_test
async def test_global_call_still_works_with_a_warning_and_answers_are_truthful() -> None:
    async with cluster(1) as (a,):
        class Echo(fabric.GenServer):
            async def handle_call(self, request: Any, from_: Any) -> Any:
                return ("echo", request)

        pid = await Echo.start(a)
        assert await a.global_.register_name("echo", pid)
        taken = await a.global_.register_name("echo", await Echo.start(a))
        assert type(taken) is fabric.Answer and taken == "no" and not taken
        with pytest.deprecated_call(match=r"fabric\.call\(node, fabric\.GlobalName"):
            assert await a.global_.call("echo", 1) == ("echo", 1)
        assert await fabric.call(a, fabric.GlobalName("echo"), 2) == ("echo", 2)
        with pytest.deprecated_call(), pytest.raises(fabric.ProcessDeadError):
            await a.global_.call("nobody", 1)
        pong = await a.ping(a.name)
        assert type(pong) is fabric.Answer and pong == "pong" and pong
        pang = await a.ping("nobody@127.0.0.1:1", timeout=0.5)
        assert pang == "pang" and not pang
