"""Life cycle of a namespace over your own table: backfill, flush, and what to do when the
table under it was truncated, re-created or altered.

    from writethrough import lifecycle
    lifecycle.backfill(store)          # every row of the table into the cache, safely
    lifecycle.flush(store)             # remove every entry of the namespace, bump its epoch

(``writethrough table backfill|flush|check`` on the command line.)

Entries must not outlive the table or schema they were read from. When a table store
opens and the registry (``sources/registry.py``) finds the namespace's table re-created
(another OID) or altered (another column list), it bumps the namespace's epoch and the
store flushes the namespace (:func:`after_open`); a TRUNCATE seen by change capture calls
:func:`truncated`. Flushing removes entries through the backend (keys
``wt:<namespace>:*``) at once for every process; the epoch (``epochs``) orders everything
read afterwards above anything an in-flight writer of the old table could still store,
and stores never serve an entry below the epoch they know.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import Any

from .protocol import Entry, LeaseOutcome
from .sources.registry import Verdict

__all__ = ["BackfillReport", "aflush", "after_open", "backfill", "flush", "truncated"]


@dataclass(frozen=True, slots=True)
class BackfillReport:
    rows: int  # rows scanned
    filled: int  # entries stored
    cached: int  # keys that already held a value (left as they are)
    skipped: int  # keys another reader or writer held (their own step fills them)


def backfill(store: Any, *, batch: int = 500, lease_ttl: float = 5.0) -> BackfillReport:
    """Publish every row of the store's table into the cache, in key order, ``batch`` rows
    at a time (after install, after a migration, after a flush).

    Safe against concurrent writers: for each batch it first takes each key's fill lease,
    then reads the rows again, and fills only the keys whose lease it still holds -- the
    same single-flight protocol as a read miss, so a row changed meanwhile is never
    overwritten by an older one. Keys already cached are left alone.
    """
    source, cache = store.source, store.cache
    prefix = f"wt:{store.namespace}:"
    rows = filled = cached = skipped = 0
    after: str | None = None
    rng = random.Random()
    while True:
        page = source.scan(after, batch)
        if not page:
            break
        rows += len(page)
        tokens: dict[str, bytes] = {}
        for key, _ in page:
            token = os.urandom(8)
            outcome, _found = cache.lease(prefix + key, token, lease_ttl=lease_ttl)
            if outcome is LeaseOutcome.GRANTED:
                tokens[key] = token
            elif outcome is LeaseOutcome.HIT:
                cached += 1
            else:
                skipped += 1
        # Read again after the leases: what is filled is at least as new as any write
        # acknowledged before the lease was taken (a later write replaces the lease).
        fresh = dict(source.scan(after, batch)) if tokens else {}
        ttl = store.settings.ttl
        for key, token in tokens.items():
            row = fresh.get(key)
            if row is None or row.payload is None:
                skipped += 1
                continue
            entry = Entry.value(row.version, row.payload)
            jittered = ttl * (1.0 - store.settings.ttl_jitter * rng.random())
            if cache.fill(prefix + key, token, entry, ttl=jittered):
                filled += 1
            else:
                skipped += 1
        after = page[-1][0]
        if len(page) < batch:
            break
    return BackfillReport(rows, filled, cached, skipped)


def flush(store: Any, *, bump_epoch: bool = True) -> int:
    """Remove every cache entry of the store's namespace; returns how many keys.

    With ``bump_epoch`` (table stores), the namespace's epoch goes up first, so rows read
    from now on carry versions above every entry written before.
    """
    if bump_epoch and hasattr(store.source, "bump_epoch"):
        store.source.bump_epoch("flushed")
    return _flush_cache(store.cache, f"wt:{store.namespace}:")


async def aflush(store: Any, *, bump_epoch: bool = True) -> int:
    """:func:`flush` for an AsyncStore."""
    if bump_epoch and hasattr(store.source, "bump_epoch"):
        await store.source.bump_epoch("flushed")
    return await _aflush_cache(store.cache, f"wt:{store.namespace}:")


def truncated(store: Any) -> int:
    """The store's table was truncated: bump the epoch and flush (for change capture)."""
    if hasattr(store.source, "bump_epoch"):
        store.source.bump_epoch("truncated")
    return _flush_cache(store.cache, f"wt:{store.namespace}:")


def after_open(store: Any) -> Any:
    """Called by ``writethrough.open``: a re-created or altered table flushes the
    namespace (the epoch was bumped by the registry already)."""
    if getattr(store.source, "claim_verdict", None) is Verdict.CHANGED:
        _flush_cache(store.cache, f"wt:{store.namespace}:")
    return store


async def aafter_open(store: Any) -> Any:
    if getattr(store.source, "claim_verdict", None) is Verdict.CHANGED:
        await _aflush_cache(store.cache, f"wt:{store.namespace}:")
    return store


def _flush_cache(cache: Any, prefix: str) -> int:
    inner = getattr(cache, "inner", cache)  # the async memory cache wraps a sync one
    client = getattr(inner, "client", None)
    if client is not None:  # Redis / Redis Cluster: SCAN the prefix, delete key by key
        keys = _retry(lambda: list(client.scan_iter(match=_glob(prefix) + "*", count=1000)))
        for key in keys:
            name = key.decode() if isinstance(key, bytes) else key
            _retry(lambda name=name: cache.delete(name))
        return len(keys)
    data = getattr(inner, "_data", None)
    if data is None:
        raise NotImplementedError(f"flush is not supported for the {cache.name} cache")
    keys = [k for k in list(data) if k.startswith(prefix)]
    for key in keys:
        inner.delete(key)
    return len(keys)


async def _aflush_cache(cache: Any, prefix: str) -> int:
    client = getattr(cache, "client", None)
    if client is None:
        return _flush_cache(cache, prefix)
    keys = [k async for k in client.scan_iter(match=_glob(prefix) + "*", count=1000)]
    for key in keys:
        await cache.delete(key.decode() if isinstance(key, bytes) else key)
    return len(keys)


def _retry(call: Any, attempts: int = 5) -> Any:
    """An admin operation (not on a request's path): retry timeouts a few times."""
    from .caches.redis_codec import mapped_errors
    from .errors import CacheError

    for attempt in range(attempts):
        try:
            with mapped_errors():
                return call()
        except CacheError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    return None  # pragma: no cover


def _glob(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)

