"""The test vectors of docs/PROTOCOL.md, executed.

The document is the source of truth: this module parses the tables between
``<!-- vectors:NAME -->`` and ``<!-- /vectors -->`` markers and checks every row against
the code, both ways (bytes -> value and value -> exact bytes). Editing a vector in the
document without changing the code (or the reverse) fails here.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq
from zmq.utils import z85

from fabric.errors import RemoteProtocolError
from fabric.protocol import handshake as hs
from fabric.protocol import mesh as m
from fabric.protocol import messages
from fabric.protocol.codec import Codec
from fabric.protocol.messages import (
    HEARTBEAT_TOPIC,
    K_CTRL,
)
from fabric.types import Pid, Ref

DOC = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"

_SECTION = re.compile(r"<!-- vectors:([a-z-]+) -->\n(.*?)<!-- /vectors -->", re.S)

# The handshake example of PROTOCOL.md section 10.
COOKIE = b"secret"
A = "a@127.0.0.1:9100"
B = "b@127.0.0.1:9101"
C_A = bytes(range(0x00, 0x10))
C_B = bytes(range(0x10, 0x20))
I_A = b"a@127.0.0.1\x00" + bytes(range(0xA0, 0xA8))
I_B = b"b@127.0.0.1\x00" + bytes(range(0xB0, 0xB8))


def _cells(line: str) -> list[str]:
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    return [c[1:-1] if len(c) >= 2 and c[0] == c[-1] == "`" else c for c in cells]


def tables(name: str) -> list[list[str]]:
    """Every data row of every table marked ``vectors:name`` in PROTOCOL.md."""
    rows: list[list[str]] = []
    for section, body in _SECTION.findall(DOC.read_text(encoding="utf-8")):
        if section != name:
            continue
        lines = [ln for ln in body.splitlines() if ln.strip().startswith("|")]
        assert len(lines) >= 3, f"vectors:{name} table has no rows"
        assert set(lines[1].replace("|", "").strip()) <= set("- "), "second line must be ---"
        rows += [_cells(ln) for ln in lines[2:]]
    assert rows, f"no vectors:{name} table in {DOC}"
    return rows


def value(expr: str, **names: Any) -> Any:
    """Evaluate a vector's Python-literal value; only Pid, Ref and the given names exist."""
    tree = ast.parse(expr, mode="eval")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name), f"only plain calls in vectors: {expr}"
        assert not isinstance(node, (ast.Attribute, ast.Lambda, ast.NamedExpr)), expr
    env: dict[str, Any] = {"__builtins__": {}, "Pid": Pid, "Ref": Ref, "bytes": bytes}
    env.update(names)
    return eval(compile(tree, "<vector>", "eval"), env)


def unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def same(a: Any, b: Any) -> bool:
    """Equality that also requires identical types all the way down (tuple is not list)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    return bool(a == b)


def _ids(rows: list[list[str]]) -> list[str]:
    return [row[0][:60] for row in rows]


VALUES = tables("values")
BATCHES = tables("batches")
DECODE_ONLY = tables("decode-only")
REJECTED = tables("rejected")
PROOFS = tables("proofs")
HANDSHAKE = tables("handshake")
PG_TOPICS = tables("pg-topics")
PUB_PLANE = tables("pub-plane")
DATA_PLANE = tables("data-plane")


# -- the parser itself ----------------------------------------------------------------------


def test_vector_tables_are_not_empty_and_well_formed() -> None:
    for rows, width in [(VALUES, 2), (BATCHES, 2), (DECODE_ONLY, 2), (REJECTED, 2),
                        (PROOFS, 3), (HANDSHAKE, 4), (PG_TOPICS, 3), (PUB_PLANE, 3),
                        (DATA_PLANE, 3)]:
        assert rows
        for row in rows:
            assert len(row) == width, row
            unhex(row[-1])  # every last column is hex


def test_same_tells_tuples_from_lists() -> None:
    assert same([1, (2,)], [1, (2,)])
    assert not same([1, (2,)], [1, [2]])
    assert not same(Pid("a@b:1", 1, 1), ("a@b:1", 1, 1))
    assert not same(1, True) and not same(1, 1.0)
    assert not same({"a": 1}, {"a": 2})


# -- values ----------------------------------------------------------------------------------


@pytest.mark.parametrize("expr, hex_", VALUES + BATCHES, ids=_ids(VALUES + BATCHES))
def test_value_decodes_from_bytes(expr: str, hex_: str) -> None:
    assert same(Codec().decode(unhex(hex_)), value(expr))


@pytest.mark.parametrize("expr, hex_", VALUES + BATCHES, ids=_ids(VALUES + BATCHES))
def test_value_encodes_to_exact_bytes(expr: str, hex_: str) -> None:
    assert Codec().encode(value(expr)).hex() == unhex(hex_).hex()


@pytest.mark.parametrize("expr, hex_", DECODE_ONLY, ids=_ids(DECODE_ONLY))
def test_other_valid_encodings_decode(expr: str, hex_: str) -> None:
    expected = value(expr)
    assert same(Codec().decode(unhex(hex_)), expected)
    assert Codec().encode(expected) != unhex(hex_)  # else it belongs in the values table


@pytest.mark.parametrize("why, hex_", REJECTED, ids=_ids(REJECTED))
def test_invalid_frames_are_rejected(why: str, hex_: str) -> None:
    with pytest.raises(RemoteProtocolError):
        Codec().decode(unhex(hex_))


# Every kind messages.py declares: a new kind without a vector fails the test below.
_KINDS = {value for name, value in vars(messages).items() if name.startswith("K_")}


@pytest.mark.parametrize("expr, hex_", BATCHES, ids=_ids(BATCHES))
def test_batch_vectors_are_batches_of_known_kinds(expr: str, hex_: str) -> None:
    batch = Codec().decode(unhex(hex_))
    assert type(batch) is list and batch
    for msg in batch:
        assert type(msg) is list and msg[0] in _KINDS


def test_every_message_kind_has_a_vector() -> None:
    seen = {msg[0] for _, hex_ in BATCHES for msg in Codec().decode(unhex(hex_))}
    assert seen == _KINDS


def test_every_control_op_has_a_vector() -> None:
    ops = {msg[1] for _, hex_ in BATCHES for msg in Codec().decode(unhex(hex_))
           if msg[0] == K_CTRL}
    assert ops == {"link", "unlink", "exit", "mon", "demon", "down", "spawn", "spawn_reply",
                   "busy", "room"}


def test_heartbeat_vector_matches_what_the_node_publishes() -> None:
    import msgpack

    assert HEARTBEAT_TOPIC == b"h\x00"
    payload = msgpack.packb([A, 1])  # what fabric.node publishes
    expr, hex_ = next(r for r in VALUES if r[0] == f'["{A}", 1]')
    assert payload == unhex(hex_) == Codec().encode(value(expr))


# -- proofs ----------------------------------------------------------------------------------


def _independent_proof(cookie: bytes, label: str, challenge: bytes, *parts: Any) -> bytes:
    """The HMAC construction of PROTOCOL.md section 4.2, written out independently."""
    msg = label.encode() + challenge
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        msg += struct.pack(">I", len(data)) + data
    return hmac.new(cookie, msg, hashlib.sha256).digest()


_PROOF_NAMES = dict(cookie=COOKIE, c_a=C_A, c_b=C_B, A=A, B=B, I_B=I_B)


@pytest.mark.parametrize("name, expr, hex_", PROOFS, ids=_ids(PROOFS))
def test_proof_vectors(name: str, expr: str, hex_: str) -> None:
    assert value(expr, proof=hs.proof, **_PROOF_NAMES).hex() == hex_
    assert value(expr, proof=_independent_proof, **_PROOF_NAMES).hex() == hex_


def _independent_secrets(plane: str) -> Callable[[bytes], tuple[bytes, bytes]]:
    def secrets(cookie: bytes) -> tuple[bytes, bytes]:
        return tuple(hmac.new(cookie, f"fabric {plane} curve {role}".encode(),  # type: ignore
                              hashlib.sha256).digest() for role in ("server", "client"))
    return secrets


_PLANE_KEYS = ([("pub_plane_secrets", "pub-plane", *row) for row in PUB_PLANE]
               + [("data_plane_secrets", "data-plane", *row) for row in DATA_PLANE])


@pytest.mark.parametrize("function, plane, name, expr, hex_", _PLANE_KEYS,
                         ids=[f"{row[1]} {row[2]}" for row in _PLANE_KEYS])
def test_plane_key_vectors(function: str, plane: str, name: str, expr: str,
                           hex_: str) -> None:
    assert value(expr, cookie=COOKIE, **{function: getattr(hs, function)}).hex() == hex_
    assert value(expr, cookie=COOKIE, **{function: _independent_secrets(plane)}).hex() == hex_


@pytest.mark.parametrize("plane, derive", [("PUB/SUB", hs.pub_plane_secrets),
                                           ("ROUTER/DEALER", hs.data_plane_secrets)])
def test_plane_public_keys_in_the_doc(plane: str,
                                      derive: Callable[[bytes], tuple[bytes, bytes]]) -> None:
    server, client = derive(COOKIE)
    text = DOC.read_text(encoding="utf-8")
    publics = [f"{role} `{zmq.curve_public(z85.encode(secret)).decode()}`"
               for role, secret in (("server", server), ("client", client))]
    assert f"{plane} public keys, Z85-encoded: {publics[0]}, {publics[1]}." in \
        " ".join(text.split()), (plane, publics)


# -- the handshake transcript ----------------------------------------------------------------


def _entropy(data: bytes) -> Callable[[int], bytes]:
    buf = bytearray(data)

    def entropy(n: int) -> bytes:
        assert len(buf) >= n, "the core drew more random bytes than the vector provides"
        out = bytes(buf[:n])
        del buf[:n]
        return out

    return entropy


def _transcript() -> dict[str, bytes]:
    """Run two real MeshCores with the document's inputs; collect the frames they emit."""
    codec = Codec()
    a = m.MeshCore(A, 1, COOKIE, 9200, _entropy(I_A[-8:] + C_A))
    b = m.MeshCore(B, 2, COOKIE, 9201, _entropy(C_B + I_B[-8:]))
    frames: dict[str, bytes] = {}

    e = a.connect(B, 0.0)
    assert e[0] == m.OpenChannel(B, "tcp://127.0.0.1:9101", I_A)
    frames["HELLO"] = codec.encode(e[1].frame)

    e = b.router_frame(I_A, codec.decode(frames["HELLO"]), 0.0)
    assert [type(x) for x in e] == [m.RouterSend] and e[0].identity == I_A
    frames["CHALLENGE"] = codec.encode(e[0].frame)

    e = a.channel_frame(B, codec.decode(frames["CHALLENGE"]), 0.0)
    assert [type(x) for x in e] == [m.ChannelSend]
    frames["ANSWER"] = codec.encode(e[0].frame)

    e = b.router_frame(I_A, codec.decode(frames["ANSWER"]), 0.0)
    assert e[0] == m.OpenChannel(A, "tcp://127.0.0.1:9100", I_B)
    frames["BIND"] = codec.encode(e[1].frame)
    assert m.SubConnect(A, "tcp://127.0.0.1:9200") in e
    frames["PEERS (B)"] = codec.encode([x.message for x in e if isinstance(x, m.Control)])

    e = a.router_frame(I_B, codec.decode(frames["BIND"]), 0.0)
    assert m.SubConnect(B, "tcp://127.0.0.1:9201") in e
    frames["PEERS (A)"] = codec.encode([x.message for x in e if isinstance(x, m.Control)])

    assert a.nodes() == [B] and b.nodes() == [A]
    assert a.peer_of(I_B) == B and b.peer_of(I_A) == A
    return frames


