"""CRDT costs, in process: local update rates against plain dicts and sets, and bytes.

Run:  python -m bench.bench_crdt [--quick] [--runs N] [--out PATH]
      (or python bench/bench_crdt.py)

* Local update rate (ops/s), each against its plain-Python baseline in the same run,
  alternated: ``GCounter.increment`` against ``d[k] = d.get(k, 0) + 1``; the same through
  ``ReplicatorCore.update`` (level local: the key lookup, the ambient replica, the delta
  kept for the next batch); ``ORSet.add`` + ``remove`` on a set of :data:`SET_SIZE`
  elements against ``set.add`` + ``discard``. The CRDT values are immutable, so an OR-Set
  operation copies its element map: its cost grows with the set (see docs/CRDT.md).
* Applying a delta (merges/s): a 10-change delta (5 adds, 5 removes by another replica)
  merged into a :data:`BIG`-element OR-Set, against copying a Python set of that size and
  applying the same 10 changes (what an immutable plain set would cost).
* Delta economy (bytes): a :data:`BIG`-element OR-Set held by a replicator, 10 elements
  changed (5 added, 5 removed) in one delta interval; the encoded ``delta`` message the
  replicator sends per peer, against the encoded full state. Target: under 1%.
* Heal cost: two replicators (in the service simulator) with :data:`KEYS` counter keys; a
  partition during which 1% of the keys change on one side; after the heal, the bytes of
  every anti-entropy message (digest tree, key digests, states) against the full state of
  all keys, the messages exchanged until both agree (each message is one network hop of
  re-convergence time after the heal), and the CPU time both replicas spend on them (in
  process: the network's latency is not in it). The same for 10 changed keys, to show
  the cost follows the difference, not the state. And one :data:`BIG`-element OR-Set
  changed by 5 elements on each side during the partition: reconciled by what each side
  has seen (``seen``), against its full state; and the same for a :data:`BIG_MAP`-key
  PN-Counter map (3 keys added and 2 removed on each side).
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if not __package__:  # started as `python bench/bench_crdt.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _harness as h  # noqa: E402
from fabric.protocol.codec import Codec  # noqa: E402
from fabric.protocol.crdt import GCounter, ORSet, PNCounterMap, Replica, dump  # noqa: E402
from fabric.protocol.effects import Send  # noqa: E402
from fabric.protocol.replicator import LOCAL, Key, ReplicatorCore  # noqa: E402
from fabric.testing import ServiceSim  # noqa: E402

SET_SIZE = 1_000
BIG = 100_000
KEYS = 20_000
BIG_MAP = 20_000
ME = Replica("bench@127.0.0.1:1", 1)


def ops_per_s(fn: Callable[[int], Any], n: int) -> float:
    t0 = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - t0)


def dict_counter(n: int) -> None:
    d: dict[str, int] = {}
    for _ in range(n):
        d["k"] = d.get("k", 0) + 1


def gcounter(n: int) -> None:
    c = GCounter()
    for _ in range(n):
        c = c.increment(1, at=ME).reset_delta()


def replicated_counter(n: int) -> None:
    core = ReplicatorCore(ME.node, ME.creation)
    key = Key("hits", GCounter)
    for i in range(n):
        core.update(key, lambda c: c.increment(1), LOCAL, i, 0.0)


def plain_set(n: int) -> None:
    s = set(range(SET_SIZE))
    for i in range(n):
        s.add(SET_SIZE + i)
        s.discard(i)


def orset(n: int) -> None:
    s: ORSet[int] = ORSet().add_all(range(SET_SIZE), at=ME).reset_delta()
    for i in range(n // 2):
        s = s.add(SET_SIZE + i, at=ME).remove(i).reset_delta()


_BIG_SET: ORSet[int] = ORSet()
_BIG_DELTA: ORSet[int] = ORSet()


def _big_orset() -> tuple[ORSet[int], ORSet[int]]:
    global _BIG_SET, _BIG_DELTA
    if not _BIG_SET:
        _BIG_SET = ORSet().add_all(range(BIG), at=ME).reset_delta()
        other = Replica("other@127.0.0.1:2", 2)
        changed = _BIG_SET
        for i in range(5):
            changed = changed.add(BIG + i, at=other).remove(i)
        assert changed.delta is not None
        _BIG_DELTA = changed.delta
    return _BIG_SET, _BIG_DELTA


def orset_apply_delta(n: int) -> None:
    big, delta = _big_orset()
    for _ in range(n):
        big.merge(delta)


def plain_set_copy_apply(n: int) -> None:
    big = set(range(BIG))
    for _ in range(n):
        s = set(big)
        s.update(range(BIG, BIG + 5))
        s.difference_update(range(5))


def delta_economy() -> tuple[float, float]:
    """(bytes of the delta message per peer, bytes of the full state message)."""
    codec = Codec()
    core = ReplicatorCore(ME.node, ME.creation)
    key = Key("big", ORSet)
    core.update(key, lambda s: s.add_all(range(BIG)), LOCAL, 0, 0.0)
    core.on_timer("delta", 0.0)  # nobody up: the first batch goes nowhere
    core.on_nodeup("peer@127.0.0.1:2", 0.0)
    core.on_message("peer@127.0.0.1:2", ("hello", 2), 0.0)  # it runs the service too

    def change(s: ORSet[int]) -> ORSet[int]:
        for i in range(5):
            s = s.add(BIG + i).remove(i)
        return s

    core.update(key, change, LOCAL, 1, 0.1)
    sends = [e for e in core.on_timer("delta", 0.3) if isinstance(e, Send)]
    delta_bytes = len(codec.encode(sends[0].payload))
    full = core.value(key)
    assert full is not None
    full_bytes = len(codec.encode(("delta", 1, [["big", dump(full)]])))
    return float(delta_bytes), float(full_bytes)


class _Counting:
    def __init__(self, core: ReplicatorCore, tally: dict[str, int]) -> None:
        self.core, self.tally, self.codec = core, tally, Codec()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core, name)

    def on_message(self, peer: str, payload: Any, now: float) -> Any:
        kind = payload[0]
        self.tally[kind] = self.tally.get(kind, 0) + len(self.codec.encode(payload))
        self.tally[kind + "#"] = self.tally.get(kind + "#", 0) + 1
        return self.core.on_message(peer, payload, now)


def heal_cost(changed: int) -> tuple[float, float, float, float]:
    """(bytes of anti-entropy after the heal, bytes of the full state of every key,
    messages until agreement, CPU seconds spent on them)."""
    tally: dict[str, int] = {}
    a, b = "a@127.0.0.1:1", "b@127.0.0.1:2"
    sim = ServiceSim(lambda n, c: _Counting(ReplicatorCore(n, c), tally), [a, b],
                     connected=False)
    sim.connect(a, b)
    keys = [Key(f"k{i}", GCounter) for i in range(KEYS)]
    tokens = itertools.count()
    for key in keys:
        sim.execute(a, sim.core(a).update(key, lambda c: c.increment(1), LOCAL,
                                          next(tokens), sim.now))
    sim.advance(3.0)
    sim.partition([a], [b])
    sim.advance(2.0)
    for key in keys[:changed]:
        sim.execute(a, sim.core(a).update(key, lambda c: c.increment(1), LOCAL,
                                          next(tokens), sim.now))
    sim.advance(1.0)
    tally.clear()
    cpu = time.process_time()
    sim.heal()
    sim.advance(1.0)  # less than a gossip interval: only the heal's own exchange
    cpu = time.process_time() - cpu
    if any(sim.core(b).value(k) != sim.core(a).value(k) for k in keys):
        raise h.BenchError("the replicas did not converge after the heal")
    kinds = ("digest", "keys", "gossip")
    heal = sum(v for k, v in tally.items() if k in kinds)
    messages = sum(v for k, v in tally.items() if k.endswith("#") and k[:-1] in kinds)
    codec = Codec()
    full = sum(len(codec.encode([k.name, dump(sim.core(a).value(k))])) for k in keys)
    return float(heal), float(full), float(messages), cpu


def big_heal(key: Key[Any], fill: Callable[[Any], Any],
             change: Callable[[Any, str, tuple[Any, ...]], Any]) -> tuple[float, float]:
    """(bytes of anti-entropy after a heal in which ``key``'s value, made by ``fill``,
    changed by ``change`` on each side (3 adds and 2 removes a side), bytes of its full
    state)."""
    tally: dict[str, int] = {}
    a, b = "a@127.0.0.1:1", "b@127.0.0.1:2"
    sim = ServiceSim(lambda n, c: _Counting(ReplicatorCore(n, c), tally), [a, b],
                     connected=False)
    sim.connect(a, b)
    sim.execute(a, sim.core(a).update(key, fill, LOCAL, 0, sim.now))
    sim.advance(3.0)
    sim.partition([a], [b])
    sim.advance(2.0)
    for side, tag, removed in ((a, "a", (0, 1)), (b, "b", (2, 3))):
        sim.execute(side, sim.core(side).update(
            key, lambda v, tag=tag, removed=removed: change(v, tag, removed),
            LOCAL, 1, sim.now))
    sim.advance(1.0)
    tally.clear()
    sim.heal()
    sim.advance(1.0)
    if sim.core(a).value(key) != sim.core(b).value(key):
        raise h.BenchError(f"{key.name} did not converge after the heal")
    heal = sum(v for k, v in tally.items() if k in ("digest", "keys", "gossip", "seen"))
    full = len(Codec().encode([key.name, dump(sim.core(a).value(key))]))
    return float(heal), float(full)


def _change_set(s: ORSet[Any], tag: str, removed: tuple[Any, ...]) -> ORSet[Any]:
    s = s.add_all(f"{tag}{i}" for i in range(3))
    for element in removed:
        s = s.remove(element)
    return s


def _fill_map(m: PNCounterMap) -> PNCounterMap:
    for i in range(BIG_MAP):
        m = m.increment(i, i + 1)
    return m


def _change_map(m: PNCounterMap, tag: str, removed: tuple[Any, ...]) -> PNCounterMap:
    for i in range(3):
        m = m.increment(f"{tag}{i}")
    for k in removed:
        m = m.remove(k)
    return m


def main(argv: Sequence[str] | None = None) -> int:
    args = h.parse_args(__doc__, argv)
    n_counter = h.sized(args, full=200_000, quick=50_000)
    n_set = h.sized(args, full=4_000, quick=1_000)
    n_merge = h.sized(args, full=40, quick=10)
    _big_orset()  # built once, outside the timings
    report = h.Report("bench_crdt", args)
    got = h.run_interleaved({
        "dict": lambda: ops_per_s(dict_counter, n_counter),
        "gcounter": lambda: ops_per_s(gcounter, n_counter),
        "replicated": lambda: ops_per_s(replicated_counter, n_counter // 4),
        "set": lambda: ops_per_s(plain_set, n_set * 50),
        "orset": lambda: ops_per_s(orset, n_set),
        "set_copy": lambda: ops_per_s(plain_set_copy_apply, n_merge),
        "orset_merge": lambda: ops_per_s(orset_apply_delta, n_merge),
    }, args.runs)
    report.add("counter: dict update", "rate", "ops/s", got["dict"])
    report.add("counter: GCounter.increment", "rate", "ops/s", got["gcounter"],
               baseline="counter: dict update")
    report.add("counter: ReplicatorCore.update", "rate", "ops/s", got["replicated"],
               baseline="counter: dict update")
    report.add(f"set of {SET_SIZE}: set.add+discard", "rate", "ops/s", got["set"])
    report.add(f"set of {SET_SIZE}: ORSet.add+remove", "rate", "ops/s", got["orset"],
               baseline=f"set of {SET_SIZE}: set.add+discard")
    report.add(f"{BIG} elements: copy a set + 10 changes", "apply", "ops/s", got["set_copy"])
    report.add(f"{BIG} elements: merge a 10-change delta", "apply", "ops/s",
               got["orset_merge"], baseline=f"{BIG} elements: copy a set + 10 changes")
    delta, full = delta_economy()
    report.add(f"OR-Set of {BIG}: full state", "size", "bytes", [full])
    report.add(f"OR-Set of {BIG}: delta of 10 changes", "size", "bytes", [delta],
               baseline=f"OR-Set of {BIG}: full state")
    heal, everything, messages, cpu = heal_cost(KEYS // 100)
    report.add(f"{KEYS} keys: full state", "heal", "bytes", [everything])
    report.add(f"{KEYS} keys, 1% changed: anti-entropy", "heal", "bytes", [heal],
               baseline=f"{KEYS} keys: full state")
    report.add(f"{KEYS} keys, 1% changed: messages until agreement", "heal", "msgs",
               [messages])
    report.add(f"{KEYS} keys, 1% changed: CPU of the exchange", "heal", "s", [cpu])
    few, _, few_messages, _ = heal_cost(10)
    report.add(f"{KEYS} keys, 10 changed: anti-entropy", "heal", "bytes", [few],
               baseline=f"{KEYS} keys: full state")
    report.add(f"{KEYS} keys, 10 changed: messages until agreement", "heal", "msgs",
               [few_messages])
    set_heal, set_full = big_heal(Key("big", ORSet), lambda s: s.add_all(range(BIG)),
                                  _change_set)
    report.add(f"OR-Set of {BIG}: full state", "heal", "bytes", [set_full])
    report.add(f"OR-Set of {BIG}, 5 changes each side: anti-entropy", "heal", "bytes",
               [set_heal], baseline=f"OR-Set of {BIG}: full state")
    map_heal, map_full = big_heal(Key("bigmap", PNCounterMap), _fill_map, _change_map)
    report.add(f"PN-Counter map of {BIG_MAP}: full state", "heal", "bytes", [map_full])
    report.add(f"PN-Counter map of {BIG_MAP}, 5 changes each side: anti-entropy", "heal",
               "bytes", [map_heal], baseline=f"PN-Counter map of {BIG_MAP}: full state")
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
