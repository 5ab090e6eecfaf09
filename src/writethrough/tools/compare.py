"""Replay one seeded workload under each strategy and measure what it costs.

The scenario: "a user updates a profile and reads it right back", plus background
reads over Zipf-popular keys. Each strategy gets a warm-up (one put, then one get,
per key; not measured), then the same ops are replayed and timed.

    >>> from writethrough.tools.compare import Workload, compare
    >>> result = compare(workload=Workload(updates=300, keys=100))
    >>> [s.extra_db_reads_per_write for s in result.strategies]
    [0.0, 1.0]

No terminal output here: the CLI (``writethrough compare``) renders the result.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import math
import random
import secrets
import shutil
import string
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import writethrough

from ..checks import check_count
from ..errors import ConfigError
from ..store import PROTOCOLS, STRATEGIES, ProtocolName, Store, Strategy
from ..urls import parse_url
from .dblatency import db_latency

OpKind = Literal["write", "read_back", "read"]
Profile = dict[str, Any]
Progress = Callable[[str, int, int], None]
"""``progress(strategy, done, total)``: called now and then while a strategy runs."""

UPDATES_PER_DAY = 1_000_000
# Bounds that keep a run's memory small: ops are generated as they are replayed, so what
# stays is a latency sample per op (~36 bytes) and, per key, a Zipf weight, the version
# last written and the cached entry (the largest workload, 2M ops over 100k keys, peaked
# at 208 MiB RSS for one strategy on memory://, measured).
MAX_UPDATES = 1_000_000
MAX_KEYS = 100_000
MAX_OPS = 2_000_000
MAX_ZIPF = 10.0  # rank ** s must stay a finite float for a million keys
PROGRESS_EVERY = 250
_BIO_ALPHABET = string.ascii_lowercase + "      "


class Op(NamedTuple):
    """A step: ``("write", key, value)``, ``("read_back", key)`` or ``("read", key)``.

    ``new`` marks a write that creates its key, and that write's read-backs.
    """

    kind: OpKind
    key: str
    value: Profile | None = None
    new: bool = False


@dataclass(frozen=True)
class Workload:
    """The seeded workload's parameters.

    >>> ops = generate(Workload(updates=10, keys=5, seed=1))
    >>> ops[0].kind, ops[1].kind
    ('write', 'read_back')

    Writes pick a key uniformly (any user may edit a profile); background reads
    pick keys with Zipf(``zipf_s``) popularity, key ``user:0`` the most popular.
    """

    updates: int = 5000
    keys: int = 1000
    reads_after_write: int = 1
    background_reads_per_update: int = 4
    zipf_s: float = 1.1
    seed: int = 42
    value_bytes: int = 200
    new_keys: float = 0.0  # share of the writes that create a new key (read back like the rest)

    def __post_init__(self) -> None:
        for name, low, high in (
            ("updates", 1, MAX_UPDATES),
            ("keys", 1, MAX_KEYS),
            ("reads_after_write", 0, 100),
            ("background_reads_per_update", 0, 100),
            ("value_bytes", 1, 1 << 20),
        ):
            check_count(name, getattr(self, name), least=low, most=high)
        if self.ops > MAX_OPS:
            raise ConfigError(
                f"the workload has {self.ops:,} ops (updates x (1 + reads_after_write + "
                f"background_reads_per_update)); the limit is {MAX_OPS:,}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed must be an int, got {self.seed!r}")
        s = self.zipf_s
        if not isinstance(s, int | float) or isinstance(s, bool) or not 0 <= s <= MAX_ZIPF:
            raise ConfigError(f"zipf_s must be a finite number in [0, {MAX_ZIPF}], got {s!r}")
        n = self.new_keys
        if not isinstance(n, int | float) or isinstance(n, bool) or not 0 <= n <= 1:
            raise ConfigError(f"new_keys must be a share in [0, 1], got {n!r}")

    @property
    def ops(self) -> int:
        """How many ops :func:`generate` makes."""
        return self.updates * (1 + self.reads_after_write + self.background_reads_per_update)

    def key(self, index: int) -> str:
        return f"user:{index}"


def _profile(rng: random.Random, workload: Workload, index: int, revision: int) -> Profile:
    """A profile dict whose compact JSON is about ``workload.value_bytes`` long."""
    profile: Profile = {
        "name": f"User {index}",
        "balance": rng.randint(0, 1_000_000),
        "revision": revision,
        "bio": "",
    }
    size = len(json.dumps(profile, separators=(",", ":")))
    profile["bio"] = "".join(rng.choices(_BIO_ALPHABET, k=max(0, workload.value_bytes - size)))
    return profile


def initial_profiles(workload: Workload) -> list[tuple[str, Profile]]:
    """The warm-up values, one per key, deterministic from the seed."""
    rng = random.Random(f"warmup-{workload.seed}")
    return [(workload.key(i), _profile(rng, workload, i, 0)) for i in range(workload.keys)]


def generate(workload: Workload) -> list[Op]:
    """The ops of ``workload``, the same for the same parameters (``random.Random(seed)``).

    Per update: one write, ``reads_after_write`` read-backs of that key, then
    ``background_reads_per_update`` background reads over Zipf-popular keys. With
    ``new_keys`` > 0 that share of the writes creates a new key (``new:<n>``) instead
    of updating one of the ``keys``: read-after-create next to read-after-update.
    """
    return list(iter_ops(workload))


class Replay(Sequence[Op]):
    """The ops of a workload, made again on each pass (memory: none per op).

    What :func:`compare` replays: the same ops as :func:`generate`, without the list.
    """

    def __init__(self, workload: Workload) -> None:
        self.workload = workload

    def __len__(self) -> int:
        return self.workload.ops

    def __iter__(self) -> Iterator[Op]:
        return iter_ops(self.workload)

    def __getitem__(self, index: Any) -> Any:
        raise TypeError("a Replay is iterated, not indexed")


class Warmup(Sequence[tuple[str, Profile]]):
    """:func:`initial_profiles`, made again on each pass."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload

    def __len__(self) -> int:
        return self.workload.keys

    def __iter__(self) -> Iterator[tuple[str, Profile]]:
        rng = random.Random(f"warmup-{self.workload.seed}")
        return ((self.workload.key(i), _profile(rng, self.workload, i, 0))
                for i in range(self.workload.keys))

    def __getitem__(self, index: Any) -> Any:
        raise TypeError("a Warmup is iterated, not indexed")


