"""The Redis and Redis Cluster cache backend (redis-py with hiredis).

One Redis key per entry, so every operation touches one key and its slot's
lifetime marker: correct on a cluster without hash tags. A read is one MGET of the
marker and the entry; a conditional write, a lease, a fill and a renewal are one
EVALSHA each of ``protocol.lua`` (redis-py's Script reloads it after NOSCRIPT, i.e.
after a restart or failover). The client is made with retries switched off
(``caches/redis.py``): the store's failure ladder owns every retry.

Lifetimes: a server restarted from a snapshot, or a replica promoted after missing
the newest writes, holds entries older than writes already acknowledged. Every
connection, before its first command, sets the marker(s) of the server to the tag of
its current reign -- a hash of its ``run_id`` (new on every restart) and its replication
id (new on every promotion) -- (:class:`LifetimeCheck`); entries carry the marker they
were written under, so those of an earlier reign are never served again. The check runs
on the connection itself: a restart or failover closes every connection, so no command
can reach a new reign before the marker has moved.

The asyncio version (``_async/redis_cache.py``) is written by hand; the sync one
(``_sync/redis_cache.py``) is generated from it by ``scripts/unasync.py``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

from redis.crc import key_slot
from redis.exceptions import NoScriptError

from ..caches.base import BatchFill, BatchWrite
from ..caches.redis_codec import (
    FIX_MANY_SCRIPT,
    FIX_SCRIPT,
    MARKER,
    NODE_SCRIPT,
    SCRIPT,
    TAG_BYTES,
    WRITE_OUTCOMES,
    decode,
    mapped,
    mapped_errors,
    ms,
    payload_if_current,
    slot_marker,
)
from ..checks import check_count
from ..errors import CacheDataError, CacheError, WritethroughError
from ..protocol import Entry, Kind, LeaseOutcome, WriteOutcome
from .compat import Semaphore

_HIT_OR_BUSY = (LeaseOutcome.HIT, LeaseOutcome.BUSY)
_HEAD = 2 + TAG_BYTES  # <kind><fresh><tag>, then the version (redis_codec)
CHECK_TIMEOUT = 0.5  # at least this long for the lifetime check's replies on connect
REIGN_RECHECK = 0.5  # seconds between two checks of a connection's server reign
FIX_TIMEOUT = 5.0  # seconds for the reply while a restarted cluster node's markers move


async def check_lifetime(conn: Any, cluster: bool) -> None:
    """On a new connection, before its first command: move the lifetime marker(s) of
    the server it reached to the tag of its current reign (see the module's docstring).
    One round trip on a standalone server, two on a cluster node."""
    wait = max(conn.socket_timeout or 0.0, CHECK_TIMEOUT)
    if not cluster:
        await conn.send_command("EVAL", FIX_SCRIPT, 1, MARKER)
        await conn.read_response(timeout=wait)
        return
    # Every slot of a cluster node has its own marker. All of them move in one atomic
    # script, so "the first marker is current" means all of them are.
    await conn.send_command("EVAL", NODE_SCRIPT, 0)
    tag, *bounds = await conn.read_response(timeout=wait)
    slots = [s for lo, hi in zip(bounds[::2], bounds[1::2], strict=True) for s in range(lo, hi + 1)]
    if not slots:
        return
    await conn.send_command("GET", slot_marker(slots[0]))
    if await conn.read_response(timeout=wait) == tag:
        return
    await conn.send_command("EVAL", FIX_MANY_SCRIPT, 0, tag, *map(slot_marker, slots))
    await conn.read_response(timeout=FIX_TIMEOUT)


class LifetimeCheck:
    """Mixin for a redis-py connection class: :func:`check_lifetime` on connect, and again
    every ``REIGN_RECHECK`` seconds before a command: a failover need not close the
    connections to a demoted primary (Redis keeps them; so may a proxy), and a busy
    connection is never idle long enough for a health check. A demoted primary refuses the
    check's write (READONLY): the connection is dropped and the next one goes to the new
    primary."""

    wt_cluster = False
    wt_next_check = 0.0

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        await super().on_connect_check_health(check_health=check_health)  # type: ignore[misc]
        self.wt_next_check = time.monotonic() + REIGN_RECHECK
        await check_lifetime(self, self.wt_cluster)

    async def check_health(self) -> None:
        await super().check_health()  # type: ignore[misc]
        if time.monotonic() < self.wt_next_check:
            return
        self.wt_next_check = time.monotonic() + REIGN_RECHECK
        try:
            await check_lifetime(self, self.wt_cluster)
        except BaseException:
            await self.disconnect()  # type: ignore[attr-defined]
            raise


class AsyncRedisCache:
    """A cache backend on one Redis server (see ``caches/redis.py`` for the URLs).

        >>> cache = AsyncRedisCache(redis.asyncio.Redis(socket_timeout=0.05,
        ...     connection_class=lifetime_checked(redis.asyncio.Connection)))
    """

    name = "redis"

    def __init__(self, client: Any, *, max_concurrency: int | None = None) -> None:
        if max_concurrency is not None:  # Semaphore(0) would wait forever
            check_count("max_concurrency", max_concurrency, most=10_000)
        self.client = client
        self._script = client.register_script(SCRIPT)
        # The cluster clients fail (rather than wait) when a node's pool is full:
        # bound the calls in flight so bursts wait their turn instead.
        self._limit: Any = nullcontext() if max_concurrency is None else Semaphore(max_concurrency)
        self._bounded = max_concurrency is not None

    def marker(self, key: str) -> str:
        """The lifetime marker for ``key`` (one per server; one per slot on a cluster)."""
        return MARKER

    async def open(self) -> None:
        """Connections are made on first use."""

    async def get(self, key: str) -> Entry | None:
        marker, raw = await self._get_raw(key)
        return None if raw is None else decode(raw, marker)

    async def get_hit(self, key: str, floor: int, ceiling: int) -> bytes | Entry | None:
        """``get`` for the store's hit path: the payload (bytes, no Entry made) of a value
        of this lifetime with ``floor <= version < ceiling``; anything else as ``get``."""
        marker, raw = await self._get_raw(key)
        if raw is None:
            return None
        payload = payload_if_current(raw, marker, floor, ceiling)
        return decode(raw, marker) if payload is None else payload

    async def _get_raw(self, key: str) -> tuple[bytes | None, bytes | None]:
        """The lifetime marker and the raw entry: one MGET (errors mapped without a
        context manager: this is the hit path)."""
        try:
            if self._bounded:
                async with self._limit:
                    found = await self.client.mget(self.marker(key), key)
            else:
                found = await self.client.mget(self.marker(key), key)
        except WritethroughError:
            raise
        except Exception as exc:
            raise mapped(exc) from exc
        return found[0], found[1]

    async def write(
        self,
        key: str,
        kind: Kind,
        version: int,
        payload: bytes,
        *,
        ttl: float,
        tombstone_ttl: float,
        token: bytes | None = None,
        lease_ttl: float = 2.0,
        floor: int = 0,
    ) -> WriteOutcome:
        args = ["write", floor, kind.value, version, payload, ms(ttl), ms(tombstone_ttl),
                token or b"", ms(lease_ttl)]
        return WRITE_OUTCOMES[await self._run(key, args)]

    async def lease(
        self, key: str, token: bytes, *, lease_ttl: float, floor: int = 0
    ) -> tuple[LeaseOutcome, Entry | None]:
        result = await self._run(key, ["lease", floor, token, ms(lease_ttl)])
        outcome = LeaseOutcome(result[0].decode())
        if outcome not in _HIT_OR_BUSY:
            return outcome, None
        # The script checked the entry against the marker; read it without one.
        return outcome, decode(result[1], result[1][2:18])

    async def fill(self, key: str, token: bytes, entry: Entry, *, ttl: float, floor: int = 0) -> bool:
        args = ["fill", floor, token, entry.kind.value, int(entry.fresh), entry.version,
                entry.payload, ms(ttl)]
        return bool(await self._run(key, args))

    async def renew(self, key: str, token: bytes, *, lease_ttl: float, floor: int = 0) -> bool:
        return bool(await self._run(key, ["renew", floor, token, ms(lease_ttl)]))

    async def set(self, key: str, entry: Entry, *, ttl: float) -> None:
        await self._run(key, ["set", 0, entry.kind.value, entry.version, entry.payload, ms(ttl)])

    async def delete(self, key: str) -> None:
        async with self._limit:
            with mapped_errors():
                await self.client.delete(key)

    # -- batches: one MGET (per slot on a cluster), one pipeline of scripts --------------

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        """The entries under ``keys``: one MGET with the marker (a pipeline of one MGET per
        slot on a cluster). An entry that cannot be decoded is None (a miss: the lease or
        write that follows replaces it)."""
        if not keys:
            return []
        async with self._limit:
            with mapped_errors():
                markers, raws = await self._mget(keys)
        out: list[Entry | None] = []
        for marker, raw in zip(markers, raws, strict=True):
            if raw is None:
                out.append(None)
                continue
            try:
                out.append(decode(raw, marker))
            except CacheDataError:
                out.append(None)
        return out

    async def get_many_hits(self, keys: Sequence[str], floor: int, ceiling: int) -> list[Any]:
        """``get_many`` for the store's hit path: a value of this lifetime with
        ``floor <= version < ceiling`` comes back as ``(digits, payload)`` -- the version's
        decimal digits, compared as the Lua script compares them (no int, no Entry made) --
        anything else as ``get_many`` returns it."""
        if not keys:
            return []
        async with self._limit:
            with mapped_errors():
                markers, raws = await self._mget(keys)
        out: list[Any] = []
        append = out.append
        head, value_of = b"", None  # a value as written: b"V1" + the marker, then the version
        low, high = b"%d" % floor, b"%d" % ceiling
        nlow, nhigh = len(low), len(high)
        for marker, raw in zip(markers, raws, strict=True):
            if raw is None:
                append(None)
                continue
            if marker is not value_of:
                value_of, head = marker, b"V1" + marker if marker is not None else b"-"
            if raw.startswith(head):
                colon = raw.find(b":", _HEAD)
                digits = raw[_HEAD:colon]
                size = colon - _HEAD
                if (
                    size > 0
                    and digits.isdigit()
                    and (size == 1 or digits[0] != 48)
                    and (size > nlow or (size == nlow and digits >= low))
                    and (size < nhigh or (size == nhigh and digits < high))
                ):
                    append((digits, raw[colon + 1 :]))
                    continue
            try:
                append(decode(raw, marker))
            except CacheDataError:
                append(None)
        return out

    async def _mget(self, keys: Sequence[str]) -> tuple[list[bytes | None], list[bytes | None]]:
        """The lifetime marker of each key and the raw entry: one MGET."""
        marker, *raws = await self.client.mget(MARKER, *keys)
        return [marker] * len(raws), raws

    async def write_many(
        self, writes: Sequence[BatchWrite], *, tombstone_ttl: float, lease_ttl: float = 2.0, floor: int = 0
    ) -> list[WriteOutcome | CacheError]:
        calls = [
            (key, ["write", floor, kind.value, version, payload, ms(ttl), ms(tombstone_ttl), token or b"",
                   ms(lease_ttl)])
            for key, kind, version, payload, token, ttl in writes
        ]
        return [r if isinstance(r, CacheError) else WRITE_OUTCOMES[r] for r in await self._run_many(calls)]

    async def lease_many(
        self, leases: Sequence[tuple[str, bytes]], *, lease_ttl: float, floor: int = 0
    ) -> list[tuple[LeaseOutcome, Entry | None] | CacheError]:
        calls = [(key, ["lease", floor, token, ms(lease_ttl)]) for key, token in leases]
        out: list[tuple[LeaseOutcome, Entry | None] | CacheError] = []
        for result in await self._run_many(calls):
            if isinstance(result, CacheError):
                out.append(result)
                continue
            outcome = LeaseOutcome(result[0].decode())
            out.append((outcome, decode(result[1], result[1][2:18]) if outcome in _HIT_OR_BUSY else None))
        return out

    async def fill_many(self, fills: Sequence[BatchFill], *, floor: int = 0) -> list[bool | CacheError]:
        calls = [
            (key, ["fill", floor, token, entry.kind.value, int(entry.fresh), entry.version, entry.payload,
                   ms(ttl)])
            for key, token, entry, ttl in fills
        ]
        return [r if isinstance(r, CacheError) else bool(r) for r in await self._run_many(calls)]

    async def _run_many(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        """One pipeline of EVALSHA (no MULTI: each script is atomic on its own key); the
        scripts a server did not know (restarted, failed over) run again as EVAL. A
        per-key error is a CacheError in its place."""
        if not calls:
            return []
        sha = self._script.sha
        async with self._limit:
            with mapped_errors():
                pipe = self.client.pipeline(transaction=False)
                for key, args in calls:
                    # execute_command: redis-py refuses pipe.evalsha on a cluster, though
                    # the command routes by its keys (one slot: the key and its marker).
                    pipe.execute_command("EVALSHA", sha, 2, key, self.marker(key), *args)
                results = list(await pipe.execute(raise_on_error=False))
                again = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
                if again:
                    pipe = self.client.pipeline(transaction=False)
                    for i in again:
                        key, args = calls[i]
                        pipe.execute_command("EVAL", SCRIPT, 2, key, self.marker(key), *args)
                    for i, result in zip(again, await pipe.execute(raise_on_error=False), strict=True):
                        results[i] = result
        return [_as_error(r) if isinstance(r, BaseException) else r for r in results]

    async def close(self) -> None:
        await self.client.aclose()

    async def _run(self, key: str, args: list[Any]) -> Any:
        try:
            if self._bounded:
                async with self._limit:
                    return await self._script(keys=[key, self.marker(key)], args=args)
            return await self._script(keys=[key, self.marker(key)], args=args)
        except WritethroughError:
            raise
        except Exception as exc:
            raise mapped(exc) from exc


class AsyncRedisClusterCache(AsyncRedisCache):
    """The same backend on a Redis Cluster; redis-py follows MOVED/ASK redirects."""

    name = "redis+cluster"

    def marker(self, key: str) -> str:
        return slot_marker(key_slot(key.encode()))

    async def _mget(self, keys: Sequence[str]) -> tuple[list[bytes | None], list[bytes | None]]:
        """One MGET per slot (a key and its slot's marker share the slot), in one pipeline."""
        slots: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            slots.setdefault(key_slot(key.encode()), []).append(i)
        markers: list[bytes | None] = [None] * len(keys)
        raws: list[bytes | None] = [None] * len(keys)
        pipe = self.client.pipeline()
        for slot, where in slots.items():
            pipe.execute_command("MGET", slot_marker(slot), *[keys[i] for i in where])
        for where, (marker, *found) in zip(slots.values(), await pipe.execute(), strict=True):
            for i, raw in zip(where, found, strict=True):
                markers[i], raws[i] = marker, raw
        return markers, raws


def _as_error(exc: BaseException) -> CacheError:
    """A per-key error of a pipeline, in the project's families (``mapped_errors``)."""
    try:
        with mapped_errors():
            raise exc
    except CacheError as err:
        return err
    raise AssertionError("mapped_errors maps every exception")  # pragma: no cover
