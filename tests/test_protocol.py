"""Property tests of the pure protocol: any interleaving, no server.

The model: one key; writers commit versions to a "database" and deliver their
cache writes in any order (or lose them); readers take leases, read the database
and fill, in any order; the cache may evict the key at any step. After every step:
a value in the cache is never older than a write already acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from writethrough.protocol import (
    Entry,
    Kind,
    LeaseOutcome,
    WriteOutcome,
    decide_fill,
    decide_lease,
    decide_write,
)

ACTIONS = ["put", "invalidate", "delete", "deliver", "lose", "miss", "read_db", "fill", "evict"]


@dataclass
class Model:
    on_empty: str = "tombstone"
    db_version: int = 0
    db_payload: bytes | None = None
    cache: Entry | None = None
    pending: list[tuple[Kind, int, bytes]] = field(default_factory=list)
    readers: list[dict[str, object]] = field(default_factory=list)
    acked: int = 0  # newest version whose cache write was acknowledged
    offered: int = 0  # newest version delivered to the cache
    tokens: int = 0

    def step(self, action: str, pick: int) -> None:
        if action in ("put", "invalidate", "delete"):
            self.db_version += 1
            self.db_payload = None if action == "delete" else b"v%d" % self.db_version
            kind = Kind.VALUE if action == "put" else Kind.TOMBSTONE
            self.pending.append((kind, self.db_version, self.db_payload or b""))
        elif action in ("deliver", "lose") and self.pending:
            kind, version, payload = self.pending.pop(pick % len(self.pending))
            if action == "lose":  # the cache write failed: never acknowledged
                return
            decision = decide_write(self.cache, kind, version, payload, self.on_empty)  # type: ignore[arg-type]
            if decision.store is not None:
                self.cache = decision.store
            self.acked = max(self.acked, version)
            self.offered = max(self.offered, version)
        elif action == "miss":
            self.tokens += 1
            token = b"r%d" % self.tokens
            lease = decide_lease(self.cache, token)
            if lease.store is not None:
                self.cache = lease.store
            if lease.outcome is LeaseOutcome.GRANTED:
                self.readers.append({"token": token, "row": None})
        elif action == "read_db" and self.readers:
            reader = self.readers[pick % len(self.readers)]
            if reader["row"] is None:
                reader["row"] = (self.db_version, self.db_payload)
        elif action == "fill" and self.readers:
            reader = self.readers[pick % len(self.readers)]
            if reader["row"] is None:
                return
            self.readers.remove(reader)
            version, payload = reader["row"]  # type: ignore[misc]
            filled = Entry.tombstone(version) if payload is None else Entry.value(version, payload)
            store = decide_fill(self.cache, reader["token"], filled)  # type: ignore[arg-type]
            if store is not None:
                self.cache = store
        elif action == "evict":
            self.cache = None

    def check(self) -> None:
        entry = self.cache
        if entry is None:
            return
        if entry.kind is Kind.VALUE:
            assert entry.version >= self.acked, f"stale value {entry} after ack of v{self.acked}"
            assert entry.payload == b"v%d" % entry.version, "value does not match its version"
        if entry.fresh:
            assert entry.version >= self.acked, f"fresh entry {entry} older than ack v{self.acked}"


steps = st.lists(st.tuples(st.sampled_from(ACTIONS), st.integers(0, 7)), max_size=60)


@settings(max_examples=3000, deadline=None)
@given(steps)
def test_no_interleaving_leaves_a_value_older_than_an_acknowledged_write(script: list[tuple[str, int]]) -> None:
    model = Model()
    for action, pick in script:
        model.step(action, pick)
        model.check()


@settings(max_examples=2000, deadline=None)
@given(steps)
def test_without_evictions_the_cache_never_ends_older_than_the_newest_version_offered(
    script: list[tuple[str, int]],
) -> None:
    model = Model()
    for action, pick in script:
        if action != "evict":
            model.step(action, pick)
    while model.pending:  # deliver what is still in flight
        model.step("deliver", 0)
    if model.cache is not None and model.cache.kind is not Kind.LEASE:
        assert model.cache.version >= model.offered


@settings(max_examples=1000, deadline=None)
@given(
    current=st.one_of(
        st.none(),
        st.builds(Entry.value, st.integers(0, 9), st.just(b"x")),
        st.builds(Entry.tombstone, st.integers(0, 9), st.booleans()),
        st.builds(Entry.lease, st.sampled_from([b"a", b"b"]), st.integers(0, 9), st.booleans()),
    ),
    kind=st.sampled_from([Kind.VALUE, Kind.TOMBSTONE]),
    version=st.integers(1, 10),
)
def test_a_write_never_lowers_the_version_and_retries_are_idempotent(
    current: Entry | None, kind: Kind, version: int
) -> None:
    first = decide_write(current, kind, version, b"p")
    after = first.store if first.store is not None else current
    if current is not None and current.kind is not Kind.LEASE and after is not None:
        assert after.version >= current.version
    again = decide_write(after, kind, version, b"p")
    assert again.store is None, "a retried write must change nothing"
    assert again.outcome in (WriteOutcome.SUPERSEDED, WriteOutcome.KEPT)


def test_write_through_on_an_empty_key_stores_a_tombstone_not_the_value() -> None:
    decision = decide_write(None, Kind.VALUE, 5, b"v5")
    assert decision.store == Entry.tombstone(5, fresh=False)
    assert decision.outcome is WriteOutcome.STORED_TOMBSTONE


def test_race_6_with_on_empty_value_can_leave_a_stale_value() -> None:
    """The documented trade-off: storing the value on an empty key reopens race 6."""
    model = Model(on_empty="value")
    for action, pick in [("put", 0), ("put", 0), ("deliver", 1), ("evict", 0), ("deliver", 0)]:
        model.step(action, pick)
    assert model.cache is not None and model.cache.version == 1 and model.acked == 2


def test_a_fill_whose_lease_was_replaced_by_a_write_is_dropped() -> None:
    lease = decide_lease(None, b"r1")
    assert lease.outcome is LeaseOutcome.GRANTED and lease.store is not None
    written = decide_write(lease.store, Kind.VALUE, 2, b"v2").store
    assert written == Entry.tombstone(2, fresh=False)
    assert decide_fill(written, b"r1", Entry.value(1, b"v1")) is None
    assert decide_fill(None, b"r1", Entry.value(1, b"v1")) is None  # and after an eviction


def test_invalidate_then_refill_under_lease_stores_the_value() -> None:
    current = Entry.value(1, b"v1")
    tomb = decide_write(current, Kind.TOMBSTONE, 2).store
    assert tomb == Entry.tombstone(2, fresh=True)
    lease = decide_lease(tomb, b"r")
    assert lease.store == Entry.lease(b"r", 2, True)
    assert decide_fill(lease.store, b"r", Entry.value(2, b"v2")) == Entry.value(2, b"v2")
    assert decide_fill(lease.store, b"other", Entry.value(2, b"v2")) is None
