"""CRDT values: lattice laws, delta equivalence and wire round trips for every type,
driven by random histories (operations at three replicas interleaved with merges), plus
the value semantics each type promises (OR-Set add-wins against an oracle, PN-Counter
arithmetic, LWW and MV registers, map remove semantics) and pruning."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric.errors import LocalProtocolError, RemoteProtocolError
from fabric.protocol.codec import Codec
from fabric.protocol.crdt import (
    Crdt,
    Flag,
    GCounter,
    GSet,
    LWWMap,
    LWWRegister,
    MVRegister,
    ORMap,
    ORMultiMap,
    ORSet,
    PNCounter,
    PNCounterMap,
    Replica,
    acting_as,
    dump,
    from_bytes,
    load,
    merge,
    to_bytes,
)
from fabric.protocol.crdt import sets as crdt_sets

REPLICAS = [Replica("a@h:1", 11), Replica("b@h:2", 22), Replica("c@h:3", 33)]
ELEMENTS = st.sampled_from(["x", "y", "z", (1, 2), 7])
KEYS = st.sampled_from(["k1", "k2", ("t", 1)])
SMALL = st.integers(min_value=0, max_value=5)

Op = tuple[Any, ...]


def _apply_orset(s: ORSet[Any], op: Op) -> ORSet[Any]:
    if op[0] == "add":
        return s.add(op[1])
    if op[0] == "add_all":
        return s.add_all(op[1])
    if op[0] == "remove":
        return s.remove(op[1])
    return s.clear()


def _apply_ormap(m: ORMap[Any, PNCounter], op: Op) -> ORMap[Any, PNCounter]:
    if op[0] == "update":
        return m.update(op[1], lambda c: c.increment(op[2]), PNCounter())
    return m.remove(op[1])


def _apply_lwwmap(m: LWWMap, op: Op) -> LWWMap:
    return m.put(op[1], op[2]) if op[0] == "put" else m.remove(op[1])


def _apply_pnmap(m: PNCounterMap, op: Op) -> PNCounterMap:
    if op[0] == "inc":
        return m.increment(op[1], op[2])
    if op[0] == "dec":
        return m.decrement(op[1], op[2])
    return m.remove(op[1])


def _apply_multimap(m: ORMultiMap, op: Op) -> ORMultiMap:
    if op[0] == "add":
        return m.add_binding(op[1], op[2])
    if op[0] == "drop":
        return m.remove_binding(op[1], op[2])
    return m.remove(op[1])


@dataclass(frozen=True)
class Spec:
    empty: Callable[[], Crdt]
    ops: st.SearchStrategy[Op]
    apply: Callable[[Any, Op], Crdt]


SPECS: dict[str, Spec] = {
    "gcounter": Spec(GCounter, st.tuples(st.just("inc"), SMALL), lambda c, op: c.increment(op[1])),
    "pncounter": Spec(PNCounter, st.tuples(st.sampled_from(["inc", "dec"]), SMALL),
                      lambda c, op: c.increment(op[1]) if op[0] == "inc" else c.decrement(op[1])),
    "gset": Spec(GSet, st.tuples(st.just("add"), ELEMENTS), lambda s, op: s.add(op[1])),
    "orset": Spec(ORSet, st.one_of(
        st.tuples(st.sampled_from(["add", "remove", "remove"]), ELEMENTS),
        st.tuples(st.just("add_all"), st.lists(ELEMENTS, max_size=3)),
        st.tuples(st.just("clear"))), _apply_orset),
    "flag": Spec(Flag, st.tuples(st.just("on")), lambda f, op: f.switch_on()),
    "lwwregister": Spec(LWWRegister, st.tuples(st.just("assign"), ELEMENTS),
                        lambda r, op: r.assign(op[1])),
    "mvregister": Spec(MVRegister, st.tuples(st.just("assign"), ELEMENTS),
                       lambda r, op: r.assign(op[1])),
    "ormap": Spec(ORMap, st.one_of(st.tuples(st.just("update"), KEYS, SMALL),
                                   st.tuples(st.just("remove"), KEYS)), _apply_ormap),
    "lwwmap": Spec(LWWMap, st.one_of(st.tuples(st.just("put"), KEYS, ELEMENTS),
                                     st.tuples(st.just("remove"), KEYS)), _apply_lwwmap),
    "pncountermap": Spec(PNCounterMap, st.one_of(
        st.tuples(st.sampled_from(["inc", "dec"]), KEYS, SMALL),
        st.tuples(st.just("remove"), KEYS)), _apply_pnmap),
    "ormultimap": Spec(ORMultiMap, st.one_of(
        st.tuples(st.sampled_from(["add", "drop"]), KEYS, ELEMENTS),
        st.tuples(st.just("remove"), KEYS)), _apply_multimap),
}


@dataclass
class History:
    """Three replicas after a random interleaving of operations and merges."""

    states: list[Crdt]
    deltas: list[Crdt] = field(default_factory=list)
    ops: list[tuple[int, Op]] = field(default_factory=list)

    def full(self) -> Crdt:
        out = self.states[0]
        for s in self.states[1:]:
            out = merge(out, s)
        return out


def _histories(spec: Spec) -> st.SearchStrategy[History]:
    step = st.one_of(
        st.tuples(st.just("op"), st.integers(0, 2), spec.ops, st.integers(0, 20)),
        st.tuples(st.just("merge"), st.integers(0, 2), st.integers(0, 2)),
    )

    def build(steps: list[Any]) -> History:
        h = History([spec.empty() for _ in REPLICAS])
        for s in steps:
            if s[0] == "op":
                _, i, op, clock = s
                with acting_as(REPLICAS[i], timestamp=clock):
                    new = spec.apply(h.states[i], op)
                if new.delta is not None:
                    h.deltas.append(new.delta)
                h.states[i] = new.reset_delta()
                h.ops.append((i, op))
            else:
                _, i, j = s
                h.states[i] = merge(h.states[i], h.states[j])
        return h

    return st.lists(step, max_size=25).map(build)


def _each_type(test: Callable[..., None]) -> Any:
    # No deadline: no test asserts a speed, and a loaded machine must not fail one.
    examples = settings(max_examples=60, deadline=None)
    return pytest.mark.parametrize("name", sorted(SPECS))(examples(test))


@_each_type
@given(data=st.data())
def test_merge_is_commutative_associative_idempotent(name: str, data: st.DataObject) -> None:
    a, b, c = data.draw(_histories(SPECS[name])).states
    assert merge(a, b) == merge(b, a)
    assert merge(merge(a, b), c) == merge(a, merge(b, c))
    assert merge(a, a) == a
    assert merge(a, b).value == merge(b, a).value
    # The wire form is canonical: equal states, equal bytes (the replicator's digests).
    assert to_bytes(merge(a, b)) == to_bytes(merge(b, a))


@_each_type
@given(data=st.data())
def test_deltas_in_any_order_with_duplicates_equal_the_full_state(
        name: str, data: st.DataObject) -> None:
    spec = SPECS[name]
    h = data.draw(_histories(spec))
    deltas = h.deltas + data.draw(st.lists(st.sampled_from(h.deltas), max_size=5)
                                  if h.deltas else st.just([]))
    order = data.draw(st.permutations(deltas))
    joined = spec.empty()
    for d in order:
        assert d.delta is None  # a delta carries no delta of its own
        joined = merge(joined, d)
    assert joined == h.full()
    assert joined.value == h.full().value


@_each_type
@given(data=st.data())
def test_wire_round_trip(name: str, data: st.DataObject) -> None:
    h = data.draw(_histories(SPECS[name]))
    for value in [*h.states, *h.deltas]:
        back = from_bytes(to_bytes(value))
        assert type(back) is type(value)
        assert back == value
        assert back.value == value.value
        assert load(dump(value)) == value


# -- value semantics ------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_orset_matches_the_observed_remove_oracle(data: st.DataObject) -> None:
    """Each add has an id; a remove cancels the adds of the element its replica can see;
    an element is present iff one of its adds is uncancelled. Checked at every replica
    after every step, and after the final merge."""
    states: list[ORSet[Any]] = [ORSet() for _ in REPLICAS]
    adds: list[set[tuple[int, Any]]] = [set() for _ in REPLICAS]  # (add id, element) seen
    cancelled: list[set[int]] = [set() for _ in REPLICAS]
    steps = data.draw(st.lists(st.tuples(st.sampled_from(["add", "remove", "merge"]),
                                         st.integers(0, 2), ELEMENTS, st.integers(0, 2)),
                               max_size=30))
    for n, (kind, i, element, j) in enumerate(steps):
        if kind == "add":
            states[i] = states[i].add(element, at=REPLICAS[i]).reset_delta()
            adds[i].add((n, element))
        elif kind == "remove":
            states[i] = states[i].remove(element).reset_delta()
            cancelled[i] |= {a for a, e in adds[i] if e == element}
        else:
            states[i] = merge(states[i], states[j])
            adds[i] |= adds[j]
            cancelled[i] |= cancelled[j]
        expect = {e for a, e in adds[i] if a not in cancelled[i]}
        assert states[i].value == expect
    final = states[0]
    for s in states[1:]:
        final = merge(final, s)
    all_adds = set().union(*adds)
    all_cancelled = set().union(*cancelled)
    assert final.value == {e for a, e in all_adds if a not in all_cancelled}


def test_orset_add_wins_over_a_concurrent_remove() -> None:
    a_, b_ = REPLICAS[:2]
    base = ORSet().add("x", at=a_).reset_delta()
    removed = base.remove("x")
    readded = base.add("x", at=b_)
    assert merge(removed, readded).value == {"x"}
    assert merge(readded, removed).value == {"x"}
    # ...but a remove that observed the add wins over it.
    assert merge(readded, readded.reset_delta().remove("x")).value == frozenset()


@settings(deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(-10, 10)), max_size=30))
def test_pncounter_value_is_increments_minus_decrements(ops: list[tuple[int, int]]) -> None:
    states = [PNCounter() for _ in REPLICAS]
    for i, n in ops:
        states[i] = states[i].increment(n, at=REPLICAS[i])
    total = merge(merge(states[0], states[1]), states[2])
    assert total.value == sum(n for _, n in ops)
    assert total.increments.value == sum(n for _, n in ops if n > 0)
    assert total.decrements.value == -sum(n for _, n in ops if n < 0)


def test_the_seed_api_reads_naturally() -> None:
    with acting_as(REPLICAS[0]):
        c = GCounter().increment(5).increment()
    other = GCounter().increment(2, at=REPLICAS[1])
    assert c.value == 6
    assert merge(c, other).value == merge(other, c).value == 8
    with pytest.raises(LocalProtocolError, match="no writing replica"):
        GCounter().increment(1)
    with pytest.raises(LocalProtocolError):
        GCounter().increment(-1, at=REPLICAS[0])
    with pytest.raises(LocalProtocolError):
        merge(GCounter(), PNCounter())  # type: ignore[arg-type]


def test_a_restarted_node_writes_fresh_entries() -> None:
    old, new = Replica("a@h:1", 1), Replica("a@h:1", 2)
    before = GCounter().increment(5, at=old)
    after_restart = GCounter().increment(1, at=new)  # the new run starts from scratch
    assert merge(before, after_restart).value == 6  # not max(5, 1): nothing is lost
    s = ORSet().add("x", at=old).reset_delta().remove("x")
    t = ORSet().add("x", at=new)  # dot (new, 1) is not (old, 1): the add is not "seen"
    assert merge(s, t).value == {"x"}


def test_increment_delta_is_only_the_changed_slot() -> None:
    c = GCounter().increment(3, at=REPLICAS[0]).increment(4, at=REPLICAS[1]).reset_delta()
    d = c.increment(1, at=REPLICAS[0]).delta
    assert d is not None and d.entries == {REPLICAS[0]: 4}


def test_lww_register_last_writer_wins_with_replica_tie_break() -> None:
    a_, b_ = REPLICAS[:2]
    r1 = LWWRegister().assign("old", timestamp=10, at=a_)
    r2 = LWWRegister().assign("new", timestamp=20, at=b_)
    assert merge(r1, r2).value == merge(r2, r1).value == "new"
    tie_a = LWWRegister().assign("A", timestamp=5, at=a_)
    tie_b = LWWRegister().assign("B", timestamp=5, at=b_)
    assert merge(tie_a, tie_b).value == merge(tie_b, tie_a).value == "B"  # larger replica
    # A replica's own writes move forward even when its clock steps back.
    assert r2.assign("later", timestamp=1, at=b_).timestamp == 21


def test_mv_register_keeps_concurrent_writes_until_resolved() -> None:
    a_, b_ = REPLICAS[:2]
    x = MVRegister().assign(1, at=a_).reset_delta()
    y = MVRegister().assign(2, at=b_).reset_delta()
    both = merge(x, y)
    assert sorted(both.value) == [1, 2]
    resolved = both.assign(3, at=a_)
    assert merge(resolved, y).value == (3,)


def test_flag_only_switches_on() -> None:
    assert merge(Flag(), Flag().switch_on()).value is True
    assert Flag().value is False


def test_maps_remove_semantics() -> None:
    a_, b_ = REPLICAS[:2]
    m = PNCounterMap().increment("k", 5, at=a_).reset_delta()
    # A counter removed and re-added continues from its old value (documented).
    assert m.remove("k").increment("k", 1, at=a_).value == {"k": 6}
    # An update concurrent with a remove wins.
    assert merge(m.remove("k"), m.increment("k", 1, at=b_)).value == {"k": 6}
    mm = ORMultiMap().add_binding("k", 1, at=a_).add_binding("k", 2, at=a_).reset_delta()
    # A multimap key removed and re-added starts empty.
    assert mm.remove("k").add_binding("k", 3, at=a_).value == {"k": frozenset({3})}
    assert mm.remove_binding("k", 1, at=a_).get("k") == {2}
    lww = LWWMap().put("k", "v", at=a_)
    assert lww.get("k") == "v" and lww.remove("k").get("k", "gone") == "gone"
    om = ORMap().update("k", lambda s: s.add("e", at=a_), ORSet(), at=a_)
    assert om.value == {"k": frozenset({"e"})} and "k" in om and len(om) == 1


# -- pruning --------------------------------------------------------------------------------


def test_gcounter_pruning_keeps_the_value_and_stale_copies_cannot_resurrect_it() -> None:
    a_, b_, dead = REPLICAS
    state = GCounter().increment(2, at=a_).increment(3, at=b_).increment(7, at=dead)
    stale = state.reset_delta()
    pruned = state.reset_delta().prune(dead, at=a_)
    assert pruned.value == 12
    assert dead not in pruned.entries and pruned.entries[a_] == 9
    assert not pruned.needs_pruning(dead) and stale.needs_pruning(dead)
    for later in (merge(pruned, stale), merge(stale, pruned)):
        assert later.value == 12 and later.pruned == {dead}
    assert pruned.delta == pruned.reset_delta()  # the delta of a prune is the whole state
    with pytest.raises(LocalProtocolError):
        pruned.prune(a_, at=a_)
    pn = PNCounter().increment(4, at=dead).decrement(1, at=dead).increment(1, at=a_)
    pn_pruned = pn.prune(dead, at=a_)
    assert pn_pruned.value == merge(pn_pruned, pn.reset_delta()).value == 4


@settings(deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "remove"]), st.integers(0, 2), ELEMENTS),
                max_size=20))
def test_orset_pruning_keeps_the_value(ops: list[tuple[str, int, Any]]) -> None:
    dead = REPLICAS[2]
    state: ORSet[Any] = ORSet()
    for kind, i, element in ops:
        state = state.add(element, at=REPLICAS[i]) if kind == "add" else state.remove(element)
    state = state.reset_delta()
    pruned = state.prune(dead, at=REPLICAS[0])
    assert pruned.value == state.value
    assert dead not in pruned.context.replicas()
    assert all(d[0] != dead for e in pruned for d in pruned.dots(e))
    assert merge(pruned, state) == merge(state, pruned) == pruned.reset_delta()
    # After the prune, a remove observed anywhere removes the element for good.
    for element in pruned.value:
        gone = merge(state, pruned).remove(element)
        assert element not in merge(gone, pruned).value


PRUNABLE = sorted(n for n in SPECS if hasattr(SPECS[n].empty(), "prune"))


@pytest.mark.parametrize("name", PRUNABLE)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_pruning_a_dead_run_never_changes_the_value_and_a_new_run_starts_fresh(
        name: str, data: st.DataObject) -> None:
    """Replica c's run dies once every replica merged its entries; a prunes it. The value
    is unchanged, c's entries are gone and stay gone whatever stale copy is merged, and
    c's node, restarted as a new run, writes entries that count."""
    spec = SPECS[name]
    h = data.draw(_histories(spec))
    a_, dead = REPLICAS[0], REPLICAS[2]
    final: Any = h.full().reset_delta()
    stale = [*h.states, *h.deltas]
    if dead not in final.replicas():
        # Nothing to prune (or, for an MV-Register, its value is still current).
        assert not final.needs_pruning(dead) or name == "mvregister"
        return
    pruned = final.prune(dead, at=a_)
    assert pruned.value == final.value
    assert dead not in pruned.replicas() and not pruned.needs_pruning(dead)
    assert pruned.delta is not None and pruned.delta == pruned.reset_delta()
    for old in stale:  # a stale copy arriving later changes nothing
        later: Any = merge(pruned.reset_delta(), old)
        assert later.value == final.value and not later.needs_pruning(dead)
        assert merge(old, pruned.reset_delta()) == later
    restarted = Replica(dead.node, dead.creation + 1)
    op = data.draw(spec.ops)
    with acting_as(restarted, timestamp=99):
        written: Any = spec.apply(pruned.reset_delta(), op).reset_delta()
    for old in stale:
        assert merge(written, old).value == written.value
    # The new run's entries are its own, not the pruned run's continued.
    assert not written.needs_pruning(dead)