def iter_ops(workload: Workload) -> Iterator[Op]:
    """:func:`generate`, one op at a time."""
    rng = random.Random(workload.seed)
    weights = [1.0 / rank**workload.zipf_s for rank in range(1, workload.keys + 1)]
    cumulative = list(itertools.accumulate(weights))
    total = cumulative[-1]
    for update in range(workload.updates):
        if workload.new_keys and rng.random() < workload.new_keys:
            index, key, new = workload.keys + update, f"new:{update}", True
        else:  # (no draw at all when new_keys is 0: the same ops as before it existed)
            index = rng.randrange(workload.keys)
            key, new = workload.key(index), False
        yield Op("write", key, _profile(rng, workload, index, update + 1), new)
        for _ in range(workload.reads_after_write):
            yield Op("read_back", key, None, new)
        for _ in range(workload.background_reads_per_update):
            pick = bisect.bisect_left(cumulative, rng.random() * total)
            yield Op("read", workload.key(min(pick, workload.keys - 1)))


@dataclass
class StrategyResult:
    """What one strategy did over the measured phase (warm-up excluded).

    >>> w = Workload(updates=100, keys=10)
    >>> with writethrough.open("sqlite:///:memory:", strategy="invalidate") as store:
    ...     r = run_strategy(store, generate(w), warmup=initial_profiles(w))
    >>> r.extra_db_reads_per_write, r.stale_reads
    (1.0, 0)
    """

    strategy: str
    protocol: str
    writes: int = 0
    reads: int = 0
    read_backs: int = 0
    background_reads: int = 0
    hits: int = 0
    misses: int = 0
    db_reads: int = 0
    read_back_db_reads: int = 0
    background_db_reads: int = 0
    background_misses: int = 0
    stale_reads: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    write_p50_us: float = 0.0
    write_p99_us: float = 0.0
    read_p50_us: float = 0.0
    read_p99_us: float = 0.0
    read_back_p50_us: float = 0.0
    read_back_p99_us: float = 0.0
    creates: int = 0  # writes that created their key
    create_read_backs: int = 0  # read-backs right after such a write
    create_read_back_db_reads: int = 0
    create_read_back_p50_us: float = 0.0
    create_read_back_p99_us: float = 0.0
    update_read_back_p50_us: float = 0.0
    update_read_back_p99_us: float = 0.0
    elapsed_s: float = 0.0
    namespace: str = ""

    @property
    def hit_ratio(self) -> float:
        looked = self.hits + self.misses
        return self.hits / looked if looked else 0.0

    @property
    def extra_db_reads_per_write(self) -> float:
        """DB reads caused by read-back gets, per write."""
        return self.read_back_db_reads / self.writes if self.writes else 0.0

    @property
    def extra_db_reads_per_create(self) -> float:
        """DB reads caused by the read-backs of writes that created their key, per such write."""
        return self.create_read_back_db_reads / self.creates if self.creates else 0.0

    @property
    def extra_db_reads_per_update(self) -> float:
        """DB reads caused by the read-backs of writes that updated an existing key, per write."""
        updates = self.writes - self.creates
        db_reads = self.read_back_db_reads - self.create_read_back_db_reads
        return db_reads / updates if updates else 0.0

    @property
    def background_db_reads_per_write(self) -> float:
        return self.background_db_reads / self.writes if self.writes else 0.0

    @property
    def background_miss_ratio(self) -> float:
        return self.background_misses / self.background_reads if self.background_reads else 0.0

    @property
    def extra_db_queries_per_day(self) -> float:
        """Read-back DB reads extrapolated to 1,000,000 updates/day."""
        return self.extra_db_reads_per_write * UPDATES_PER_DAY

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            hit_ratio=round(self.hit_ratio, 6),
            extra_db_reads_per_write=round(self.extra_db_reads_per_write, 6),
            extra_db_reads_per_create=round(self.extra_db_reads_per_create, 6),
            extra_db_reads_per_update=round(self.extra_db_reads_per_update, 6),
            background_db_reads_per_write=round(self.background_db_reads_per_write, 6),
            background_miss_ratio=round(self.background_miss_ratio, 6),
            extra_db_queries_per_day_at_1m_updates=round(self.extra_db_queries_per_day),
            background_db_queries_per_day_at_1m_updates=round(
                self.background_db_reads_per_write * UPDATES_PER_DAY
            ),
            elapsed_s=round(self.elapsed_s, 3),
        )
        return data


