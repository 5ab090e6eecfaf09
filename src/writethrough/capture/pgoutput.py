"""Decode PostgreSQL's built-in ``pgoutput`` logical decoding messages (protocol version 1).

Pure: bytes in, dataclasses out, no I/O. The formats are PostgreSQL's "Logical
Replication Message Formats" page; only what change capture needs is kept (Begin,
Commit, Relation, Insert, Update, Delete, Truncate); Origin, Type, logical messages and
unknown tags decode to :class:`Ignored`.

    >>> decode(b"T\\x00\\x00\\x00\\x01\\x00\\x00\\x00\\x40\\x00")
    Truncate(relations=(16384,), cascade=False, restart_identity=False)

Column values stay as PostgreSQL's text output (``str``), ``None`` for NULL, or
:data:`UNCHANGED` for a TOASTed value an UPDATE did not change (not sent).
A malformed message raises :class:`~writethrough.errors.SourceError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from ..errors import SourceError

# Timestamps on the wire: microseconds since 2000-01-01 UTC (PostgreSQL's epoch).
PG_EPOCH_UNIX: Final = 946_684_800.0


class _Unchanged:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()
Value = str | None | _Unchanged


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    key: bool  # part of the replica identity


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_time: float  # seconds since the Unix epoch
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    lsn: int
    end_lsn: int  # confirm this once the transaction's changes landed
    commit_time: float


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    schema: str
    name: str
    replica_identity: str  # d(efault), n(othing), f(ull), i(ndex)
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class Insert:
    relation: int
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Update:
    relation: int
    old: tuple[Value, ...] | None  # the old key ('K') or the whole old row ('O'), if sent
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Delete:
    relation: int
    old: tuple[Value, ...]  # the replica identity columns (others None), or the whole row


@dataclass(frozen=True, slots=True)
class Truncate:
    relations: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class Ignored:
    tag: str


Message = Begin | Commit | Relation | Insert | Update | Delete | Truncate | Ignored

_I8 = struct.Struct("!B")
_I16 = struct.Struct("!H")
_I32 = struct.Struct("!I")
_I64 = struct.Struct("!Q")
_SI64 = struct.Struct("!q")


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, st: struct.Struct) -> int:
        end = self.pos + st.size
        if end > len(self.data):
            raise SourceError("malformed pgoutput message: truncated")
        (value,) = st.unpack_from(self.data, self.pos)
        self.pos = end
        return int(value)

    def time(self) -> float:
        return PG_EPOCH_UNIX + self.take(_SI64) / 1_000_000

    def string(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise SourceError("malformed pgoutput message: unterminated string")
        text = self.data[self.pos:end].decode("utf-8", "replace")
        self.pos = end + 1
        return text

    def byte(self) -> str:
        return chr(self.take(_I8))

    def tuple(self) -> tuple[Value, ...]:
        values: list[Value] = []
        for _ in range(self.take(_I16)):
            kind = self.byte()
            if kind == "n":
                values.append(None)
            elif kind == "u":
                values.append(UNCHANGED)
            elif kind in "tb":
                size = self.take(_I32)
                end = self.pos + size
                if end > len(self.data):
                    raise SourceError("malformed pgoutput message: truncated column")
                raw = self.data[self.pos:end]
                self.pos = end
                values.append(raw.decode("utf-8", "replace") if kind == "t" else raw.hex())
            else:
                raise SourceError(f"malformed pgoutput message: column kind {kind!r}")
        return tuple(values)


def decode(data: bytes) -> Message:
    """One pgoutput message (the payload of an XLogData message, or of a row of
    ``pg_logical_slot_peek_binary_changes``)."""
    if not data:
        raise SourceError("malformed pgoutput message: empty")
    r = _Reader(bytes(data))
    tag = r.byte()
    if tag == "B":
        return Begin(r.take(_I64), r.time(), r.take(_I32))
    if tag == "C":
        r.take(_I8)  # flags, unused
        return Commit(r.take(_I64), r.take(_I64), r.time())
    if tag == "R":
        oid, schema, name, identity = r.take(_I32), r.string(), r.string(), r.byte()
        columns = []
        for _ in range(r.take(_I16)):
            flags, column, type_oid = r.take(_I8), r.string(), r.take(_I32)
            r.take(_I32)  # type modifier
            columns.append(Column(column, type_oid, bool(flags & 1)))
        return Relation(oid, schema or "pg_catalog", name, identity, tuple(columns))
    if tag == "I":
        oid = r.take(_I32)
        if r.byte() != "N":
            raise SourceError("malformed pgoutput Insert")
        return Insert(oid, r.tuple())
    if tag == "U":
        oid = r.take(_I32)
        kind = r.byte()
        old = None
        if kind in "KO":
            old = r.tuple()
            kind = r.byte()
        if kind != "N":
            raise SourceError("malformed pgoutput Update")
        return Update(oid, old, r.tuple())
    if tag == "D":
        oid = r.take(_I32)
        if r.byte() not in "KO":
            raise SourceError("malformed pgoutput Delete")
        return Delete(oid, r.tuple())
    if tag == "T":
        count, options = r.take(_I32), r.take(_I8)
        relations = tuple(r.take(_I32) for _ in range(count))
        return Truncate(relations, bool(options & 1), bool(options & 2))
    # Origin, Type, logical decoding messages, and whatever a newer server adds.
    return Ignored(tag)


def lsn_text(lsn: int) -> str:
    """``X/Y``, as PostgreSQL prints a log sequence number."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    try:
        return (int(high, 16) << 32) | int(low, 16)
    except ValueError:
        raise SourceError(f"not a log sequence number: {text!r}") from None
