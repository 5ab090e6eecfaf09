"""The consistency protocol, as pure functions (no I/O, no clock).

A cache key holds at most one entry:

* ``VALUE(version, payload)`` -- a cached row. Always *fresh*: its version is at
  least every version acknowledged to a writer since the key was last empty.
* ``TOMBSTONE(version, fresh)`` -- "go to the database"; readers treat it as a
  miss. ``fresh`` says whether it carries the same guarantee as a value. A
  tombstone written onto an empty key is not fresh: a newer entry may have been
  evicted just before (race 6), and the writer cannot know.
* ``LEASE(version, fresh, token)`` -- a reader is loading the key from the
  database. ``version``/``fresh`` remember the tombstone it replaced (the floor).

The three decisions below are the whole protocol. The memory backend runs them
under a lock; the Redis backend runs a Lua translation of them atomically on the
server (``caches/protocol.lua``), and a test checks that both agree on every state.

Why freshness: a write may only store a *value* over an entry that proves no
newer version was acknowledged before it. Over an empty key, a lease, or a
tombstone written onto an empty key, nothing is proven, so the write stores a
tombstone (version = its own) instead, and the next reader fills the value from
the database under a lease. That keeps race 6 closed at the price of one miss
after a write to a key that was not cached. ``on_empty="value"`` trades that
safety for a hit (documented in the README).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

OnEmpty = Literal["tombstone", "value"]


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


@dataclass(frozen=True, slots=True)
class WriteDecision:
    store: Entry | None  # None: leave the key as it is
    outcome: WriteOutcome


def decide_write(
    current: Entry | None,
    kind: Kind,
    version: int,
    payload: bytes = b"",
    on_empty: OnEmpty = "tombstone",
) -> WriteDecision:
    """A writer committed ``version``; what should the key hold now?

    ``kind`` is VALUE for write-through, TOMBSTONE for invalidate and deletes.
    """
    if kind is Kind.LEASE:
        raise ValueError("a write stores a value or a tombstone, not a lease")
    proven = current is not None and current.fresh
    if current is not None and current.version >= version:
        if current.kind is Kind.VALUE:
            return WriteDecision(None, WriteOutcome.SUPERSEDED)
        # A tombstone or lease at least as new: readers go to the DB, which is newer.
        return WriteDecision(None, WriteOutcome.SUPERSEDED if proven else WriteOutcome.KEPT)
    if kind is Kind.VALUE and (proven or on_empty == "value"):
        return WriteDecision(Entry.value(version, payload), WriteOutcome.STORED_VALUE)
    # Either an invalidation, or a write-through that cannot rule out race 6.
    fresh = proven if kind is Kind.VALUE else (proven or (current is None and on_empty == "value"))
    return WriteDecision(Entry.tombstone(version, fresh), WriteOutcome.STORED_TOMBSTONE)


class LeaseOutcome(enum.Enum):
    HIT = "hit"  # a value is there: return it
    GRANTED = "granted"  # the caller holds the lease: load from the DB, then fill
    BUSY = "busy"  # another reader holds the lease: wait briefly or read through


@dataclass(frozen=True, slots=True)
class LeaseDecision:
    store: Entry | None
    outcome: LeaseOutcome


def decide_lease(current: Entry | None, token: bytes) -> LeaseDecision:
    """A reader missed; may it take the fill lease?"""
    if current is None:
        return LeaseDecision(Entry.lease(token), LeaseOutcome.GRANTED)
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


def is_hit(entry: Entry | None) -> bool:
    return entry is not None and entry.kind is Kind.VALUE