def test_handshake_transcript_matches_the_mesh_core() -> None:
    frames = _transcript()
    assert [row[0] for row in HANDSHAKE] == list(frames)
    for step, _path, _frame, hex_ in HANDSHAKE:
        assert frames[step].hex() == unhex(hex_).hex(), step


_FRAME_NAMES = dict(c_a=C_A, c_b=C_B, **{
    name: unhex(hex_) for name, _, hex_ in PROOFS if name.startswith("P_")})


@pytest.mark.parametrize("step, path, expr, hex_", HANDSHAKE, ids=_ids(HANDSHAKE))
def test_handshake_frame_column_matches_hex(step: str, path: str, expr: str,
                                            hex_: str) -> None:
    decoded = Codec().decode(unhex(hex_))
    assert same(decoded, value(expr, **_FRAME_NAMES))
    if not step.startswith("PEERS"):
        frame = hs.parse_handshake(decoded)
        assert frame.frame() == decoded


def test_identities_in_the_doc() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert f"`I_A` = `{I_A.hex()}`" in text
    assert f"`I_B` = `{I_B.hex()}`" in text


# -- group topics ----------------------------------------------------------------------------


@pytest.mark.parametrize("scope, group, hex_", PG_TOPICS, ids=_ids(PG_TOPICS))
def test_pg_topic_vectors(scope: str, group: str, hex_: str) -> None:
    pg = pytest.importorskip("fabric.protocol.pg")
    assert pg.group_topic(value(scope), value(group)).hex() == hex_
