"""Every cache write change capture makes, in one place.

Both listeners (logical decoding and triggers) hand this module the changed keys of one
namespace, coalesced in commit order (:class:`KeyChange`), and a way to read the rows;
it writes each key through the backend's conditional ``cache.write`` -- so a late,
repeated or reordered change never leaves an older entry -- and returns the keys whose
write failed, each on its own: one bad key (a WRONGTYPE value, a cluster shard that is
down) never stops the others. Cache keys go through :func:`cache_key`, versions through
:func:`~writethrough.capture.versions.cache_version`: when the protocol changes (writer
leases, epochs, encodings), this file is what changes.

* write-through: the row's current value with the row's version (``row_to_json``, or
  one column as JSON), a tombstone if the row is gone;
* invalidate: a tombstone with the change's version (the row's, when the change did not
  carry one);
* after an epoch bump (TRUNCATE, re-created table, new slot): every entry of the
  namespace removed (:meth:`CacheApplier.flush`).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..caches.base import Cache
from ..core import check_key
from ..errors import CacheError, CacheTimeout, CacheUnavailable, InvalidKeyError
from ..protocol import Entry, Kind, WriteOutcome
from .keyspace import Keyspace, ListenerStats
from .versions import cache_version, epoch_floor

MAX_KEY_BYTES = 1024  # the store's default: a longer key could never be read back
UNREACHABLE_LIMIT = 3  # writes failed unreachable while none landed: the cache is down
PIPELINE = 500  # conditional writes per round trip (a pipeline of scripts)
_SETTLE = (0.001, 0.004, 0.016, 0.064, 0.2)  # waits for a commit to be visible (settle())


def cache_key(namespace: str, key: str) -> str:
    """The store's key for ``key`` of ``namespace``."""
    return f"wt:{namespace}:{key}"


@dataclass(slots=True)
class KeyChange:
    """What the change stream says about one key, newest last (commit order).

    ``version``: at least the version of the newest change (a delete's being the deleted
    row's version + 1), or None when the newest change did not carry one (then the
    applier reads it, or takes one above every version drawn so far). ``deleted``: the
    newest change deleted the row."""

    version: int | None
    deleted: bool

    def then(self, version: int | None, deleted: bool) -> None:
        """Fold in the next change of the same key."""
        if version is None or self.version is None:
            self.version = version  # unknown stays unknown: an older bound is too low
        else:
            self.version = max(self.version, version)
        self.deleted = deleted


class RowSource(Protocol):
    """How the applier reads the database (the listener's connection, its statements)."""

    def rows(self, keys: list[str]) -> dict[str, tuple[int, bytes]]:
        """key -> (version, JSON payload) of the rows that exist."""
        ...

    def versions(self, keys: list[str]) -> dict[str, int]:
        """key -> version of the rows that exist."""
        ...

    def floor(self) -> int:
        """A version above every row version drawn so far."""
        ...


@dataclass(frozen=True, slots=True)
class Failed:
    key: str
    change: KeyChange
    error: CacheError

    @property
    def unreachable(self) -> bool:
        """The cache (or this key's shard) did not answer, as opposed to refusing the key."""
        return isinstance(self.error, CacheUnavailable | CacheTimeout)


@dataclass(frozen=True, slots=True)
class _Write:
    """One conditional cache write of a batch (``version``: the row's)."""

    key: str
    change: KeyChange
    kind: Kind
    version: int
    payload: bytes = b""
    token: bytes | None = None


class Interrupted(Exception):
    """The listener was asked to stop in the middle of a batch: the batch is abandoned,
    not confirmed (its changes come again; the writes that landed are harmless then)."""


