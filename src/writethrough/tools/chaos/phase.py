"""A phase: one protocol under one scenario, with its own namespace, cache and source.

Client threads, spread over a few stores (app processes sharing the cache), do a seeded mix
of put / get / delete on a few hot keys through ``checker.Recorder``; a controller thread
turns the scenario's faults on and off; then everything is healed, repairs run, and
``checker.check`` reads the history with the final cache and DB versions.
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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from ...caches import open_cache
from ...core import Settings
from ...errors import WritethroughError
from ...protocol import Kind
from ...sources import open_source
from ...store import Store
from ...urls import parse_url
from ..checker import Op, Recorder, Report, check
from ..faultproxy import FaultProxy
from ..redisproc import RedisProcess
from .injectors import CACHE_CALLS, CACHE_WRITES, ChaosCache, ChaosSource
from .scenarios import ProtocolSpec, Scenario

TTL = 3600.0  # long on purpose: stale data must last until the final check, not expire
KILLED_WRITERS = 2  # child processes per writer-killed phase, each on its own key


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
        self.own: PrivateRedis | None = None
        self.source_proxy: FaultProxy | None = None
        cache_url, source_url = config.cache_url, config.source_url
        if scenario.own:
            self.own = PrivateRedis(scenario.own)
            cache_url = _via(cache_url, self.own.port)
        if scenario.source_wire:
            target = parse_url(source_url, kind="source", schemes={"postgres": "", "postgresql": ""})
            host, port = target.hosts[0]
            self.source_proxy = FaultProxy(host, port or 5432).start()
            source_url = _via(source_url, self.source_proxy.port)
        if scenario.wire:
            host, port = parse_url(cache_url, kind="cache", schemes={"redis": ""}).hosts[0]
            self.proxy = FaultProxy(host, port or 6379).start()
            cache_url = _via(cache_url, self.proxy.port)
        pg = config.source_url.startswith("postgres") and "pool_max=" not in config.source_url
        try:  # postgres: a connection for each client and repair worker, and a spare
            self.cache = ChaosCache(open_cache(cache_url), f"{self.label}/cache")
            inner = open_source(source_url, namespace=self.namespace,
                                **({"pool_max": config.clients + config.stores + 2} if pg else {}))
        except BaseException:
            if hasattr(self, "cache"):
                self.cache.inner.close()
            self._stop_servers()
            raise
        self.source = ChaosSource(inner, f"{self.label}/source")

    def cache_key(self, key: str) -> str:
        return f"wt:{self.namespace}:{key}"

    def key_label(self, key: str) -> str:
        return f"{self.label}/{key}"

    def open_stores(self) -> None:
        settings = Settings(strategy=self.protocol.strategy, ttl=TTL,
                            protocol="versioned" if self.protocol.versioned else "naive",
                            durability="outbox" if self.scenario.kill == "outbox" else "best-effort",
                            lease_ttl=self.scenario.lease_ttl or 2.0)
        for _ in range(max(1, min(self.config.stores, self.config.clients))):
            self.stores.append(Store(self.source, self.cache, namespace=self.namespace,
                                     settings=settings).open())

    def heal(self) -> None:
        self.cache.faults.jitter.clear()
        self.source.faults.jitter.clear()
        for proxy in (self.proxy, self.source_proxy):
            if proxy is not None:
                proxy.pass_through()

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
            self._stop_servers()

    def _stop_servers(self) -> None:
        for proxy in (self.proxy, self.source_proxy):
            if proxy is not None:
                proxy.stop()
        if self.own is not None:
            self.own.close()


class PrivateRedis:
    """The redis-servers of a scenario that crashes or fails over its cache: started here,
    behind one stable address (a FaultProxy, as a Sentinel-aware proxy or a managed
    service's endpoint), and nobody else's."""

    def __init__(self, kind: str) -> None:
        self.primary = RedisProcess(save=True)
        self.replica: RedisProcess | None = None
        self.link: FaultProxy | None = None
        self.front = FaultProxy("127.0.0.1", self.primary.port).start()
        if kind == "failover":
            self.link = FaultProxy("127.0.0.1", self.primary.port).start()
            self.replica = RedisProcess(save=False, replica_of=self.link.port)

    @property
    def port(self) -> int:
        return self.front.port

    def cut_replica(self) -> None:
        """Let the replica catch up (up to 2 s), then cut its link."""
        assert self.replica is not None and self.link is not None
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and not self.replica.synced_with(self.primary):
            time.sleep(0.01)
        self.link.blackhole()

    def fail_over(self) -> bool:
        """Promote the replica, move the service address to it, and let the old primary
        follow it (it discards what the new one never got)."""
        assert self.replica is not None and self.link is not None
        self.replica.promote()
        self.front.switch(self.replica.port)
        self.link.switch(self.replica.port)
        self.link.pass_through()
        self.primary.follow(self.link.port)
        self.primary, self.replica = self.replica, self.primary
        return True

    def close(self) -> None:
        for proxy in (self.front, self.link):
            if proxy is not None:
                proxy.stop()
        for server in (self.primary, self.replica):
            if server is not None:
                server.destroy()


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
        procs.append(spawn_writer(config))
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


def spawn_writer(config: dict[str, Any]) -> subprocess.Popen[str]:
    """``python -m writethrough.tools.chaos``, its config (URLs with passwords) on its stdin:
    never on argv, which every local user can read (``ps``, /proc/<pid>/cmdline)."""
    proc = subprocess.Popen([sys.executable, "-m", "writethrough.tools.chaos"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdin is not None
    with proc.stdin:  # a few hundred bytes: the pipe's buffer takes them without blocking
        proc.stdin.write(json.dumps(config))
    proc.stdin = None  # closed: communicate() must not flush it
    return proc


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
    if phase.proxy is not None or phase.source_proxy is not None:
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
        # Retried too: a connection the lost-reply resets left in the pool fails once.
        final_db[phase.key_label(key)] = _retry(partial(phase.source.inner.read, key)).version
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
