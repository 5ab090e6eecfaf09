"""The protocols under test and the scenarios: each a fault pattern, applied in windows by
the phase's controller (``phase.py``)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...core import Durability, Strategy
from ...errors import ConfigError
from .injectors import CACHE_CALLS, Jitter

if TYPE_CHECKING:
    from .phase import Phase


@dataclass(frozen=True, slots=True)
class ProtocolSpec:
    """A strategy under the versioned protocol, or its naive twin (plain SET / DEL)."""

    strategy: Strategy
    versioned: bool

    @property
    def label(self) -> str:
        return self.strategy if self.versioned else f"naive {self.strategy}"


PROTOCOLS = (ProtocolSpec("write-through", False), ProtocolSpec("invalidate", False),
             ProtocolSpec("write-through", True), ProtocolSpec("invalidate", True))


def _timeouts(phase: Phase) -> None:
    p = (0.3, 1.0, 0.1)[phase.windows % 3]  # flaky, down, then rare, in turn
    phase.cache.faults.set(CACHE_CALLS, Jitter(timeout=p, late=0.5, late_max=0.02))


def _evict(phase: Phase) -> None:
    key = phase.cache_key(phase.rng.choice(phase.keys))
    getattr(phase.cache.inner, "evict", phase.cache.inner.delete)(key)  # memory: as pressure would
    phase.cache.faults.count("evictions")


def _flush(phase: Phase) -> None:
    phase.flush()
    phase.cache.faults.count("flushes")


def _net_delay(phase: Phase) -> None:
    assert phase.proxy is not None
    phase.proxy.delay(phase.rng.choice((0.0002, 0.0005, 0.001)), jitter=0.003)


def _net_loss(phase: Phase) -> None:
    assert phase.proxy is not None
    phase.proxy.drop(phase.rng.choice((0.01, 0.03)), seed=phase.rng.randrange(1 << 30), stall=0.1)


def _net_reset(phase: Phase) -> None:
    if phase.proxy is not None and phase.rng.random() < 0.2:
        phase.proxy.reset()
        phase.cache.faults.count("connection resets")


def _snapshot(phase: Phase) -> None:
    """Window start: the private Redis takes a snapshot (as its stock save schedule would)."""
    assert phase.own is not None
    phase.own.primary.command("SAVE")
    phase.cache.faults.count("snapshots")


def _crash_restart(phase: Phase) -> None:
    """Mid-window: the private Redis is killed and restarted; it comes back from the snapshot."""
    assert phase.own is not None
    phase.own.primary.crash()
    phase.own.primary.start()
    phase.cache.faults.count("restarts from a snapshot")


def _cut_replica(phase: Phase) -> None:
    """Window start: the replica catches up, then its link is cut (it misses what follows)."""
    assert phase.own is not None
    phase.own.cut_replica()


def _failover(phase: Phase) -> None:
    """Mid-window: the lagging replica is promoted and the service address moves to it."""
    assert phase.own is not None
    if phase.own.fail_over():
        phase.cache.faults.count("failovers to a lagging replica")


def _lose_replies(phase: Phase) -> None:
    """Window start: statements reach PostgreSQL, their replies are held on the wire."""
    assert phase.source_proxy is not None
    phase.source_proxy.lose_replies()


def _reset_source(phase: Phase) -> None:
    """Mid-window: the held connections die; commits whose reply was lost stay committed."""
    assert phase.source_proxy is not None
    phase.source_proxy.reset()
    phase.source_proxy.pass_through()
    phase.source.faults.count("connections reset with replies lost")


_PAUSED = Jitter(pause=0.3, pause_max=0.002)
_HELD = Jitter(pause=0.3, pause_max=0.002, after=True)


@dataclass(frozen=True)
class Scenario:
    """A fault pattern. Each window (``on`` s, then ``off`` s healed) sets ``cache`` jitter on
    the cache calls and ``source`` jitter on DB reads, calls ``inject``, then ``tick`` every
    ``tick_every`` s. ``wire``: needs one redis:// server behind the FaultProxy. ``kill``:
    child writers are SIGKILLed between their DB commit and their cache write."""

    name: str
    description: str
    cache: Jitter | None = None
    source: Jitter | None = None
    inject: Callable[[Phase], None] | None = None
    tick: Callable[[Phase], None] | None = None
    tick_every: float = 0.01
    on: float = 0.3
    off: float = 0.1
    wire: bool = False
    kill: Durability | None = None
    own: str | None = None  # "snapshot" | "failover": runs on private redis-servers it crashes
    source_wire: bool = False  # needs a postgresql:// source behind a FaultProxy
    lease_ttl: float | None = None
    hot_keys: int = 20
    write_ratio: float = 0.15
    delete_ratio: float = 0.02


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("cache-timeout", "cache calls time out after the DB commit, half land later "
             "(race 1, the seed's race)", inject=_timeouts, off=0.3),
    Scenario("hot-writers", "concurrent writers on 4 hot keys; cache writes paused 0-2 ms so "
             "they reorder (race 2)", cache=Jitter(pause=0.5, pause_max=0.002), on=0.5,
             hot_keys=4, write_ratio=0.4, delete_ratio=0.05),
    Scenario("fill-race", "DB reads held 0-3 ms before the fill, so fills race writes (race 3)",
             source=Jitter(pause=0.5, pause_max=0.003, after=True), on=0.4, write_ratio=0.25),
    Scenario("eviction", "hot keys evicted every ms while older writes and fills are in "
             "flight (race 6)", cache=_PAUSED, source=_HELD, tick=_evict, tick_every=0.001),
    Scenario("flush", "the cache emptied every 50 ms (restart / FLUSHALL) while writes and "
             "fills are in flight (race 5)", cache=_PAUSED, source=_HELD, tick=_flush,
             tick_every=0.05, on=0.5),
    Scenario("writer-killed", "writer processes SIGKILLed between DB commit and cache write, "
             "best-effort (race 4)", kill="best-effort"),
    Scenario("writer-killed-outbox", "the same with the transactional outbox; repair runs at "
             "the end (race 4)", kill="outbox"),
    Scenario("net-delay", "0.2-1 ms + 0-3 ms jitter per chunk on the wire to Redis",
             inject=_net_delay, wire=True, on=0.5, off=0.25),
    Scenario("net-loss", "1-3% of chunks stalled 100 ms (a lost packet); connections reset",
             inject=_net_loss, tick=_net_reset, tick_every=0.1, wire=True, on=0.5, off=0.25),
    Scenario("restart-snapshot", "a private Redis with the stock save schedule snapshots, "
             "takes more writes, is killed and restarts from the snapshot (issue 9.1)",
             inject=_snapshot, tick=_crash_restart, tick_every=0.1, own="snapshot", on=0.3,
             off=0.3, write_ratio=0.3),
    Scenario("replica-failover", "a replica's link is cut, writes go on, the replica is "
             "promoted and the service address moves to it (issue 9.2)", inject=_cut_replica,
             tick=_failover, tick_every=0.1, own="failover", on=0.3, off=0.3, write_ratio=0.3),
    Scenario("lost-reply", "PostgreSQL commits but its replies are held, then the connections "
             "die (issue 9.4)", inject=_lose_replies, tick=_reset_source, tick_every=0.05,
             source_wire=True, on=0.1, off=0.2, write_ratio=0.4),
    Scenario("slow-reads", "DB reads take up to 3 lease lifetimes (issue 9.7)",
             source=Jitter(pause=0.3, pause_max=0.15), lease_ttl=0.05, on=0.5, write_ratio=0.2),
)


def scenarios(names: str | Sequence[str] = "all") -> list[Scenario]:
    """The scenarios named (comma lists; ``all`` for every one), in table order."""
    parts = [names] if isinstance(names, str) else names
    wanted = {n.strip() for part in parts for n in part.split(",") if n.strip()}
    known = [s.name for s in SCENARIOS]
    unknown = sorted(wanted - {*known, "all"})
    if unknown or not wanted:
        raise ConfigError(f"unknown scenario(s) {unknown}; use all or some of: {', '.join(known)}")
    return [s for s in SCENARIOS if "all" in wanted or s.name in wanted]


def skip_reason(scenario: Scenario, protocol: ProtocolSpec, source_url: str, cache_url: str) -> str | None:
    """Why ``scenario`` cannot run on this pair (None if it can)."""
    scheme = cache_url.partition("://")[0].lower()
    if scenario.wire and scheme != "redis":
        return f"the fault proxy fronts one redis:// server; the cache is {scheme}://"
    if scenario.own and scheme != "redis":
        return f"runs on private redis-servers (a redis:// run); the cache is {scheme}://"
    if scenario.own and shutil.which("redis-server") is None:
        return "runs on private redis-servers: redis-server is not on PATH"
    if scenario.source_wire and not source_url.startswith(("postgres://", "postgresql://")):
        return "the fault proxy fronts a PostgreSQL source; this one is not"
    if scenario.kill and scheme == "memory":
        return "needs a cache shared across processes (Redis); memory:// lives in one process"
    if scenario.kill and ":memory:" in source_url:
        return "needs a source shared across processes; sqlite :memory: is not"
    if scenario.kill == "outbox" and not protocol.versioned:
        return "the outbox needs the versioned protocol"
    return None
