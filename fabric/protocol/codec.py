"""The wire codec: msgpack with three extension types, and nothing executable.

Theory of operation
-------------------
Every frame fabric sends is one msgpack value. Plain msgpack cannot tell a tuple from a
list, and Erlang-style code lives on tuples (``("hello", pid)``), so the codec keeps them
apart: lists travel as msgpack arrays, tuples as extension type 1 whose body is the packed
array of their items. Pids and refs are extension types 2 and 3 with a fixed binary layout
(``creation: u32, id: u64, node: utf-8``) so decoding one costs a slice and a struct call.

Anything else that msgpack cannot represent natively (sets, objects, functions) is refused
at encode time with :class:`~fabric.errors.LocalProtocolError`: fabric never pickles.
Decoding is bounded: the frame size, string/bytes lengths, container lengths and nesting
are capped, and every failure becomes :class:`~fabric.errors.RemoteProtocolError`.

Nesting has three bounds whose sum bounds a term's total depth. Lists and maps outside any
tuple nest at most 1024 levels (msgpack's decoder stack); tuples nest at most 64 levels;
and a tuple with everything inside it (lists, maps, tuples) spans at most 256 levels. A
term is thus at most 1024 + 256 levels deep, where alternating tuples and arrays used to
reach 64 x 1024. The tuple bound costs nothing on the common path: a tuple whose body is
shorter than 256 bytes cannot be deeper (every level takes at least one byte), so only
larger tuples are measured, each once (the depths of the tuples inside it are remembered
for the rest of the frame), and the measure skips scalars in C. The encoder applies the
same bounds, so a value it accepts is one every peer decodes.
"""

from __future__ import annotations

import struct
from itertools import chain, compress
from typing import Any, Final

import msgpack

from fabric.errors import LocalProtocolError, RemoteProtocolError
from fabric.types import Pid, Ref

__all__ = ["EXT_PID", "EXT_REF", "EXT_TUPLE", "MAX_TUPLE_NESTING", "Codec",
           "DEFAULT_MAX_FRAME"]

EXT_TUPLE: Final = 1
EXT_PID: Final = 2
EXT_REF: Final = 3

DEFAULT_MAX_FRAME: Final = 64 * 1024 * 1024
_ID_LAYOUT: Final = struct.Struct(">IQ")
_ID_SIZE: Final = _ID_LAYOUT.size
_MAX_DEPTH: Final = 64
# Levels a tuple may span with everything inside it; see the module docstring.
MAX_TUPLE_NESTING: Final = 256
_CONTAINER_TYPES: Final = frozenset({list, tuple, dict})
# Pids recur (the same sender, the same reply-to): memoise their wire form both ways.
_CACHE_SIZE: Final = 4096


