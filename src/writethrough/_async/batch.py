"""Batches: ``get_many`` / ``put_many`` / ``delete_many`` of the store (issue 13).

Each key of a batch is decided exactly as its single-key call decides it -- the same
protocol decisions (``protocol``), epochs, read floors, tombstones, leases, failure
ladder, repairs, outbox rows -- but the round trips are shared:

* ``get_many``: one MGET (one per slot on a cluster, in one pipeline); the keys that
  missed take their leases in one pipeline, are read from the database in one
  statement (with those read through: pending repairs, floors, a cache down), and
  filled in one pipeline of conditional fills. Keys whose lease another process
  holds wait for its fill (polling them together) or are read through, as ``get``.
* ``put_many`` / ``delete_many``: one database transaction for every row (and its
  outbox row), then one pipeline of conditional writes; the keys whose write got no
  answer go round the failure ladder together (retries, then tombstones, then a
  repair record each), within one write budget. Outcomes are reported per key.

A cache or source without the batch methods (``caches/base.BatchCache``,
``read_many`` / ``write_many`` / ``delete_many`` on the source) is driven key by key.

The asyncio version (``_async/batch.py``) is written by hand; ``scripts/unasync.py``
generates the sync one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from typing import Any

from ..core import CacheOutcome, Versioned, WriteResult, check_key, public_outcome
from ..epochs import EPOCH_SPAN
from ..errors import CacheError, InvalidKeyError, InvalidValueError, SourceError
from ..protocol import Entry, Kind, LeaseOutcome, WriteOutcome
from ..repair import Repair
from ..serializers import JSONSerializer
from ..sources.base import Row
from .compat import shielded
from .store import _AMBIGUOUS, _MISSING, OUTBOX_BATCH, AsyncStore

_VALUE = Kind.VALUE
_LEASE = Kind.LEASE
_TOMBSTONE = Kind.TOMBSTONE
_REJECTED = (WriteOutcome.SUPERSEDED, WriteOutcome.KEPT)


MAX_BATCH = 10_000  # keys per batch call: one MGET / pipeline / statement stays bounded


def too_many(count: int | None = None) -> InvalidKeyError:
    got = "more" if count is None else f"{count:,}"
    return InvalidKeyError(f"a batch takes at most {MAX_BATCH:,} keys, got {got}: split it")


def checked_keys(store: AsyncStore, keys: Iterable[str]) -> list[str]:
    """``keys`` checked (InvalidKeyError before anything is read or written), duplicates
    dropped; at most ``MAX_BATCH`` of them (an endless iterable is not read to its end)."""
    if isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
        raise InvalidKeyError(f"expected an iterable of keys, not {type(keys).__name__}")
    most = store._max_key
    listed = list(islice(keys, MAX_BATCH + 1))
    if len(listed) > MAX_BATCH:
        raise too_many()
    for key in listed:  # the usual key, checked the way get's hit path checks it
        if not (key.__class__ is str and 0 < len(key) <= most and key.isascii()):
            listed = [check_key(key, most) for key in listed]
            break
    return list(dict.fromkeys(listed))


# -- reads -------------------------------------------------------------------------


async def get_many(store: AsyncStore, keys: Iterable[str]) -> dict[str, Any]:
    return await _get_many(store, keys, False)


async def get_many_versioned(store: AsyncStore, keys: Iterable[str]) -> dict[str, Versioned]:
    return await _get_many(store, keys, True)


async def _get_many(store: AsyncStore, keys: Iterable[str], versioned: bool) -> dict[str, Any]:
    wanted = checked_keys(store, keys)
    if not wanted:
        return {}
    stats = store.stats
    prefix = store._prefix
    hits: dict[str, Any] = {}  # served by the first lookup: values (or Versioned)
    out: dict[str, Versioned | None] = {}  # the others
    through: list[str] = []  # read from the database, nothing filled
    naive: list[str] = []
    missed: list[tuple[str, Entry | None]] = []
    pending = store._pending
    ask = [key for key in wanted if key not in pending] if pending else wanted
    for key in wanted if pending else ():
        if key in pending:  # read-your-writes while the cache lags
            stats.add("pending_repair_reads")
            through.append(key)
    floors, lo, hi = store._floors, store._epoch_floor, store._epoch_ceiling
    # The floors in force now bind this read to the end, even if another thread lifts them.
    snap = {key: store.floors.version(key) for key in ask if key in floors} if floors else {}
    loads: Callable[[bytes], Any] = store._loads
    if type(store.serializer) is JSONSerializer:
        loads = store.serializer._loads  # orjson.loads itself: one call less per key
    entries: list[Any] | None = None
    if ask and store.breaker.allow():
        entries = await _get_entries(store, [prefix + key for key in ask], lo, hi)
    if entries is None:
        entries = [_MISSING] * len(ask)
    count_hit = store._hits
    looked: Iterable[tuple[str, Any]] = zip(ask, entries, strict=True)
    if not floors and not snap and all(entry.__class__ is tuple for entry in entries):  # all current values
        try:
            if versioned:
                hits = {key: Versioned(loads(p), int(v)) for key, (v, p) in zip(ask, entries, strict=True)}
            else:
                hits = {key: loads(p) for key, (_, p) in zip(ask, entries, strict=True)}
        except Exception:  # a payload that does not decode: the loop below drops it
            hits = {}
        else:
            for _ in entries:
                next(count_hit)
            if len(ask) == len(wanted):
                return hits
            looked = ()
    for key, entry in looked:
        if entry.__class__ is tuple:  # a current value (get_many_hits: its version's digits)
            version, payload = int(entry[0]), entry[1]
        elif entry is not _MISSING and entry is not None and entry.kind is _VALUE and lo <= entry.version < hi:
            version, payload = entry.version, entry.payload
        else:
            stats.add("misses")
            if entry is _MISSING:  # the cache is down: the DB answers, nothing is filled
                through.append(key)
            elif not store._versioned:
                naive.append(key)
            else:
                missed.append((key, entry))
            continue
        next(count_hit)
        if (snap and version < snap.get(key, 0)) or (floors and key in floors and store.floors.below(key, version)):
            stats.add("below_floor")
            through.append(key)
            continue
        try:
            hits[key] = Versioned(loads(payload), version) if versioned else loads(payload)
        except Exception:  # bytes this store could not have written: drop them, read the DB
            stats.add("cache_data_errors")
            await store._cache_call(store.cache.delete, prefix + key)
            through.append(key)
    if not (missed or through or naive):
        return hits if len(hits) == len(wanted) else {key: hits[key] for key in wanted if key in hits}
    granted: dict[str, bytes] = {}
    busy: list[str] = []
    late_hits: list[tuple[str, Entry]] = []
    local: list[tuple[str, bytes]] = []
    if missed:
        granted, busy, late_hits, local = await _lease_missed(store, missed, out, through, snap)
    # The granted leases are loaded first (registered as flights at once): nothing this
    # batch waits for may hold them unregistered, nor past their lease_ttl.
    rows = await _load(store, granted, through + naive) if granted or through or naive else {}
    for key, hit in late_hits:
        stats.add("late_hits")
        out[key] = await store._hit(key, hit, snap.get(key, 0))
    for key, token in local:  # a lease this process may hold: await its load
        joined = await store._join_local_flight(key, token, snap.get(key, 0))
        if joined is not _MISSING:
            out[key] = joined
        else:
            busy.append(key)
    for _ in through:
        stats.add("read_through")
    for key in naive:
        row = rows[key]
        if row.payload is not None:
            filled = Entry.value(row.version, row.payload)
            await store._cache_call(store.cache.set, prefix + key, filled, ttl=store._ttl_for(filled))
    if busy:
        late = await _wait_for_fills(store, busy, out, snap)
        if late:
            rows.update(await _read_rows(store, late))
            for _ in late:
                stats.add("read_through")
    for key, row in rows.items():
        if key not in out:
            out[key] = store._versioned_row(row)
    result: dict[str, Any] = {}
    for key in wanted:
        if key in hits:
            result[key] = hits[key]
        elif (found := out.get(key)) is not None:
            result[key] = found if versioned else found.value
    return result


async def _lease_missed(
    store: AsyncStore,
    missed: list[tuple[str, Entry | None]],
    out: dict[str, Versioned | None],
    through: list[str],
    snap: dict[str, int],
) -> tuple[dict[str, bytes], list[str], list[tuple[str, Entry]], list[tuple[str, bytes]]]:
    """Take the fill leases of the keys that missed, in one round trip: those granted
    (key -> token), those whose lease another process holds, the late hits, and the
    leases held by some process that may be this one (key -> its token)."""
    prefix = store._prefix
    leasing: list[str] = []
    for key, entry in missed:
        if entry is not None and entry.kind is _LEASE:  # this process loading it? await it
            joined = await store._join_local_flight(key, entry.payload, snap.get(key, 0))
            if joined is not _MISSING:
                out[key] = joined
                continue
        leasing.append(key)
    tokens = {key: os.urandom(8) for key in leasing}
    leased = await _lease_entries(store, [(prefix + key, tokens[key]) for key in leasing])
    granted: dict[str, bytes] = {}
    busy: list[str] = []
    late: list[tuple[str, Entry]] = []
    local: list[tuple[str, bytes]] = []
    for key, answer in zip(leasing, leased, strict=True):
        if answer is _MISSING:
            through.append(key)
            continue
        outcome, found = answer
        if outcome is LeaseOutcome.HIT and store._current(found):
            late.append((key, found))
        elif outcome is LeaseOutcome.BUSY:
            if found is not None:
                local.append((key, found.payload))
            else:
                busy.append(key)
        elif outcome is LeaseOutcome.GRANTED:
            granted[key] = tokens[key]
        else:  # a value of a newer epoch: read the DB
            through.append(key)
    return granted, busy, late, local


async def _load(store: AsyncStore, granted: dict[str, bytes], others: list[str]) -> dict[str, Row]:
    """Holding the leases ``granted``: read their rows and ``others`` in one round trip
    (renewing the leases while the DB is slow), then fill the leased keys in one."""
    prefix, stats = store._prefix, store.stats
    now = store.clock()
    for key, token in granted.items():
        store.flights.lead(token)
        store._held[token] = (prefix + key, now, now)
    try:
        try:
            rows = await _read_rows(store, [*granted, *others])
        finally:
            for token in granted.values():
                store._held.pop(token, None)
        fills = []
        for key, token in granted.items():
            row = rows[key]
            filled = Entry.tombstone(row.version) if row.payload is None else Entry.value(row.version, row.payload)
            fills.append((prefix + key, token, filled, store._ttl_for(filled)))
        stored = await _fill_entries(store, fills)
    except BaseException:
        for token in granted.values():
            store.flights.fail(token)
        raise
    for (key, token), ok in zip(granted.items(), stored, strict=True):
        store.flights.finish(token, rows[key])
        stats.add("fills" if ok is True else "fills_dropped")
    return rows


async def _wait_for_fills(
    store: AsyncStore, busy: list[str], out: dict[str, Versioned | None], snap: dict[str, int]
) -> list[str]:
    """Other processes hold these keys' leases: poll them together for the fills, as
    ``get`` polls one. Returns the keys still to read from the database."""
    prefix, stats = store._prefix, store.stats
    for _ in busy:
        stats.add("lease_waits")
    done: list[str] = []
    deadline = store.clock() + store.settings.lease_wait
    pause = 0.001
    while busy and store.clock() < deadline:
        await store.sleep(min(pause, max(0.0, deadline - store.clock())))
        pause = min(pause * 2, 0.016)
        entries = await _get_entries(store, [prefix + key for key in busy])
        still = []
        for key, entry in zip(busy, entries, strict=True):
            if entry is _MISSING:
                done.append(key)
            elif store._current(entry):
                stats.add("late_hits")
                out[key] = await store._hit(key, entry, snap.get(key, 0))
            elif entry is None or entry.kind is not _LEASE:
                done.append(key)  # the lease ended without a value: read the DB
            else:
                still.append(key)
        busy = still
    return done + busy


async def _read_rows(store: AsyncStore, keys: list[str]) -> dict[str, Row]:
    """The rows of ``keys`` in one round trip, each then handled as ``_read_source_row``
    handles one (counted, the epoch learnt, the read floor raised)."""
    if not keys:
        return {}
    many = getattr(store.source, "read_many", None)
    rows = {key: await store.source.read(key) for key in keys} if many is None else await many(keys)
    for key in keys:
        await store._took_row(key, rows[key])
    return rows


# -- the cache, many keys at a time (key by key for a backend without batches) ------


async def _get_entries(store: AsyncStore, ckeys: list[str], lo: int = 0, hi: int = 0) -> list[Any]:
    """Entries (or None, or _MISSING where the cache did not answer) of ``ckeys``; with
    ``hi``, current values may come as ``(version, payload)`` (``get_many_hits``)."""
    cache = store.cache
    fast = getattr(cache, "get_many_hits", None) if hi else None
    if fast is not None:
        found = await store._cache_call(fast, ckeys, lo, hi)
    else:
        many = getattr(cache, "get_many", None)
        if many is None:
            return [await store._cache_call(cache.get, ckey) for ckey in ckeys]
        found = await store._cache_call(many, ckeys)
    if found is _MISSING or found is None:
        return [found] * len(ckeys)
    return found  # type: ignore[no-any-return]


async def _lease_entries(store: AsyncStore, leases: list[tuple[str, bytes]]) -> list[Any]:
    ttl, floor = store.settings.lease_ttl, store._epoch_floor
    if not leases:
        return []
    many = getattr(store.cache, "lease_many", None)
    if many is None:
        return [await store._cache_call(store.cache.lease, k, t, lease_ttl=ttl, floor=floor) for k, t in leases]
    found = await _many_call(store, many, leases, "cache_read_failures", lease_ttl=ttl, floor=floor)
    if found is None:
        return [_MISSING] * len(leases)
    return [_per_key(store, answer, "cache_read_failures") for answer in found]


async def _fill_entries(store: AsyncStore, fills: list[tuple[str, bytes, Entry, float]]) -> list[Any]:
    floor = store._epoch_floor
    if not fills:
        return []
    many = getattr(store.cache, "fill_many", None)
    if many is None:
        return [await store._cache_call(store.cache.fill, k, t, e, ttl=ttl, floor=floor) for k, t, e, ttl in fills]
    found = await _many_call(store, many, fills, "cache_write_failures", floor=floor)
    if found is None:
        return [_MISSING] * len(fills)
    return [_per_key(store, answer, "cache_write_failures") for answer in found]


async def _many_call(
    store: AsyncStore, method: Callable[..., Any], items: list[Any], failure: str, **kwargs: Any
) -> list[Any] | None:
    """A batch call to the cache, told to the breaker as the single-key calls tell it: a
    failure if the call failed or no key got an answer (every command refused: -OOM,
    -READONLY, -LOADING), a success if any key did. None: no answers at all."""
    try:
        found = await method(items, **kwargs)
    except CacheError:
        for _ in items:
            store.stats.add(failure)
        store.breaker.failure()
        return None
    except BaseException:  # cancelled mid-call: no verdict, free the probe
        store.breaker.release()
        raise
    if found is None:
        store.breaker.failure()
        return None
    if found and all(isinstance(answer, CacheError) for answer in found):
        store.breaker.failure()
    else:
        store.breaker.success()
    return list(found)


def _per_key(store: AsyncStore, answer: Any, failure: str) -> Any:
    if isinstance(answer, CacheError):
        store.stats.add(failure)
        return _MISSING
    return answer


async def _write_entries(
    store: AsyncStore, writes: list[tuple[str, Kind, int, bytes, bytes | None, float]]
) -> list[WriteOutcome | None]:
    """Conditional writes, as ``_conditional_write`` makes one: None where no answer came."""
    many = getattr(store.cache, "write_many", None)
    if many is None:
        return [await store._conditional_write(k, kind, v, p, tok) for k, kind, v, p, tok, _ in writes]
    stats = store.stats
    found = await _many_call(store, many, writes, "cache_write_failures",
                             tombstone_ttl=store.settings.tombstone_ttl,
                             lease_ttl=store.settings.lease_ttl, floor=store._epoch_floor)
    if found is None:
        return [None] * len(writes)
    out: list[WriteOutcome | None] = []
    for outcome in found:
        if isinstance(outcome, CacheError):
            stats.add("cache_write_failures")
            out.append(None)
            continue
        stats.add("cache_writes")
        if outcome in _REJECTED:
            stats.add("stale_rejected")
        out.append(outcome)
    return out


# -- writes ------------------------------------------------------------------------


async def put_many(store: AsyncStore, mapping: Mapping[str, Any]) -> dict[str, WriteResult]:
    if not isinstance(mapping, Mapping):
        raise InvalidValueError(f"put_many takes a mapping of key to value, not {type(mapping).__name__}")
    if len(mapping) > MAX_BATCH:
        raise too_many(len(mapping))
    most = store._max_key
    items: dict[str, bytes | None] = {}
    for key, value in mapping.items():
        items[check_key(key, most)] = store._dumps(value)  # every key and value checked first
    return await shielded(_write_many(store, items, store._write_kind))


async def delete_many(store: AsyncStore, keys: Iterable[str]) -> dict[str, WriteResult]:
    items: dict[str, bytes | None] = dict.fromkeys(checked_keys(store, keys))
    return await shielded(_write_many(store, items, _TOMBSTONE))


async def _write_many(store: AsyncStore, items: dict[str, bytes | None], kind: Kind) -> dict[str, WriteResult]:
    if not items:
        return {}
    source = store.source
    deleting = kind is _TOMBSTONE and all(payload is None for payload in items.values())
    outbox = store._outbox
    name = ("delete_many" if deleting else "write_many") + ("_logged" if outbox is not None else "")
    many = getattr(outbox if outbox is not None else source, name, None)
    if many is None:  # a source without batches: key by key, each as put / delete
        return {key: await store._write(key, store._prefix + key, kind, payload) for key, payload in items.items()}
    outbox_ids: dict[str, tuple[int, ...]] = {}
    try:
        if outbox is not None:
            logged = await many(list(items) if deleting else items)
            versions = {key: found.version for key, found in logged.items()}
            outbox_ids = {key: (found.outbox_id,) for key, found in logged.items()}
        else:
            versions = await many(list(items) if deleting else items)
    except _AMBIGUOUS:
        # The transaction may have committed and only its reply been lost: as for put.
        if store._versioned:
            for key in items:
                store._record(Repair(key, 0, store.clock(), verify=True))
        raise
    for key in items:
        store.stats.add("source_writes")
        store._learn_epoch(versions[key])
    prefix = store._prefix
    if not store._versioned:
        return {
            key: WriteResult(key, versions[key], await store._naive_write(
                prefix + key, kind, versions[key], (items[key] or b"") if kind is _VALUE else b""))
            for key in items
        }
    results, raws = await _ladder_many(store, items, kind, versions, outbox_ids)
    for key, raw in raws.items():
        if raw in _REJECTED:  # the database may have gone back (a restore): as put checks
            if versions[key] >= store._epoch_floor:
                await store._check_went_back(key, prefix + key, versions[key])
            if versions[key] < store._epoch_floor:  # bumped (by this key or one before it):
                # this write now orders after the lost ones, in the new epoch
                version = store._epoch_floor + versions[key] % EPOCH_SPAN
                results[key] = await store._cache_step(key, prefix + key, kind, version, items[key] or b"")
    if store._worker is None and outbox is not None and len(store._outbox_done) >= OUTBOX_BATCH:
        await store._clear_outbox(outbox)
    return {key: results[key] for key in items}


async def _ladder_many(
    store: AsyncStore,
    items: dict[str, bytes | None],
    kind: Kind,
    versions: dict[str, int],
    outbox_ids: dict[str, tuple[int, ...]],
) -> tuple[dict[str, WriteResult], dict[str, WriteOutcome | None]]:
    """``_ladder`` for many keys: one pipeline per attempt over the keys still without an
    answer; retries, then tombstones, then a repair record each, in one write budget."""
    settings, prefix = store.settings, store._prefix
    deadline = store.clock() + settings.write_budget
    attempt = 0
    tokens = {key: os.urandom(8) for key in items} if kind is _VALUE and store._cold_lease else {}
    results: dict[str, WriteResult] = {}
    raws: dict[str, WriteOutcome | None] = {}
    cold: list[str] = []
    left = list(items)
    while left and store.breaker.allow():
        writes = [
            (prefix + key, kind, versions[key], (items[key] or b"") if kind is _VALUE else b"",
             tokens.get(key) if kind is _VALUE else None, store._jittered(settings.ttl))
            for key in left
        ]
        again = []
        for key, outcome in zip(left, await _write_entries(store, writes), strict=True):
            if outcome is None:
                again.append(key)
                continue
            raws[key] = outcome
            if outcome is WriteOutcome.LEASED and kind is _VALUE and key in tokens:
                cold.append(key)
                continue
            store._settled(key, versions[key], outbox_ids.get(key, ()))
            results[key] = WriteResult(key, versions[key], public_outcome(outcome, kind))
        left = again
        if not left:
            break
        attempt += 1
        if attempt > settings.retry.retries:
            if kind is not _VALUE:
                break
            kind = _TOMBSTONE  # a smaller write, as safe (the leases already taken stay in use)
        pause = settings.retry.backoff(attempt)
        if store.clock() + pause >= deadline:
            break
        await store.sleep(pause)
    for key in left:
        store._record(Repair(key, versions[key], store.clock(), outbox_ids.get(key, ())))
        results[key] = WriteResult(key, versions[key], CacheOutcome.PENDING_REPAIR)
        raws[key] = None
    if cold:
        results.update(await _cold_fill_many(store, cold, tokens, versions, outbox_ids))
    return results, raws


async def _cold_fill_many(
    store: AsyncStore,
    keys: list[str],
    tokens: dict[str, bytes],
    versions: dict[str, int],
    outbox_ids: dict[str, tuple[int, ...]],
) -> dict[str, WriteResult]:
    """``_cold_fill`` for many keys: the writer leases were taken; read the rows back in
    one round trip and fill them in one, so the next reads are hits."""
    prefix = store._prefix
    for _ in keys:
        store.stats.add("cold_writes")
    now = store.clock()
    for key in keys:
        store._held[tokens[key]] = (prefix + key, now, now)
    rows: dict[str, Row] = {}
    stored: list[Any] = [False] * len(keys)
    try:
        rows = await _read_rows(store, keys)
    except SourceError:
        # The leases expire within lease_ttl and leave the keys empty: readers fill.
        rows = {key: Row(versions[key], None) for key in keys}
    else:
        fills = []
        for key in keys:
            row = rows[key]
            filled = Entry.tombstone(row.version) if row.payload is None else Entry.value(row.version, row.payload)
            fills.append((prefix + key, tokens[key], filled, store._ttl_for(filled)))
        stored = await _fill_entries(store, fills)
    finally:
        for key in keys:
            store._held.pop(tokens[key], None)
    results: dict[str, WriteResult] = {}
    for key, ok in zip(keys, stored, strict=True):
        row, ids = rows[key], outbox_ids.get(key, ())
        outcome = CacheOutcome.INVALIDATED
        if ok is True:
            store._settled(key, row.version, ids)
            if row.payload is not None:
                outcome = CacheOutcome.UPDATED
        elif ids and store._outbox is not None:
            store._outbox_done.extend(ids)  # a newer write took the key: it settles it
        results[key] = WriteResult(key, versions[key], outcome)
    return results
