"""Property tests of the wire codec (fabric.protocol.codec).

Round trips keep every type (a tuple stays a tuple, a Pid a Pid); values msgpack cannot
carry are refused locally; any bytes from the network either decode or raise
RemoteProtocolError, nothing else; sizes and nesting are bounded.
"""

from __future__ import annotations

import collections
import enum
import math
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fabric.errors import LocalProtocolError, RemoteProtocolError
from fabric.protocol.codec import EXT_PID, EXT_REF, EXT_TUPLE, MAX_TUPLE_NESTING, Codec
from fabric.types import Pid, Ref

# Deterministic: the same examples on every run and every machine, no example database.
DET = settings(derandomize=True, database=None, deadline=None, max_examples=120,
               suppress_health_check=[HealthCheck.too_slow])

U64 = 2**64 - 1
I64_MIN = -(2**63)

node_names = st.text(min_size=1, max_size=30)
pids = st.builds(Pid, node_names, st.integers(0, U64), st.integers(0, 2**32 - 1))
refs = st.builds(Ref, node_names, st.integers(0, U64), st.integers(0, 2**32 - 1))
ints = st.integers(I64_MIN, U64) | st.sampled_from([0, -1, 127, 128, -32, -33, U64, I64_MIN,
                                                   2**32, 2**63])
hashable_leaves = (st.none() | st.booleans() | ints | st.text(max_size=20)
                   | st.binary(max_size=20) | pids | refs)
keys = st.recursive(hashable_leaves, lambda k: st.lists(k, max_size=3).map(tuple),
                    max_leaves=6)
leaves = hashable_leaves | st.floats(allow_nan=False)
values = st.recursive(
    leaves,
    lambda children: (st.lists(children, max_size=5)
                      | st.lists(children, max_size=5).map(tuple)
                      | st.dictionaries(keys, children, max_size=5)),
    max_leaves=40,
)


