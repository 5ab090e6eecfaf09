"""The pgoutput decoder, without a server: hand-built messages in PostgreSQL's format
("Logical Replication Message Formats"), and arbitrary bytes (never anything but a
message or a SourceError)."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from writethrough.capture import pgoutput as po
from writethrough.errors import SourceError


def _tuple(*values: str | object | None) -> bytes:
    out = struct.pack("!H", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value is po.UNCHANGED:
            out += b"u"
        else:
            raw = str(value).encode()
            out += b"t" + struct.pack("!I", len(raw)) + raw
    return out


def test_begin_and_commit() -> None:
    t_us = 789_000_000  # 789 s after 2000-01-01
    begin = po.decode(b"B" + struct.pack("!QqI", 0x1_0000_0010, t_us, 733))
    assert begin == po.Begin(0x1_0000_0010, po.PG_EPOCH_UNIX + 789.0, 733)
    commit = po.decode(b"C\x00" + struct.pack("!QQq", 0x20, 0x48, t_us))
    assert commit == po.Commit(0x20, 0x48, po.PG_EPOCH_UNIX + 789.0)


def test_relation_insert_update_delete_truncate() -> None:
    relation = (b"R" + struct.pack("!I", 16384) + b"public\x00accounts\x00d" + struct.pack("!H", 3)
                + b"\x01id\x00" + struct.pack("!Ii", 23, -1)
                + b"\x00name\x00" + struct.pack("!Ii", 25, -1)
                + b"\x00version\x00" + struct.pack("!Ii", 20, -1))
    decoded = po.decode(relation)
    assert isinstance(decoded, po.Relation)
    assert (decoded.oid, decoded.schema, decoded.name, decoded.replica_identity) == (
        16384, "public", "accounts", "d")
    assert [(c.name, c.type_oid, c.key) for c in decoded.columns] == [
        ("id", 23, True), ("name", 25, False), ("version", 20, False)]

    assert po.decode(b"I" + struct.pack("!I", 16384) + b"N" + _tuple("1", "Ann", "8")) == \
        po.Insert(16384, ("1", "Ann", "8"))
    update = po.decode(b"U" + struct.pack("!I", 16384) + b"K" + _tuple("1", None, None)
                       + b"N" + _tuple("2", po.UNCHANGED, "10"))
    assert update == po.Update(16384, ("1", None, None), ("2", po.UNCHANGED, "10"))
    assert po.decode(b"U" + struct.pack("!I", 1) + b"N" + _tuple("x")) == po.Update(1, None, ("x",))
    assert po.decode(b"D" + struct.pack("!I", 16384) + b"O" + _tuple("1", "Ann", "8")) == \
        po.Delete(16384, ("1", "Ann", "8"))
    assert po.decode(b"T" + struct.pack("!IB", 2, 3) + struct.pack("!II", 5, 6)) == \
        po.Truncate((5, 6), cascade=True, restart_identity=True)
    assert po.decode(b"Yanything") == po.Ignored("Y")


def test_text_is_utf8_and_empty_strings_survive() -> None:
    message = po.decode(b"I" + struct.pack("!I", 1) + b"N" + _tuple("", "é€"))
    assert message == po.Insert(1, ("", "é€"))


@pytest.mark.parametrize("raw", [
    b"", b"B\x00\x00", b"R\x00\x00\x00\x01public",  # unterminated string
    b"I\x00\x00\x00\x01X", b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x09ab",  # short column
    b"I\x00\x00\x00\x01N\x00\x01z", b"D\x00\x00\x00\x01N" + _tuple("1"),
])
def test_malformed_messages_are_source_errors(raw: bytes) -> None:
    with pytest.raises(SourceError, match="pgoutput"):
        po.decode(raw)


@given(st.binary(max_size=64))
def test_any_bytes_decode_or_raise_source_error(raw: bytes) -> None:
    with contextlib.suppress(SourceError):
        po.decode(raw)


def test_lsn_text_round_trip() -> None:
    assert po.lsn_text(0x16_B374_D848) == "16/B374D848"
    assert po.parse_lsn("16/B374D848") == 0x16_B374_D848
    with pytest.raises(SourceError):
        po.parse_lsn("nope")
