"""The handshake frames and cookie proofs (fabric.protocol.handshake).

Proofs must change with every input they are meant to bind (label, challenge, names,
routing identity, cookie) and must not be confusable across part boundaries.
``parse_handshake`` must accept exactly the frames of PROTOCOL.md section 4.1 and turn
anything else into RemoteProtocolError.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fabric.errors import RemoteProtocolError
from fabric.protocol import handshake as hs
from fabric.protocol import mesh as m
from fabric.protocol.codec import Codec

DET = settings(derandomize=True, database=None, deadline=None, max_examples=150)

MESH_SOURCE = Path(m.__file__)

cookies = st.binary(min_size=1, max_size=40)
labels = st.text(min_size=1, max_size=12)
challenges = st.binary(min_size=hs.CHALLENGE_SIZE, max_size=hs.CHALLENGE_SIZE)
parts = st.lists(st.text(max_size=20) | st.binary(max_size=20), max_size=4)


# -- proofs ----------------------------------------------------------------------------------


def test_proof_is_hmac_sha256_of_label_challenge_and_length_prefixed_parts() -> None:
    got = hs.proof(b"k", "answer", b"C" * 16, "a@h:1", b"\x00\x01")
    msg = b"answer" + b"C" * 16 + b"\x00\x00\x00\x05a@h:1" + b"\x00\x00\x00\x02\x00\x01"
    assert got == hmac.new(b"k", msg, hashlib.sha256).digest()
    assert len(got) == 32


@DET
@given(cookies, labels, challenges, parts)
def test_proof_is_deterministic(cookie: bytes, label: str, ch: bytes, ps: list[Any]) -> None:
    assert hs.proof(cookie, label, ch, *ps) == hs.proof(cookie, label, ch, *ps)


@DET
@given(cookies, cookies, labels, challenges, parts)
def test_different_cookie_different_proof(c1: bytes, c2: bytes, label: str, ch: bytes,
                                          ps: list[Any]) -> None:
    # HMAC pads keys shorter than a block with zeros, so b"k" and b"k\0" are one key:
    # cookies are compared as zero-stripped strings here.
    assume(c1.rstrip(b"\x00") != c2.rstrip(b"\x00"))
    assert hs.proof(c1, label, ch, *ps) != hs.proof(c2, label, ch, *ps)


@DET
@given(cookies, st.sampled_from(["challenge", "answer", "bind"]),
       st.sampled_from(["challenge", "answer", "bind"]), challenges, parts)
def test_different_label_different_proof(cookie: bytes, l1: str, l2: str, ch: bytes,
                                         ps: list[Any]) -> None:
    assume(l1 != l2)
    assert hs.proof(cookie, l1, ch, *ps) != hs.proof(cookie, l2, ch, *ps)


@DET
@given(cookies, labels, challenges, challenges, parts)
def test_different_challenge_different_proof(cookie: bytes, label: str, c1: bytes, c2: bytes,
                                             ps: list[Any]) -> None:
    assume(c1 != c2)
    assert hs.proof(cookie, label, c1, *ps) != hs.proof(cookie, label, c2, *ps)


names = st.builds("{}@{}:{}".format, st.text("abn1", min_size=1, max_size=6),
                  st.text("hxy.", min_size=1, max_size=6), st.integers(1, 65535))


@DET
@given(cookies, challenges, names, names, names)
def test_names_are_bound_in_order(cookie: bytes, ch: bytes, a: str, b: str, c: str) -> None:
    assume(len({a, b, c}) == 3)
    p = hs.proof(cookie, "challenge", ch, a, b)
    assert p != hs.proof(cookie, "challenge", ch, b, a)  # the direction matters
    assert p != hs.proof(cookie, "challenge", ch, a, c)  # so does each name
    assert p != hs.proof(cookie, "challenge", ch, c, b)


@DET
@given(cookies, st.binary(min_size=32, max_size=32), st.binary(min_size=9, max_size=40),
       st.binary(min_size=9, max_size=40))
def test_bind_proof_binds_the_routing_identity(cookie: bytes, ch: bytes, i1: bytes,
                                                i2: bytes) -> None:
    assume(i1 != i2)
    a, b = "a@h:1", "b@h:2"
    assert hs.proof(cookie, "bind", ch, b, a, i1) != hs.proof(cookie, "bind", ch, b, a, i2)


@pytest.mark.parametrize("left, right", [
    (("ab", "c"), ("a", "bc")),
    (("abc",), ("a", "bc")),
    (("abc",), ("abc", "")),
    (("", "abc"), ("abc", "")),
    ((b"a\x00\x00\x00\x01b",), (b"a", b"b")),
])
def test_length_prefix_prevents_part_ambiguity(left: tuple[Any, ...],
                                               right: tuple[Any, ...]) -> None:
    assert hs.proof(b"k", "l", b"c" * 16, *left) != hs.proof(b"k", "l", b"c" * 16, *right)


def _split(text: str, cuts: set[int]) -> list[str]:
    bounds = [0, *sorted(cuts), len(text)]
    return [text[i:j] for i, j in zip(bounds, bounds[1:], strict=False)]


@DET
@given(st.text(max_size=12), st.sets(st.integers(0, 12), max_size=4),
       st.sets(st.integers(0, 12), max_size=4))
def test_parts_with_the_same_concatenation_give_different_proofs(
        text: str, cuts1: set[int], cuts2: set[int]) -> None:
    p1, p2 = _split(text, cuts1), _split(text, cuts2)
    assume(p1 != p2)
    assert "".join(p1) == "".join(p2) == text
    assert hs.proof(b"k", "l", b"c" * 16, *p1) != hs.proof(b"k", "l", b"c" * 16, *p2)


def test_str_part_is_its_utf8_bytes() -> None:
    assert hs.proof(b"k", "l", b"c", "é") == hs.proof(b"k", "l", b"c", "é".encode())


def _labels_used_by_the_mesh() -> set[str]:
    tree = ast.parse(MESH_SOURCE.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "proof"):
            label = node.args[1]
            assert isinstance(label, ast.Constant) and isinstance(label.value, str)
            found.add(label.value)
    return found


def test_label_and_challenge_boundary_is_unambiguous_for_the_labels_in_use() -> None:
    # The label and the challenge are not length prefixed (PROTOCOL.md 4.2). That is safe
    # only while no label in use is a prefix of another and each label's challenge has a
    # fixed size (16 bytes, checked by parse_handshake; 32 for bind).
    used = _labels_used_by_the_mesh()
    assert used == {"challenge", "answer", "bind"}
    for a in used:
        for b in used - {a}:
            assert not b.startswith(a), (a, b)
    # What the rule protects against: without it, "answe" + "r..." would equal "answer".
    assert hs.proof(b"k", "answer", b"c" * 16) == hs.proof(b"k", "answe", b"r" + b"c" * 16)


def test_proofs_equal() -> None:
    p = hs.proof(b"k", "l", b"c" * 16, "a")
    assert hs.proofs_equal(p, bytes(p))
    assert not hs.proofs_equal(p, p[:-1] + bytes([p[-1] ^ 1]))
    assert not hs.proofs_equal(p, p[:16])
    assert not hs.proofs_equal(p, b"")


# -- parse_handshake: valid frames -----------------------------------------------------------

ints = st.integers(-(2**63), 2**64 - 1)
ports = st.integers(1, 65535)
frames = st.one_of(
    st.builds(hs.Hello, ints, st.text(), ints, ints, ports, challenges),
    st.builds(hs.Challenge, ints, st.text(), ints, ints, ports, challenges, st.binary()),
    st.builds(hs.Answer, st.binary()),
    st.builds(hs.Bind, st.text(), st.binary()),
    st.builds(hs.Refuse, st.text(), st.text()),
)


@DET
@given(frames)
def test_parse_accepts_every_valid_frame(frame: Any) -> None:
    assert hs.parse_handshake(frame.frame()) == frame
    codec = Codec()
    assert hs.parse_handshake(codec.decode(codec.encode(frame.frame()))) == frame


def test_frame_layouts() -> None:
    ch = bytes(range(16))
    assert hs.Hello(1, "a@h:1", 7, 1, 9, ch).frame() == ["hello", 1, "a@h:1", 7, 1, 9, ch]
    assert hs.Challenge(1, "b@h:2", 8, 0, 10, ch, b"p").frame() == [
        "challenge", 1, "b@h:2", 8, 0, 10, ch, b"p"]
    assert hs.Answer(b"p").frame() == ["answer", b"p"]
    assert hs.Bind("b@h:2", b"p").frame() == ["bind", "b@h:2", b"p"]
    assert hs.Refuse("bad_cookie").frame() == ["refuse", "bad_cookie", ""]


# -- parse_handshake: malformed frames -------------------------------------------------------

CH = bytes(16)
VALID: dict[str, list[Any]] = {
    "hello": ["hello", 1, "a@h:1", 7, 0, 9200, CH],
    "challenge": ["challenge", 1, "b@h:2", 8, 0, 9201, CH, b"p" * 32],
    "answer": ["answer", b"p" * 32],
    "bind": ["bind", "b@h:2", b"p" * 32],
    "refuse": ["refuse", "bad_cookie", ""],
}

# For each field kind, values that must be refused in that position.
WRONG = {
    "int": [True, False, 1.0, "1", b"1", None, [1], (1,)],
    "str": [b"a@h:1", 1, None, ["a"], ("a",)],
    "bytes": ["p", 1, None, [b"p"], bytearray(b"p")],
    "challenge": [b"", bytes(15), bytes(17), "x" * 16, None],
    "port": [0, 65536, -1, True, "9200", 9200.0],
}
FIELDS = {
    "hello": [None, "int", "str", "int", "int", "port", "challenge"],
    "challenge": [None, "int", "str", "int", "int", "port", "challenge", "bytes"],
    "answer": [None, "bytes"],
    "bind": [None, "str", "bytes"],
    "refuse": [None, "str", "str"],
}
MUTATIONS = [
    (kind, i, bad)
    for kind, fields in FIELDS.items()
    for i, field in enumerate(fields) if field is not None
    for bad in WRONG[field]
]


def test_the_valid_templates_are_valid() -> None:
    for frame in VALID.values():
        hs.parse_handshake(frame)


@pytest.mark.parametrize("kind, index, bad", MUTATIONS,
                         ids=[f"{k}[{i}]={b!r:.20}" for k, i, b in MUTATIONS])
def test_parse_rejects_a_field_of_the_wrong_type(kind: str, index: int, bad: Any) -> None:
    frame = list(VALID[kind])
    frame[index] = bad
    with pytest.raises(RemoteProtocolError):
        hs.parse_handshake(frame)


@pytest.mark.parametrize("kind", sorted(VALID))
def test_parse_rejects_wrong_arity(kind: str) -> None:
    frame = VALID[kind]
    for wrong in (frame[:-1], frame + [b""], frame + [None, None]):
        with pytest.raises(RemoteProtocolError):
            hs.parse_handshake(wrong)


@pytest.mark.parametrize("bad", [
    None, 1, "hello", b"hello", {}, {"hello": 1}, (), ("hello", 1), [], ["hello"],
    [b"hello", 1, "a@h:1", 7, 0, 9200, CH], [1, 2], [["hello"]], [[1, 2, 3]],
    ["HELLO", 1, "a@h:1", 7, 0, 9200, CH], ["welcome", 1], ["x" * 1000, 1],
    ("hello", 1, "a@h:1", 7, 0, 9200, CH),
], ids=repr)
def test_parse_rejects_what_is_not_a_handshake_frame(bad: Any) -> None:
    with pytest.raises(RemoteProtocolError):
        hs.parse_handshake(bad)


def test_rejection_message_does_not_echo_long_input() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        hs.parse_handshake(["x" * 10_000, 1])
    assert len(str(info.value)) < 100


anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12) | st.binary(max_size=20),
    lambda ch: st.lists(ch, max_size=9) | st.dictionaries(st.text(max_size=5), ch, max_size=3),
    max_leaves=12,
)
kinds = st.sampled_from(sorted(VALID) + ["", "x"])


@DET
@given(st.one_of(anything, st.builds(lambda k, rest: [k, *rest], kinds,
                                     st.lists(anything, max_size=8))))
def test_parse_raises_only_remote_protocol_error(value: Any) -> None:
    try:
        frame = hs.parse_handshake(value)
    except RemoteProtocolError:
        return
    assert frame.frame() == value


# -- the handshake as the mesh core runs it --------------------------------------------------

A, B = "a@127.0.0.1:9100", "b@127.0.0.1:9101"


def _up_pair(cookie_b: bytes = b"secret") -> tuple[m.MeshCore, m.MeshCore, bytes, bytes]:
    """Two cores A -> B driven frame by frame; returns them and both routing identities."""
    rng = random.Random(7)
    a = m.MeshCore(A, 1, b"secret", 9200, rng.randbytes)
    b = m.MeshCore(B, 2, cookie_b, 9201, rng.randbytes)
    e = a.connect(B, 0.0)
    i_a = e[0].identity
    e = b.router_frame(i_a, e[1].frame, 0.0)
    e = a.channel_frame(B, e[0].frame, 0.0)
    if not isinstance(e[0], m.ChannelSend) or e[0].frame[0] != "answer":
        return a, b, i_a, b""
    e = b.router_frame(i_a, e[0].frame, 0.0)
    i_b = e[0].identity
    a.router_frame(i_b, e[1].frame, 0.0)
    return a, b, i_a, i_b


def test_routing_identities_are_base_name_nul_and_8_random_bytes() -> None:
    a, b, i_a, i_b = _up_pair()
    assert a.is_up(B) and b.is_up(A)
    assert i_a[:-8] == b"a@127.0.0.1\x00" and i_b[:-8] == b"b@127.0.0.1\x00"
    _, _, i_a2, _ = _up_pair()
    assert i_a2 == i_a  # same seed, same bytes: the identity comes from the entropy source


def test_wrong_cookie_stops_at_the_challenge() -> None:
    a, b, i_a, i_b = _up_pair(cookie_b=b"other")
    assert not a.is_up(B) and not b.is_up(A) and i_b == b""
    assert a.stats.refused == {"bad_cookie": 1}


def test_a_replayed_bind_from_another_identity_is_refused() -> None:
    rng = random.Random(1)
    a = m.MeshCore(A, 1, b"secret", 9200, rng.randbytes)
    b = m.MeshCore(B, 2, b"secret", 9201, rng.randbytes)
    e = a.connect(B, 0.0)
    i_a = e[0].identity
    e = b.router_frame(i_a, e[1].frame, 0.0)
    e = a.channel_frame(B, e[0].frame, 0.0)
    e = b.router_frame(i_a, e[0].frame, 0.0)
    bind = e[1].frame
    a.router_frame(b"mallory\x00" + bytes(8), bind, 0.0)  # the proof names another identity
    assert not a.is_up(B)
    assert a.stats.bad_frames == 1


def test_unauthenticated_hello_cannot_end_a_session() -> None:
    a, b, _, _ = _up_pair()
    assert b.is_up(A)
    effects = b.router_frame(b"mallory\x00" + bytes(8),
                             ["hello", 1, A, 1, 0, 9200, bytes(16)], 1.0)
    assert not any(isinstance(e, m.PeerDown) for e in effects)
    assert b.is_up(A)
