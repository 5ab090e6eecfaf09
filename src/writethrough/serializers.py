"""Value serializers. JSON (orjson) by default; anything with ``dumps``/``loads`` plugs in."""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any, Protocol

from .errors import ConfigError, InvalidValueError


class Serializer(Protocol):
    """Turns values into bytes and back. ``dumps`` raises InvalidValueError on bad input."""

    name: str

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class JSONSerializer:
    """JSON-compatible values via orjson: dict, list, str, int (64-bit), float, bool, None.

        >>> JSONSerializer().dumps({"name": "Alice"})
        b'{"name":"Alice"}'

    NaN and infinities are refused (InvalidValueError), also nested: JSON has no such
    numbers, and orjson would write ``null`` -- the value read back would be None.
    """

    name = "json"

    def __init__(self) -> None:
        # Imported here, not at module level: orjson imports json, uuid and datetime
        # (~10 ms), and ``import writethrough`` stays cheap until a store is made.
        import orjson

        self._dumps = orjson.dumps
        self._loads = orjson.loads

    def dumps(self, value: Any) -> bytes:
        try:
            data = self._dumps(value)
        except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
            raise InvalidValueError(f"value is not JSON-serializable: {exc}") from None
        # orjson writes NaN and +-inf as null: only a payload with a null can hold one,
        # so the common case pays one bytes search, not a walk.
        if b"null" in data and not _all_finite(value):
            raise InvalidValueError("value holds NaN or an infinity, which JSON cannot represent")
        return data

    def loads(self, data: bytes) -> Any:
        return self._loads(data)


class BytesSerializer:
    """Values are ``bytes`` and stored as they are."""

    name = "bytes"

    def dumps(self, value: Any) -> bytes:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise InvalidValueError(f"the bytes serializer takes bytes, not {type(value).__name__}")
        return bytes(value)

    def loads(self, data: bytes) -> Any:
        return data


def _all_finite(value: Any, depth: int = 0) -> bool:
    """False if ``value`` holds a float NaN or infinity where orjson would serialize it."""
    if isinstance(value, float):
        return math.isfinite(value)
    if depth > 300:  # orjson refuses nesting deeper than 254 before we get here
        return True
    if isinstance(value, dict):
        return all(_all_finite(v, depth + 1) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_all_finite(v, depth + 1) for v in value)
    if isinstance(value, enum.Enum):
        return _all_finite(value.value, depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return all(_all_finite(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value))
    return True


class CheckedSerializer:
    """Someone else's serializer, held to the contract: ``dumps`` returns bytes or raises
    InvalidValueError -- before the database write, never a stray exception after it.

    ``writethrough.open(serializer=...)`` wraps every serializer that is not one of ours.
    """

    def __init__(self, inner: Serializer) -> None:
        self.inner = inner
        self.name = str(getattr(inner, "name", type(inner).__name__))
        self.loads = inner.loads

    def dumps(self, value: Any) -> bytes:
        try:
            data = self.inner.dumps(value)
        except InvalidValueError:
            raise
        except Exception as exc:
            raise InvalidValueError(f"serializer {self.name!r} refused the value: {exc!r}") from exc
        if isinstance(data, bytearray | memoryview):
            data = bytes(data)
        if not isinstance(data, bytes):
            raise InvalidValueError(
                f"serializer {self.name!r} returned {type(data).__name__}, not bytes")
        return data


def checked_serializer(serializer: object) -> Serializer:
    """The serializer ``open()`` uses: JSON for None, ours as they are, others checked."""
    if serializer is None:
        return JSONSerializer()
    if type(serializer) in (JSONSerializer, BytesSerializer, CheckedSerializer):
        return serializer  # type: ignore[return-value]
    if not all(callable(getattr(serializer, m, None)) for m in ("dumps", "loads")):
        raise ConfigError(
            f"serializer must have dumps(value) -> bytes and loads(bytes), got {type(serializer).__name__}")
    return CheckedSerializer(serializer)  # type: ignore[arg-type]