def test_mv_register_prunes_a_dead_run_once_its_value_was_overwritten() -> None:
    a_, b_, dead = REPLICAS
    reg = MVRegister().assign("old", at=dead).reset_delta()
    concurrent = MVRegister().assign("other", at=b_).reset_delta()
    both = merge(reg, concurrent)
    assert both.value == ("old", "other") and dead not in both.replicas()
    with pytest.raises(LocalProtocolError, match="current value"):
        both.prune(dead, at=a_)
    overwritten = both.assign("new", at=a_).reset_delta()
    assert overwritten.replicas() == {dead, b_}  # a holds the current value
    pruned = overwritten.prune(dead, at=a_)
    assert pruned.value == ("new",) and not pruned.needs_pruning(dead)
    # A write that saw the dead run's value, concurrent with the pruning, loses nothing
    # and resurrects nothing.
    racing = both.assign("racing", at=b_)
    assert set(merge(pruned, racing).value) == {"new", "racing"}
    assert merge(pruned, racing) == merge(racing, pruned).reset_delta()
    assert merge(pruned, both).value == ("new",)  # a stale copy changes nothing
    assert MVRegister.from_data(pruned.to_data()) == pruned.reset_delta()


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_orset_missing_for_a_peer_merges_like_the_whole_set(data: st.DataObject) -> None:
    """What one OR-Set sends a peer after learning what the peer has seen: merged there
    it equals merging the whole set; it is below the whole set (safe anywhere)."""
    h = data.draw(_histories(SPECS["orset"]))
    a_: Any = h.states[0].reset_delta()
    b_: Any = h.states[1].reset_delta()
    if data.draw(st.booleans()) and REPLICAS[2] in a_.replicas():
        a_ = merge(a_, b_).prune(REPLICAS[2], at=REPLICAS[0]).reset_delta()
    missing = a_.missing_for(b_.seen())
    assert merge(b_, missing) == merge(b_, a_)
    assert merge(a_, missing) == a_
    # Stale by the time it arrives: the peer moved on (merged c's state); still safe.
    c_ = h.states[2].reset_delta()
    assert merge(merge(merge(b_, c_), missing), a_) == merge(merge(b_, c_), a_)


