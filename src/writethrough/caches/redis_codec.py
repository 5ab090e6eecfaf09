"""What the sync and asyncio Redis backends share: the entry codec, the Lua
script, the error mapping and the client options. No I/O here."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.resources import files
from typing import Any

import redis.exceptions as rex

from ..errors import (
    CacheDataError,
    CacheError,
    CacheServerError,
    CacheTimeout,
    CacheUnavailable,
    ConfigError,
    WritethroughError,
)
from ..protocol import Entry, Kind, WriteOutcome
from ..urls import ParsedURL

SCRIPT = files(__package__).joinpath("protocol.lua").read_text(encoding="utf-8")
# Run by every new connection before its first command (one round trip), and again every
# REIGN_RECHECK seconds: the marker takes the tag of the server's current reign -- its
# run_id (new on every restart) and its replication id (new on every promotion, also of a
# server that was primary before and comes back) -- so entries of any earlier reign stop
# counting. A replica (a demoted primary still reached by an old connection) is refused.
_TAG = (
    "local info = redis.call('INFO', 'server', 'replication')\n"
    "if string.match(info, 'role:(%a+)') ~= 'master' then\n"
    "  return redis.error_reply('READONLY writethrough: this server is a replica now')\n"
    "end\n"
    "local tag = string.sub(redis.sha1hex(string.match(info, 'run_id:(%x+)') .. ':' ..\n"
    "  string.match(info, 'master_replid:(%x+)')), 1, 16)\n"
)
FIX_SCRIPT = _TAG + """
if redis.pcall('GET', KEYS[1]) ~= tag then redis.call('SET', KEYS[1], tag) return 1 end
return 0
"""
# A cluster node: its reign's tag and the slot ranges it serves.
NODE_SCRIPT = _TAG + """
local me = redis.call('CLUSTER', 'MYID')
local out = {tag}
for _, r in ipairs(redis.call('CLUSTER', 'SLOTS')) do
  if r[3][3] == me then out[#out + 1] = r[1]; out[#out + 1] = r[2] end
end
return out
"""
# Move every marker named in ARGV[2..] to the tag ARGV[1], in one atomic call.
FIX_MANY_SCRIPT = """#!lua flags=allow-cross-slot-keys
for i = 2, #ARGV do
  if redis.pcall('GET', ARGV[i]) ~= ARGV[1] then redis.call('SET', ARGV[i], ARGV[1]) end
end
return #ARGV - 1
"""
MARKER_PREFIX = "wt:~"  # every lifetime marker starts so ('~' is never in a namespace)
MARKER = MARKER_PREFIX + "epoch"  # the lifetime marker of a standalone server
TAG_BYTES = 16
_KINDS = {b"V"[0]: Kind.VALUE, b"T"[0]: Kind.TOMBSTONE, b"L"[0]: Kind.LEASE}
WRITE_OUTCOMES = {o.value.encode(): o for o in WriteOutcome}
_HEAD = 2 + TAG_BYTES


def decode(raw: bytes, marker: bytes | None) -> Entry | None:
    """The entry in ``raw``, or None if it was written in another lifetime of the cache.

    ``<kind><fresh><tag><version>:<payload or token>``. Raises CacheDataError for
    anything else (the store treats that as a miss; the next write or fill replaces it).
    """
    if marker is None or raw[2:_HEAD] != marker:
        if len(raw) > _HEAD and raw[:1] in b"VTL" and raw[1:2] in b"01":
            return None  # an earlier lifetime's entry: absent
        raise CacheDataError(f"not a writethrough entry: {raw[:40]!r}")
    colon = raw.find(b":", _HEAD)
    digits = raw[_HEAD:colon]
    kind = _KINDS.get(raw[0])
    if (
        colon < 0
        or kind is None
        or raw[1] not in (48, 49)
        or not digits.isdigit()
        or (digits[:1] == b"0" and len(digits) > 1)
    ):
        raise CacheDataError(f"not a writethrough entry: {raw[:40]!r}")
    return Entry(kind, int(digits), raw[1] == 49, raw[colon + 1 :])


def ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


@contextmanager
def mapped_errors() -> Iterator[None]:
    """Map redis-py errors into the project's families, where the I/O happens.

    Every exception from the client becomes a CacheError: an unmapped one would escape
    the failure ladder after the database commit. (The hot paths call :func:`mapped`
    in their own ``except`` clause: a context manager per call costs more than the
    rest of a hit's own work.)
    """
    try:
        yield
    except WritethroughError:  # already ours (a CacheDataError from a decode in the block)
        raise
    except Exception as exc:
        raise mapped(exc) from exc


def mapped(exc: Exception) -> WritethroughError:
    """The project's error for a redis-py (or socket) error ``exc`` (see :func:`mapped_errors`)."""
    if isinstance(exc, WritethroughError):
        return exc
    if isinstance(exc, (rex.TimeoutError, TimeoutError)):
        return CacheTimeout(f"Redis timed out: {exc}")
    if isinstance(exc, (rex.ConnectionError, rex.ClusterDownError, rex.MaxConnectionsError)):
        return CacheUnavailable(f"Redis connection failed: {exc}")
    if isinstance(exc, rex.ResponseError):
        return CacheServerError(f"Redis answered with an error: {exc}")
    if isinstance(exc, rex.RedisError):
        return CacheError(f"Redis error: {exc}")
    if isinstance(exc, rex.RedisClusterException):  # not a RedisError: no reachable node, slot not covered
        return CacheUnavailable(f"Redis Cluster unavailable: {exc}")
    if isinstance(exc, OSError):
        return CacheUnavailable(f"Redis socket error: {exc}")
    if isinstance(exc, (AttributeError, TypeError)):
        # Seen inside redis-py's asyncio cluster client when it loses a connection
        # under load: a client fault, not ours; the store treats it as the cache failing.
        return CacheUnavailable(f"Redis client failed: {exc!r}")
    # any other client fault (ValueError, IndexError, RuntimeError)
    return CacheError(f"Redis client failed: {exc!r}")


def payload_if_current(raw: bytes, marker: bytes | None, floor: int, ceiling: int) -> bytes | None:
    """The payload of ``raw`` if it is a value of this lifetime with ``floor <= version <
    ceiling`` (the store's hit), else None (then :func:`decode` says what it is)."""
    if raw[:1] == b"V" and marker is not None and raw[2:_HEAD] == marker and raw[1] in (48, 49):
        colon = raw.find(b":", _HEAD)
        digits = raw[_HEAD:colon]
        if (colon > _HEAD and digits.isdigit() and (colon == _HEAD + 1 or digits[0] != 48)
                and floor <= int(digits) < ceiling):
            return raw[colon + 1 :]
    return None


TLS_CERT_REQS = ("none", "optional", "required")
REDIS_SECONDS_MAX = 3600.0  # a socket or pool wait longer than an hour is a mistake
REDIS_COUNT_MAX = 10_000  # redis-py's blocking pool pre-allocates a slot per connection


def _seconds(allow_zero: bool) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        number = float(value) if isinstance(value, str) else value
        if not isinstance(number, int | float) or isinstance(number, bool) or not (
                math.isfinite(number) and (number > 0 or (allow_zero and number == 0))
                and number <= REDIS_SECONDS_MAX):
            low = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"must be a finite number of seconds {low} and <= {REDIS_SECONDS_MAX:g}")
        return float(number)

    return convert


def _count(value: Any) -> int:
    number = int(value) if isinstance(value, str) and value.isascii() and value.isdigit() else value
    if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= REDIS_COUNT_MAX:
        raise ValueError(f"must be an integer in [1, {REDIS_COUNT_MAX}]")
    return number


def _cert_reqs(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in TLS_CERT_REQS:
        raise ValueError(f"must be one of {', '.join(TLS_CERT_REQS)}")
    return value.lower()


def _file(value: Any) -> str:
    if not isinstance(value, str) or not os.path.isfile(value):
        raise ValueError("must name a readable file")
    return value


def _client_name(value: Any) -> str:
    # Redis refuses CLIENT SETNAME with spaces, newlines or other special characters, on
    # every new connection: that would fail every cache call after the database commit.
    if not isinstance(value, str) or not 0 < len(value) <= 128 or not all(
            "!" <= ch <= "~" for ch in value):
        raise ValueError("must be 1-128 printable ASCII characters without spaces")
    return value


OPTIONS: dict[str, Callable[[Any], Any]] = {
    "socket_timeout": _seconds(False),
    "socket_connect_timeout": _seconds(False),
    "max_connections": _count,
    "pool_timeout": _seconds(True),  # 0: fail at once when every connection is busy
    "health_check_interval": _seconds(True),
    "ssl_cert_reqs": _cert_reqs,
    "ssl_ca_certs": _file,
    "ssl_certfile": _file,
    "ssl_keyfile": _file,
    "client_name": _client_name,
    "max_concurrency": _count,  # cluster only: commands in flight at once
}
TLS_ONLY = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
DEFAULTS: dict[str, Any] = {
    "socket_timeout": 0.05,
    # A new connection also runs the reign check (one round trip): 50 ms failed whole
    # cold pools under 64 tasks on a loaded host. A down server refuses at once; only
    # an unreachable one costs this, once, before the breaker opens.
    "socket_connect_timeout": 1.0,
    "max_connections": 64,
    "pool_timeout": 1.0,
}


def client_options(url: ParsedURL, options: dict[str, Any]) -> dict[str, Any]:
    """redis-py's keyword arguments from the URL's options and ``cache_options``, all checked.

    Unknown options, values out of range and TLS options on a non-TLS URL are ConfigErrors
    now, not failures of every cache call after the database commit. ``max_concurrency``
    is kept in the result only when given (the caller pops it: it is ours, not redis-py's).
    """
    unknown = (set(url.query) | set(options)) - set(OPTIONS)
    if unknown:
        raise ConfigError(
            f"unknown Redis option(s) {sorted(unknown)} in {url.redacted()}; known: {sorted(OPTIONS)}"
        )
    kwargs = dict(DEFAULTS)
    for name, convert in OPTIONS.items():
        if name in url.query:
            kwargs[name] = url.option(name, convert, None)
    for name, value in options.items():
        try:
            kwargs[name] = OPTIONS[name](value)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"Redis option {name}={value!r} is not valid: {exc}") from None
    tls = url.scheme.startswith("rediss")
    misplaced = [name for name in TLS_ONLY if name in kwargs] if not tls else []
    if misplaced:
        raise ConfigError(f"TLS option(s) {misplaced} need a rediss:// URL: {url.redacted()}")
    kwargs["username"] = url.username
    kwargs["password"] = url.password
    if tls:
        kwargs["ssl"] = True
    return kwargs




_SLOT_TAGS: list[bytes] = []


def slot_marker(slot: int) -> str:
    """The lifetime marker of one cluster slot: ``wt:~epoch:{t}`` with ``t`` hashing to it."""
    if not _SLOT_TAGS:
        _SLOT_TAGS.extend(_slot_tags())
    return "wt:~epoch:{" + _SLOT_TAGS[slot].decode() + "}"


def _slot_tags() -> list[bytes]:
    """For each of the 16,384 slots, the shortest [0-9a-z] string that hashes to it (~20 ms)."""
    from binascii import crc_hqx
    from itertools import product

    table: list[bytes | None] = [None] * 16384
    left = 16384
    for size in range(1, 5):
        for letters in product(b"0123456789abcdefghijklmnopqrstuvwxyz", repeat=size):
            tag = bytes(letters)
            slot = crc_hqx(tag, 0) % 16384
            if table[slot] is None:
                table[slot] = tag
                left -= 1
                if not left:
                    return [t for t in table if t is not None]
    raise AssertionError("every slot has a tag of at most 4 characters")  # pragma: no cover


def encode(entry: Entry, tag: bytes) -> bytes:
    """``<kind><fresh><tag><version>:<payload or token>`` (the Lua script writes the same)."""
    return b"%s%d%s%d:%s" % (entry.kind.value.encode(), entry.fresh, tag, entry.version, entry.payload)
