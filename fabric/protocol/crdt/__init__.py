"""Conflict-free replicated data types: pure, immutable, delta-state values.

Theory of operation
-------------------
Every type here is a value in a join-semilattice (see :mod:`.base`): operations return new
values, ``merge(a, b)`` joins two replicas' states, and ``value`` reads the plain Python
view. Each value carries ``delta``, the part changed since the last ``reset_delta()``,
which is itself a value of the same type and is shipped to peers instead of the state.
Writers are :class:`Replica` identities (node name + creation), given as ``at=`` or
ambient (:func:`acting_as`; the replicator sets it around ``update``).

=================  =========================================  ============================
type               value                                      operations
=================  =========================================  ============================
GCounter           int                                        increment, prune
PNCounter          int                                        increment, decrement, prune
GSet               frozenset                                  add
ORSet              frozenset (add wins)                       add, add_all, remove, clear,
                                                              prune
Flag               bool                                       switch_on
LWWRegister        any msgpack value                          assign
MVRegister         tuple of concurrent values                 assign, prune
ORMap              dict key -> value of a CRDT                update, remove, prune
LWWMap             dict key -> value                          put, remove
PNCounterMap       dict key -> int                            increment, decrement, remove
ORMultiMap         dict key -> frozenset                      add_binding, remove_binding,
                                                              remove
=================  =========================================  ============================
"""

from fabric.protocol.crdt.base import Crdt, dump, load, merge
from fabric.protocol.crdt.counters import GCounter, PNCounter
from fabric.protocol.crdt.dots import CausalContext
from fabric.protocol.crdt.maps import LWWMap, ORMap, ORMultiMap, PNCounterMap
from fabric.protocol.crdt.registers import Flag, LWWRegister, MVRegister
from fabric.protocol.crdt.replica import Replica, acting_as
from fabric.protocol.crdt.sets import GSet, ORSet
from fabric.protocol.crdt.wire import from_bytes, to_bytes

__all__ = [
    "CausalContext",
    "Crdt",
    "Flag",
    "GCounter",
    "GSet",
    "LWWMap",
    "LWWRegister",
    "MVRegister",
    "ORMap",
    "ORMultiMap",
    "ORSet",
    "PNCounter",
    "PNCounterMap",
    "Replica",
    "acting_as",
    "dump",
    "from_bytes",
    "load",
    "merge",
    "to_bytes",
]
