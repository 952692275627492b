"""What discovery hands to the mesh (fabric.protocol.discovered): names, never retries."""

from __future__ import annotations

from fabric.protocol.discovered import DiscoveredNames, Forgotten, Learn, Seen
from fabric.protocol.mesh import MeshCore

ME = "me@h:1"
A, B = "a@h:2", "b@h:3"


def learned(effects: list[object]) -> list[str]:
    return [e.name for e in effects if isinstance(e, Learn)]


def test_new_names_are_seen_and_handed_to_the_mesh_but_never_self() -> None:
    names = DiscoveredNames(ME)
    effects = names.update("s", frozenset({ME, A, B}))
    assert [e for e in effects if isinstance(e, Seen)] == [Seen(A, "s"), Seen(B, "s")]
    assert learned(effects) == [A, B]
    assert names.wanted() == {A, B}


def test_every_listed_name_is_handed_over_again_at_each_snapshot_and_at_its_nodedown() -> None:
    # The mesh ignores names it holds: handing them over again is how a name it let go
    # (a graceful stop, a give-up) comes back.
    names = DiscoveredNames(ME)
    names.update("s", frozenset({A, B}))
    effects = names.update("s", frozenset({A, B}))
    assert learned(effects) == [A, B] and not any(isinstance(e, Seen) for e in effects)
    assert names.node_down(A) == [Learn(A)]
    assert names.node_down("stranger@h:9") == []


def test_several_sources_merge_and_a_name_is_forgotten_when_none_lists_it() -> None:
    names = DiscoveredNames(ME, disconnect=True)
    names.update("s1", frozenset({A}))
    names.update("s2", frozenset({A, B}))
    assert learned(names.update("s1", frozenset())) == [A, B]  # s2 still lists A
    assert names.update("s2", frozenset({A})) == [Forgotten(B, True), Learn(A)]
    assert names.update("s2", frozenset()) == [Forgotten(A, True)]
    assert names.wanted() == set() and names.node_down(A) == []
    assert names.stats == {"seen": 2, "learned": 6, "forgotten": 2}
    plain = DiscoveredNames(ME)  # without disconnect: the session is left alone
    plain.update("s", frozenset({A}))
    assert plain.update("s", frozenset()) == [Forgotten(A, False)]


def test_handing_a_name_to_the_mesh_again_does_not_hurry_its_retry() -> None:
    # The mesh owns the pace: learning a name it is already retrying changes nothing.
    mesh = MeshCore(ME, 1, b"cookie", 9000, lambda n: bytes(n))
    assert mesh.learn(A, 0.0)  # the first attempt
    mesh.tick(mesh.handshake_timeout)  # it times out: planned for a retry
    due = mesh.reconnecting()[A]
    assert not mesh.knows(A) and due > mesh.handshake_timeout
    assert mesh.learn(A, mesh.handshake_timeout) == []
    assert mesh.reconnecting() == {A: due} and not mesh.knows(A)
