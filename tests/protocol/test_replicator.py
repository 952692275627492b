"""The CRDT replicator core in the deterministic service simulator.

Every payload goes through the real wire codec (and is counted), and a lossy mode drops
and duplicates messages, which the ordered mesh never does: the replicator must still
converge through its sequence-gap detection and periodic anti-entropy."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from typing import Any

import pytest

from fabric.errors import LocalProtocolError
from fabric.protocol import replicator
from fabric.protocol.codec import Codec
from fabric.protocol.crdt import (
    GCounter,
    LWWMap,
    MVRegister,
    ORSet,
    PNCounter,
    PNCounterMap,
    Replica,
    dump,
)
from fabric.protocol.effects import Effect, Send
from fabric.protocol.events import DataDeleted
from fabric.protocol.replicator import ALL, LOCAL, MAJORITY, Key, Persist, ReplicatorCore
from fabric.testing import ServiceSim

HITS = Key("hits", GCounter)
SEEN = Key("seen", ORSet)
TALLY = Key("tally", PNCounterMap)
MOTD = Key("motd", MVRegister)
NAMES5 = [f"n{i}@h:{i}" for i in range(1, 6)]
A, B, C = NAMES5[:3]


class Net:
    """Wraps a ReplicatorCore: payloads cross the codec; counts bytes per message kind;
    while ``lossy``, drops and duplicates messages at random."""

    lossy = False
    drop = 0.1
    duplicate = 0.1

    def __init__(self, core: ReplicatorCore, rng: random.Random, log: Counter[str]) -> None:
        self.core = core
        self.rng = rng
        self.log = log
        self.codec = Codec()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core, name)

    def on_message(self, peer: str, payload: Any, now: float) -> list[Effect]:
        frame = self.codec.encode(payload)
        self.log[payload[0]] += len(frame)
        self.log[payload[0] + "#"] += 1
        if payload[0] in ("gossip", "delta", "write"):
            self.log["rows:" + payload[0]] += len(payload[2] if payload[0] != "gossip"
                                                  else payload[1]) if payload[0] != "write" \
                else 1
        if Net.lossy and self.rng.random() < Net.drop:
            return []
        out = self.core.on_message(peer, self.codec.decode(frame), now)
        if Net.lossy and self.rng.random() < Net.duplicate:
            out += self.core.on_message(peer, self.codec.decode(frame), now)
        return out


class World:
    def __init__(self, names: list[str], seed: int = 0, **options: Any) -> None:
        self.rng = random.Random(seed)
        self.bytes: Counter[str] = Counter()
        self.tokens = itertools.count(1)
        self.sim = ServiceSim(
            lambda name, creation: Net(ReplicatorCore(name, creation, members=names, **options),
                                       self.rng, self.bytes),
            names, seed=seed, connected=False)
        for a, b in itertools.combinations(names, 2):
            self.sim.connect(a, b)
        self.sim.advance(0.1)  # periodic anti-entropy never lets the queue run dry

    def update(self, name: str, key: Key[Any], fn: Any, write: Any = LOCAL,
               timeout: float = 2.0) -> int:
        token = next(self.tokens)
        self.sim.execute(name, self.sim.core(name).update(key, fn, write, token, self.sim.now,
                                                          timeout=timeout))
        return token

    def get(self, name: str, key: Key[Any], read: Any = LOCAL, timeout: float = 2.0) -> int:
        token = next(self.tokens)
        self.sim.execute(name, self.sim.core(name).get(key, read, token, self.sim.now,
                                                       timeout=timeout))
        return token

    def result(self, token: int) -> Any:
        return self.sim.completed.get(token)

    def value(self, name: str, key: Key[Any]) -> Any:
        v = self.sim.core(name).value(key)
        return None if v is None else v.value


@pytest.fixture(autouse=True)
def _reliable() -> Any:
    Net.lossy = False
    yield
    Net.lossy = False


def test_local_updates_reach_every_replica_in_one_batch_per_interval() -> None:
    w = World(NAMES5[:3])
    for name in (A, B, C):
        for _ in range(5):
            assert w.result(w.update(name, HITS, lambda c: c.increment(1)))[0] == "ok"
    assert w.value(A, HITS) == 5  # applied locally at once
    w.sim.advance(0.5)  # one delta interval (0.2 s) and the latency
    assert [w.value(n, HITS) for n in (A, B, C)] == [15, 15, 15]
    # 15 updates, one batch per node: each node received one batch from each of the others.
    assert w.bytes["delta#"] == 6
    assert sum(w.sim.core(n).stats["delta_batches"] for n in (A, B, C)) == 3


def test_write_and_read_majority_with_acks() -> None:
    w = World(NAMES5[:3])
    token = w.update(A, SEEN, lambda s: s.add("x"), write=MAJORITY)
    assert w.result(token) is None  # waiting for one ack
    w.sim.advance(0.01)
    status, value = w.result(token)
    assert status == "ok" and value.value == {"x"}
    token = w.update(B, SEEN, lambda s: s.add("y"), write=ALL)
    w.sim.advance(0.01)
    assert w.result(token)[0] == "ok"
    assert w.value(C, SEEN) == {"x", "y"}  # both writes reached C directly (no gossip yet)


def test_read_majority_returns_a_majority_write_made_elsewhere() -> None:
    """Read-your-writes across nodes: the write reaches {A, B, C} only (A is cut from D and
    E); a majority read at E asks {B, C, D}; any two answers include B or C."""
    w = World(NAMES5)
    w.sim.cut(A, NAMES5[3])
    w.sim.cut(A, NAMES5[4])
    token = w.update(A, HITS, lambda c: c.increment(7), write=MAJORITY)
    w.sim.advance(0.01)
    assert w.result(token)[0] == "ok"
    assert w.value(NAMES5[4], HITS) is None  # no delta or gossip has reached E yet
    read = w.get(NAMES5[4], HITS, read=MAJORITY)
    w.sim.advance(0.01)
    status, value = w.result(read)
    assert status == "ok" and value.value == 7
    assert w.value(NAMES5[4], HITS) == 7  # read repair: merged into E's replica


def test_levels_that_cannot_be_met_fail_with_a_reason() -> None:
    w = World(NAMES5[:3])
    w.sim.partition([A], [B, C])
    w.sim.advance(2.0)  # nodedowns seen
    token = w.update(A, HITS, lambda c: c.increment(1), write=MAJORITY)
    status, reason = w.result(token)
    assert status == "error" and "needs 2 of 3 replicas, 1 reachable" in reason
    assert w.value(A, HITS) == 1  # applied locally anyway (documented)
    read = w.get(A, HITS, read=3)
    assert w.result(read)[0] == "error"
    # A timeout: the cut happens while the write is in flight, before detection.
    w.sim.heal()
    w.sim.advance(5.0)
    assert w.value(B, HITS) == 1  # the failed write spread after the heal
    w.sim.partition([A], [B, C])
    token = w.update(A, HITS, lambda c: c.increment(1), write=ALL, timeout=0.5)
    w.sim.advance(0.6)
    status, reason = w.result(token)
    assert status == "error" and reason.startswith("timeout: write all of 'hits'")
    with pytest.raises(LocalProtocolError, match="consistency level"):
        w.update(A, HITS, lambda c: c.increment(1), write="most")
    with pytest.raises(LocalProtocolError, match="not GCounter"):
        w.update(A, HITS, lambda c: PNCounter())


def test_anti_entropy_after_a_heal_exchanges_only_the_differing_keys() -> None:
    keys = [Key(f"k{i}", GCounter) for i in range(300)]
    w = World(NAMES5[:2])
    for key in keys:
        w.update(A, key, lambda c: c.increment(1))
    w.sim.advance(1.0)
    assert all(w.value(B, k) == 1 for k in keys)
    w.sim.partition([A], [B])
    w.sim.advance(2.0)
    for key in keys[:3]:  # 1% of the keys change during the partition
        w.update(A, key, lambda c: c.increment(1))
    w.sim.advance(1.0)
    w.bytes.clear()
    w.sim.heal()
    w.sim.advance(1.0)
    assert all(w.value(B, k) == (2 if k in keys[:3] else 1) for k in keys)
    # Only the three changed keys travelled (A starts; B, equal after merging, sends nothing
    # back).
    assert w.bytes["rows:gossip"] == 3
    full_state = sum(len(Codec().encode(["k", [[["a", 1, 1]], []]])) for _ in keys)
    heal_bytes = sum(v for k, v in w.bytes.items() if k in ("digest", "keys", "gossip"))
    assert heal_bytes < full_state


def heal_bytes(keys: int, changed: int) -> tuple[int, int]:
    """Two replicas share ``keys`` counters; ``changed`` of them change on one side during a
    partition. Returns (anti-entropy bytes after the heal, bytes of the full state)."""
    names = [Key(f"k{i}", GCounter) for i in range(keys)]
    w = World(NAMES5[:2])
    for key in names:
        w.update(A, key, lambda c: c.increment(1))
    w.sim.advance(3.0)
    w.sim.partition([A], [B])
    w.sim.advance(2.0)
    for key in names[:changed]:
        w.update(A, key, lambda c: c.increment(1))
    w.sim.advance(1.0)
    w.bytes.clear()
    w.sim.heal()
    w.sim.advance(1.0)
    assert all(w.value(B, k) == (2 if i < changed else 1) for i, k in enumerate(names))
    codec = Codec()
    full = sum(len(codec.encode([k.name, dump(w.sim.core(A).value(k))])) for k in names)
    return sum(w.bytes[k] for k in ("digest", "keys", "gossip")), full


def test_heal_cost_grows_with_the_difference_not_the_state() -> None:
    # Converged replicas: one root digest per round, whatever the number of keys.
    converged, _ = heal_bytes(20_000, 0)
    assert converged < 100
    # 1% of 20,000 keys changed during the partition.
    one_percent, full = heal_bytes(20_000, 200)
    assert one_percent < full / 8
    assert one_percent / 200 < 500  # bytes per changed key (its state is ~32 bytes)
    # The same 10 changed keys among 2,000 or 20,000: ten times the state, not ten times
    # the cost (the tree's depth grows by one level).
    small, _ = heal_bytes(2_000, 10)
    large, _ = heal_bytes(20_000, 10)
    assert large < 2 * small
    # Twenty times the changed keys among the same 20,000: about twenty times the cost.
    assert one_percent > 5 * large


def test_a_large_set_changed_on_both_sides_heals_by_what_each_lacks() -> None:
    big = Key("big", ORSet)
    w = World(NAMES5[:2])
    w.update(A, big, lambda s: s.add_all(range(5_000)))
    w.sim.advance(1.0)
    assert len(w.sim.core(B).value(big)) == 5_000
    w.sim.partition([A], [B])
    w.sim.advance(2.0)
    w.update(A, big, lambda s: s.add("a-side").remove(1))
    w.update(B, big, lambda s: s.add("b-side").remove(2).remove(3))
    w.sim.advance(1.0)
    w.bytes.clear()
    w.sim.heal()
    w.sim.advance(1.0)
    expected = (frozenset(range(5_000)) - {1, 2, 3}) | {"a-side", "b-side"}
    assert w.sim.core(A).value(big) == w.sim.core(B).value(big)
    assert w.sim.core(A).value(big).value == expected
    full = len(Codec().encode(dump(w.sim.core(A).value(big))))
    heal = sum(w.bytes[k] for k in ("digest", "keys", "gossip", "seen"))
    assert w.bytes["seen#"] == 2  # one each way
    assert heal * 50 < full, (heal, full)


def test_a_large_map_changed_on_both_sides_heals_by_what_each_lacks() -> None:
    tally = Key("tally", PNCounterMap)
    w = World(NAMES5[:2])

    def fill(m: PNCounterMap) -> PNCounterMap:
        for i in range(3_000):
            m = m.increment(f"k{i}", i + 1)
        return m
    w.update(A, tally, fill)
    w.sim.advance(1.0)
    assert len(w.sim.core(B).value(tally)) == 3_000
    w.sim.partition([A], [B])
    w.sim.advance(2.0)
    w.update(A, tally, lambda m: m.increment("k1", 5).increment("a-side").remove("k2"))
    # A remove changes no key dot a peer could ask for: only the values' digests show it.
    w.update(B, tally, lambda m: m.decrement("k1", 2).increment("b-side").remove("k3"))
    w.sim.advance(1.0)
    w.bytes.clear()
    w.sim.heal()
    w.sim.advance(1.0)
    a_map, b_map = w.sim.core(A).value(tally), w.sim.core(B).value(tally)
    assert a_map == b_map
    expected = {f"k{i}": i + 1 for i in range(3_000) if i not in (2, 3)}
    expected.update({"k1": 2 + 5 - 2, "a-side": 1, "b-side": 1})
    assert a_map.value == expected
    full = len(Codec().encode(dump(a_map)))
    heal = sum(w.bytes[k] for k in ("digest", "keys", "gossip", "seen"))
    assert w.bytes["seen#"] == 2  # one each way
    assert heal * 20 < full, (heal, full)


def test_delete_is_permanent_and_replicated() -> None:
    w = World(NAMES5[:3])
    w.update(A, SEEN, lambda s: s.add("x"))
    w.sim.advance(0.5)
    pid = w.sim.spawn(C)
    w.sim.execute(C, w.sim.core(C).subscribe("seen", pid, w.sim.now))
    token = next(w.tokens)
    w.sim.execute(B, w.sim.core(B).delete(SEEN, MAJORITY, token, w.sim.now))
    w.sim.advance(0.5)
    assert w.result(token)[0] == "ok"
    assert [w.value(n, SEEN) for n in (A, B, C)] == [None, None, None]
    assert w.sim.mailboxes[pid][-1] == DataDeleted("seen")
    assert w.result(w.update(A, SEEN, lambda s: s.add("y")))[0] == "error"


def test_subscribers_get_every_change_whatever_its_cause() -> None:
    w = World(NAMES5[:2])
    pid = w.sim.spawn(B)
    w.sim.call(B, "subscribe", "hits", pid)
    w.update(A, HITS, lambda c: c.increment(2))
    w.sim.advance(0.5)
    w.update(B, HITS, lambda c: c.increment(1))
    assert [m.value.value for m in w.sim.mailboxes[pid]] == [2, 3]
    w.sim.exit(pid)
    w.update(B, HITS, lambda c: c.increment(1))  # no delivery to the dead subscriber


def test_garbage_from_a_peer_is_logged_and_ignored() -> None:
    w = World(NAMES5[:2])
    core = w.sim.core(A)
    for bad in (["nope"], ["delta", 1, [[1, None]]], ["gossip", [["k", ["orset", 5]]], []],
                ["digest", 1, 9, [], []], ["digest", 1, 1, [16], []],
                ["digest", 1, 0, [], [[0, "x", 1]]], ["keys", 2, [1 << 20], []]):
        effects = core.on_message(B, bad, w.sim.now)
        assert [e.event for e in effects] == ["ddata_bad_payload"]  # type: ignore[union-attr]
    assert core.stats["bad_payloads"] == 7


@pytest.mark.parametrize(("seed", "seen_min"), [
    *((seed, replicator.SEEN_MIN_ELEMENTS) for seed in range(6)),
    *((seed, 1) for seed in range(3))])  # "seen" from the first element on
def test_chaos_then_heal_converges_and_keeps_every_acknowledged_majority_write(
        seed: int, seen_min: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Five nodes; random partitions, 10% drops and 10% duplicates, two nodes restarted
    (a minority, so every majority-acked write survives on a live replica); every node
    increments a counter and adds to a set at random levels. After the final heal every
    replica holds the same state, which includes every acknowledged majority write."""
    monkeypatch.setattr(replicator, "SEEN_MIN_ELEMENTS", seen_min)
    rng = random.Random(seed)
    # Pruning rounds every second: restarted runs get pruned in the calm moments, and
    # that must not lose or double-count anything either.
    w = World(NAMES5, seed=seed, gossip_interval=0.5, prune_interval=1.0)
    Net.lossy = True
    acked_inc: list[tuple[int, int]] = []  # (token, n)
    acked_add: list[tuple[int, Any]] = []
    attempted = 0
    restartable = rng.sample(NAMES5, 2)
    for step in range(150):
        roll = rng.random()
        if roll < 0.05:
            w.sim.heal()
            cut = rng.sample(NAMES5, rng.randint(1, 2))
            w.sim.partition(cut, [n for n in NAMES5 if n not in cut])
        elif roll < 0.08:
            w.sim.heal()
        elif roll < 0.10 and restartable:
            w.sim.restart(restartable.pop())
        else:
            name = rng.choice(NAMES5)
            if not w.sim.is_up(name):
                continue
            level = rng.choice([LOCAL, MAJORITY])
            n = rng.randint(1, 3)
            attempted += n
            acked_inc.append((w.update(name, HITS, lambda c, n=n: c.increment(n),
                                       write=level), n if level == MAJORITY else 0))
            element = (name, step)
            acked_add.append((w.update(name, SEEN, lambda s, e=element: s.add(e),
                                       write=level), element if level == MAJORITY else None))
            # A map whose keys are updated and removed concurrently (reconciled by "seen"
            # once it has enough keys: removes change values without new key dots).
            tally_key = step % 97
            w.update(name, TALLY, lambda m, k=tally_key, n=n: m.remove(k - 1).increment(k, n))
        w.sim.advance(rng.choice([0.01, 0.1, 0.5]))
    Net.lossy = False
    w.sim.heal()
    w.sim.advance(20.0)
    cores = [w.sim.core(n) for n in NAMES5]
    assert all(c.value(HITS) == cores[0].value(HITS) for c in cores)
    assert all(c.value(SEEN) == cores[0].value(SEEN) for c in cores)
    assert all(c.value(TALLY) == cores[0].value(TALLY) for c in cores)
    assert sum(cores[0].value(TALLY).value.values()) <= attempted
    acked_sum = sum(n for t, n in acked_inc if n and w.result(t) is not None
                    and w.result(t)[0] == "ok")
    final = cores[0].value(HITS).value
    assert acked_sum <= final <= attempted
    must_have = {e for t, e in acked_add if e is not None and w.result(t) is not None
                 and w.result(t)[0] == "ok"}
    assert must_have <= cores[0].value(SEEN).value
    assert acked_sum > 0 and must_have  # the scenario did acknowledge majority writes
    assert w.bytes["seen#"] > 0  # sets reconciled by what each lacks (the set outgrows 64)
    # Once everything is calm and connected, the restarted runs' entries are pruned away.
    w.sim.advance(5.0)
    live = {(n, w.sim.creation(n)) for n in NAMES5}
    for core in cores:
        counter = core.value(HITS)
        assert counter.value == final
        assert {(r.node, r.creation) for r in counter.replicas()} <= live
        assert {(r.node, r.creation) for r in core.value(SEEN).replicas()} <= live