def test_orset_missing_for_is_small_when_little_changed() -> None:
    a_, b_ = REPLICAS[:2]
    big = ORSet().add_all(range(10_000), at=a_).reset_delta()
    peer = big
    changed = big.add("new", at=b_).remove(5).remove(6).reset_delta()
    missing = changed.missing_for(peer.seen())
    assert len(to_bytes(missing)) * 100 < len(to_bytes(changed))
    assert merge(peer, missing) == merge(peer, changed)
    # Between equal sets only the removes both have seen travel (the peer may hold them).
    same = changed.missing_for(changed.seen())
    assert same.value == frozenset() and len(same.context.dot_set()) == 2
    with pytest.raises(RemoteProtocolError):
        changed.missing_for([1])


MAPS = sorted(n for n in SPECS if n.endswith("map"))


@pytest.mark.parametrize("name", MAPS)
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_map_missing_for_a_peer_merges_like_the_whole_map(name: str,
                                                          data: st.DataObject) -> None:
    """Each side of a map exchange sends only what the other lacks (by bucket digests of
    its values and its keys' causal context): merged in any order, twice or after other
    states, the pieces give what merging the whole maps gives."""
    spec = SPECS[name]
    h = data.draw(_histories(spec))
    a_: Any = h.states[0].reset_delta()
    b_: Any = h.states[1].reset_delta()
    c_: Any = h.states[2].reset_delta()
    if (hasattr(a_, "prune") and data.draw(st.booleans())
            and REPLICAS[2] in merge(a_, b_).replicas()):
        a_ = merge(a_, b_).prune(REPLICAS[2], at=REPLICAS[0]).reset_delta()
    buckets = data.draw(st.sampled_from([None, 1, 2, 3, 8]))
    to_b = a_.missing_for(b_.seen(buckets))
    to_a = b_.missing_for(a_.seen(buckets))
    whole = merge(a_, b_)
    assert merge(b_, to_b) == whole and merge(to_b, b_) == whole
    assert merge(a_, to_a) == whole and merge(merge(a_, to_a), to_a) == whole
    assert merge(a_, to_b) == a_  # below the sender's state: safe anywhere
    assert type(to_b).from_data(to_b.to_data()) == to_b
    # Stale by the time it arrives (the peer merged c's state first, or after): still
    # the merge of everything once the rest arrives.
    pieces = [to_b, to_b, c_, a_]
    order = data.draw(st.permutations(pieces))
    got = b_
    for piece in order:
        got = merge(got, piece)
    assert got == merge(merge(b_, c_), a_)


