"""A decoder of PostgreSQL's `pgoutput` logical replication messages (protocol version 1), and the text
forms of column values turned into the Arrow types the database source gives the same columns.

The message formats are PostgreSQL's "Logical Replication Message Formats" (protocol chapter): every
message starts with one byte naming it; integers are big-endian; strings end with a zero byte.

    B  Begin      final LSN (int64), commit time (int64, µs since 2000-01-01), xid (int32)
    C  Commit     flags (int8), commit LSN (int64), end LSN (int64), commit time (int64)
    R  Relation   oid (int32), namespace, name, replica identity (int8), ncols (int16),
                  then per column: flags (int8, 1 = part of the key), name, type oid (int32), typmod (int32)
    I  Insert     oid, 'N', tuple
    U  Update     oid, optional 'K' (old key) or 'O' (old row) tuple, 'N', tuple
    D  Delete     oid, 'K' or 'O', tuple
    T  Truncate   nrels (int32), options (int8), oids (int32 each)
    Y  Type, O Origin, M Message: carry nothing a table's changes need

A tuple is ncols (int16), then per column 'n' (null), 'u' (an unchanged TOASTed value that was not sent)
or 't' + length (int32) + the value's text form.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa

UNCHANGED = object()
"""Stands for a TOASTed value an update did not send (the column kept its value)."""

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")


@dataclass(frozen=True)
class Relation:
    oid: int
    namespace: str
    name: str
    columns: tuple[str, ...]
    key: tuple[bool, ...]


@dataclass(frozen=True)
class Begin:
    lsn: int  # the commit record's LSN
    xid: int


@dataclass(frozen=True)
class Change:
    """One row change: op is 'c' (insert), 'u' (update), 'd' (delete) or 't' (truncate)."""

    op: str
    relation: int
    new: tuple[Any, ...] | None = None  # text values, None for null, UNCHANGED
    old: tuple[Any, ...] | None = None  # the old key ('K') or row ('O'), when sent


@dataclass(frozen=True)
class Commit:
    lsn: int


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 1

    def i8(self) -> int:
        value = self.data[self.pos]
        self.pos += 1
        return value

    def i16(self) -> int:
        (value,) = _I16.unpack_from(self.data, self.pos)
        self.pos += 2
        return int(value)

    def i32(self) -> int:
        (value,) = _I32.unpack_from(self.data, self.pos)
        self.pos += 4
        return int(value)

    def u32(self) -> int:
        (value,) = _U32.unpack_from(self.data, self.pos)
        self.pos += 4
        return int(value)

    def i64(self) -> int:
        (value,) = _I64.unpack_from(self.data, self.pos)
        self.pos += 8
        return int(value)

    def string(self) -> str:
        end = self.data.index(0, self.pos)
        value = self.data[self.pos:end].decode()
        self.pos = end + 1
        return value

    def tuple(self) -> tuple[Any, ...]:
        values: list[Any] = []
        for _ in range(self.i16()):
            kind = chr(self.i8())
            if kind == "n":
                values.append(None)
            elif kind == "u":
                values.append(UNCHANGED)
            elif kind == "t":
                n = self.i32()
                values.append(self.data[self.pos:self.pos + n].decode())
                self.pos += n
            else:
                raise ValueError(f"pgoutput: unexpected tuple column kind {kind!r} (binary mode is not asked for)")
        return tuple(values)


def decode(data: bytes) -> Begin | Commit | Relation | Change | None:
    """One pgoutput message, or None for messages a table's changes do not need (Type, Origin, Message)."""
    kind = chr(data[0])
    r = _Reader(data)
    if kind == "B":
        lsn = r.i64()
        r.i64()  # commit time
        return Begin(lsn, r.u32())
    if kind == "C":
        r.i8()
        return Commit(r.i64())
    if kind == "R":
        oid, namespace, name = r.u32(), r.string(), r.string()
        r.i8()  # replica identity setting
        columns, key = [], []
        for _ in range(r.i16()):
            flags = r.i8()
            columns.append(r.string())
            key.append(bool(flags & 1))
            r.i32()  # type oid
            r.i32()  # typmod
        return Relation(oid, namespace, name, tuple(columns), tuple(key))
    if kind == "I":
        oid = r.u32()
        r.i8()  # 'N'
        return Change("c", oid, new=r.tuple())
    if kind == "U":
        oid = r.u32()
        old = None
        marker = chr(r.i8())
        if marker in "KO":
            old = r.tuple()
            marker = chr(r.i8())
        return Change("u", oid, new=r.tuple(), old=old)
    if kind == "D":
        oid = r.u32()
        r.i8()  # 'K' or 'O'
        return Change("d", oid, old=r.tuple())
    if kind == "T":
        n = r.i32()
        r.i8()
        return Change("t", r.u32() if n else 0)
    return None