@pytest.mark.parametrize("seed", range(4))
def test_without_restarts_nothing_is_lost_despite_drops_and_partitions(seed: int) -> None:
    rng = random.Random(seed)
    w = World(NAMES5[:3], seed=seed, gossip_interval=0.5)
    Net.lossy = True
    total = 0
    names: set[Any] = set()
    for step in range(100):
        if rng.random() < 0.1:
            w.sim.heal()
            w.sim.partition([rng.choice(NAMES5[:3])], [])
            w.sim.partition(*([[x] for x in rng.sample(NAMES5[:3], 2)]))
        name = rng.choice(NAMES5[:3])
        n = rng.randint(-2, 3)
        total += n
        w.update(name, Key("pn", PNCounter), lambda c, n=n: c.increment(n))
        w.update(name, Key("map", LWWMap), lambda m, s=step: m.put(s % 7, s))
        names.add(step % 7)
        w.sim.advance(rng.choice([0.01, 0.3]))
    Net.lossy = False
    w.sim.heal()
    w.sim.advance(20.0)
    assert [w.value(n, Key("pn", PNCounter)) for n in NAMES5[:3]] == [total] * 3
    maps = [w.value(n, Key("map", LWWMap)) for n in NAMES5[:3]]
    assert maps[0] == maps[1] == maps[2] and set(maps[0]) == names
    assert sum(w.sim.core(n).stats["gaps"] for n in NAMES5[:3]) > 0  # drops were noticed


