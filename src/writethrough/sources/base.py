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


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A change recorded in the outbox table, in the same transaction as the data."""

    id: int
    key: str
    version: int
    action: str  # "write" | "delete"


@dataclass(frozen=True, slots=True)
class Logged:
    """What a logged write returns: the row's new version and its outbox row's id."""

    version: int
    outbox_id: int


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


class OutboxSource(Source, Protocol):
    """A source with a transactional outbox (``durability="outbox"``).

    ``write_logged``/``delete_logged`` change the row and insert an outbox row in
    one transaction. ``outbox_claim`` hands out rows older than ``older_than``
    seconds that nobody claimed in the last ``claim_for`` seconds (several
    repairers share the work); ``outbox_done`` deletes rows once the cache has them.
    """

    def write_logged(self, key: str, payload: bytes) -> Logged: ...

    def delete_logged(self, key: str) -> Logged: ...

    def outbox_claim(self, older_than: float, limit: int, claim_for: float) -> list[OutboxRow]: ...

    def outbox_done(self, ids: list[int]) -> None: ...


class AsyncOutboxSource(AsyncSource, Protocol):
    """The asyncio twin of :class:`OutboxSource`."""

    async def write_logged(self, key: str, payload: bytes) -> Logged: ...

    async def delete_logged(self, key: str) -> Logged: ...

    async def outbox_claim(
        self, older_than: float, limit: int, claim_for: float
    ) -> list[OutboxRow]: ...

    async def outbox_done(self, ids: list[int]) -> None: ...
