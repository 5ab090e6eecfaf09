"""Chaos: run the store under injected faults and check every read against the guarantee.

    >>> from writethrough.tools.chaos import run_chaos, scenarios
    >>> result = run_chaos("sqlite:///chaos.db", "memory://", scenarios("all"), ops=3000, clients=4)
    >>> [(p.protocol.label, p.report.stale_reads_after_ack) for p in result.protocols]

Each (protocol, scenario) pair is a *phase* with its own namespace, cache and source:
client threads, spread over a few stores (app processes sharing the cache), do a seeded
mix of put / get / delete on a few hot keys through ``checker.Recorder``; a controller
thread turns the scenario's faults on and off; then everything is healed, repairs run,
and ``checker.check`` reads the history with the final cache and DB versions. Faults are
injected at controlled points (``ChaosCache`` / ``ChaosSource``: pauses, and timeouts
that may still land later) and on the wire (``FaultProxy`` in front of Redis). No
terminal output here: ``writethrough chaos`` renders the result.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from ..caches import BACKENDS as CACHES
from ..caches import open_cache
from ..core import Durability, Settings, Strategy
from ..errors import CacheTimeout, ConfigError, SourceTimeout, WritethroughError
from ..protocol import Kind
from ..sources import BACKENDS as SOURCES
from ..sources import open_source
from ..store import Store
from ..urls import parse_url
from .checker import MAX_MESSAGES, Op, Recorder, Report, check
from .faultproxy import FaultProxy
from .faults import FaultyCache, FaultySource

TTL = 3600.0  # long on purpose: stale data must last until the final check, not expire
KILLED_WRITERS = 2  # child processes per writer-killed phase, each on its own key
CACHE_WRITES = ("write", "set", "delete")  # a writer's cache call, under either protocol
CACHE_CALLS = (*CACHE_WRITES, "fill")  # ... and a reader's fill
Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``: ops done in the whole run, a few times a second."""


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


# -- faults at controlled points ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Jitter:
    """Faults of one operation, per call: a pause of up to ``pause_max`` s (before the call,
    or ``after`` it), or a timeout that with probability ``late`` still lands later."""

    pause: float = 0.0
    pause_max: float = 0.0
    after: bool = False
    timeout: float = 0.0
    late: float = 0.0
    late_max: float = 0.02


class Injector:
    """The ``Jitter`` of each operation of one wrapper, and what it injected (``counts``).

    A late call runs on a timer thread, as a request held on the wire reaches the server
    after its client gave up."""

    def __init__(self, seed: str, error: Callable[[str], Exception]) -> None:
        self.jitter: dict[str, Jitter] = {}
        self.counts: Counter[str] = Counter()
        self._rng, self._error = random.Random(seed), error
        self._lock = threading.Lock()
        self._late: list[threading.Timer] = []

    def set(self, ops: Sequence[str], jitter: Jitter) -> None:
        self.jitter.update(dict.fromkeys(ops, jitter))

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.counts[what] += n

    def drain(self) -> None:
        """Wait until every late call has landed."""
        with self._lock:
            late, self._late = self._late, []
        for timer in late:
            timer.join(5.0)

    def call(self, op: str, do: Callable[[], Any], forward: Callable[[str, Callable[[], Any]], Any]) -> Any:
        j, rng = self.jitter.get(op), self._rng
        if j is None:
            return forward(op, do)
        if j.timeout and rng.random() < j.timeout:
            if j.late and rng.random() < j.late:
                self._land_later(rng.uniform(0.0, j.late_max), do)
                self.count(f"{op} timeouts landing late")
            self.count(f"{op} timeouts")
            raise self._error(f"chaos: {op} timed out (injected)")
        if not (j.pause and rng.random() < j.pause):
            return forward(op, do)
        self.count(f"{op} pauses")
        pause = rng.uniform(0.0, j.pause_max)
        if not j.after:
            time.sleep(pause)
        result = forward(op, do)
        if j.after:  # the call was done; its caller is slow to use the result
            time.sleep(pause)
        return result

    def _land_later(self, delay: float, do: Callable[[], Any]) -> None:
        def land() -> None:
            try:
                do()
            except Exception:
                self.count("late calls failed")

        timer = threading.Timer(delay, land)
        timer.daemon = True
        timer.start()
        with self._lock:
            if len(self._late) > 256:
                self._late = [t for t in self._late if t.is_alive()]
            self._late.append(timer)