def test_a_restarted_node_gets_the_state_back_and_writes_fresh_entries() -> None:
    w = World(NAMES5[:3])
    w.update(A, HITS, lambda c: c.increment(5))
    w.sim.advance(0.5)
    w.sim.restart(A)
    w.sim.advance(2.0)
    assert w.value(A, HITS) == 5  # anti-entropy on nodeup
    w.update(A, HITS, lambda c: c.increment(1))
    w.sim.advance(0.5)
    assert [w.value(n, HITS) for n in (A, B, C)] == [6, 6, 6]
    entries = w.sim.core(B).value(HITS).entries
    assert len(entries) == 2 and {r.node for r in entries} == {A}  # two runs of A


# -- durability -----------------------------------------------------------------------------


class Disk:
    """Wraps a core: Persist effects go to ``disk[node]`` (a dict key -> state) instead of
    the simulator, which does not know them."""

    def __init__(self, core: ReplicatorCore, disk: dict[str, Any]) -> None:
        self.core = core
        self.disk = disk

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.core, name)
        if name.startswith("on_") or name in ("update", "get", "delete", "subscribe"):
            def call(*args: Any, **kwargs: Any) -> Any:
                out = attr(*args, **kwargs)
                kept = []
                for eff in out:
                    if isinstance(eff, Persist):
                        self.disk[eff.key] = eff.state
                    else:
                        kept.append(eff)
                return kept
            return call
        return attr