def same(a: Any, b: Any) -> bool:
    """Equality that also requires identical types all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True))
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    return bool(a == b)


def nest(depth: int, wrap: Any, inner: Any = 0) -> Any:
    for _ in range(depth):
        inner = wrap(inner)
    return inner


def ext(code: int, body: bytes) -> bytes:
    """An ext value with any type code (-128..127), as an ext 8/16 header plus body."""
    if len(body) < 256:
        return b"\xc7" + bytes([len(body)]) + struct.pack(">b", code) + body
    return b"\xc8" + struct.pack(">Hb", len(body), code) + body


def tuple_frame(depth: int) -> bytes:
    """A frame of ``depth`` tuples nested in each other, built without the codec."""
    body = b"\x00"
    for _ in range(depth):
        body = ext(EXT_TUPLE, b"\x91" + body)
    return body


# -- round trips -----------------------------------------------------------------------------


@DET
@given(values)
def test_round_trip_keeps_values_and_types(v: Any) -> None:
    codec = Codec()
    assert same(codec.decode(codec.encode(v)), v)


@DET
@given(values)
def test_encoding_is_deterministic_and_stable(v: Any) -> None:
    frame = Codec().encode(v)
    assert Codec().encode(v) == frame
    assert Codec().encode(Codec().decode(frame)) == frame


@settings(DET, max_examples=30)
@given(st.lists(values, min_size=1, max_size=8))
def test_one_codec_instance_over_many_frames_matches_fresh_ones(vs: list[Any]) -> None:
    # A node keeps one codec (with pid caches and nested packers) for its whole life.
    enc, dec = Codec(), Codec()
    for v in vs:
        frame = enc.encode(v)
        assert frame == Codec().encode(v)
        assert same(dec.decode(frame), v)


@settings(DET, max_examples=40)
@given(st.lists(values, max_size=6))
def test_tuple_and_list_of_the_same_items_stay_apart(items: list[Any]) -> None:
    codec = Codec()
    as_list, as_tuple = codec.decode(codec.encode(items)), codec.decode(codec.encode(
        tuple(items)))
    assert type(as_list) is list and type(as_tuple) is tuple
    assert codec.encode(items) != codec.encode(tuple(items))


def test_pid_and_ref_with_the_same_fields_stay_apart() -> None:
    codec = Codec()
    pid, ref = Pid("n@h:1", 2, 3), Ref("n@h:1", 2, 3)
    assert type(codec.decode(codec.encode(pid))) is Pid
    assert type(codec.decode(codec.encode(ref))) is Ref
    assert codec.decode(codec.encode([pid, ref, ("n@h:1", 2, 3)])) == [pid, ref, ("n@h:1", 2, 3)]


@DET
@given(pids | refs)
def test_pid_and_ref_wire_layout(ident: Any) -> None:
    frame = Codec().encode(ident)
    decoded = msgpack.unpackb(frame, ext_hook=lambda code, data: (code, data))
    code, body = decoded
    assert code == (EXT_PID if type(ident) is Pid else EXT_REF)
    assert struct.unpack(">IQ", body[:12]) == (ident.creation, ident.id)
    assert body[12:].decode() == ident.node


def test_caches_survive_eviction() -> None:
    enc, dec = Codec(), Codec()
    many = [Pid("n@h:1", i, 1) for i in range(10_000)]
    assert dec.decode(enc.encode(many)) == many
    assert dec.decode(enc.encode(many[::-1])) == many[::-1]


def test_nan_and_negative_zero_survive() -> None:
    codec = Codec()
    assert math.isnan(codec.decode(codec.encode(float("nan"))))
    assert math.copysign(1.0, codec.decode(codec.encode(-0.0))) == -1.0


class Colour(enum.IntEnum):
    RED = 1


class Name(str):
    pass


Point = collections.namedtuple("Point", "x y")


@pytest.mark.parametrize("v, expected", [
    (Colour.RED, 1),
    (Name("x"), "x"),
    (Point(1, 2), (1, 2)),
    (collections.OrderedDict(a=1), {"a": 1}),
    (bytearray(b"ab"), b"ab"),
    ([Point(1, [Point(2, 3)])], [(1, [(2, 3)])]),
])
def test_subclasses_travel_as_their_base_type(v: Any, expected: Any) -> None:
    codec = Codec()
    assert codec.encode(v) == codec.encode(expected)
    assert same(codec.decode(codec.encode(v)), expected)


def test_bool_is_not_an_int_on_the_wire() -> None:
    codec = Codec()
    assert codec.encode(True) == b"\xc3" and codec.encode(1) == b"\x01"
    assert same(codec.decode(codec.encode([True, 1, (False, 0)])), [True, 1, (False, 0)])


# -- what the encoder refuses ----------------------------------------------------------------


def _fn() -> None:  # pragma: no cover - never called
    pass


UNSUPPORTED = [set(), {1}, frozenset({1}), object(), _fn, lambda: 1, complex(1, 2), range(3),
               Exception("x"), type, Ellipsis]


@pytest.mark.parametrize("bad", UNSUPPORTED, ids=lambda b: type(b).__name__)
@pytest.mark.parametrize("wrap", [
    lambda b: b, lambda b: [1, b], lambda b: (1, b), lambda b: {"k": b},
    lambda b: ((((b,),),),), lambda b: [{"x": (1, [b])}],
], ids=["bare", "in_list", "in_tuple", "dict_value", "deep_tuple", "mixed"])
def test_unsupported_types_raise_local_protocol_error(bad: Any, wrap: Any) -> None:
    codec = Codec()
    with pytest.raises(LocalProtocolError):
        codec.encode(wrap(bad))
    # The codec is still usable and produces exactly the bytes of a fresh one.
    good = (1, [2, (3, Pid("n@h:1", 4, 5))], {"a": (6,)})
    assert codec.encode(good) == Codec().encode(good)


@pytest.mark.parametrize("bad", [{frozenset({1}): 1}, {(1, frozenset()): 1}, {object(): 1}],
                         ids=["frozenset", "tuple_with_frozenset", "object"])
def test_unsupported_dict_keys_raise_local_protocol_error(bad: Any) -> None:
    with pytest.raises(LocalProtocolError):
        Codec().encode(bad)


@pytest.mark.parametrize("big", [2**64, -(2**63) - 1, 10**30])
def test_ints_beyond_64_bits_raise_local_protocol_error(big: int) -> None:
    codec = Codec()
    for v in (big, [big], (1, big), {"k": (big,)}):
        with pytest.raises(LocalProtocolError):
            codec.encode(v)
    assert codec.encode((1, 2)) == bytes.fromhex("c70301920102")


@pytest.mark.parametrize("ident", [Pid("n@h:1", 2**64, 1), Pid("n@h:1", -1, 1),
                                   Ref("n@h:1", 1, 2**32), Pid(5, 1, 1)],  # type: ignore[arg-type]
                         ids=["id_2**64", "id_negative", "creation_2**32", "node_not_str"])
def test_unencodable_pid_fields_raise_local_protocol_error(ident: Any) -> None:
    with pytest.raises(LocalProtocolError):
        Codec().encode((1, ident))


# -- what the decoder refuses ----------------------------------------------------------------


def _decode_or_remote_error(codec: Codec, frame: bytes) -> None:
    try:
        codec.decode(frame)
    except RemoteProtocolError:
        pass  # the only exception the network may cause


@DET
@given(st.binary(max_size=300))
def test_random_bytes_decode_or_raise_remote_protocol_error(frame: bytes) -> None:
    _decode_or_remote_error(Codec(), frame)


@DET
@given(st.sampled_from([EXT_TUPLE, EXT_PID, EXT_REF, 0, 4, 127, -1, -128]),
       st.binary(max_size=60), st.booleans())
def test_random_ext_bodies_decode_or_raise_remote_protocol_error(
        code: int, body: bytes, wrapped: bool) -> None:
    frame = ext(code, body)
    codec = Codec()
    _decode_or_remote_error(codec, b"\x92\x01" + frame if wrapped else frame)
    _decode_or_remote_error(codec, ext(EXT_TUPLE, b"\x91" + frame))


@DET
@given(values, st.data())
def test_every_truncation_raises_remote_protocol_error(v: Any, data: st.DataObject) -> None:
    frame = Codec().encode(v)
    cut = data.draw(st.integers(0, len(frame) - 1), label="cut")
    with pytest.raises(RemoteProtocolError):
        Codec().decode(frame[:cut])


@DET
@given(values, st.data())
def test_corrupted_frames_decode_or_raise_remote_protocol_error(
        v: Any, data: st.DataObject) -> None:
    frame = bytearray(Codec().encode(v))
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        i = data.draw(st.integers(0, len(frame) - 1), label="at")
        frame[i] = data.draw(st.integers(0, 255), label="byte")
    _decode_or_remote_error(Codec(), bytes(frame))


@DET
@given(values)
def test_trailing_bytes_are_rejected(v: Any) -> None:
    with pytest.raises(RemoteProtocolError):
        Codec().decode(Codec().encode(v) + b"\xc0")


def test_oversized_frame_rejected_at_the_limit() -> None:
    codec = Codec(max_frame=64)
    at_limit = Codec().encode(b"x" * 62)
    assert len(at_limit) == 64
    assert codec.decode(at_limit) == b"x" * 62
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        codec.decode(Codec().encode(b"x" * 63))
    with pytest.raises(RemoteProtocolError):
        codec.decode(b"\x00" * 10_000)


def test_declared_lengths_beyond_the_frame_are_rejected() -> None:
    codec = Codec(max_frame=1024)
    for header in (b"\xdb\x00\x00\x10\x00", b"\xc6\x00\x00\x10\x00", b"\xdd\xff\xff\xff\xff",
                   b"\xdf\xff\xff\xff\xff", b"\xc9\x00\x00\x10\x00\x01"):
        with pytest.raises(RemoteProtocolError):
            codec.decode(header + b"\x00" * 16)


def test_unknown_ext_types_are_rejected() -> None:
    for code in (0, 4, 5, 100, 127):
        with pytest.raises(RemoteProtocolError):
            Codec().decode(ext(code, b"\x90"))


@pytest.mark.parametrize("ts", ["d6ff00000000", "d7ff0000000000000000",
                                "c70cff000000000000000000000000"])
def test_timestamp_ext_is_rejected(ts: str) -> None:
    # msgpack decodes ext -1 without calling the ext hook: alone, in a list, in a map, in
    # a tuple ext and in a batch, every timestamp encoding is refused like any other ext.
    codec = Codec()
    stamp = bytes.fromhex(ts)
    tuple_body = b"\x91" + stamp
    frames = [stamp, b"\x92\x01" + stamp, b"\x81\xa1k" + stamp,
              b"\xc7" + bytes([len(tuple_body), EXT_TUPLE]) + tuple_body,
              b"\x91\x93\x01\xa1x" + stamp]
    for frame in frames:
        with pytest.raises(RemoteProtocolError, match="timestamp"):
            codec.decode(frame)


def test_timestamp_like_bytes_inside_strings_are_data() -> None:
    # The byte pairs that flag a timestamp also occur inside ordinary strings and bytes.
    codec = Codec()
    for value in [b"\xd6\xff\x00\x00\x00\x00", "\u00ff", [b"\xc7\x0c\xff" * 3, 255, -1]]:
        assert codec.decode(codec.encode(value)) == value


# -- nesting ---------------------------------------------------------------------------------


def test_tuples_nest_64_deep_and_no_deeper() -> None:
    codec = Codec()
    ok = nest(64, lambda v: (v,))
    assert codec.decode(codec.encode(ok)) == ok
    assert codec.decode(tuple_frame(64)) == ok
    with pytest.raises(LocalProtocolError, match="64"):
        codec.encode(nest(65, lambda v: (v,)))
    with pytest.raises(RemoteProtocolError, match="64"):
        codec.decode(tuple_frame(65))
    # the failed calls left no state behind
    assert codec.encode(ok) == Codec().encode(ok)
    assert codec.decode(tuple_frame(64)) == ok


@pytest.mark.parametrize("wrap, head", [
    (lambda v: [v], b"\x91"),
    (lambda v: {"k": v}, b"\x81\xa1k"),
    (lambda v: {1: [v]}, b"\x81\x01\x91"),
], ids=["list", "dict", "dict_list"])
def test_deep_containers_are_rejected_both_ways(wrap: Any, head: bytes) -> None:
    codec = Codec()
    assert codec.decode(codec.encode(nest(100, wrap))) == nest(100, wrap)
    assert codec.decode(head * 100 + b"\x00") == nest(100, wrap)
    with pytest.raises(LocalProtocolError):
        codec.encode(nest(5000, wrap))
    with pytest.raises(RemoteProtocolError):
        codec.decode(head * 5000 + b"\x00")
    assert codec.encode([1]) == b"\x91\x01"


def test_total_nesting_depth_is_bounded() -> None:
    # 60 tuples alternating with 1000-deep arrays: once ~60 000 levels, which user code
    # could not print or compare; now the innermost tuple already spans too much.
    body = b"\x00"
    for _ in range(60):
        body = ext(EXT_TUPLE, b"\x91" + b"\x91" * 1000 + body)
    with pytest.raises(RemoteProtocolError, match=str(MAX_TUPLE_NESTING)):
        Codec().decode(body)


def one_tuple(item: bytes) -> bytes:
    """A frame of the 1-tuple holding the packed ``item``, built without the codec."""
    return ext(EXT_TUPLE, b"\x91" + item)


def test_a_tuple_spans_at_most_max_tuple_nesting_levels_both_ways() -> None:
    codec = Codec()
    deepest = MAX_TUPLE_NESTING - 1  # lists inside the tuple, which is one level itself
    ok = (nest(deepest, lambda v: [v]),)
    assert codec.decode(codec.encode(ok)) == ok
    assert codec.decode(one_tuple(b"\x91" * deepest + b"\x00")) == ok
    with pytest.raises(LocalProtocolError, match=str(MAX_TUPLE_NESTING)):
        codec.encode((nest(deepest + 1, lambda v: [v]),))
    with pytest.raises(RemoteProtocolError, match=str(MAX_TUPLE_NESTING)):
        codec.decode(one_tuple(b"\x91" * (deepest + 1) + b"\x00"))
    # a failed decode leaves nothing behind: the same bytes decode the same way again
    assert codec.decode(one_tuple(b"\x91" * deepest + b"\x00")) == ok


@pytest.mark.parametrize("outer_lists, fits", [(100, True), (104, True), (105, False),
                                               (120, False)])
def test_measured_tuples_inside_a_tuple_add_up(outer_lists: int, fits: bool) -> None:
    # The inner tuple is large (a 300-byte bin), so it is measured once (151 levels) and
    # its depth is reused when the outer tuple is measured: 1 + outer_lists + 151.
    blob = b"\xc5\x01\x2c" + b"b" * 300
    inner = ext(EXT_TUPLE, b"\x92" + b"\x91" * 150 + b"\x00" + blob)
    frame = one_tuple(b"\x91" * outer_lists + inner)
    expected = (nest(outer_lists, lambda v: [v], (nest(150, lambda v: [v]), b"b" * 300)),)
    codec = Codec()
    if fits:
        assert codec.decode(frame) == expected
        assert codec.decode(codec.encode(expected)) == expected
    else:
        with pytest.raises(RemoteProtocolError, match=str(MAX_TUPLE_NESTING)):
            codec.decode(frame)
        with pytest.raises(LocalProtocolError, match=str(MAX_TUPLE_NESTING)):
            codec.encode(expected)


def test_large_shallow_tuples_and_deep_lists_outside_tuples_still_decode() -> None:
    codec = Codec()
    wide = ("ints", list(range(100_000)), {"k": [1, 2, 3]})
    assert codec.decode(codec.encode(wide)) == wide
    # Lists outside any tuple keep msgpack's own bound (1024), so a term may span up to
    # 1024 + MAX_TUPLE_NESTING levels (more than Python's recursion limit lets == or repr
    # walk, so look inside without them), and no more.
    frame = b"\x91" * 1000 + one_tuple(b"\x91" * (MAX_TUPLE_NESTING - 1) + b"\x00")
    value = codec.decode(frame)
    for _ in range(1000):
        assert type(value) is list and len(value) == 1
        value = value[0]
    assert value == (nest(MAX_TUPLE_NESTING - 1, lambda v: [v]),)
    with pytest.raises(RemoteProtocolError):
        codec.decode(b"\x91" * 1025 + b"\x00")


@DET
@given(st.integers(1, 64), st.integers(1, 40))
def test_mixed_nesting_within_limits_round_trips(tuples: int, lists: int) -> None:
    assume(tuples + lists < 100)
    v: Any = 0
    for i in range(max(tuples, lists)):
        if i < lists:
            v = [v]
        if i < tuples:
            v = (v,)
    codec = Codec()
    assert same(codec.decode(codec.encode(v)), v)