@dataclass
class CompareResult:
    """All strategies' results for one workload.

    >>> result = compare(workload=Workload(updates=300, keys=100))
    >>> result.get("invalidate").extra_db_reads_per_write
    1.0
    >>> result.extrapolation()
    'At 1,000,000 updates/day, invalidate costs ~1,000,000 extra DB queries/day; write-through ~0.'
    """

    workload: Workload
    strategies: list[StrategyResult]
    source: str
    cache: str
    protocol: str
    ttl: float
    source_temporary: bool
    db_latency_ms: float = 0.0
    db_latency_how: str = "none"  # "none" | "fault proxy" | "source wrapper"

    def get(self, strategy: str) -> StrategyResult:
        for result in self.strategies:
            if result.strategy == strategy:
                return result
        raise KeyError(strategy)

    def to_json(self) -> dict[str, Any]:
        workload = asdict(self.workload)
        workload.update(
            source=self.source,
            source_temporary=self.source_temporary,
            cache=self.cache,
            protocol=self.protocol,
            ttl=self.ttl,
            db_latency_ms=self.db_latency_ms,
            db_latency_how=self.db_latency_how,
            warmup="one put, then one get, per key before each strategy; not measured",
            updates_per_day_extrapolated=UPDATES_PER_DAY,
        )
        return {"strategies": [s.to_json() for s in self.strategies], "workload": workload}

    def extrapolation(self) -> str:
        """One sentence: extra DB queries/day at 1,000,000 updates/day, per strategy."""
        ranked = sorted(self.strategies, key=lambda s: -s.extra_db_queries_per_day)
        parts = [f"{s.strategy} ~{round(s.extra_db_queries_per_day):,}" for s in ranked]
        if parts:
            parts[0] = parts[0].replace(" ~", " costs ~", 1) + " extra DB queries/day"
        return f"At {UPDATES_PER_DAY:,} updates/day, " + "; ".join(parts) + "."

    def background_note(self) -> str:
        """The background reads' own DB queries, reported apart from the read-backs'."""
        parts = [
            f"{s.strategy} ~{round(s.background_db_reads_per_write * UPDATES_PER_DAY):,}/day "
            f"(miss ratio {s.background_miss_ratio:.2%})"
            for s in self.strategies
        ]
        head = f"Background reads' own DB queries at {UPDATES_PER_DAY:,} updates/day (apart): "
        return head + "; ".join(parts) + "."


