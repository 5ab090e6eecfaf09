"""SQLite for the asyncio store: each call of the sync source runs in a worker thread.

Apart from ``sqlite.py`` so that the sync API never imports asyncio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from ..urls import ParsedURL
from .base import Logged, OutboxRow, Row
from .registry import Verdict
from .sqlite import SQLiteSource, from_url


class AsyncSQLiteSource:
    """SQLite for the asyncio store: each call runs in a worker thread, off the loop."""

    name = "sqlite"

    def __init__(self, inner: SQLiteSource) -> None:
        self.inner = inner

    @property
    def claim_verdict(self) -> Verdict | None:
        """What the registry said when the namespace was claimed (``sources/registry.py``)."""
        return self.inner.claim_verdict

    async def open(self) -> None:
        await asyncio.to_thread(self.inner.open)

    async def read(self, key: str) -> Row:
        return await asyncio.to_thread(self.inner.read, key)

    async def write(self, key: str, payload: bytes) -> int:
        return await asyncio.to_thread(self.inner.write, key, payload)

    async def delete(self, key: str) -> int:
        return await asyncio.to_thread(self.inner.delete, key)

    async def read_many(self, keys: Sequence[str]) -> dict[str, Row]:
        return await asyncio.to_thread(self.inner.read_many, keys)

    async def write_many(self, items: Mapping[str, bytes]) -> dict[str, int]:
        return await asyncio.to_thread(self.inner.write_many, items)

    async def delete_many(self, keys: Sequence[str]) -> dict[str, int]:
        return await asyncio.to_thread(self.inner.delete_many, keys)

    async def write_many_logged(self, items: Mapping[str, bytes]) -> dict[str, Logged]:
        return await asyncio.to_thread(self.inner.write_many_logged, items)

    async def delete_many_logged(self, keys: Sequence[str]) -> dict[str, Logged]:
        return await asyncio.to_thread(self.inner.delete_many_logged, keys)

    async def write_logged(self, key: str, payload: bytes) -> Logged:
        return await asyncio.to_thread(self.inner.write_logged, key, payload)

    async def delete_logged(self, key: str) -> Logged:
        return await asyncio.to_thread(self.inner.delete_logged, key)

    async def outbox_claim(self, older_than: float, limit: int, claim_for: float) -> list[OutboxRow]:
        return await asyncio.to_thread(self.inner.outbox_claim, older_than, limit, claim_for)

    async def outbox_backlog(self, older_than: float) -> tuple[int, float]:
        return await asyncio.to_thread(self.inner.outbox_backlog, older_than)

    async def outbox_done(self, ids: list[int]) -> None:
        await asyncio.to_thread(self.inner.outbox_done, ids)

    async def epoch(self) -> int:
        return await asyncio.to_thread(self.inner.epoch)

    async def bump_epoch(self, reason: str, *, everything: bool = False) -> int:
        return await asyncio.to_thread(self.inner.bump_epoch, reason, everything=everything)

    async def close(self) -> None:
        await asyncio.to_thread(self.inner.close)


def async_from_url(url: ParsedURL, *, namespace: str, **options: Any) -> AsyncSQLiteSource:
    """The same URLs for the asyncio store."""
    return AsyncSQLiteSource(from_url(url, namespace=namespace, **options))
