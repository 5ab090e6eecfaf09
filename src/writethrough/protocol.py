"""The consistency protocol, as pure functions (no I/O, no clock).

A cache key holds at most one entry:

* ``VALUE(version, payload)`` -- a cached row. Always *fresh*: its version is at
  least every version acknowledged to a writer since the key was last empty.
* ``TOMBSTONE(version, fresh)`` -- "go to the database"; readers treat it as a
  miss. ``fresh`` says whether it carries the same guarantee as a value. A
  tombstone written onto an empty key is never fresh: a newer entry may have been
  evicted just before (race 6), and the writer cannot know.
* ``LEASE(version, fresh, token)`` -- someone is loading the key from the
  database: a reader that missed, or a writer whose key was empty. ``version`` is
  the floor a fill must reach (the tombstone it replaced, or the writer's own
  version); ``fresh`` whether that floor is proven.

Versions are exact integers of any size (a database epoch times 10**19 plus the
row's version, see ``epochs``). An entry whose version is below the caller's
``floor`` (an older database epoch) is treated as absent everywhere.

The decisions below are the whole protocol. The memory backend runs them under a
lock; the Redis backend runs a Lua translation of them atomically on the server
(``caches/protocol.lua``), and a test checks that both agree on every state.

Why freshness: a write may only store a *value* over an entry that proves no
newer version was acknowledged before it. Over an empty key, or a tombstone or
lease that proves nothing, a write-through takes a *writer lease* instead
(``token``): the writer then reads the row from the database and fills it like a
reader would, so the next read is a hit; any newer write in between replaces the
lease and the fill is dropped (IQ leases, Ghandeharizadeh et al.). Without a
token (``on_empty="tombstone"``) it stores a tombstone and the next reader fills.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

OnEmpty = Literal["lease", "tombstone"]


class Kind(enum.Enum):
    VALUE = "V"
    TOMBSTONE = "T"
    LEASE = "L"


@dataclass(frozen=True, slots=True)
class Entry:
    """What one cache key holds."""

    kind: Kind
    version: int
    fresh: bool = True
    payload: bytes = b""  # the serialized value, or a lease's token

    @staticmethod
    def value(version: int, payload: bytes) -> Entry:
        return Entry(Kind.VALUE, version, True, payload)

    @staticmethod
    def tombstone(version: int, fresh: bool = True) -> Entry:
        return Entry(Kind.TOMBSTONE, version, fresh)

    @staticmethod
    def lease(token: bytes, floor: int = 0, fresh: bool = False) -> Entry:
        return Entry(Kind.LEASE, floor, fresh, token)


class WriteOutcome(enum.Enum):
    """What a cache write achieved (before the failure ladder)."""

    STORED_VALUE = "stored_value"  # the key now holds this version's value
    STORED_TOMBSTONE = "stored_tombstone"  # the key now holds a tombstone of this version
    SUPERSEDED = "superseded"  # the key already holds this version or a newer one
    KEPT = "kept"  # nothing stored; the entry there already sends readers to the DB
    LEASED = "leased"  # the key was empty: the writer holds its lease, must read the DB and fill


@dataclass(frozen=True, slots=True)
class WriteDecision:
    store: Entry | None  # None: leave the key as it is
    outcome: WriteOutcome


def visible(current: Entry | None, floor: int) -> Entry | None:
    """The entry as the protocol sees it: one below ``floor`` (an older DB epoch) is absent."""
    if current is None or current.version < floor:
        return None
    return current


def decide_write(
    current: Entry | None,
    kind: Kind,
    version: int,
    payload: bytes = b"",
    token: bytes | None = None,
) -> WriteDecision:
    """A writer committed ``version``; what should the key hold now?

    ``kind`` is VALUE for write-through, TOMBSTONE for invalidate and deletes.
    ``token``: a write-through onto a key that proves nothing takes a writer lease
    with it (outcome LEASED); without one it stores a tombstone there.
    """
    if kind is Kind.LEASE:
        raise ValueError("a write stores a value or a tombstone, not a lease")
    proven = current is not None and current.fresh
    if token and current is not None and current.kind is Kind.LEASE and current.payload == token:
        return WriteDecision(None, WriteOutcome.LEASED)  # a retry after an ambiguous timeout
    if current is not None and current.version >= version:
        if current.kind is Kind.VALUE:
            return WriteDecision(None, WriteOutcome.SUPERSEDED)
        # A tombstone or lease at least as new: readers go to the DB, which is newer.
        return WriteDecision(None, WriteOutcome.SUPERSEDED if proven else WriteOutcome.KEPT)
    if kind is Kind.VALUE and proven:
        return WriteDecision(Entry.value(version, payload), WriteOutcome.STORED_VALUE)
    if kind is Kind.VALUE and token:
        # Nothing proves that no newer version was acknowledged and then lost (race 6):
        # hold the key while the writer checks the database, and let it fill.
        return WriteDecision(Entry.lease(token, version, False), WriteOutcome.LEASED)
    # An invalidation, or a write-through without a lease: a tombstone, fresh only
    # where the entry it replaces was.
    return WriteDecision(Entry.tombstone(version, proven), WriteOutcome.STORED_TOMBSTONE)


class LeaseOutcome(enum.Enum):
    HIT = "hit"  # a value is there: return it
    GRANTED = "granted"  # the caller holds the lease: load from the DB, then fill
    BUSY = "busy"  # another reader holds the lease: wait briefly or read through


@dataclass(frozen=True, slots=True)
class LeaseDecision:
    store: Entry | None
    outcome: LeaseOutcome


def decide_lease(current: Entry | None, token: bytes, floor: int = 0) -> LeaseDecision:
    """A reader missed; may it take the fill lease? (``floor``: the epoch's lowest version.)"""
    if current is None:
        return LeaseDecision(Entry.lease(token, floor), LeaseOutcome.GRANTED)
    if current.kind is Kind.VALUE:
        return LeaseDecision(None, LeaseOutcome.HIT)
    if current.kind is Kind.TOMBSTONE:
        return LeaseDecision(
            Entry.lease(token, current.version, current.fresh), LeaseOutcome.GRANTED
        )
    if current.payload == token:  # a retry of our own request (timeout was ambiguous)
        return LeaseDecision(None, LeaseOutcome.GRANTED)
    return LeaseDecision(None, LeaseOutcome.BUSY)


def decide_fill(current: Entry | None, token: bytes, filled: Entry) -> Entry | None:
    """The lease holder loaded ``filled`` from the DB; store it? Returns what to store.

    A fill is stored only while its own lease is still there (nothing was written
    or lost since it read the DB), or over an older *value* (which proves no newer
    write was acknowledged). Over an empty key, a foreign lease or a tombstone it
    is dropped: the lease was lost, and with it the proof.
    """
    if current is None:
        return None
    if current.kind is Kind.LEASE:
        if current.payload != token or filled.version < current.version:
            return None
        return filled
    if current.kind is Kind.VALUE and filled.kind is Kind.VALUE:
        return filled if filled.version > current.version else None
    return None


def decide_renew(current: Entry | None, token: bytes) -> bool:
    """May the lease holder extend its lease (a slow database read)? Only while it is its own."""
    return current is not None and current.kind is Kind.LEASE and current.payload == token


def is_hit(entry: Entry | None) -> bool:
    return entry is not None and entry.kind is Kind.VALUE