def _percentile_us(sorted_ns: Sequence[int], pct: float) -> float:
    """Nearest-rank percentile of nanosecond samples, in microseconds."""
    if not sorted_ns:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_ns)))
    return round(sorted_ns[rank - 1] / 1000, 3)


def run_strategy(
    store: Store,
    ops: Sequence[Op],
    *,
    warmup: Sequence[tuple[str, Profile]] = (),
    progress: Progress | None = None,
) -> StrategyResult:
    """Warm ``store`` up with ``warmup`` (not measured), then replay and time ``ops``.

    A get is a stale read when its version is older than the last version a put
    of that key returned. DB reads are counted from ``store.stats`` deltas.
    """
    stats = store.stats
    strategy = store.settings.strategy
    result = StrategyResult(strategy, store.settings.protocol, namespace=store.namespace)
    total = len(warmup) * 2 + len(ops)
    acked: dict[str, int] = {}
    for key, value in warmup:  # every key exists in the DB...
        acked[key] = store.put(key, value).version
    for key, _ in warmup:  # ...and is cached
        store.get_versioned(key)
    if progress is not None:
        progress(strategy, len(warmup) * 2, total)

    outcomes: Counter[str] = Counter()
    write_ns: list[int] = []
    read_ns: list[int] = []
    read_back_ns: list[int] = []
    create_ns: list[int] = []  # read-backs after a create
    update_ns: list[int] = []  # read-backs after an update
    clock = time.perf_counter_ns
    before = stats.snapshot()
    started = time.perf_counter()
    for done, op in enumerate(ops, 1):
        if op.kind == "write":
            t0 = clock()
            written = store.put(op.key, op.value)
            write_ns.append(clock() - t0)
            acked[op.key] = written.version
            outcomes[written.cache.value] += 1
            result.creates += op.new
        else:
            reads0, misses0 = stats.source_reads, stats.misses
            t0 = clock()
            found = store.get_versioned(op.key)
            elapsed = clock() - t0
            db_reads = stats.source_reads - reads0
            read_ns.append(elapsed)
            if (0 if found is None else found.version) < acked.get(op.key, 0):
                result.stale_reads += 1
            if op.kind == "read_back":
                read_back_ns.append(elapsed)
                result.read_back_db_reads += db_reads
                if op.new:
                    create_ns.append(elapsed)
                    result.create_read_backs += 1
                    result.create_read_back_db_reads += db_reads
                else:
                    update_ns.append(elapsed)
            else:
                result.background_reads += 1
                result.background_db_reads += db_reads
                result.background_misses += stats.misses - misses0
        if progress is not None and done % PROGRESS_EVERY == 0:
            progress(strategy, len(warmup) * 2 + done, total)
    result.elapsed_s = time.perf_counter() - started
    after = stats.snapshot()
    if progress is not None:
        progress(strategy, total, total)

    result.writes = len(write_ns)
    result.reads = len(read_ns)
    result.read_backs = len(read_back_ns)
    result.hits = after["hits"] - before["hits"]
    result.misses = after["misses"] - before["misses"]
    result.db_reads = after["source_reads"] - before["source_reads"]
    result.outcomes = dict(sorted(outcomes.items()))
    measured = (
        ("write", write_ns),
        ("read", read_ns),
        ("read_back", read_back_ns),
        ("create_read_back", create_ns),
        ("update_read_back", update_ns),
    )
    for what, samples in measured:
        samples.sort()
        for pct in (50, 99):
            setattr(result, f"{what}_p{pct}_us", _percentile_us(samples, pct))
    return result


