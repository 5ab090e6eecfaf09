"""The one narrow interface every cache backend implements, sync and asyncio.

A backend stores :class:`~writethrough.protocol.Entry` objects under string keys
and applies the protocol's decisions *atomically*; it never decides policy
(strategies, retries, the failure ladder): that is the store's job. Every method
may raise a :class:`~writethrough.errors.CacheError`; ``get`` raises
:class:`~writethrough.errors.CacheDataError` for an entry it cannot decode (the
store treats it as a miss; the next write or fill replaces it).

``floor``: entries below it (an older database epoch, see ``epochs``) count as
absent. ``token`` (on ``write``): a write-through onto a key that proves nothing
takes a writer lease with it (``WriteOutcome.LEASED``); the writer then reads the
row and ``fill``s it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..errors import CacheError
from ..protocol import Entry, Kind, LeaseOutcome, WriteOutcome

# One conditional write of a batch: key, kind, version, payload, writer-lease token, ttl.
BatchWrite = tuple[str, Kind, int, bytes, bytes | None, float]
# One fill of a batch: key, lease token, the loaded entry, ttl.
BatchFill = tuple[str, bytes, Entry, float]


class Cache(Protocol):
    """A cache backend for the sync store."""

    name: str

    def open(self) -> None:
        """Connect, if the backend connects lazily (may do nothing)."""
        ...

    def get(self, key: str) -> Entry | None:
        """The entry under ``key``, or None. One round trip."""
        ...

    def write(
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
        """Conditional write of a committed version (``protocol.decide_write``), atomically."""
        ...

    def lease(
        self, key: str, token: bytes, *, lease_ttl: float, floor: int = 0
    ) -> tuple[LeaseOutcome, Entry | None]:
        """Take the fill lease if the key holds no value (``protocol.decide_lease``).

        Returns the outcome and the entry found: the value for HIT, the other
        reader's lease for BUSY, None for GRANTED.
        """
        ...

    def fill(self, key: str, token: bytes, entry: Entry, *, ttl: float, floor: int = 0) -> bool:
        """Store a loaded entry if the lease still allows it (``protocol.decide_fill``)."""
        ...

    def renew(self, key: str, token: bytes, *, lease_ttl: float, floor: int = 0) -> bool:
        """Extend the caller's own lease (``protocol.decide_renew``): a slow database read."""
        ...

    def set(self, key: str, entry: Entry, *, ttl: float) -> None:
        """Unconditional SET: only the naive protocol uses it."""
        ...

    def delete(self, key: str) -> None:
        """Unconditional DEL: only the naive protocol (and tests) use it."""
        ...

    def close(self) -> None: ...


class AsyncCache(Protocol):
    """The same interface for the asyncio store: every method is a coroutine."""

    name: str

    async def open(self) -> None: ...

    async def get(self, key: str) -> Entry | None: ...

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
    ) -> WriteOutcome: ...

    async def lease(
        self, key: str, token: bytes, *, lease_ttl: float, floor: int = 0
    ) -> tuple[LeaseOutcome, Entry | None]: ...

    async def fill(self, key: str, token: bytes, entry: Entry, *, ttl: float, floor: int = 0) -> bool: ...

    async def renew(self, key: str, token: bytes, *, lease_ttl: float, floor: int = 0) -> bool: ...

    async def set(self, key: str, entry: Entry, *, ttl: float) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def close(self) -> None: ...


class BatchCache(Protocol):
    """Optional batch methods (``store.get_many`` / ``put_many`` / ``delete_many``).

    Each item is decided exactly as its single-key method decides it (atomically per
    key, not across keys); the answers come back item by item, in order. A per-key
    failure is a :class:`CacheError` in its place; a failure of the whole call (the
    connection) raises. A backend without them is driven key by key.
    """

    def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        """The entries under ``keys`` (None: absent, another lifetime's, or garbage). One MGET."""
        ...

    def write_many(
        self, writes: Sequence[BatchWrite], *, tombstone_ttl: float, lease_ttl: float = 2.0, floor: int = 0
    ) -> list[WriteOutcome | CacheError]: ...

    def lease_many(
        self, leases: Sequence[tuple[str, bytes]], *, lease_ttl: float, floor: int = 0
    ) -> list[tuple[LeaseOutcome, Entry | None] | CacheError]: ...

    def fill_many(self, fills: Sequence[BatchFill], *, floor: int = 0) -> list[bool | CacheError]: ...


class AsyncBatchCache(Protocol):
    """The asyncio twin of :class:`BatchCache`."""

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]: ...

    async def write_many(
        self, writes: Sequence[BatchWrite], *, tombstone_ttl: float, lease_ttl: float = 2.0, floor: int = 0
    ) -> list[WriteOutcome | CacheError]: ...

    async def lease_many(
        self, leases: Sequence[tuple[str, bytes]], *, lease_ttl: float, floor: int = 0
    ) -> list[tuple[LeaseOutcome, Entry | None] | CacheError]: ...

    async def fill_many(self, fills: Sequence[BatchFill], *, floor: int = 0) -> list[bool | CacheError]: ...