def test_persist_comes_before_the_ack() -> None:
    core = ReplicatorCore(B, 1, durable=["hit*"])
    core.on_nodeup(A, 0.0)
    delta = GCounter().increment(1, at=Replica(A, 1))
    effects = core.on_message(A, ("write", 7, "hits", dump(delta)), 0.0)
    assert [type(e).__name__ for e in effects] == ["Persist", "Send"]
    assert effects[1] == Send(A, ("write_ack", 7))
    assert not core.is_durable("other") and core.is_durable("hits")


def test_a_durable_key_survives_a_crash_before_it_spread() -> None:
    disks: dict[str, dict[str, Any]] = {n: {} for n in NAMES5[:3]}

    def factory(name: str, creation: int) -> Any:
        core = ReplicatorCore(name, creation, durable=["hits"])
        core.restore(disks[name].items(), 0.0)
        return Disk(core, disks[name])

    sim = ServiceSim(factory, NAMES5[:3], connected=False)
    for a, b in itertools.combinations(NAMES5[:3], 2):
        sim.connect(a, b)
    sim.advance(0.1)
    sim.execute(A, sim.core(A).update(HITS, lambda c: c.increment(5), LOCAL, 1, sim.now))
    sim.execute(A, sim.core(A).update(SEEN, lambda s: s.add("x"), LOCAL, 2, sim.now))
    assert sim.completed[1][0] == "ok"
    sim.kill(A)  # before the delta interval: nobody else has either write
    sim.advance(1.0)
    assert sim.core(B).value(HITS) is None
    sim.restart(A)
    sim.advance(2.0)
    assert [sim.core(n).value(HITS).value for n in NAMES5[:3]] == [5, 5, 5]
    assert [sim.core(n).value(SEEN) for n in NAMES5[:3]] == [None] * 3  # not durable: lost