def test_map_missing_for_is_small_when_little_changed() -> None:
    a_, b_ = REPLICAS[:2]
    big = PNCounterMap()
    for i in range(4_000):
        big = big.increment(f"k{i}", i, at=a_)
    big = big.reset_delta()
    changed = big.increment("k5", 1, at=b_).decrement("new", 2, at=b_).remove("k7")
    changed = changed.reset_delta()
    missing = changed.missing_for(big.seen())
    assert len(to_bytes(missing)) * 20 < len(to_bytes(changed))
    assert len(Codec().encode(big.seen())) * 10 < len(to_bytes(big))
    assert merge(big, missing) == merge(big, changed)
    assert merge(big, missing).value == changed.value
    # Between equal maps no value travels (only the removes both have seen).
    same = changed.missing_for(changed.seen())
    assert len(to_bytes(same)) < 100 and merge(changed, same) == changed
    for bad in ([1], [changed.seen()[0], 0, []], [changed.seen()[0], 2, [1]],
                [changed.seen()[0], 1, ["x"]]):
        with pytest.raises(RemoteProtocolError):
            changed.missing_for(bad)


def test_bad_wire_forms_are_refused() -> None:
    for bad in ([1, 2], ["nope", []], ["gcounter", [[["a", 1, -5]], []]],
                ["orset", [[["x", [["a", 1, 3]]]], [[], []], []]],  # dot outside context
                ["pncountermap", [[[], [[], []], []], [["k", ["gcounter", [[], []]]]]]],
                ["gset", [[1, 2]]]):
        with pytest.raises(RemoteProtocolError):
            load(bad)
    with pytest.raises(RemoteProtocolError):
        from_bytes(b"\xc1")


def test_random_large_orset_delta_is_small() -> None:
    rng = random.Random(1)
    big = ORSet().add_all(range(2000), at=REPLICAS[0]).reset_delta()
    changed = big
    for _ in range(5):
        changed = changed.add(rng.randrange(10_000), at=REPLICAS[1])
    assert changed.delta is not None
    assert len(to_bytes(changed.delta)) * 20 < len(to_bytes(changed))
    assert merge(big, changed.delta) == changed.reset_delta()


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_orset_merge_paths_agree(data: st.DataObject) -> None:
    """ORSet.merge spells a small (delta) context out and walks a large one dot by dot
    (``sets.SMALL_CONTEXT``); both give the same join, for states and deltas."""
    h = data.draw(_histories(SPECS["orset"]))
    values = [*h.states, *h.deltas]
    pairs = [(a, b) for a in values for b in values][:40]
    fast = [merge(a, b) for a, b in pairs]
    saved = crdt_sets.SMALL_CONTEXT
    crdt_sets.SMALL_CONTEXT = -1  # every context is "large"
    try:
        slow = [merge(a, b) for a, b in pairs]
    finally:
        crdt_sets.SMALL_CONTEXT = saved
    assert fast == slow