class ChaosCache(FaultyCache):
    """``FaultyCache`` plus per-call ``Jitter``, shared by a phase's stores (close: no-op)."""

    def __init__(self, inner: Any, seed: str) -> None:
        super().__init__(inner)
        self.faults = Injector(seed, CacheTimeout)

    def open(self) -> None:
        self.inner.open()

    def call(self, op: str, do: Callable[[], Any]) -> Any:
        return self.faults.call(op, do, super().call)

    def close(self) -> None:
        """The phase closes the real cache once its stores are closed."""


class ChaosSource(FaultySource):
    """``FaultySource`` plus per-call ``Jitter``; forwards the outbox if the source has one."""

    def __init__(self, inner: Any, seed: str) -> None:
        super().__init__(inner)
        self.faults = Injector(seed, SourceTimeout)
        if hasattr(inner, "write_logged"):  # what durability="outbox" looks for
            for name in ("write_logged", "delete_logged", "outbox_claim", "outbox_done"):
                setattr(self, name, getattr(inner, name))

    def open(self) -> None:
        self.inner.open()

    def call(self, op: str, do: Callable[[], Any]) -> Any:
        return self.faults.call(op, do, super().call)

    def close(self) -> None:
        """The phase closes the real source once its stores are closed."""


# -- scenarios -------------------------------------------------------------------------------


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
    if scenario.kill and scheme == "memory":
        return "needs a cache shared across processes (Redis); memory:// lives in one process"
    if scenario.kill and ":memory:" in source_url:
        return "needs a source shared across processes; sqlite :memory: is not"
    if scenario.kill == "outbox" and not protocol.versioned:
        return "the outbox needs the versioned protocol"
    return None


# -- a phase: one protocol under one scenario -------------------------------------------------


@dataclass
class PhaseResult:
    """The checker's report on one (scenario, protocol); ``skipped`` says why it did not run.

    ``killed_writer_divergence``: keys the SIGKILLed best-effort writers left stale, expected
    (race 4 is TTL-bounded without the outbox) and kept out of ``report.final_divergence``."""

    scenario: Scenario
    protocol: ProtocolSpec
    skipped: str | None = None
    report: Report = field(default_factory=Report)
    killed_writer_divergence: int = 0
    ops: int = 0
    seconds: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        p = self.protocol
        data = {"protocol": p.strategy, "label": p.label, "versioned": p.versioned, "skipped": self.skipped}
        if self.skipped is None:
            data.update(self.report.to_json(), failed_ops=self.report.failed_ops,
                        killed_writer_best_effort_divergence=self.killed_writer_divergence,
                        ops=self.ops, seconds=round(self.seconds, 3), outcomes=self.outcomes,
                        faults=self.faults, store_stats=self.stats, notes=self.notes)
        return data


@dataclass(frozen=True)
class RunConfig:
    source_url: str
    cache_url: str
    clients: int
    stores: int
    seed: int
    run_id: str
    allow_flushall: bool