# -- pruning --------------------------------------------------------------------------------


def test_restarted_runs_are_pruned_once_every_member_agrees() -> None:
    w = World(NAMES5[:3], prune_interval=20.0)  # A's first round at t = 20 s
    stale: list[Any] = []
    for round_ in range(3):  # C restarts twice: three runs wrote to the counter and set
        w.update(C, HITS, lambda c: c.increment(10))
        w.update(C, SEEN, lambda s, r=round_: s.add(("c", r)).add("shared"))
        w.update(B, SEEN, lambda s: s.remove("shared"))
        w.update(C, MOTD, lambda r, r_=round_: r.assign(f"run {r_}"))  # overwrites the last
        w.sim.advance(1.0)
        stale.append(w.sim.core(B).value(HITS))
        if round_ < 2:
            w.sim.restart(C)
            w.sim.advance(1.0)
    w.update(A, HITS, lambda c: c.increment(1))
    w.sim.advance(1.0)
    assert w.sim.now < 20.0
    assert len(w.sim.core(B).value(HITS).replicas()) == 4  # A and three runs of C
    w.sim.advance(20.0 - w.sim.now + 1.0)  # one pruning round by A, the smallest member
    for name in (A, B, C):
        core = w.sim.core(name)
        counter, seen = core.value(HITS), core.value(SEEN)
        assert counter.value == 31
        live = {Replica(n, w.sim.creation(n)) for n in (A, C)}
        assert counter.replicas() == live  # C's two dead runs were folded into A's slot
        assert len(counter.pruned) == 2
        assert seen.value == {("c", 0), ("c", 1), ("c", 2), "shared"}
        assert all(r.creation == w.sim.creation(r.node) for r in seen.replicas())
        # The MV-Register's dead runs only wrote overwritten values: they are gone.
        motd = core.value(MOTD)
        assert motd.value == ("run 2",) and len(motd.pruned) == 2
        assert not any(motd.needs_pruning(r) for r in motd.pruned)
    assert w.sim.core(A).stats["pruned"] > 0
    # A stale copy holding the dead runs' slots changes nothing when merged again.
    for old in stale:
        w.sim.execute(B, w.sim.core(B).on_message(C, ("gossip", [["hits", dump(old)]], []),
                                                  w.sim.now))
    assert w.sim.core(B).value(HITS).value == 31


