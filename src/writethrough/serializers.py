"""Value serializers. JSON (orjson) by default; anything with ``dumps``/``loads`` plugs in."""

from __future__ import annotations

from typing import Any, Protocol

from .errors import InvalidValueError


class Serializer(Protocol):
    """Turns values into bytes and back. ``dumps`` raises InvalidValueError on bad input."""

    name: str

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class JSONSerializer:
    """JSON-compatible values via orjson: dict, list, str, int (64-bit), float, bool, None.

        >>> JSONSerializer().dumps({"name": "Alice"})
        b'{"name":"Alice"}'
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
            return self._dumps(value)
        except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
            raise InvalidValueError(f"value is not JSON-serializable: {exc}") from None

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