class Phase:
    """What a scenario's hooks act on: the phase's cache, source, proxy, keys and rng."""

    def __init__(self, scenario: Scenario, protocol: ProtocolSpec, config: RunConfig) -> None:
        self.scenario, self.protocol, self.config = scenario, protocol, config
        self.label = f"{protocol.label.replace(' ', '-')}/{scenario.name}"
        short = "".join(w[0] for w in protocol.label.replace(" ", "-").split("-"))
        self.namespace = f"chaos{config.run_id}.{short}.{scenario.name}"
        self.rng = random.Random(f"{config.seed}/{self.label}")
        self.windows = 0  # fault windows opened so far
        self.done: list[int] = []  # ops done by each client
        self.tail_from = 0  # from this many ops done on, the fault window stays open
        self.keys = [f"k{i}" for i in range(scenario.hot_keys)]
        self.cum_weights = list(itertools.accumulate(1 / (i + 1) ** 1.1 for i in range(len(self.keys))))
        self.killed_keys = [f"killed{i}" for i in range(KILLED_WRITERS)] if scenario.kill else []
        self.recorder = Recorder()
        self.notes: list[str] = []
        self.errors: list[BaseException] = []
        self.stores: list[Store] = []
        self.proxy: FaultProxy | None = None
        cache_url = config.cache_url
        if scenario.wire:
            host, port = parse_url(cache_url, kind="cache", schemes={"redis": ""}).hosts[0]
            self.proxy = FaultProxy(host, port or 6379).start()
            cache_url = _via(cache_url, self.proxy.port)
        pg = config.source_url.startswith("postgres") and "pool_max=" not in config.source_url
        try:  # postgres: a connection for each client and repair worker, and a spare
            self.cache = ChaosCache(open_cache(cache_url), f"{self.label}/cache")
            inner = open_source(config.source_url, namespace=self.namespace,
                                **({"pool_max": config.clients + config.stores + 2} if pg else {}))
        except BaseException:
            if hasattr(self, "cache"):
                self.cache.inner.close()
            if self.proxy is not None:
                self.proxy.stop()
            raise
        self.source = ChaosSource(inner, f"{self.label}/source")

    def cache_key(self, key: str) -> str:
        return f"wt:{self.namespace}:{key}"

    def key_label(self, key: str) -> str:
        return f"{self.label}/{key}"

    def open_stores(self) -> None:
        settings = Settings(strategy=self.protocol.strategy, ttl=TTL,
                            protocol="versioned" if self.protocol.versioned else "naive",
                            durability="outbox" if self.scenario.kill == "outbox" else "best-effort")
        for _ in range(max(1, min(self.config.stores, self.config.clients))):
            self.stores.append(Store(self.source, self.cache, namespace=self.namespace,
                                     settings=settings).open())

    def heal(self) -> None:
        self.cache.faults.jitter.clear()
        self.source.faults.jitter.clear()
        if self.proxy is not None:
            self.proxy.pass_through()

    def flush(self) -> None:
        """Empty the cache as a restart would. FLUSHALL + SCRIPT FLUSH only if allowed (the
        server may be shared); else delete this phase's keys."""
        client = getattr(self.cache.inner, "client", None)
        if client is None:
            self.cache.inner.clear()  # memory://
        elif self.config.allow_flushall:
            client.flushall()
            client.script_flush()
        else:
            self.delete_keys()

    def delete_keys(self) -> None:
        """Delete this phase's keys from Redis (SCAN MATCH wt:<namespace>:* + DEL)."""
        client = self.cache.inner.client
        for key in client.scan_iter(match=f"wt:{self.namespace}:*", count=1000):
            client.delete(key)

    def close(self) -> None:
        """Close the stores, remove this phase's keys and rows (the servers may be shared),
        then close the real cache and source."""
        try:
            for store in self.stores:
                store.close()
            self.cache.faults.drain()
            if getattr(self.cache.inner, "client", None) is not None:
                _retry(self.delete_keys)
            if (truncate := getattr(self.source.inner, "truncate_namespace", None)) is not None:
                truncate()
        finally:
            self.cache.inner.close()
            self.source.inner.close()
            if self.proxy is not None:
                self.proxy.stop()


def _via(url: str, port: int) -> str:
    """``url`` pointed at 127.0.0.1:``port`` (credentials, database and options kept)."""
    scheme, _, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    netloc, qmark, options = netloc.partition("?")
    userinfo, at, _ = netloc.rpartition("@")
    return f"{scheme}://{userinfo}{at}127.0.0.1:{port}{qmark}{options}{slash}{tail}"


def _client(phase: Phase, index: int, ops: int, store: Store, done: list[int]) -> None:
    s, rec, killed = phase.scenario, phase.recorder, phase.killed_keys
    rng = random.Random(f"{phase.config.seed}/{s.name}/{index}")  # the same ops under every protocol
    client, keys, weights = f"{phase.label}/c{index}", phase.keys, phase.cum_weights
    try:
        for i in range(ops):
            r, key = rng.random(), rng.choices(keys, cum_weights=weights)[0]
            try:
                if r < s.write_ratio:
                    rec.write(client, phase.key_label(key), partial(store.put, key, i))
                elif r < s.write_ratio + s.delete_ratio:
                    rec.delete(client, phase.key_label(key), partial(store.delete, key))
                else:
                    if killed and rng.random() < 0.1:
                        key = rng.choice(killed)
                    rec.read(client, phase.key_label(key), partial(store.get_versioned, key))
            except WritethroughError:
                pass  # recorded with ok=False: the report counts it in failed_ops
            done[index] = i + 1
    except BaseException as exc:
        phase.errors.append(exc)


