"""Consistent hashing: movement bounds, determinism and member-only results."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric.protocol.hashring import HashRing, key_bytes, member_bytes, rendezvous
from fabric.types import Pid

KEYS = [f"key-{i}" for i in range(2000)]
N_MEMBERS = st.integers(min_value=3, max_value=20)
SETTINGS = settings(max_examples=25, deadline=None)


def _members(n: int, salt: int) -> list[str]:
    return [f"m{salt}-{i}" for i in range(n)]


def _check_removal(before: dict[str, str], after: dict[str, str], gone: str, n: int) -> None:
    moved = [k for k in KEYS if before[k] != after[k]]
    assert moved, "removing a member that owned keys must move some"
    assert all(before[k] == gone for k in moved), "only the removed member's keys may move"
    assert gone not in after.values()
    assert len(moved) / len(KEYS) <= 2 / n


def _check_addition(before: dict[str, str], after: dict[str, str], new: str, n: int) -> None:
    moved = [k for k in KEYS if before[k] != after[k]]
    assert moved, "a new member must win some keys"
    assert all(after[k] == new for k in moved), "keys may only move to the new member"
    assert len(moved) / len(KEYS) <= 2 / n


# -- golden vectors: a change of hash scheme, salt or encoding breaks these ------------------


def test_golden_vectors_are_stable_across_runs_and_processes() -> None:
    members = ["a", "b", "c", "d"]
    keys: list[str | int] = ["user:42", "x", "y", "z", 7]
    assert [rendezvous(k, members) for k in keys] == ["b", "b", "d", "c", "c"]
    ring = HashRing(["a", "b", "c"])
    ring_keys: list[str | bytes | int] = ["k", "x", 1, b"zz", "user:1", "user:2", "user:3"]
    assert [ring.lookup(k) for k in ring_keys] == ["c", "c", "a", "c", "c", "a", "c"]


def test_key_encoding() -> None:
    assert key_bytes(b"\x00k") == b"\x00k"
    assert key_bytes("é") == "é".encode()
    assert key_bytes(42) == b"42" == key_bytes("42")
    assert rendezvous(42, ["a", "b", "c"]) == rendezvous("42", ["a", "b", "c"])
    assert member_bytes(Pid("n@h:1", 3, 9)) == b"\x93\xa5n@h:1\x03\x09"
    with pytest.raises(TypeError):
        key_bytes(1.5)  # type: ignore[arg-type]


# -- rendezvous -------------------------------------------------------------------------


def test_rendezvous_empty_members_raises() -> None:
    with pytest.raises(ValueError):
        rendezvous("k", [])


@SETTINGS
@given(n=N_MEMBERS, salt=st.integers(0, 1000), victim=st.integers(0, 19))
def test_rendezvous_removal_moves_only_the_removed_members_keys(
    n: int, salt: int, victim: int
) -> None:
    members = _members(n, salt)
    gone = members[victim % n]
    rest = [m for m in members if m != gone]
    before = {k: rendezvous(k, members) for k in KEYS}
    after = {k: rendezvous(k, rest) for k in KEYS}
    _check_removal(before, after, gone, n)


@SETTINGS
@given(n=N_MEMBERS, salt=st.integers(0, 1000))
def test_rendezvous_addition_moves_keys_only_to_the_new_member(n: int, salt: int) -> None:
    members = _members(n, salt)
    new = f"new-{salt}"
    before = {k: rendezvous(k, members) for k in KEYS}
    after = {k: rendezvous(k, [*members, new]) for k in KEYS}
    _check_addition(before, after, new, n + 1)


@SETTINGS
@given(
    members=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=12, unique=True),
    keys=st.lists(st.one_of(st.text(), st.binary(), st.integers()), min_size=1, max_size=30),
    seed=st.integers(0, 2**32),
)
def test_rendezvous_returns_a_member_independent_of_order(
    members: list[str], keys: list[str | bytes | int], seed: int
) -> None:
    shuffled = members[:]
    random.Random(seed).shuffle(shuffled)
    for key in keys:
        owner = rendezvous(key, members)
        assert owner in members
        assert rendezvous(key, shuffled) == owner


def test_rendezvous_spreads_keys_evenly() -> None:
    members = _members(5, 0)
    counts = {m: 0 for m in members}
    for k in KEYS:
        counts[rendezvous(k, members)] += 1
    assert all(300 <= c <= 500 for c in counts.values()), counts


def test_rendezvous_routes_pids() -> None:
    pids = [Pid("a@h:1", i, 7) for i in range(4)]
    owner = rendezvous("job-1", pids)
    assert owner in pids
    assert rendezvous("job-1", list(reversed(pids))) == owner


# -- HashRing ---------------------------------------------------------------------------


def test_ring_empty_lookup_raises_and_bad_vnodes() -> None:
    ring: HashRing[str] = HashRing()
    with pytest.raises(LookupError):
        ring.lookup("k")
    with pytest.raises(ValueError):
        HashRing(["a"], vnodes=0)


def test_ring_membership_operations() -> None:
    ring = HashRing(["a", "b"], vnodes=8)
    ring.add("c")
    ring.add("a")  # already there: no-op
    assert ring.members == ["a", "b", "c"]
    assert len(ring) == 3
    assert "b" in ring and "z" not in ring
    ring.remove("b")
    assert list(ring) == ["a", "c"]
    with pytest.raises(KeyError):
        ring.remove("b")
    ring.discard("b")
    ring.discard("a")
    assert ring.members == ["c"]
    assert {ring.lookup(k) for k in KEYS[:50]} == {"c"}


@SETTINGS
@given(n=N_MEMBERS, salt=st.integers(0, 1000), victim=st.integers(0, 19))
def test_ring_removal_moves_only_the_removed_members_keys(n: int, salt: int, victim: int) -> None:
    members = _members(n, salt)
    gone = members[victim % n]
    ring = HashRing(members)
    before = {k: ring.lookup(k) for k in KEYS}
    ring.remove(gone)
    after = {k: ring.lookup(k) for k in KEYS}
    _check_removal(before, after, gone, n)


@SETTINGS
@given(n=N_MEMBERS, salt=st.integers(0, 1000))
def test_ring_addition_moves_keys_only_to_the_new_member(n: int, salt: int) -> None:
    members = _members(n, salt)
    new = f"new-{salt}"
    ring = HashRing(members)
    before = {k: ring.lookup(k) for k in KEYS}
    ring.add(new)
    after = {k: ring.lookup(k) for k in KEYS}
    _check_addition(before, after, new, n + 1)


@SETTINGS
@given(
    members=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=12, unique=True),
    keys=st.lists(st.one_of(st.text(), st.binary(), st.integers()), min_size=1, max_size=30),
    seed=st.integers(0, 2**32),
)
def test_ring_is_a_function_of_its_member_set(
    members: list[str], keys: list[str | bytes | int], seed: int
) -> None:
    shuffled = members[:]
    random.Random(seed).shuffle(shuffled)
    a = HashRing(members, vnodes=16)
    b: HashRing[str] = HashRing(vnodes=16)
    for m in shuffled:
        b.add(m)
    b.add("an extra member")  # longer than any generated member, so never one of them
    b.remove("an extra member")
    for key in keys:
        owner = a.lookup(key)
        assert owner in members
        assert b.lookup(key) == owner
