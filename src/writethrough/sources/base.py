"""The one narrow interface every source of truth implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Row:
    """A row as the database holds it. ``payload`` is None for a deleted or unknown key.

    ``version`` is 0 for a key the database has never seen.
    """

    version: int
    payload: bytes | None


class Source(Protocol):
    """A database holding ``(key, payload, version)`` rows for one namespace.

    ``write`` and ``delete`` return the version assigned by the database in the
    same statement that changes the row: strictly increasing per key in commit
    order, also across a delete and a re-insert. Errors are
    :class:`~writethrough.errors.SourceError`.
    """

    name: str

    def open(self) -> None:
        """Connect, if the source connects lazily (may do nothing)."""
        ...

    def read(self, key: str) -> Row: ...

    def write(self, key: str, payload: bytes) -> int: ...

    def delete(self, key: str) -> int: ...

    def close(self) -> None: ...


class AsyncSource(Protocol):
    """The same interface for the asyncio store: every method is a coroutine."""

    name: str

    async def open(self) -> None: ...

    async def read(self, key: str) -> Row: ...

    async def write(self, key: str, payload: bytes) -> int: ...

    async def delete(self, key: str) -> int: ...

    async def close(self) -> None: ...