def _redact(url: str, kind: str) -> str:
    from ..caches import BACKENDS as CACHES
    from ..sources import BACKENDS as SOURCES

    return parse_url(url, kind=kind, schemes=SOURCES if kind == "source" else CACHES).redacted()


def compare(
    source_url: str | None = None,
    cache_url: str = "memory://",
    workload: Workload | None = None,
    strategies: Sequence[Strategy] = STRATEGIES,
    protocol: ProtocolName = "versioned",
    *,
    ttl: float = 300.0,
    db_latency_ms: float = 0.0,
    progress: Progress | None = None,
) -> CompareResult:
    """Run ``workload`` under each of ``strategies``, each in a fresh namespace.

    ``source_url=None`` uses a fresh SQLite file in a temporary directory, deleted
    afterwards. ``db_latency_ms`` puts that much round-trip delay in front of the
    database (``tools.dblatency``: a TCP fault proxy before PostgreSQL, a delaying
    source wrapper for SQLite). Raises ConfigError (and other WritethroughErrors)
    on bad settings.
    """
    workload = workload or Workload()
    if not strategies:
        raise ConfigError("give at least one strategy")
    for name in strategies:
        if name not in STRATEGIES:
            raise ConfigError(f"unknown strategy {name!r}; use one of {STRATEGIES}")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; use one of {PROTOCOLS}")
    tmpdir = None
    if source_url is None:
        tmpdir = tempfile.mkdtemp(prefix="writethrough-compare-")
        source_url = f"sqlite:///{Path(tmpdir, 'compare.db')}"
    try:
        shown_source = _redact(source_url, "source")
        shown_cache = _redact(cache_url, "cache")
        ops, warmup = Replay(workload), Warmup(workload)
        results: list[StrategyResult] = []
        with db_latency(source_url, db_latency_ms) as delayed:
            for name in strategies:
                # The seed only by digest: any int is a seed, a namespace is at most 64 characters.
                seed_tag = hashlib.sha256(str(workload.seed).encode()).hexdigest()[:8]
                namespace = f"compare-{name}-{seed_tag}-{secrets.token_hex(4)}"
                with writethrough.open(
                    source=delayed.url,
                    cache=cache_url,
                    strategy=name,
                    protocol=protocol,
                    ttl=ttl,
                    namespace=namespace,
                ) as store:
                    delayed.wrap(store)
                    results.append(run_strategy(store, ops, warmup=warmup, progress=progress))
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return CompareResult(
        workload=workload,
        strategies=results,
        source=shown_source,
        cache=shown_cache,
        protocol=protocol,
        ttl=ttl,
        source_temporary=tmpdir is not None,
        db_latency_ms=delayed.ms,
        db_latency_how=delayed.how,
    )