class CacheApplier:
    """Writes coalesced changes to one cache.

        >>> applier = CacheApplier(cache, stats)
        >>> failed = applier.apply(space, epoch, {"42": KeyChange(8, False)}, rows)
    """

    def __init__(self, cache: Cache, stats: ListenerStats,
                 rng: Callable[[], float] = random.random,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self.cache = cache
        self.stats = stats
        self._random = rng
        self.stopping = stopping  # checked before each write: raises Interrupted
        self.landed = 0  # writes that landed since begin_batch()
        self.unreachable = 0  # writes that failed unreachable since begin_batch()

    def begin_batch(self) -> None:
        """Count afresh: a batch whose first writes all fail unreachable stops early."""
        self.landed = self.unreachable = 0

    def flush(self, namespace: str) -> int:
        """Remove every entry of ``namespace`` (after its epoch was bumped: a TRUNCATE, a
        re-created table, a new slot), so stores that have not read the new epoch yet
        miss instead of serving the old table's rows; returns how many keys. Raises
        CacheError (the caller retries: a flush is always safe to repeat)."""
        from ..lifecycle import flush_entries

        removed = int(flush_entries(self.cache, namespace))
        self.stats.flushed += removed
        return removed

    @property
    def cache_down(self) -> bool:
        return self.landed == 0 and self.unreachable > 0

    def apply(self, space: Keyspace, epoch: int, changes: dict[str, KeyChange],
              rows: RowSource) -> list[Failed]:
        """Write every key of ``changes``; the failed ones are returned, the rest landed.

        Raises CacheUnavailable once :data:`UNREACHABLE_LIMIT` writes failed unreachable and
        none landed since :meth:`begin_batch` (the cache is down: do not pay a timeout per
        key). Database errors propagate (nothing is confirmed then)."""
        usable: dict[str, KeyChange] = {}
        for key, change in changes.items():
            try:
                check_key(key, MAX_KEY_BYTES)
            except InvalidKeyError:
                self.stats.skipped += 1  # the store could never read this key back
                continue
            usable[key] = change
        if not usable:
            return []
        writer = _Writer(self, space, epoch, rows)
        if space.strategy == "write-through":
            writer.write_through(usable)
        else:
            writer.invalidate(usable)
        return writer.failed


class _Writer:
    """One namespace's share of one batch."""

    def __init__(self, applier: CacheApplier, space: Keyspace, epoch: int,
                 rows: RowSource) -> None:
        self.applier, self.space, self.epoch, self.rows = applier, space, epoch, rows
        self.failed: list[Failed] = []
        self._floor: int | None = None

    def floor(self) -> int:
        if self._floor is None:
            self._floor = self.rows.floor()
        return self._floor

    def invalidate(self, changes: dict[str, KeyChange]) -> None:
        unknown = [key for key, change in changes.items() if change.version is None]
        found = self.rows.versions(unknown) if unknown else {}
        writes: list[_Write] = []
        for key, change in changes.items():
            version = change.version
            if version is None:
                version = found.get(key) or self.floor()
            writes.append(_Write(key, change, Kind.TOMBSTONE, version))
        self.send(writes)

    def write_through(self, changes: dict[str, KeyChange]) -> None:
        """The row's value at the row's version. Onto a key the cache does not hold, the
        write takes a writer lease; the row is then read again and filled -- a newer write
        in between replaces the lease and the fill is dropped (race 6 stays closed)."""
        least = {key: change.version or 0 for key, change in changes.items()}
        if any(c.version is None and c.deleted for c in changes.values()):
            self.floor()  # before the rows: a row not there yet was drawn above it, mostly
        found = self.rows.rows(list(least))
        self.settle(changes, least, found)
        writes: list[_Write] = []
        for key, change in changes.items():
            row = found.get(key)
            if row is None or row[0] < least[key]:
                # Gone (or re-inserted below the delete: a version drawn before the
                # delete committed): a tombstone is always safe.
                version = least[key] if change.version is not None else self.floor()
                writes.append(_Write(key, change, Kind.TOMBSTONE, version))
                continue
            token = os.urandom(8) if self.space.on_empty == "lease" else None
            writes.append(_Write(key, change, Kind.VALUE, row[0], row[1], token))
        leased: dict[str, tuple[bytes, int]] = {}
        for write, outcome in zip(writes, self.send(writes), strict=True):
            if outcome is WriteOutcome.LEASED and write.token is not None:
                leased[write.key] = (write.token, write.version)
        if leased:
            self.fill(changes, leased)

    def fill(self, changes: dict[str, KeyChange], leased: dict[str, tuple[bytes, int]]
             ) -> None:
        again = self.rows.rows(list(leased))
        space, applier = self.space, self.applier
        fills: list[tuple[str, bytes, Entry, float]] = []
        for key, (token, version) in leased.items():
            row = again.get(key)
            if row is None:  # deleted meanwhile: its own change follows
                entry = Entry.tombstone(cache_version(self.epoch, version), fresh=False)
                ttl = space.tombstone_seconds
            else:
                entry = Entry.value(cache_version(self.epoch, row[0]), row[1])
                ttl = space.ttl * (1.0 - space.ttl_jitter * applier._random())
            fills.append((key, token, entry, ttl))
        many = getattr(applier.cache, "fill_many", None)
        floor = epoch_floor(self.epoch)
        for start in range(0, len(fills), PIPELINE):
            chunk = fills[start:start + PIPELINE]
            results: list[bool | CacheError] | None = None
            if many is not None:
                try:
                    results = many([(cache_key(space.namespace, k), t, e, ttl)
                                    for k, t, e, ttl in chunk], floor=floor)
                except CacheError:
                    results = None  # the whole call failed: key by key (see _send_chunk)
            if results is None:
                results = [self._fill_one(k, t, e, ttl) for k, t, e, ttl in chunk]
            for (key, _, _, _), filled in zip(chunk, results, strict=True):
                if isinstance(filled, CacheError):
                    applier.stats.cache_errors += 1
                    self.failed.append(Failed(key, changes[key], filled))
                elif filled:
                    applier.stats.values += 1
                else:
                    applier.stats.rechecked += 1  # a newer write took the key: it is current

    def _fill_one(self, key: str, token: bytes, entry: Entry, ttl: float) -> bool | CacheError:
        try:
            return bool(self.applier.cache.fill(cache_key(self.space.namespace, key), token,
                                                entry, ttl=ttl, floor=epoch_floor(self.epoch)))
        except CacheError as exc:
            return exc

    def settle(self, changes: dict[str, KeyChange], least: dict[str, int],
               found: dict[str, tuple[int, bytes]]) -> None:
        """Re-read rows older than their change. The WAL can deliver a commit a moment
        before it is visible to other sessions (the committing backend flushes its commit
        record, then leaves the proc array): a read right away may still see the row
        before it. A few short waits, then whatever is there (a tombstone is safe)."""
        for delay in _SETTLE:
            behind = [k for k, v in least.items() if (found[k][0] < v if k in found else
                                                      v and not changes[k].deleted)]
            if not behind:
                return
            time.sleep(delay)
            again = self.rows.rows(behind)
            for key in behind:
                found.pop(key, None)
            found.update(again)

    def send(self, writes: list[_Write]) -> list[WriteOutcome | None]:
        """Each write, conditional on its version; its outcome (None: failed, recorded in
        ``failed``). A backend with ``write_many`` gets them as pipelines of
        :data:`PIPELINE` scripts (one round trip each, every key decided on its own),
        else one call per key."""
        many = getattr(self.applier.cache, "write_many", None)
        outcomes: list[WriteOutcome | None] = []
        for start in range(0, len(writes), PIPELINE if many is not None else 1):
            if self.applier.stopping():
                raise Interrupted
            chunk = writes[start:start + PIPELINE] if many is not None else writes[start:start + 1]
            outcomes += self._send_chunk(chunk, many)
        return outcomes

    def _send_chunk(self, chunk: list[_Write],
                    many: Callable[..., list[WriteOutcome | CacheError]] | None
                    ) -> list[WriteOutcome | None]:
        space = self.space
        floor, key_of = epoch_floor(self.epoch), space.namespace
        ttls = [space.ttl * (1.0 - space.ttl_jitter * self.applier._random()) for _ in chunk]
        if many is not None:
            try:
                results = many(
                    [(cache_key(key_of, w.key), w.kind, cache_version(self.epoch, w.version),
                      w.payload, w.token, ttl) for w, ttl in zip(chunk, ttls, strict=True)],
                    tombstone_ttl=space.tombstone_seconds, floor=floor)
            except CacheError:
                # The whole call failed (a stall, a dropped connection, one cluster shard
                # down among healthy ones): key by key, so one shard's or one moment's
                # failure fails only its own keys, as before the pipelines.
                pass
            else:
                outcomes: list[WriteOutcome | None] = [None] * len(chunk)
                # What landed is counted first: a chunk with landed writes is no outage.
                for i in sorted(range(len(chunk)), key=lambda i: isinstance(results[i], CacheError)):
                    outcomes[i] = self._account(chunk[i], results[i])
                return outcomes
        return [self._account(w, self._write_one(w, ttl)) for w, ttl in zip(chunk, ttls, strict=True)]

    def _write_one(self, w: _Write, ttl: float) -> WriteOutcome | CacheError:
        try:
            return self.applier.cache.write(
                cache_key(self.space.namespace, w.key), w.kind,
                cache_version(self.epoch, w.version), w.payload, ttl=ttl,
                tombstone_ttl=self.space.tombstone_seconds, token=w.token,
                floor=epoch_floor(self.epoch))
        except CacheError as exc:
            return exc

    def _account(self, w: _Write, result: WriteOutcome | CacheError) -> WriteOutcome | None:
        stats, applier = self.applier.stats, self.applier
        if isinstance(result, CacheError):
            stats.cache_errors += 1
            failure = Failed(w.key, w.change, result)
            self.failed.append(failure)
            if failure.unreachable:
                applier.unreachable += 1
                if applier.landed == 0 and applier.unreachable >= UNREACHABLE_LIMIT:
                    raise CacheUnavailable(f"the cache does not answer: {result}") from result
            return None
        applier.landed += 1
        if result is WriteOutcome.STORED_VALUE:
            stats.values += 1
        elif result is WriteOutcome.STORED_TOMBSTONE:
            stats.tombstones += 1
        elif result is not WriteOutcome.LEASED:
            stats.superseded += 1
        return result
