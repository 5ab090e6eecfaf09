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
    WriteDecision,
    WriteOutcome,
    decide_fill,
    decide_lease,
    decide_renew,
    decide_write,
    visible,
)

ACTIONS = ["put", "invalidate", "delete", "deliver", "lose", "miss", "read_db", "fill", "evict"]


@dataclass
class Model:
    """One key. Writers deliver their cache writes in any order; a write-through onto
    a key that proves nothing takes a writer lease (``cold="lease"``) and is
    acknowledged only after its own read of the database and its fill."""

    cold: str = "lease"
    db_version: int = 0
    db_payload: bytes | None = None
    cache: Entry | None = None
    pending: list[tuple[Kind, int, bytes, bytes]] = field(default_factory=list)
    readers: list[dict[str, object]] = field(default_factory=list)
    acked: int = 0  # newest version whose cache write was acknowledged
    offered: int = 0  # newest version delivered to the cache
    tokens: int = 0

    def step(self, action: str, pick: int) -> None:
        if action in ("put", "invalidate", "delete"):
            self.db_version += 1
            self.db_payload = None if action == "delete" else b"v%d" % self.db_version
            kind = Kind.VALUE if action == "put" else Kind.TOMBSTONE
            self.tokens += 1
            self.pending.append((kind, self.db_version, self.db_payload or b"", b"w%d" % self.tokens))
        elif action in ("deliver", "lose") and self.pending:
            kind, version, payload, token = self.pending.pop(pick % len(self.pending))
            if action == "lose":  # the cache write failed: never acknowledged
                return
            decision = decide_write(
                self.cache, kind, version, payload, token if self.cold == "lease" else None
            )
            if decision.store is not None:
                self.cache = decision.store
            self.offered = max(self.offered, version)
            if decision.outcome is WriteOutcome.LEASED:  # acknowledged after its fill
                self.readers.append({"token": token, "row": None, "writes": version})
            else:
                self.acked = max(self.acked, version)
        elif action == "miss":
            self.tokens += 1
            token = b"r%d" % self.tokens
            lease = decide_lease(self.cache, token)
            if lease.store is not None:
                self.cache = lease.store
            if lease.outcome is LeaseOutcome.GRANTED:
                self.readers.append({"token": token, "row": None, "writes": 0})
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
            self.acked = max(self.acked, int(reader["writes"]))  # type: ignore[call-overload]
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
@given(steps, st.sampled_from(["lease", "tombstone"]))
def test_no_interleaving_leaves_a_value_older_than_an_acknowledged_write(
    script: list[tuple[str, int]], cold: str
) -> None:
    model = Model(cold=cold)
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
    while model.readers:  # and let the lease holders finish
        model.step("read_db", 0)
        model.step("fill", 0)
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
    token=st.sampled_from([None, b"a", b"w"]),
)
def test_a_write_never_lowers_the_version_and_retries_are_idempotent(
    current: Entry | None, kind: Kind, version: int, token: bytes | None
) -> None:
    first = decide_write(current, kind, version, b"p", token)
    after = first.store if first.store is not None else current
    if current is not None and current.kind is not Kind.LEASE and after is not None:
        assert after.version >= current.version
    again = decide_write(after, kind, version, b"p", token)
    assert again.store is None, "a retried write must change nothing"
    assert again.outcome in (WriteOutcome.SUPERSEDED, WriteOutcome.KEPT, WriteOutcome.LEASED)
    assert (again.outcome is WriteOutcome.LEASED) == (first.outcome is WriteOutcome.LEASED)


def test_cold_write_through_takes_a_writer_lease_then_fills_the_row_it_reads() -> None:
    decision = decide_write(None, Kind.VALUE, 5, b"v5", b"w")
    assert decision == WriteDecision(Entry.lease(b"w", 5, False), WriteOutcome.LEASED)
    # A newer write in between replaces the lease: the writer's fill is dropped.
    newer = decide_write(decision.store, Kind.VALUE, 6, b"v6", b"w2").store
    assert newer == Entry.lease(b"w2", 6, False)
    assert decide_fill(newer, b"w", Entry.value(5, b"v5")) is None
    # An older write arriving at the lease keeps it (the lease's version is the writer's).
    assert decide_write(decision.store, Kind.VALUE, 4, b"v4", b"w0").outcome is WriteOutcome.KEPT
    # Untouched, the writer's fill of what it read lands.
    assert decide_fill(decision.store, b"w", Entry.value(5, b"v5")) == Entry.value(5, b"v5")


def test_without_a_token_a_cold_write_through_stores_a_tombstone_not_the_value() -> None:
    decision = decide_write(None, Kind.VALUE, 5, b"v5")
    assert decision.store == Entry.tombstone(5, fresh=False)
    assert decision.outcome is WriteOutcome.STORED_TOMBSTONE


def test_a_tombstone_landing_on_an_empty_key_is_never_fresh() -> None:
    """Issue 9.5: a fresh tombstone there would let a delayed older write-through store
    a value older than one acknowledged before an eviction (race 6 reopened)."""
    tomb = decide_write(None, Kind.TOMBSTONE, 3).store
    assert tomb == Entry.tombstone(3, fresh=False)
    late = decide_write(tomb, Kind.VALUE, 4, b"v4")
    assert late.outcome is WriteOutcome.STORED_TOMBSTONE and late.store is not None
    assert late.store.kind is Kind.TOMBSTONE


def test_versions_compare_exactly_beyond_two_to_the_53() -> None:
    for base in (2**53, 2**63 - 1, 10**19 * 1_800_000_000):
        current = Entry.value(base, b"old")
        decision = decide_write(current, Kind.VALUE, base + 1, b"new")
        assert decision.store == Entry.value(base + 1, b"new")
        assert decide_write(decision.store, Kind.VALUE, base, b"old").outcome is WriteOutcome.SUPERSEDED


def test_an_entry_below_the_epoch_floor_is_absent() -> None:
    assert visible(Entry.value(5, b"x"), 10**19) is None
    assert visible(Entry.value(10**19 + 1, b"x"), 10**19) == Entry.value(10**19 + 1, b"x")


def test_only_the_holder_renews_a_lease() -> None:
    assert decide_renew(Entry.lease(b"a", 1), b"a")
    assert not decide_renew(Entry.lease(b"a", 1), b"b")
    assert not decide_renew(Entry.value(1, b"a"), b"a")
    assert not decide_renew(None, b"a")


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


def test_an_older_write_through_after_an_eviction_cannot_store_its_value() -> None:
    """v3 acknowledged (its writer lease filled), evicted; the delayed v1 and v2 land."""
    model = Model(cold="lease")
    for action, pick in [("put", 0), ("put", 0), ("put", 0), ("deliver", 2), ("read_db", 0),
                         ("fill", 0), ("evict", 0), ("deliver", 0), ("deliver", 0)]:
        model.step(action, pick)
        model.check()
    assert model.acked == 3
    assert model.cache is not None and model.cache.kind is not Kind.VALUE
