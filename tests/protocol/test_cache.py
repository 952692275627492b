"""The distributed cache's sans-I/O parts: placement, hand-off plan, store, single flight,
and the core driven by ServiceSim on a virtual clock."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from fabric.errors import CacheValueError
from fabric.protocol.cache import CacheCore
from fabric.protocol.cache_flight import Flights
from fabric.protocol.cache_placement import Placement, moved_fraction, plan_handoff
from fabric.protocol.cache_store import CacheStore
from fabric.protocol.effects import Complete, Log
from fabric.protocol.hashring import HashRing
from fabric.testing import ServiceSim

NAMES = ["a@h:1", "b@h:2", "c@h:3"]
KEYS = [f"key-{i}" for i in range(2000)]

# -- placement ------------------------------------------------------------------------------


def test_preference_lists_distinct_members_primary_first() -> None:
    ring = HashRing(NAMES)
    for key in KEYS[:200]:
        pref = ring.preference(key, 2)
        assert len(pref) == 2 and len(set(pref)) == 2
        assert pref[0] == ring.lookup(key)
    assert sorted(ring.preference("x", 10)) == sorted(NAMES)  # capped at the members


def test_placement_is_the_same_whatever_the_order_of_the_owners() -> None:
    one = Placement(NAMES, replicas=2)
    two = Placement(reversed(NAMES), replicas=2)
    assert all(one.owners(k) == two.owners(k) for k in KEYS[:300])
    assert Placement((), 2).owners("k") == []
    with pytest.raises(ValueError):
        Placement(NAMES, replicas=0)


def test_a_fourth_owner_moves_about_a_quarter_of_the_copies() -> None:
    old = Placement(NAMES, replicas=2)
    new = old.with_members([*NAMES, "d@h:4"])
    fraction = moved_fraction(old, new, KEYS)
    assert 0.25 / 1.2 <= fraction <= 0.25 * 1.2
    # Keys whose owners did not change are in no plan; every moved copy has one sender,
    # the owner it leaves, which drops it (once acknowledged); the other owner keeps it.
    sent: dict[tuple[str, str], int] = {}
    standby = 0
    for me in NAMES:
        held = [k for k in KEYS if me in old.owners(k)]
        for move in plan_handoff(me, old, new, held):
            assert old.owners(move.key) != new.owners(move.key)
            if move.standby_for is not None:  # the owner that keeps it, in case
                assert me in new.owners(move.key) and move.standby_for not in new.owners(
                    move.key) and not move.drop
                standby += 1
                continue
            assert move.drop == (me not in new.owners(move.key)) == bool(move.targets)
            for target in move.targets:
                sent[(str(move.key), target)] = sent.get((str(move.key), target), 0) + 1
    expected = {(k, n) for k in KEYS for n in new.owners(k) if n not in old.owners(k)}
    assert set(sent) == expected and set(sent.values()) == {1}
    assert standby == len(expected)  # every moved copy has a keeper on standby


def test_when_an_owner_dies_the_first_survivor_sends_its_keys_to_the_new_owner() -> None:
    old = Placement(NAMES, replicas=2)
    new = old.with_members(NAMES[:2])  # c@h:3 died: it plans nothing
    sent: dict[tuple[str, str], int] = {}
    for me in NAMES[:2]:
        held = [k for k in KEYS if me in old.owners(k)]
        for move in plan_handoff(me, old, new, held):
            assert not move.drop
            for target in move.targets:
                sent[(str(move.key), target)] = sent.get((str(move.key), target), 0) + 1
    expected = {(k, n) for k in KEYS for n in new.owners(k) if n not in old.owners(k)}
    assert set(sent) == expected and set(sent.values()) == {1}


def test_an_owner_that_leaves_sends_its_copies_and_drops_them() -> None:
    old = Placement(NAMES, replicas=2)
    new = old.with_members(NAMES[:2])
    moves = plan_handoff("c@h:3", old, new, KEYS)
    mine = [k for k in KEYS if "c@h:3" in old.owners(k)]
    assert sorted(str(m.key) for m in moves) == sorted(mine)
    assert all(m.drop for m in moves)
    assert all(set(m.targets) == set(new.owners(m.key)) - set(old.owners(m.key))
               for m in moves)


# -- the store ------------------------------------------------------------------------------


def test_ttl_is_exact_to_the_millisecond_on_read() -> None:
    store = CacheStore()
    store.put("k", "v", 10, 100, (1, "a"), now=10.0)
    entry = store.get("k", 10.0999)
    assert entry is not None and entry.value == "v"
    assert store.get("k", 10.1) is None
    assert store.stats.expirations == 1 and store.stats.hits == 1 and store.stats.misses == 1
    assert "k" not in store


def test_the_sweep_drops_expired_entries_within_its_budget() -> None:
    store = CacheStore()
    for i in range(10):
        store.put(i, i, 10, 5, (1, "a"), now=0.0)
    store.put("forever", 1, 10, None, (1, "a"), now=0.0)
    store.put(3, "rewritten", 10, 60_000, (2, "a"), now=0.0)  # its old deadline is stale
    # The budget bounds the deadlines examined: 0, 1, 2 and the stale one of 3.
    assert store.sweep(1.0, budget=4) == 3
    assert store.sweep(1.0, budget=100) == 6
    assert sorted(map(str, store.keys())) == ["3", "forever"]
    assert store.stats.expirations == 9


def test_entries_and_bytes_bounds_evict_least_recently_used() -> None:
    store = CacheStore(max_entries=3, max_bytes=100)
    for k in "abc":
        store.put(k, k, 10, None, (1, "n"), 0.0)
    store.get("a", 0.0)  # a is now the most recently used
    store.put("d", "d", 10, None, (1, "n"), 0.0)
    assert sorted(store.keys()) == ["a", "c", "d"] and store.stats.evictions == 1
    store.put("big", "x", 80, None, (1, "n"), 0.0)  # 4 entries: c goes (100 bytes)
    assert sorted(store.keys()) == ["a", "big", "d"] and store.bytes == 100
    store.put("e", "e", 15, None, (1, "n"), 0.0)  # 115 bytes: a and d go
    assert sorted(store.keys()) == ["big", "e"] and store.bytes == 95
    assert store.stats.evictions == 4
    with pytest.raises(CacheValueError):
        store.put("huge", "x", 101, None, (1, "n"), 0.0)
    assert sorted(store.keys()) == ["big", "e"]  # a refused entry evicts nothing


def test_merge_keeps_the_newer_version() -> None:
    store = CacheStore()
    assert store.merge("k", "new", 1, None, (5, "b"), 0.0)
    assert not store.merge("k", "old", 1, None, (4, "z"), 0.0)
    assert not store.merge("k", "tie", 1, None, (5, "a"), 0.0)
    assert store.merge("k", "newer", 1, None, (5, "c"), 0.0)
    entry = store.peek("k", 0.0)
    assert entry is not None and entry.value == "newer"


# -- single flight --------------------------------------------------------------------------


def test_flights_lead_wait_hand_over_and_drop() -> None:
    flights: Flights[str] = Flights()
    assert flights.join("k", "w1") and not flights.join("k", "w2")
    assert not flights.join("k", "w3")
    assert flights.abandon("k") == "w2"
    assert flights.drop_where(lambda w: w == "w2") == [("k", "w3")]
    assert flights.finish("k") == []
    assert "k" not in flights
    assert flights.join("j", "x") and not flights.join("j", "y")
    assert flights.finish("j") == ["y"]
    assert flights.abandon("j") is None


# -- the core on a simulated cluster --------------------------------------------------------


class Cluster:
    """Three (or more) cache cores in a ServiceSim; every node is an owner."""

    def __init__(self, names: list[str] = NAMES, *, write_acks: int | None = None,
                 latency: float = 0.001, **options: Any) -> None:
        self.names = list(names)
        self.step = max(0.1, 4 * latency)  # long enough for any one operation
        self.down: set[str] = set()  # nodes killed and not restarted
        self.owners = set(names)
        self.tokens = itertools.count()
        self.sim = ServiceSim(lambda name, _c: CacheCore("t", name, write_acks=write_acks,
                                                         **options), names,
                              latency=latency)
        for name in names:
            self.sim.call(name, "set_owners", set(self.owners))
        self.sim.advance(0.1)

    def core(self, name: str) -> CacheCore:
        core: CacheCore = self.sim.core(name)
        return core

    def start(self, name: str, op: str, key: Any, *args: Any) -> Any:
        token = next(self.tokens)
        self.sim.call(name, "request", token, op, key, list(args))
        return token

    def op(self, name: str, op: str, key: Any, *args: Any) -> Any:
        token = self.start(name, op, key, *args)
        self.sim.advance(self.step)
        return self.sim.completed.pop(token)

    def put(self, name: str, key: Any, value: Any, ttl_ms: int | None = None) -> Any:
        return self.op(name, "put", key, value, 10, ttl_ms, False)

    def set_owners(self, owners: set[str]) -> None:
        self.owners = owners
        for name in self.names:
            if name not in self.down:
                self.sim.call(name, "set_owners", set(owners))

    def kill(self, name: str) -> None:
        self.sim.kill(name)
        self.down.add(name)

    def restart(self, name: str) -> None:
        """Start ``name`` again with a new, empty core that knows the owners."""
        self.sim.restart(name)
        self.down.discard(name)
        self.sim.call(name, "set_owners", set(self.owners))


def test_put_on_one_node_get_on_another_and_both_owners_hold_it() -> None:
    c = Cluster()
    assert c.put("a@h:1", "k", "v") == ("ok", True)
    assert c.op("c@h:3", "get", "k") == ("hit", "v")
    owners = c.core("a@h:1").owners_of("k")
    assert all("k" in c.core(n).store for n in owners)
    assert all("k" not in c.core(n).store for n in NAMES if n not in owners)


def test_operations_put_new_delete_incr_and_mget() -> None:
    c = Cluster()
    assert c.op("a@h:1", "put", "n", 1, 10, None, True) == ("ok", True)
    assert c.op("b@h:2", "put", "n", 2, 10, None, True) == ("exists", 1)
    assert c.op("c@h:3", "incr", "n", 5, None) == ("ok", 6)
    assert c.op("c@h:3", "del", "n") == ("ok", True)
    assert c.op("a@h:1", "get", "n") == ("miss", None)
    assert c.op("a@h:1", "del", "n") == ("ok", False)
    c.put("a@h:1", "s", "text")
    assert c.op("b@h:2", "incr", "s", 1, None)[0] == "error"
    assert c.op("b@h:2", "mget", "s", ["s", "nope"]) == ("ok", [["text"], None])


def test_a_write_waits_for_both_copies_and_fails_when_one_owner_goes_down() -> None:
    c = Cluster()
    primary, replica = c.core("a@h:1").owners_of("w")
    client = next(n for n in NAMES if n not in (primary, replica))
    c.sim.cut(client, replica)
    token = c.start(client, "put", "w", "v", 10, None, False)
    c.sim.advance(0.5)
    assert token not in c.sim.completed  # not acknowledged: one copy only
    c.sim.advance(1.0)  # the cut is detected: the replica is down for the client
    status, why = c.sim.completed[token]
    assert status == "error" and "fewer than 2 copies" in why


def test_with_one_write_ack_a_put_completes_on_the_first_copy() -> None:
    c = Cluster(write_acks=1)
    primary, replica = c.core("a@h:1").owners_of("w")
    client = next(n for n in NAMES if n not in (primary, replica))
    c.sim.cut(client, replica)
    assert c.put(client, "w", "v") == ("ok", True)


def test_a_put_stamped_below_a_newer_copy_is_stamped_again_and_wins() -> None:
    c = Cluster()
    owners = c.core("a@h:1").owners_of("z")
    assert "c@h:3" not in owners  # c never sees the versions of z
    for i in range(5):  # a's clock runs ahead of c's
        c.put("a@h:1", "z", f"from a {i}")
    assert c.put("c@h:3", "z", "from c") == ("ok", True)
    assert c.op("b@h:2", "get", "z") == ("hit", "from c")
    assert all(c.core(n).store.peek("z", c.sim.now).value == "from c"  # type: ignore[union-attr]
               for n in owners)


def test_the_minority_side_of_a_partition_refuses_writes_and_reads_still_answer() -> None:
    c = Cluster()
    c.put("a@h:1", "k", "before")
    c.sim.partition(["a@h:1"], ["b@h:2", "c@h:3"])
    c.sim.advance(1.5)  # detected: each side places keys on its own owners
    status, why = c.put("a@h:1", "k", "minority")
    assert status == "error" and why.startswith("unavailable: 1 of the 2 owners")
    assert c.op("a@h:1", "incr", "n", 1, None)[0] == "error"
    assert c.put("b@h:2", "k", "majority") == ("ok", True)
    c.sim.heal()
    c.sim.advance(2.0)
    assert all(c.op(n, "get", "k") == ("hit", "majority") for n in NAMES)


def test_a_kill_right_after_a_heal_loses_no_acknowledged_write() -> None:
    # The lab found this: after a heal, a copy that leaves an owner must stay there until
    # its new owner confirmed it, or the death of the other holder loses the key.
    c = Cluster()
    c.sim.partition(["a@h:1"], ["b@h:2", "c@h:3"])
    c.sim.advance(1.5)
    for i in range(300):
        assert c.put("b@h:2", f"k{i}", i) == ("ok", True)
    c.sim.heal()
    for _ in range(10_000):  # until the sessions are back (bounded)
        if c.sim.connected("a@h:1", "c@h:3") and c.sim.connected("b@h:2", "c@h:3"):
            break
        c.sim.run(until=c.sim.now + 0.0001)
    c.kill("c@h:3")  # the hand-off batches are still in flight
    c.sim.advance(2.0)
    assert all(c.op("a@h:1", "get", f"k{i}") == ("hit", i) for i in range(300))
    assert all(c.op("b@h:2", "get", f"k{i}") == ("hit", i) for i in range(300))
    holders = [sum(f"k{i}" in c.core(n).store for n in NAMES[:2]) for i in range(300)]
    assert set(holders) == {2}  # both survivors hold every key again


def test_with_one_write_ack_the_minority_side_still_writes() -> None:
    c = Cluster(write_acks=1)
    c.sim.partition(["a@h:1"], ["b@h:2", "c@h:3"])
    c.sim.advance(1.5)
    assert c.put("a@h:1", "k", "alone") == ("ok", True)


def test_reads_fail_over_to_a_replica_when_the_primary_dies() -> None:
    c = Cluster()
    for i in range(100):
        assert c.put(NAMES[i % 3], f"k{i}", i) == ("ok", True)
    victim = "a@h:1"
    c.kill(victim)
    c.set_owners(c.owners - {victim})  # what pg reports after the nodedown
    c.sim.advance(1.0)  # hand-off to the new replicas
    for i in range(100):
        assert c.op("b@h:2", "get", f"k{i}") == ("hit", i)
    # every key is on two live nodes again
    for i in range(100):
        holders = [n for n in NAMES[1:] if f"k{i}" in c.core(n).store]
        assert len(holders) == 2


def test_a_request_in_flight_to_a_dying_primary_moves_to_the_replica() -> None:
    c = Cluster()
    c.put("a@h:1", "k", "v")
    primary, _ = c.core("a@h:1").owners_of("k")
    client = next(n for n in NAMES if n != primary)
    c.sim.cut(primary, client)  # the request is lost; the nodedown retries it
    token = c.start(client, "get", "k")
    c.sim.advance(2.0)
    assert c.sim.completed[token] == ("hit", "v")


def test_a_key_whose_owners_are_all_down_fails_at_once() -> None:
    c = Cluster()
    client = "c@h:3"
    c.set_owners(set(NAMES[:2]))  # c only reads
    c.sim.advance(1.0)
    c.put(client, "k", "v")
    for owner in NAMES[:2]:
        c.kill(owner)
    c.sim.advance(0.1)
    token = next(c.tokens)
    effects = c.core(client).request(token, "get", "k", [], c.sim.now)
    assert effects == [Complete(token, ("error", "unavailable: every owner of the key is down"))]


def test_an_increment_in_flight_is_not_retried() -> None:
    c = Cluster()
    primary = c.core("a@h:1").owners_of("n")[0]
    client = next(n for n in NAMES if n != primary)
    c.sim.cut(primary, client)
    token = c.start(client, "incr", "n", 1, None)
    c.sim.advance(2.0)
    status, why = c.sim.completed[token]
    assert status == "error" and "outcome unknown" in why


def test_concurrent_misses_across_the_cluster_compute_once() -> None:
    c = Cluster()
    tokens = [c.start(n, "goc", "g") for n in NAMES for _ in range(3)]
    c.sim.advance(0.1)
    assert sorted(c.sim.completed[t][0] for t in tokens if t in c.sim.completed) == ["compute"]
    leader = next(t for t in tokens if t in c.sim.completed)
    leader_node = NAMES[tokens.index(leader) // 3]
    c.sim.completed.clear()
    assert c.op(leader_node, "fill", "g", "value", 10, None) == ("ok", True)
    assert all(c.sim.completed.get(t) == ("hit", "value") for t in tokens if t != leader)


def test_a_failed_leader_hands_the_computation_to_the_next_waiter() -> None:
    c = Cluster()
    primary = c.core("a@h:1").owners_of("g")[0]
    others = [n for n in NAMES if n != primary]
    first = c.start(others[0], "goc", "g")
    c.sim.advance(0.1)
    second = c.start(others[1], "goc", "g")
    c.sim.advance(0.1)
    assert c.sim.completed.pop(first) == ("compute", None) and second not in c.sim.completed
    c.kill(others[0])  # the leader's node dies
    c.sim.advance(0.1)
    assert c.sim.completed.pop(second) == ("compute", None)
    third = c.start(primary, "goc", "g")
    c.sim.advance(0.1)
    assert c.op(others[1], "abandon", "g") == ("ok", None)
    assert c.sim.completed.pop(third) == ("compute", None)


def test_a_fourth_node_takes_about_a_quarter_and_every_key_stays_readable() -> None:
    names = [*NAMES, "d@h:4"]
    c = Cluster(names)
    c.set_owners(set(NAMES))  # d hosts the cache but owns nothing yet
    c.sim.advance(1.0)
    for i in range(400):
        c.put(NAMES[i % 3], f"k{i}", i)
    assert len(c.core("d@h:4").store) == 0
    c.set_owners(set(names))
    c.sim.advance(1.0)
    moved = sum(c.core(n).stats.handoffs for n in names)
    assert 0.25 / 1.2 <= moved / 800 <= 0.25 * 1.2
    assert len(c.core("d@h:4").store) == moved  # the newcomer got exactly what moved
    assert all(c.op("d@h:4", "get", f"k{i}") == ("hit", i) for i in range(400))
    assert sum(len(c.core(n).store) for n in names) == 800  # no stray copies left


def test_reads_keep_answering_while_keys_are_handed_off() -> None:
    names = [*NAMES, "d@h:4"]
    c = Cluster(names, handoff_batch=1)
    c.set_owners(set(NAMES))
    c.sim.advance(1.0)
    for i in range(50):
        c.put("a@h:1", f"k{i}", i)
    c.set_owners(set(names))  # no time passes: nothing handed off yet
    tokens = {i: c.start("b@h:2", "get", f"k{i}") for i in range(50)}
    c.sim.advance(0.5)
    assert all(c.sim.completed[t] == ("hit", i) for i, t in tokens.items())


def test_a_graceful_leave_hands_everything_off_first() -> None:
    c = Cluster()
    for i in range(200):
        c.put(NAMES[i % 3], f"k{i}", i)
    held = len(c.core("c@h:3").store)
    c.sim.call("c@h:3", "leave", "bye")
    assert "bye" not in c.sim.completed  # waits for the acknowledgements
    c.sim.advance(0.1)
    assert c.sim.completed["bye"] == ("ok", None)
    assert len(c.core("c@h:3").store) == 0 and c.core("c@h:3").stats.handoffs >= held // 2
    c.kill("c@h:3")
    c.set_owners(set(NAMES[:2]))
    assert all(c.op("a@h:1", "get", f"k{i}") == ("hit", i) for i in range(200))


def test_read_repair_overwrites_a_stale_replica() -> None:
    c = Cluster()
    c.put("a@h:1", "k", "old")
    primary, replica = c.core("a@h:1").owners_of("k")
    c.core(replica).store.delete("k")  # the replica lost its copy
    c.sim.call("b@h:2", "read_all", "r", "k")
    c.sim.advance(0.1)
    assert c.sim.completed["r"] == ("hit", "old")
    assert c.core("b@h:2").stats.repairs == 1
    entry = c.core(replica).store.peek("k", c.sim.now)
    assert entry is not None and entry.value == "old"


def test_ttls_travel_with_replicas_and_expire_everywhere() -> None:
    c = Cluster()
    c.put("a@h:1", "t", "v", ttl_ms=500)
    assert c.op("b@h:2", "get", "t") == ("hit", "v")
    c.sim.advance(0.5)
    assert c.op("b@h:2", "get", "t") == ("miss", None)
    assert all(c.core(n).store.peek("t", c.sim.now) is None for n in NAMES)


def test_bad_messages_are_logged_not_raised() -> None:
    core = CacheCore("t", "a@h:1")
    effects = core.on_message("b@h:2", ["q", 1, "nope", "k", []], 0.0)
    assert len(effects) == 1 and isinstance(effects[0], Log)
    assert isinstance(core.on_message("b@h:2", ["zzz"], 0.0)[0], Log)
    with pytest.raises(ValueError):
        CacheCore("t", "a@h:1", replicas=2, write_acks=3)


def test_a_near_cache_serves_repeat_reads_and_owners_invalidate_it() -> None:
    c = Cluster(near_entries=100, near_ttl=10.0)
    c.set_owners({"a@h:1", "b@h:2"})  # c only reads
    c.sim.advance(1.0)
    reader = c.core("c@h:3")
    c.put("a@h:1", "k", "v1")
    assert reader.read_near("k", c.sim.now) is None
    assert c.op("c@h:3", "nget", "k") == ("hit", "v1")
    near = reader.read_near("k", c.sim.now)
    assert near is not None and near.value == "v1"  # the next read sends nothing
    c.put("b@h:2", "k", "v2")  # the owners tell the reader
    assert reader.read_near("k", c.sim.now) is None
    assert c.op("c@h:3", "nget", "k") == ("hit", "v2")
    assert c.op("a@h:1", "del", "k") == ("ok", True)
    assert reader.read_near("k", c.sim.now) is None
    c.put("a@h:1", "t", "short", ttl_ms=300)
    assert c.op("c@h:3", "nget", "t") == ("hit", "short")
    c.sim.advance(0.3)  # a near copy never outlives the key's TTL
    assert reader.read_near("t", c.sim.now) is None
    c.put("a@h:1", "k", "v3")
    assert c.op("c@h:3", "nget", "k") == ("hit", "v3")
    c.set_owners({"a@h:1", "b@h:2", "c@h:3"})  # owners change: the near cache empties
    assert reader.read_near("k", c.sim.now) is None
    assert reader.counters()["near_hits"] == 1


def test_a_near_copy_expires_after_near_ttl_even_without_an_invalidation() -> None:
    c = Cluster(near_entries=100, near_ttl=0.5)
    c.set_owners({"a@h:1", "b@h:2"})
    c.sim.advance(1.0)
    c.put("a@h:1", "k", "v")
    assert c.op("c@h:3", "nget", "k") == ("hit", "v")
    c.sim.advance(0.5)  # the bound that holds if an owner forgot its readers
    assert c.core("c@h:3").read_near("k", c.sim.now) is None


@pytest.mark.parametrize("seed", range(6))
def test_random_churn_loses_no_acknowledged_write(seed: int) -> None:
    """Writes from random nodes while, one at a time, a node is killed and restarted
    empty, or cut off and healed (and sometimes a node killed right after the heal);
    afterwards every acknowledged write reads back, held by exactly its two owners."""
    import random

    names = [f"n{i}@h:{i}" for i in range(5)]
    rng = random.Random(seed)
    c = Cluster(names)
    acked: dict[str, int] = {}
    serial = itertools.count()

    def write_some() -> None:
        for _ in range(rng.randrange(5, 20)):
            live = [n for n in names if n not in c.down]
            key, value = f"k{next(serial)}", rng.randrange(1000)
            if c.put(rng.choice(live), key, value) == ("ok", True):
                acked[key] = value

    def restart(victim: str) -> None:
        c.restart(victim)  # a new, empty core
        c.sim.advance(1.0)

    for _ in range(8):  # bounded churn
        write_some()
        victim = rng.choice(names)
        if rng.random() < 0.5:
            c.kill(victim)
            write_some()
            c.sim.advance(1.0)
            restart(victim)
        else:
            c.sim.partition([victim], [n for n in names if n != victim])
            c.sim.advance(1.5)
            write_some()
            c.sim.heal()
            if rng.random() < 0.5:  # a kill right after the heal, mid-move
                for _ in range(10_000):
                    if all(c.sim.connected(victim, n) for n in names if n != victim):
                        break
                    c.sim.run(until=c.sim.now + 0.0001)
                other = rng.choice([n for n in names if n != victim])
                c.kill(other)
                c.sim.advance(1.0)
                restart(other)
            c.sim.advance(1.0)
        c.sim.advance(6.0)  # settles: hand-offs done, standby moves expired
    assert len(acked) > 50
    placement = c.core(names[0]).placement
    extra, missing = [], []
    for key, value in acked.items():
        assert c.op(rng.choice(names), "get", key) == ("hit", value), key
        holders = {n for n in names if key in c.core(n).store}
        owners = set(placement.owners(key))
        if holders - owners:
            extra.append((key, sorted(holders - owners)))
        if owners - holders:
            missing.append((key, sorted(owners - holders)))
    assert (extra[:3], missing[:3], len(extra), len(missing)) == ([], [], 0, 0)


# -- tombstones -----------------------------------------------------------------------------


def test_a_tombstone_refuses_older_copies_counts_against_the_bounds_and_expires() -> None:
    store = CacheStore(max_entries=3)
    store.put("k", "v", 10, None, (5, "a"), now=0.0)
    assert store.bury("k", 1, 1000, (6, "b"), now=0.0) == (True, True)
    assert store.get("k", 0.0) is None and store.peek("k", 0.0) is None
    assert not store.merge("k", "old", 10, None, (5, "a"), now=0.5)  # cannot come back
    assert store.merge("k", "new", 10, None, (7, "a"), now=0.5)  # a newer write can
    assert store.bury("k", 1, 1000, (8, "b"), now=0.5) == (True, True)
    assert store.stats.tombstones == 1 and len(store) == 1 and store.bytes == 17
    assert store.sweep(1.6) == 1  # a bounded lifetime: swept like an expired entry
    assert store.stats.tombstones == 0 and len(store) == 0 and store.bytes == 0
    for i in range(4):  # tombstones are entries: the LRU bound evicts them too
        store.bury(i, 1, 60_000, (1, "a"), now=2.0)
    assert len(store) == 3 and store.stats.tombstones == 3 and 0 not in store


def with_a_newcomer(**options: Any) -> Cluster:
    """Four nodes, of which d@h:4 hosts the cache without owning keys (yet)."""
    c = Cluster([*NAMES, "d@h:4"], **options)
    c.set_owners(set(NAMES))
    c.sim.advance(1.0)
    return c


def test_a_delete_racing_a_handoff_does_not_bring_the_old_copy_back() -> None:
    # The copies of the keys that move to the newcomer d are still queued at their old
    # owners (one per hand-off step) when every key is deleted: the hand-off then
    # delivers copies older than the deletes, which must not revive them.
    c = with_a_newcomer(handoff_batch=1)
    names = c.names
    keys = [f"k{i}" for i in range(60)]
    for rounds in range(3):  # a's clock runs ahead of d's
        for key in keys:
            c.put("a@h:1", key, rounds)
    c.set_owners(set(names))  # no time passes: nothing handed off yet
    moving = [k for k in keys if "d@h:4" in c.core("d@h:4").owners_of(k)]
    assert len(moving) > 5
    tokens = [c.start("d@h:4", "del", key) for key in moving]
    c.sim.advance(3.0)
    assert all(c.sim.completed.pop(t) == ("ok", True) for t in tokens)
    assert sum(c.core(n).stats.handoffs for n in names) > 0  # the old copies did travel
    for key in moving:
        assert c.op("b@h:2", "get", key) == ("miss", None), key
        assert all(c.core(n).store.peek(key, c.sim.now) is None for n in names), key
        c.sim.call("c@h:3", "read_all", ("r", key), key)
    c.sim.advance(0.1)
    assert all(c.sim.completed[("r", key)] == ("miss", None) for key in moving)


def test_read_repair_spreads_a_delete_over_a_stale_replica() -> None:
    c = Cluster()
    c.put("a@h:1", "k", "old")
    primary, replica = c.core("a@h:1").owners_of("k")
    # The delete reached the primary only; the replica still holds the value it deleted.
    c.core(primary).store.bury("k", 1, 60_000, (99, primary), c.sim.now)
    c.core(replica).store.put("k", "old", 10, None, (98, "z"), c.sim.now)
    c.sim.call("b@h:2", "read_all", "r", "k")
    c.sim.advance(0.1)
    assert c.sim.completed["r"] == ("miss", None)
    assert all(c.core(n).store.peek("k", c.sim.now) is None for n in (primary, replica))


def test_a_sender_dying_after_the_change_settled_elsewhere_loses_no_copy() -> None:
    # The sender's batches to the newcomer are lost on the way (a one-way cut, not yet
    # detected), so its hand-off outlasts handoff_grace: the owners that keep the moving
    # keys settle meanwhile and stop standing by. Then the sender dies. Owners that settle
    # compare digests with their co-owners and send what those lack.
    c = with_a_newcomer(handoff_grace=0.05)
    names = c.names
    keys = [f"k{i}" for i in range(200)]
    for key in keys:
        assert c.put("b@h:2", key, key) == ("ok", True)
    sender = "a@h:1"
    c.sim.cut(sender, "d@h:4")  # detected only after the simulator's detect_delay (1 s)
    c.set_owners(set(names))
    c.sim.advance(0.3)  # the others' hand-offs are acknowledged and their change settled
    assert all(c.core(n).counters()["handoff_pending"] == 0 for n in names if n != sender)
    assert c.core(sender).counters()["handoff_pending"] > 0
    c.kill(sender)
    c.sim.advance(3.0)
    live = [n for n in names if n != sender]
    placement = c.core(live[0]).placement
    missing = [(k, n) for k in keys for n in placement.owners(k)
               if c.core(n).store.peek(k, c.sim.now) is None]
    assert missing == []
    assert all(c.op(live[0], "get", k) == ("hit", k) for k in keys)