class Codec:
    """Encodes and decodes fabric frames. One instance per node (not thread-safe).

    Args:
        max_frame: the largest frame, in bytes, that :meth:`decode` accepts.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._packer = msgpack.Packer(
            default=self._default, use_bin_type=True, strict_types=True, autoreset=True
        )
        # Tuples nest, and a Packer is not re-entrant: one inner packer per nesting depth.
        self._inner: list[msgpack.Packer] = []
        self._depth = 0
        self._unpack_kwargs: dict[str, Any] = dict(
            ext_hook=self._ext_hook,
            raw=False,
            use_list=True,
            strict_map_key=False,
            max_str_len=max_frame,
            max_bin_len=max_frame,
            max_array_len=min(max_frame, 16 * 1024 * 1024),
            max_map_len=min(max_frame, 4 * 1024 * 1024),
            max_ext_len=max_frame,
        )
        self._decode_depth = 0
        # id -> depth of the large tuples measured in the frame being decoded
        self._tuple_depths: dict[int, int] = {}
        self._ext_cache: dict[Any, msgpack.ExtType] = {}
        self._id_cache: dict[bytes, Pid] = {}

    # -- encoding -------------------------------------------------------------------------

    def encode(self, value: Any) -> bytes:
        """Pack one value into a frame.

        Raises:
            LocalProtocolError: the value holds something msgpack cannot carry.
        """
        try:
            return self._packer.pack(value)  # type: ignore[no-any-return]
        except (TypeError, ValueError, OverflowError, AttributeError, struct.error) as exc:
            self._packer.reset()
            self._depth = 0
            raise LocalProtocolError(f"cannot encode message: {exc}") from None

    def _default(self, obj: Any) -> Any:
        t = type(obj)
        if t is tuple:
            depth = self._depth
            if depth >= _MAX_DEPTH:
                raise ValueError("tuples nested deeper than 64 levels")
            if depth == len(self._inner):
                self._inner.append(
                    msgpack.Packer(
                        default=self._default, use_bin_type=True, strict_types=True, autoreset=True
                    )
                )
            self._depth = depth + 1
            try:
                body = self._inner[depth].pack(list(obj))
            finally:
                self._depth = depth
            if len(body) >= MAX_TUPLE_NESTING and _nesting(obj, MAX_TUPLE_NESTING, {}) is None:
                raise ValueError(f"a tuple spans more than {MAX_TUPLE_NESTING} levels")
            # ExtType's own constructor validates in Python; the fields are known good.
            return tuple.__new__(msgpack.ExtType, (EXT_TUPLE, body))
        if t is Pid:
            ext = self._ext_cache.get(obj)
            if ext is None:
                if len(self._ext_cache) >= _CACHE_SIZE:
                    self._ext_cache.clear()
                ext = tuple.__new__(msgpack.ExtType, (EXT_PID, _id_body(obj)))
                self._ext_cache[obj] = ext
            return ext
        if t is Ref:  # refs are made for one use: caching them would only evict pids
            return tuple.__new__(msgpack.ExtType, (EXT_REF, _id_body(obj)))
        # Subclasses of the plain types (IntEnum, str subclasses, OrderedDict...) are
        # sent as their base type; strict_types routes them here.
        for base in (bool, int, float, str, bytes, list, dict):
            if isinstance(obj, base):
                return base(obj)  # type: ignore[arg-type]
        if isinstance(obj, tuple):  # namedtuples travel as plain tuples
            return self._default(tuple(obj))
        raise TypeError(f"type {t.__name__} is not serializable (fabric never pickles)")

    # -- decoding -------------------------------------------------------------------------

    def decode(self, frame: bytes) -> Any:
        """Unpack one frame.

        Raises:
            RemoteProtocolError: the frame is too large, truncated or not valid msgpack.
        """
        if len(frame) > self.max_frame:
            raise RemoteProtocolError(f"frame of {len(frame)} bytes exceeds {self.max_frame}")
        try:
            value = msgpack.unpackb(frame, **self._unpack_kwargs)
        except RemoteProtocolError:
            raise
        except Exception as exc:  # msgpack raises a zoo of types on bad input
            raise RemoteProtocolError(f"undecodable frame: {type(exc).__name__}: {exc}") from None
        finally:
            self._decode_depth = 0
            if self._tuple_depths:
                self._tuple_depths.clear()
        # msgpack decodes ext type -1 (timestamp) itself, without asking _ext_hook. Its
        # three encodings are rare byte pairs: only a frame holding one is walked.
        if (b"\xd6\xff" in frame or b"\xd7\xff" in frame or b"\xc7\x0c\xff" in frame) \
                and _holds_timestamp(value):
            raise RemoteProtocolError("undecodable frame: ext type -1 (timestamp) is not "
                                      "a fabric type")
        return value

    def _ext_hook(self, code: int, data: bytes) -> Any:
        if code == EXT_TUPLE:
            if self._decode_depth >= _MAX_DEPTH:
                raise RemoteProtocolError("tuples nested deeper than 64 levels")
            self._decode_depth += 1
            try:
                # The outer unpack bounded every length by the frame's size already.
                items = msgpack.unpackb(data, ext_hook=self._ext_hook, raw=False,
                                        strict_map_key=False)
            finally:
                self._decode_depth -= 1
            if type(items) is not list:
                raise RemoteProtocolError("tuple extension does not hold an array")
            value = tuple(items)
            if len(data) >= MAX_TUPLE_NESTING:  # shorter bodies cannot nest that deep
                depth = _nesting(value, MAX_TUPLE_NESTING, self._tuple_depths)
                if depth is None:
                    raise RemoteProtocolError(
                        f"a tuple spans more than {MAX_TUPLE_NESTING} levels")
                self._tuple_depths[id(value)] = depth
            return value
        if code == EXT_PID:
            pid = self._id_cache.get(data)
            if pid is None:
                if len(self._id_cache) >= _CACHE_SIZE:
                    self._id_cache.clear()
                pid = self._id_cache[data] = _id_from(Pid, data)
            return pid
        if code == EXT_REF:
            return _id_from(Ref, data)
        raise RemoteProtocolError(f"unknown extension type {code}")


def _id_body(ident: Pid | Ref) -> bytes:
    return _ID_LAYOUT.pack(ident[2], ident[1]) + ident[0].encode()  # type: ignore[no-any-return]


def _id_from(cls: type[Pid] | type[Ref], data: bytes) -> Any:
    if len(data) < _ID_SIZE:
        raise RemoteProtocolError("truncated pid/ref")
    creation, ident = _ID_LAYOUT.unpack_from(data)
    # tuple.__new__ skips the Python-level constructor: this runs per decoded pid.
    return tuple.__new__(cls, (data[_ID_SIZE:].decode(), ident, creation))


def _nesting(value: Any, limit: int, known: dict[int, int]) -> int | None:
    """How many levels ``value`` spans (a scalar 0, ``[1]`` 1, ``([1],)`` 2), or None when
    more than ``limit``. ``known``: id -> depth of tuples already measured, not walked again
    (they are alive inside ``value``, so their ids cannot be reused meanwhile).

    Level by level, filtering each level's children in C: a list of a million ints costs
    two passes of ``map``, not a million bytecode steps.
    """
    level = [value] if type(value) in _CONTAINER_TYPES else []
    depth = deepest = 0
    while level:
        depth += 1
        if depth > limit:
            return None
        if known and depth > 1:
            unknown = []
            for item in level:
                measured = known.get(id(item))
                if measured is None:
                    unknown.append(item)
                elif depth - 1 + measured > limit:
                    return None
                else:
                    deepest = max(deepest, depth - 1 + measured)
            level = unknown
            if not level:
                break
        deepest = max(deepest, depth)
        if len(level) == 1 and type(level[0]) is not dict:
            children = level[0]
        else:
            children = list(chain.from_iterable(level))  # a dict gives its keys
            if dict in map(type, level):
                children += chain.from_iterable(x.values() for x in level if type(x) is dict)
        if _CONTAINER_TYPES.isdisjoint(set(map(type, children))):
            break  # only scalars below: the usual end, in one C pass
        level = list(compress(children,
                              map(_CONTAINER_TYPES.__contains__, map(type, children))))
    return deepest


def _holds_timestamp(value: Any) -> bool:
    # Iterative: a decoded frame can nest deeper than Python's recursion limit.
    stack = [value]
    while stack:
        item = stack.pop()
        t = type(item)
        if t is msgpack.Timestamp:
            return True
        if t is list or t is tuple:
            stack.extend(item)
        elif t is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
    return False