def lsn_int(text: str) -> int:
    """`16/B374D848` as the 64-bit number it stands for."""
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def lsn_text(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


# -- text values to Arrow ----------------------------------------------------------------------------------

def _bool(v: str) -> bool:
    return v == "t"


def _bytea(v: str) -> bytes:
    if v.startswith("\\x"):
        return bytes.fromhex(v[2:])
    raise ValueError("bytea in escape format; set bytea_output = hex")


def _timestamp(v: str) -> datetime:
    return datetime.fromisoformat(v)


def _array(element: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(v: str) -> list[Any]:
        return [None if item is None else element(item) for item in parse_array(v)]
    return parse


def parse_array(text: str) -> list[str | None]:
    """The elements of a one-dimensional array literal (`{1,NULL,"a,b"}`) as text, None for NULL."""
    if text[0] != "{" or text[-1] != "}":
        raise ValueError(f"not an array literal: {text[:40]!r}")
    body, i = text[1:-1], 0
    items: list[str | None] = []
    if not body:
        return []
    while i <= len(body):
        if i < len(body) and body[i] == '"':
            i += 1
            chars = []
            while body[i] != '"':
                if body[i] == "\\":
                    i += 1
                chars.append(body[i])
                i += 1
            items.append("".join(chars))
            i += 2  # the closing quote and the comma
        else:
            end = body.find(",", i)
            end = len(body) if end < 0 else end
            word = body[i:end]
            if word.startswith("{"):
                raise ValueError("arrays of more than one dimension are not supported")
            items.append(None if word == "NULL" else word)
            i = end + 1
    return items


_SCALARS: dict[str, tuple[pa.DataType, Callable[[str], Any]]] = {
    "int2": (pa.int16(), int), "int4": (pa.int32(), int), "int8": (pa.int64(), int),
    "float4": (pa.float32(), float), "float8": (pa.float64(), float), "bool": (pa.bool_(), _bool),
    "date": (pa.date32(), date.fromisoformat), "timestamp": (pa.timestamp("us"), _timestamp),
    "timestamptz": (pa.timestamp("us", tz="UTC"), _timestamp), "bytea": (pa.binary(), _bytea),
}


def converter(typname: str, arrow_type: pa.DataType | None) -> tuple[pa.DataType, Callable[[str], Any]]:
    """The Arrow type a column of PostgreSQL type `typname` has in bronze, and how its text form becomes a value
    of it. `arrow_type` is the decimal type of a bounded numeric, or None."""
    if arrow_type is not None and pa.types.is_decimal(arrow_type):
        return arrow_type, Decimal
    if typname in _SCALARS:
        return _SCALARS[typname]
    if typname.startswith("_") and typname[1:] in _SCALARS:
        element_type, parse = _SCALARS[typname[1:]]
        return pa.list_(element_type), _array(parse)
    if typname in ("_text", "_varchar"):
        return pa.list_(pa.string()), _array(str)
    return pa.string(), str


def to_array(values: Iterable[Any], arrow_type: pa.DataType, parse: Callable[[str], Any]) -> pa.Array:
    return pa.array([None if v is None else parse(v) for v in values], type=arrow_type)
