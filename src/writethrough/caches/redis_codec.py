"""What the sync and asyncio Redis backends share: the entry codec, the Lua
script, the error mapping and the client options. No I/O here."""

from __future__ import annotations

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
)
from ..protocol import Entry, Kind, WriteOutcome
from ..urls import ParsedURL

SCRIPT = files(__package__).joinpath("protocol.lua").read_text(encoding="utf-8")
# Run by every new connection before its first command (one round trip): the marker
# takes the tag of the server's current reign -- its run_id (new on every restart) and
# its replication id (new on every promotion, also of a server that was primary before
# and comes back) -- so entries of any earlier reign stop counting.
_TAG = (
    "local info = redis.call('INFO', 'server', 'replication')\n"
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
MARKER = "wt:~epoch"  # the lifetime marker of a standalone server ('~' is never in a namespace)
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
    """Map redis-py errors into the project's families, where the I/O happens."""
    try:
        yield
    except rex.TimeoutError as exc:
        raise CacheTimeout(f"Redis timed out: {exc}") from exc
    except (rex.ConnectionError, rex.ClusterDownError, rex.MaxConnectionsError) as exc:
        raise CacheUnavailable(f"Redis connection failed: {exc}") from exc
    except rex.ResponseError as exc:
        raise CacheServerError(f"Redis answered with an error: {exc}") from exc
    except rex.RedisError as exc:
        raise CacheError(f"Redis error: {exc}") from exc
    except OSError as exc:
        raise CacheUnavailable(f"Redis socket error: {exc}") from exc
    except (AttributeError, TypeError) as exc:
        # Seen inside redis-py's asyncio cluster client when it loses a connection
        # under load: a client fault, not ours; the store treats it as the cache failing.
        raise CacheUnavailable(f"Redis client failed: {exc!r}") from exc


OPTIONS: dict[str, Callable[[str], Any]] = {
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "max_connections": int,
    "pool_timeout": float,
    "health_check_interval": float,
    "ssl_cert_reqs": str,
    "ssl_ca_certs": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "client_name": str,
    "max_concurrency": int,  # asyncio cluster only: commands in flight at once
}
DEFAULTS: dict[str, Any] = {
    "socket_timeout": 0.05,
    "socket_connect_timeout": 0.05,
    "max_connections": 64,
    "pool_timeout": 1.0,
}


def client_options(url: ParsedURL, options: dict[str, Any]) -> dict[str, Any]:
    unknown = set(url.query) - set(OPTIONS)
    if unknown:
        raise ConfigError(
            f"unknown Redis option(s) {sorted(unknown)} in {url.redacted()}; known: {sorted(OPTIONS)}"
        )
    kwargs = dict(DEFAULTS)
    for name, convert in OPTIONS.items():
        if name in url.query and name != "max_concurrency":  # ours, not the client's
            kwargs[name] = url.option(name, convert, None)
    kwargs.update(options)
    for name in ("socket_timeout", "socket_connect_timeout"):
        if not isinstance(kwargs[name], int | float) or kwargs[name] <= 0:
            raise ConfigError(f"{name} must be > 0 seconds, got {kwargs[name]!r}")
    kwargs["username"] = url.username
    kwargs["password"] = url.password
    if url.scheme.startswith("rediss"):
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
