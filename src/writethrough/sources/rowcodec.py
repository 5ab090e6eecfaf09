"""One encoding for a table row, whoever writes the cache entry.

A row reaches the cache from three places: a miss reads it from the table (the table
source), the application's own commit hands it over (``store.apply_write`` through the
psycopg / SQLAlchemy / Django integrations), and change capture reads it after someone
else's commit (the listener, ``row_to_json``). All three must decode to the same dict, or
a reader would see the same version of a row in two shapes.

The canonical form is PostgreSQL's own ``to_json`` of each column, in a session whose
``TimeZone`` is UTC (the table source and the listener pin it): this module turns the
Python values a driver or an ORM hands over into exactly what ``orjson.loads`` gives for
that JSON.

======================  ==========================================  ==================
SQL type                Python value (psycopg, SQLAlchemy, Django)   cached as
======================  ==========================================  ==================
numeric                 ``Decimal('400.50')`` / ``Decimal('400')``   ``400.5`` / ``400``
timestamptz             aware ``datetime``                           ``"2026-12-02T10:00:00.5+00:00"`` (UTC)
timestamp               naive ``datetime``                           ``"2026-12-02T10:00:00.5"``
date, time              ``date``, ``time``                           ISO 8601 text
bytea / BLOB            ``bytes``, ``memoryview``                    ``"\\\\x48656c6c6f"`` (hex)
uuid                    ``UUID``                                     its text
json, jsonb             ``dict``, ``list``, scalars                  as they are
real, double            ``float`` (NaN, +-Infinity)                  number (``"NaN"``, ``"Infinity"``)
arrays                  ``list``                                     JSON array, same rules
======================  ==========================================  ==================

A numeric is a JSON number, so a float after decoding: exact to about 15 digits (as the
listener's ``row_to_json`` already was); cache a money column as integer cents, or as
text, where that matters. Anything else raises InvalidValueError.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson

from ..errors import InvalidValueError

__all__ = ["encode_row", "encode_value", "json_value"]

_UTC = dt.UTC
_FLOATS = {math.inf: "Infinity", -math.inf: "-Infinity"}


def json_value(value: Any) -> Any:
    """``value`` as PostgreSQL's ``to_json`` (UTC session) would give it back after decoding."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)  # int subclasses (IntEnum) become plain ints, as in SQL
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return _FLOATS.get(value, value)
    if isinstance(value, Decimal):
        return _decimal(value)
    if isinstance(value, dt.datetime):
        return _datetime(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.time):
        return _clock(value.hour, value.minute, value.second, value.microsecond) + _offset(
            value.utcoffset())
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return json_value(value.value)
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    raise InvalidValueError(
        f"cannot cache a {type(value).__name__} column value: not one of the types "
        "writethrough.sources.rowcodec knows (cache another column, or convert it)")


def encode_row(row: Mapping[str, Any]) -> bytes:
    """The cached payload of a row given as ``{column: value}`` (column order kept)."""
    return orjson.dumps({str(k): json_value(v) for k, v in row.items()})


def encode_value(value: Any) -> bytes:
    """The cached payload of a single column's value (``Table(value_column=...)``)."""
    return orjson.dumps(json_value(value))


def _decimal(value: Decimal) -> Any:
    if not value.is_finite():
        return "NaN" if value.is_nan() else ("Infinity" if value > 0 else "-Infinity")
    # PostgreSQL prints a numeric with its scale ("400.50"), which orjson reads as a float,
    # and one without a fraction ("400") as an int.
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent >= 0:
        return int(value)
    return float(value)


def _datetime(value: dt.datetime) -> str:
    date = value.date().isoformat()
    if value.tzinfo is None or value.utcoffset() is None:
        return f"{date}T{_clock(value.hour, value.minute, value.second, value.microsecond)}"
    utc = value.astimezone(_UTC)
    return (f"{utc.date().isoformat()}T"
            f"{_clock(utc.hour, utc.minute, utc.second, utc.microsecond)}+00:00")


def _clock(hour: int, minute: int, second: int, micro: int) -> str:
    text = f"{hour:02d}:{minute:02d}:{second:02d}"
    if micro:
        text += f".{micro:06d}".rstrip("0")  # PostgreSQL drops trailing zeros
    return text


def _offset(offset: dt.timedelta | None) -> str:
    if offset is None:
        return ""
    seconds = int(offset.total_seconds())
    sign = "+" if seconds >= 0 else "-"
    hours, rest = divmod(abs(seconds), 3600)
    return f"{sign}{hours:02d}:{rest // 60:02d}" + (f":{rest % 60:02d}" if rest % 60 else "")