def test_no_pruning_while_a_member_is_unreachable_or_the_key_is_busy() -> None:
    w = World(NAMES5[:3], prune_interval=2.0)
    w.update(C, HITS, lambda c: c.increment(5))
    w.sim.advance(1.0)
    w.sim.restart(C)
    w.sim.partition([B], [A, C])  # before A's first round (t = 2 s)
    w.sim.advance(5.0)
    assert len(w.sim.core(A).value(HITS).replicas()) == 1  # still C's dead run
    assert w.sim.core(A).value(HITS).pruned == frozenset()
    w.sim.heal()
    for _ in range(40):  # B writes every 0.05 s: the digests never match in a round
        w.update(B, HITS, lambda c: c.increment(1))
        w.sim.advance(0.05)
    assert w.sim.core(A).value(HITS).pruned == frozenset()
    w.sim.advance(5.0)  # quiet again: pruned
    assert w.sim.core(A).value(HITS).pruned != frozenset()
    assert [w.sim.core(n).value(HITS).value for n in (A, B, C)] == [45, 45, 45]


def test_a_forgotten_node_is_pruned() -> None:
    w = World(NAMES5[:3], prune_interval=2.0)
    w.update(C, SEEN, lambda s: s.add("from c"))
    w.sim.advance(1.0)
    w.sim.kill(C)
    w.sim.advance(3.0)
    assert w.sim.core(A).value(SEEN).replicas() != set()
    for name in (A, B):
        w.sim.core(name).forget(C)
    w.sim.advance(3.0)
    for name in (A, B):
        seen = w.sim.core(name).value(SEEN)
        assert seen.value == {"from c"}
        assert {r.node for r in seen.replicas()} == {A}


class NoService:
    """A node that does not run the replicator (a hidden tool, an unrelated node)."""

    service = "ddata"

    def on_nodeup(self, peer: str, now: float) -> list[Effect]:
        return []

    def on_nodedown(self, peer: str, reason: str, now: float) -> list[Effect]:
        return []

    def on_message(self, peer: str, payload: Any, now: float) -> list[Effect]:
        return []

    def on_timer(self, key: Any, now: float) -> list[Effect]:
        return []

    def on_process_exit(self, pid: Any, reason: Any, now: float) -> list[Effect]:
        return []


def test_only_nodes_running_the_service_are_members() -> None:
    names = NAMES5[:4]
    sim = ServiceSim(lambda n, c: NoService() if n == names[3] else ReplicatorCore(n, c),
                     names, connected=False)
    for a, b in itertools.combinations(names, 2):
        sim.connect(a, b)
    sim.advance(0.1)
    assert sim.core(A).members() == [A, B, C]  # not the node without the service
    sim.execute(A, sim.core(A).update(HITS, lambda c: c.increment(1), ALL, 1, sim.now))
    sim.advance(0.01)
    assert sim.completed[1][0] == "ok"  # "all" means the three replicators
    assert sim.core(C).value(HITS).value == 1