def _controller(phase: Phase, stop: threading.Event) -> None:
    s = phase.scenario
    try:
        while not stop.is_set():
            if s.cache is not None:
                phase.cache.faults.set(CACHE_CALLS, s.cache)
            if s.source is not None:
                phase.source.faults.set(("read",), s.source)
            if s.inject is not None:
                s.inject(phase)
            end = time.monotonic() + s.on
            # The phase ends inside a window: the final check sees what the faults left.
            while not stop.is_set() and (time.monotonic() < end or sum(phase.done) >= phase.tail_from):
                if s.tick is not None:
                    try:
                        s.tick(phase)
                    except Exception as exc:  # a cache too slow to evict from: no fault this time
                        phase.cache.faults.count(f"failed ticks ({type(exc).__name__})")
                stop.wait(0.01 if s.tick is None else s.tick_every)
            phase.heal()
            stop.wait(s.off)
            phase.windows += 1
    except BaseException as exc:
        phase.errors.append(exc)
    finally:
        phase.heal()


def _killed_writers(phase: Phase) -> None:
    """Child writers (``python -m writethrough.tools.chaos``), each SIGKILLed mid-write."""
    p, c = phase.protocol, phase.config
    procs = []
    for key in phase.killed_keys:
        config = {"source": c.source_url, "cache": c.cache_url, "namespace": phase.namespace,
                  "strategy": p.strategy, "protocol": "versioned" if p.versioned else "naive",
                  "durability": phase.scenario.kill, "key": key, "rounds": 2, "pause": 0.05}
        procs.append(subprocess.Popen([sys.executable, "-m", __name__, json.dumps(config)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        for key, proc in zip(phase.killed_keys, procs, strict=True):
            try:
                out, err = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                phase.notes.append(f"writer on {key} hung; stopped after 120 s")
                continue
            killed = proc.returncode == -signal.SIGKILL
            phase.cache.faults.count("writers killed", killed)
            if not killed:
                phase.notes.append(f"writer on {key} exited with {proc.returncode}: {err.strip()[-300:]}")
            for line in out.splitlines():
                op = Op.from_json(json.loads(line))
                phase.recorder.record(replace(op, client=f"{phase.label}/{key}", key=phase.key_label(key)))
    except BaseException as exc:
        phase.errors.append(exc)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def killed_writer(config: dict[str, Any]) -> None:
    """In a child process: write a key and read it back (printing each op as a JSON line),
    twice, then die by SIGKILL after the next write's DB commit, before its cache write."""
    import writethrough

    key, rec = str(config["key"]), Recorder()
    store = writethrough.open(source=config["source"], cache=config["cache"], ttl=TTL,
                              namespace=config["namespace"], strategy=config["strategy"],
                              protocol=config["protocol"], durability=config["durability"],
                              repair_worker=False)
    for i in range(int(config["rounds"])):
        rec.write("w", key, partial(store.put, key, i))
        rec.read("w", key, partial(store.get_versioned, key))
        for op in rec.ops[-2:]:
            print(json.dumps(op.to_json()), flush=True)
        time.sleep(float(config["pause"]))

    def die(*args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    for name in CACHE_WRITES:
        setattr(store.cache, name, die)
    store.put(key, -1)


def _settle(phase: Phase) -> None:
    """Heal everything; let late calls land, the repair workers finish, the outbox drain."""
    phase.heal()
    phase.cache.faults.drain()
    if phase.proxy is not None:
        time.sleep(0.25)  # chunks stalled on the wire land, or their connections die
    deadline = time.monotonic() + 15.0
    while any(len(s.repairs) for s in phase.stores) and time.monotonic() < deadline:
        time.sleep(0.02)  # the workers retry every repair_interval, once the breaker lets them
    if pending := sum(len(s.repairs) for s in phase.stores):
        phase.notes.append(f"{pending} repair(s) still pending after 15 s")
    for store in phase.stores:
        store.close()  # workers stopped: none holds an outbox row the drain below must see
    if phase.scenario.kill == "outbox":  # what `writethrough repair --once --grace 0` does
        repairer = Store(phase.source.inner, phase.cache.inner, namespace=phase.namespace,
                         settings=Settings(durability="outbox", outbox_grace=0.0), repair_worker=False)
        while (applied := repairer.repair_once()) > 0:
            phase.cache.faults.count("outbox rows repaired", applied)


def _retry(call: Callable[[], Any], tries: int = 20) -> Any:
    """``call()``, retried for a second or so when the cache or DB fails (a timeout under load)."""
    for _ in range(tries - 1):
        try:
            return call()
        except Exception:  # the raw Redis client raises redis-py's own errors
            time.sleep(0.05)
    return call()


def run_phase(phase: Phase, ops: int, progress: Callable[[int], None]) -> PhaseResult:
    """Run one phase to its end and check it; ``progress(ops done)`` is called meanwhile."""
    started, n = time.monotonic(), phase.config.clients
    phase.open_stores()
    done = phase.done = [0] * n
    phase.tail_from = ops - max(n, ops // 50)
    clients = [threading.Thread(target=_client, daemon=True, name=f"chaos-client-{i}", args=(
        phase, i, ops // n + (i < ops % n), phase.stores[i % len(phase.stores)], done)) for i in range(n)]
    stop = threading.Event()
    helpers = [threading.Thread(target=_controller, args=(phase, stop), daemon=True)]
    if phase.scenario.kill:
        helpers.append(threading.Thread(target=_killed_writers, args=(phase,), daemon=True))
    for thread in helpers + clients:
        thread.start()
    while alive := [t for t in clients if t.is_alive()]:
        alive[0].join(0.1)
        progress(sum(done))
    stop.set()
    for thread in helpers:
        thread.join()
    if phase.errors:
        raise phase.errors[0]
    _settle(phase)
    final_cache: dict[str, int | None] = {}
    final_db: dict[str, int] = {}
    for key in phase.keys + phase.killed_keys:
        entry = _retry(partial(phase.cache.inner.get, phase.cache_key(key)))
        final_cache[phase.key_label(key)] = None if entry is None or entry.kind is not Kind.VALUE else entry.version
        final_db[phase.key_label(key)] = phase.source.inner.read(key).version
    killed = {phase.key_label(k) for k in phase.killed_keys} if phase.scenario.kill == "best-effort" else set()
    history = phase.recorder.ops
    report = check(history, final_db=final_db,
                   final_cache={k: v for k, v in final_cache.items() if k not in killed})
    stats: Counter[str] = Counter()
    for store in phase.stores:
        stats.update(store.stats.snapshot())
    return PhaseResult(
        phase.scenario, phase.protocol, None, report,
        sum(final_cache[k] not in (None, final_db[k]) for k in killed), len(history),
        time.monotonic() - started, dict(Counter(op.outcome for op in history if op.outcome)),
        dict(phase.cache.faults.counts + phase.source.faults.counts), dict(stats), phase.notes)


# -- the run -----------------------------------------------------------------------------------


@dataclass
class ProtocolResult:
    """One protocol over every scenario that ran: the phases' reports added up."""

    protocol: ProtocolSpec
    report: Report
    killed_writer_divergence: int = 0
    phases: int = 0

    def to_json(self) -> dict[str, Any]:
        p = self.protocol
        return {"protocol": p.strategy, "label": p.label, "versioned": p.versioned,
                **self.report.to_json(), "failed_ops": self.report.failed_ops, "phases": self.phases,
                "killed_writer_best_effort_divergence": self.killed_writer_divergence}


def guarantee_held(report: Report) -> bool:
    """The README's promises: no read older than an acknowledged write, reads monotonic per
    process (read floors; each client uses one store), no repair overdue, no divergence left."""
    return report.ok


@dataclass
class ChaosResult:
    """What ``run_chaos`` found. ``ok``: the guarantee held for every versioned protocol;
    ``faults_bite``: every naive protocol that ran showed stale reads after ack."""

    source: str
    cache: str
    ops: int
    clients: int
    seed: int
    protocols: list[ProtocolResult]
    phases: list[PhaseResult]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(guarantee_held(p.report) for p in self.protocols if p.protocol.versioned)

    @property
    def faults_bite(self) -> bool:
        return all(p.report.stale_reads_after_ack > 0 for p in self.protocols
                   if not p.protocol.versioned and p.phases)

    def to_json(self) -> dict[str, Any]:
        ran = list(dict.fromkeys(ph.scenario for ph in self.phases))
        return {
            "protocols": [p.to_json() for p in self.protocols],
            "scenarios": [{"scenario": s.name, "description": s.description,
                           "results": [ph.to_json() for ph in self.phases if ph.scenario == s]}
                          for s in ran],
            "run": {"source": self.source, "cache": self.cache, "ops": self.ops, "clients": self.clients,
                    "seed": self.seed, "seconds": round(self.seconds, 3)},
            "ok": self.ok,
            "faults_bite": self.faults_bite,
        }


def combine(reports: Sequence[Report]) -> Report:
    """The reports of disjoint histories, added up (the windows: their maximum)."""
    total = Report()
    for r in reports:
        for name in ("checked_reads", "writes", "failed_ops", "stale_reads_after_ack",
                     "monotonic_violations", "final_divergence", "reads_during_pending_repair",
                     "pending_repair_overdue", "violating_reads", "dropped_messages"):
            setattr(total, name, getattr(total, name) + getattr(r, name))
        total.max_stale_window_s = max(total.max_stale_window_s, r.max_stale_window_s)
        total.max_pending_lag_s = max(total.max_pending_lag_s, r.max_pending_lag_s)
        room = MAX_MESSAGES - len(total.violations)
        total.violations.extend(r.violations[:room])
        total.dropped_messages += max(0, len(r.violations) - room)
    return total


def _has_outbox(source_url: str, cache_url: str) -> bool:
    """Fail early on a bad URL or a server that is down; True if the source has an outbox."""
    source = open_source(source_url, namespace="chaos-probe")
    try:
        cache = open_cache(cache_url)
        try:
            cache.get("wt:chaos-probe:probe")
        finally:
            cache.close()
        return hasattr(source, "write_logged")
    finally:
        source.close()


def run_chaos(
    source_url: str,
    cache_url: str,
    scenarios: Sequence[Scenario] = SCENARIOS,
    protocols: Sequence[ProtocolSpec] = PROTOCOLS,
    *,
    ops: int = 100_000,
    clients: int = 16,
    seed: int = 42,
    stores: int = 4,
    allow_flushall: bool = False,
    history: str | Path | None = None,
    progress: Progress | None = None,
) -> ChaosResult:
    """Run each protocol under each scenario: ``ops`` per protocol, split over the scenarios
    that can run on this source/cache pair. ``stores``: stores the clients are spread over
    (app processes sharing the cache). ``history``: every op as JSON lines, keys and clients
    prefixed by protocol/scenario (``checker.read_history`` reads it)."""
    for name, value in (("ops", ops), ("clients", clients), ("stores", stores)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
    if not scenarios or not protocols:
        raise ConfigError("nothing to run: no scenario or no protocol")
    outbox = _has_outbox(source_url, cache_url)
    config = RunConfig(source_url, cache_url, clients, stores, seed, uuid.uuid4().hex[:8], allow_flushall)
    plan: list[tuple[Scenario, ProtocolSpec, str | None, int]] = []
    for protocol in protocols:
        reasons = [skip_reason(s, protocol, source_url, cache_url) or (
            "the source has no outbox" if s.kill == "outbox" and not outbox else None) for s in scenarios]
        k = max(1, reasons.count(None))
        shares = iter([ops // k + (i < ops % k) for i in range(k)])
        plan += [(s, protocol, why, 0 if why else next(shares)) for s, why in zip(scenarios, reasons, strict=True)]
    if all(why for _, _, why, _ in plan):
        raise ConfigError("no scenario can run on this source and cache: " + "; ".join(
            dict.fromkeys(f"{s.name}: {why}" for s, _, why, _ in plan)))
    total, done = sum(share for *_, share in plan), 0
    started, phases = time.monotonic(), []
    out = open(history, "w", encoding="utf-8") if history else None  # noqa: SIM115 - closed below
    try:
        for scenario, protocol, why, share in plan:
            if why is not None:
                phases.append(PhaseResult(scenario, protocol, skipped=why))
                continue
            label = f"{protocol.label} · {scenario.name}"

            def tick(n: int, base: int = done, label: str = label) -> None:
                if progress is not None:
                    progress(label, base + n, total)

            phase = Phase(scenario, protocol, config)
            try:
                phases.append(run_phase(phase, share, tick))
            finally:
                phase.close()
            done += share
            if out is not None:  # the format of checker.write_history, appended phase by phase
                out.writelines(json.dumps(op.to_json(), separators=(",", ":")) + "\n"
                               for op in phase.recorder.ops)
    finally:
        if out is not None:
            out.close()
    results = []
    for protocol in protocols:
        ran = [ph for ph in phases if ph.protocol == protocol and ph.skipped is None]
        results.append(ProtocolResult(protocol, combine([ph.report for ph in ran]),
                                      sum(ph.killed_writer_divergence for ph in ran), len(ran)))
    source, cache = (parse_url(u, kind=k, schemes=b).redacted()
                     for u, k, b in ((source_url, "source", SOURCES), (cache_url, "cache", CACHES)))
    return ChaosResult(source, cache, ops, clients, seed, results, phases, time.monotonic() - started)


if __name__ == "__main__":  # a killed writer's child process (see _killed_writers)
    killed_writer(json.loads(sys.argv[1]))
