"""Exhaustive small scope: every interleaving of a few writers and readers on one key.

Stateless model checking over asyncio. Each actor is a coroutine running the real
``AsyncStore`` (one store per actor, as separate processes sharing a cache and a DB).
The cache (``AsyncMemoryCache``) and the DB (``DictSource``) are wrapped so that every
backend call parks its actor until the scheduler picks it: one call is one atomic step.
Every schedule is enumerated by depth-first re-execution from scratch, with sleep sets
(Godefroid) pruning a prefix only when it swaps adjacent *independent* steps of one
already explored: different actors, not both faults, no conflicting access to the same
backend, and no pair the checker tells apart (a read's first step vs. a writer's cache
step, which may be its ack; a read's step vs. a delete's first step). ``reduce=False``
turns pruning off, to cross-check. Faults (at most ``max_faults`` a run) are choices at
every step: the cache call fails (``CacheUnavailable``, not applied) or times out after
being applied (``CacheTimeout``), the actor crashes there, or the cache evicts the key.
Each complete run goes to ``checker.check``; then the surviving stores ``repair_once``
and the cache must agree with the DB (not after a crash: without the outbox, race 4 is
bounded by the TTL; those runs are counted). The cache's clock is frozen (an eviction
stands for expiry); each store has its own fake clock, advanced only by its own sleeps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

from .._async.store import AsyncStore
from ..caches.base import AsyncCache
from ..caches.memory import AsyncMemoryCache, MemoryCache
from ..core import ProtocolName, Settings, Strategy
from ..errors import CacheTimeout, CacheUnavailable
from ..protocol import Entry, Kind, LeaseOutcome, OnEmpty, WriteOutcome
from ..sources.base import AsyncSource, Row
from .checker import ACKED, Op, check

KEY = "k"
FAULTS = ("fail", "timeout", "crash", "evict")
T = TypeVar("T")
Tid = tuple[str, str]  # (actor, action): run, fail, timeout, crash; ("E", "evict"); ("$", "end")
Plan = list[tuple[str, tuple[str, ...]]]  # actor name, its ops: "put", "delete", "get"


class _NoIO:
    async def open(self) -> None:
        """Nothing to connect."""

    async def close(self) -> None:
        """Nothing to close."""


class DictSource(_NoIO):
    """A deterministic in-memory AsyncSource: a write's version is the previous one + 1."""

    name = "dict"

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}

    async def read(self, key: str) -> Row:
        return self.rows.get(key, Row(0, None))

    async def write(self, key: str, payload: bytes | None) -> int:
        version = self.rows.get(key, Row(0, None)).version + 1
        self.rows[key] = Row(version, payload)
        return version

    async def delete(self, key: str) -> int:
        return await self.write(key, None)


class Crashed(BaseException):
    """Raised into a crashed actor's parked call once the run is over, to end its task."""


@dataclass(frozen=True, slots=True)
class _Access:
    """What a transition touches, for the independence relation."""

    actor: str
    obj: str = ""  # "cache", "db", or "" (neither)
    writes: bool = False
    fault: bool = False
    read_start: bool = False  # the first step of a read
    read_end: bool = False  # may be the last step of a read
    ack: bool = False  # may be the last step of a write (its ack)
    delete_start: bool = False  # the first step of a delete


def _dependent(a: _Access, b: _Access) -> bool:
    if a.actor == b.actor or (a.fault and b.fault):
        return True
    if a.obj and a.obj == b.obj and (a.writes or b.writes):
        return True
    return ((a.read_start and b.ack) or (b.read_start and a.ack)
            or (a.read_end and b.delete_start) or (b.read_end and a.delete_start))


@dataclass(eq=False)
class _Actor:
    name: str
    ops: tuple[str, ...]
    store: AsyncStore
    op: str = ""
    steps: list[int] = field(default_factory=list)  # the steps of the current op
    call: str = ""  # the parked backend call, as shown: cache.write(V v2)
    parked: asyncio.Future[str] | None = None
    crashed: bool = False
    committed: int = 0  # the version the current write committed
    task: asyncio.Task[None] | None = None

    def waiting(self) -> bool:
        return self.parked is not None and not self.parked.done() and not self.crashed


_ACTOR: ContextVar[_Actor | None] = ContextVar("writethrough_explore_actor", default=None)


@dataclass(slots=True)
class _Node:
    enabled: dict[Tid, _Access]
    sleep: dict[Tid, _Access]
    chosen: Tid
    done: dict[Tid, _Access] = field(default_factory=dict)


class _Run:
    """One execution: fresh backends, one store per actor, the step log."""

    def __init__(self, settings: Settings, plan: Plan) -> None:
        self.memory = MemoryCache(max_entries=None, max_bytes=None, clock=lambda: 0.0)
        self.source = DictSource()
        self.cache = cast(AsyncCache, _Stepped(self, AsyncMemoryCache(self.memory), "cache"))
        self.db = cast(AsyncSource, _Stepped(self, self.source, "db"))
        self.actors = [_Actor(name, ops, self.store(settings)) for name, ops in plan]
        self.ckey = self.actors[0].store._prefix + KEY
        self.depth = self.faults = 0
        self.fault = "none"
        self.log: list[tuple[int, str]] = []
        self.ops: list[tuple[Op, str]] = []
        self.owners: dict[bytes, str] = {}

    def store(self, settings: Settings) -> AsyncStore:
        now = [0.0]

        async def sleep(seconds: float) -> None:
            now[0] += seconds

        return AsyncStore(self.db, self.cache, namespace="explore", settings=settings,
                          clock=lambda: now[0], sleep=sleep, repair_worker=False)

    async def step(self, call: str, args: tuple[Any, ...], fn: Callable[[], Awaitable[T]]) -> T:
        """Park the calling actor until the scheduler picks it, then make the call."""
        actor = _ACTOR.get()
        if call == "cache.lease":
            self.owners[args[0]] = actor.name if actor else "W0"
        if actor is None:  # set-up and repair run outside the schedule
            return await fn()
        actor.call = call + "(" + (args[0].decode() if call == "db.write" else " ".join(
            a.value if isinstance(a, Kind) else self.entry(a) if isinstance(a, Entry) else f"v{a}"
            for a in args if isinstance(a, Kind | Entry | int))) + ")"
        actor.parked = asyncio.get_running_loop().create_future()
        action = await actor.parked
        n = self.depth
        actor.steps.append(n)
        head = f"step {n}: {actor.name} {actor.call} ->"
        if action == "fail":
            self.log.append((n, f"{head} CacheUnavailable (injected)"))
            raise CacheUnavailable("injected by explore")
        result = await fn()
        if call in ("db.write", "db.delete"):
            actor.committed = cast(int, result)
        shown = self.show(result) if result is not None or call == "cache.get" else "ok"
        if action == "timeout":
            self.log.append((n, f"{head} {shown}, then CacheTimeout (injected)"))
            raise CacheTimeout("injected by explore")
        self.log.append((n, f"{head} {shown}"))
        return result

    def entry(self, e: Entry | None) -> str:
        if e is None:
            return "empty"
        if e.kind is Kind.VALUE:
            return f"V v{e.version}"
        if e.kind is Kind.TOMBSTONE:
            return f"T v{e.version}" + ("" if e.fresh else " (not fresh)")
        return f"lease of {self.owners.get(e.payload, '?')} (floor v{e.version})"

    def show(self, result: object) -> str:
        if result is None or isinstance(result, Entry):
            return self.entry(result)
        if isinstance(result, WriteOutcome | LeaseOutcome):
            return str(result.value)
        if isinstance(result, tuple):
            return self.show(result[0]) + ("" if result[1] is None else f" ({self.entry(result[1])})")
        if isinstance(result, Row):
            return f"v{result.version} " + (result.payload or b"none").decode()
        if isinstance(result, bool):
            return "stored" if result else "dropped"
        return f"v{result}"

    async def settle(self, until_done: bool = False) -> None:
        """Let the loop run until every actor is parked (or crashed) or finished."""
        for _ in range(10_000):
            if all((a.task is not None and a.task.done())
                   or (not until_done and a.parked is not None and not a.parked.done())
                   for a in self.actors):
                return
            await asyncio.sleep(0)
        raise RuntimeError("an actor is blocked outside the scheduler")

    async def act(self, actor: _Actor) -> None:
        _ACTOR.set(actor)
        for op in actor.ops:
            actor.op, actor.steps, actor.committed = op, [], 0
            if op == "get":
                found = await actor.store.get_versioned(KEY)
                version = 0 if found is None else found.version
                said = f"{actor.name} get returns " + (f"v{version}" if found else "none")
                self.ops.append((Op(actor.name, KEY, "read", actor.steps[0], actor.steps[-1],
                                    version), said))
                continue
            put = op == "put"
            res = await (actor.store.put(KEY, actor.name.lower()) if put
                         else actor.store.delete(KEY))
            self.ops.append((Op(actor.name, KEY, "write" if put else "delete", actor.steps[0],
                                actor.steps[-1], res.version, res.cache.value),
                             f"{actor.name} {op} returns v{res.version} {res.cache.value}"))
        actor.op = ""


class _Stepped(_NoIO):
    """A backend whose every call (``get``, ``write``, ``read``, ...) is one scheduled step."""

    def __init__(self, run: _Run, inner: object, prefix: str) -> None:
        self.run, self.inner, self.prefix, self.name = run, inner, prefix, f"stepped-{prefix}"

    def __getattr__(self, method: str) -> Callable[..., Awaitable[Any]]:
        call = getattr(self.inner, method)

        async def stepped(key: str, *args: Any, **kwargs: Any) -> Any:
            return await self.run.step(f"{self.prefix}.{method}", args,
                                       lambda: call(key, *args, **kwargs))

        return stepped


@dataclass
class ExploreResult:
    """Counts over every explored schedule; ``traces`` renders the first violating ones."""

    protocol: str
    strategy: str
    initial: str
    schedules: int = 0  # complete executions, each checked
    pruned: int = 0  # prefixes cut by sleep sets: equivalent to an explored schedule
    steps: int = 0  # steps taken by the complete executions
    violations: int = 0  # runs with a stale read after ack, a non-monotonic read, or divergence
    stale_runs: int = 0
    monotonic_runs: int = 0
    diverged_runs: int = 0  # runs without a crash whose cache disagreed with the DB after repair
    crash_runs: int = 0
    crash_diverged: int = 0  # crash runs ending diverged (allowed: bounded by the TTL)
    by_fault: dict[str, int] = field(default_factory=dict)  # schedules by the fault taken
    violations_by_fault: dict[str, int] = field(default_factory=dict)
    behaviours: set[tuple[object, ...]] = field(default_factory=set)  # distinct checked outcomes
    seconds: float = 0.0
    traces: list[str] = field(default_factory=list)

    def summary(self) -> str:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.by_fault.items()))
        return (f"{self.protocol} {self.strategy} ({self.initial}): {self.schedules} schedules "
                f"({faults}), {self.pruned} pruned, {self.steps} steps, {self.violations} "
                f"violations (stale {self.stale_runs}, monotonic {self.monotonic_runs}, "
                f"diverged {self.diverged_runs}), crash runs diverged {self.crash_diverged}/"
                f"{self.crash_runs}, {self.seconds:.1f} s")


def _count(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


class _Explorer:
    def __init__(self, settings: Settings, plan: Plan, faults: tuple[str, ...],
                 max_faults: int, initial: str, traces: int, reduce: bool) -> None:
        self.settings, self.plan, self.faults, self.max_faults = settings, plan, faults, max_faults
        self.initial, self.traces, self.reduce = initial, traces, reduce
        self.result = ExploreResult(settings.protocol, settings.strategy, initial)
        self.kept: dict[bool, list[str]] = {True: [], False: []}
        self.menus: dict[tuple[str, str, str, bool, bool], dict[Tid, _Access]] = {}

    async def explore(self, max_schedules: int | None) -> None:
        stack: list[_Node] = []
        while max_schedules is None or self.result.schedules < max_schedules:
            await self.execute(stack)
            while stack:  # backtrack to the deepest node with a choice left
                node = stack[-1]
                node.done[node.chosen] = node.enabled[node.chosen]
                left = [t for t in node.enabled if t not in node.sleep and t not in node.done]
                if left:
                    node.chosen = left[0]
                    break
                stack.pop()
            if not stack:
                return

    def enabled(self, run: _Run) -> dict[Tid, _Access]:
        out: dict[Tid, _Access] = {}
        budget = run.faults < self.max_faults
        for a in run.actors:
            if a.waiting():
                menu = (a.name, a.op, a.call.partition("(")[0], not a.steps, budget)
                if menu not in self.menus:
                    self.menus[menu] = self.choices(*menu)
                out.update(self.menus[menu])
        if budget and "evict" in self.faults and run.memory.get(run.ckey) is not None:
            if not out:  # the actors are done: the run may end here, or the cache evict
                out["$", "end"] = _Access("$", "cache", True)
            out["E", "evict"] = _Access("E", "cache", True, True)
        return out

    def choices(self, name: str, op: str, call: str, first: bool, budget: bool
                ) -> dict[Tid, _Access]:
        """The transitions of an actor parked at ``call``, with what each touches."""
        reader, cache = name.startswith("R"), call.startswith("cache.")
        writes = call not in ("cache.get", "db.read")
        flags = {"read_start": reader and first, "read_end": reader,
                 "ack": cache and not reader, "delete_start": op == "delete" and first}
        out = {(name, "run"): _Access(name, "cache" if cache else "db", writes, **flags)}
        if budget and cache and "fail" in self.faults:
            out[name, "fail"] = _Access(name, "", False, True, **flags)
        if budget and cache and writes and "timeout" in self.faults:
            out[name, "timeout"] = _Access(name, "cache", True, True, **flags)
        if budget and "crash" in self.faults:
            out[name, "crash"] = _Access(name, fault=True)
        return out

    async def execute(self, stack: list[_Node]) -> None:
        """Replay the choices on ``stack``, then go on with the first unexplored ones."""
        run = _Run(self.settings, self.plan)
        if self.initial == "warm":  # the DB and the cache hold v1, written and read by W0
            first = run.store(self.settings)
            res = await first.put(KEY, "w0")
            await first.get_versioned(KEY)
            run.ops.append((Op("W0", KEY, "write", -2, -1, res.version, res.cache.value), ""))
            run.log.append((-1, f"setup: W0 put w0 -> v{res.version} {res.cache.value}; cache "
                                f"{run.entry(run.memory.get(run.ckey))}"))
        for actor in run.actors:
            actor.task = asyncio.get_running_loop().create_task(run.act(actor))
        await run.settle()
        depth = 0
        while enabled := self.enabled(run):
            if depth < len(stack):
                node = stack[depth]
                assert node.enabled.keys() == enabled.keys(), (
                    f"a replay diverged at step {depth}: {sorted(node.enabled)} then "
                    f"{sorted(enabled)}; log {run.log}")
            else:
                sleep: dict[Tid, _Access] = {}
                if stack and self.reduce:
                    parent = stack[-1]
                    last = parent.enabled[parent.chosen]
                    sleep = {t: a for t, a in (parent.sleep | parent.done).items()
                             if t in enabled and not _dependent(a, last)}
                chosen = next((t for t in enabled if t not in sleep), None)
                if chosen is None:  # every way on is equivalent to an explored schedule
                    self.result.pruned += 1
                    return await self.finish(run)
                node = _Node(enabled, sleep, chosen)
                stack.append(node)
            if node.chosen[1] == "end":
                break
            await self.apply(run, node.chosen, depth)
            depth += 1
        self.result.steps += depth
        await self.finish(run)
        await self.judge(run)

    async def apply(self, run: _Run, tid: Tid, depth: int) -> None:
        name, action = tid
        run.depth = depth
        if action != "run":
            run.faults += 1
            run.fault = action if run.fault == "none" else f"{run.fault}+{action}"
        if action == "evict":
            was = run.entry(run.memory.get(run.ckey))
            run.memory.evict(run.ckey)
            run.log.append((depth, f"step {depth}: the cache evicts the key (it held {was})"))
            return
        actor = next(a for a in run.actors if a.name == name)
        assert actor.parked is not None
        if action == "crash":
            actor.crashed = True
            run.log.append((depth, f"step {depth}: {name} crashes before {actor.call}"))
            return
        actor.parked.set_result(action)
        await run.settle()

    async def finish(self, run: _Run) -> None:
        """End every task: crashed or still parked actors get Crashed at their parked call."""
        for actor in run.actors:
            if actor.parked is not None and not actor.parked.done():
                actor.parked.set_exception(Crashed())
        await run.settle(until_done=True)
        for actor in run.actors:
            assert actor.task is not None
            error = actor.task.exception()
            if error is not None and not isinstance(error, Crashed):
                raise RuntimeError(f"actor {actor.name} raised {error!r}") from error

    async def judge(self, run: _Run) -> None:
        result = self.result
        result.schedules += 1
        _count(result.by_fault, run.fault)
        ops = [op for op, _ in run.ops]
        for a in run.actors:  # a crashed write that committed may explain a None read
            if a.crashed and a.op in ("put", "delete") and a.steps:
                kind: Literal["write", "delete"] = "write" if a.op == "put" else "delete"
                ops.append(Op(a.name, KEY, kind, a.steps[0], a.steps[-1], a.committed))
        for a in run.actors:
            if not a.crashed:
                await a.store.repair_once()
        entry = run.memory.get(run.ckey)
        cached = entry.version if entry is not None and entry.kind is Kind.VALUE else None
        held = run.source.rows.get(KEY, Row(0, None)).version
        report = check(ops, final_cache={KEY: cached}, final_db={KEY: held})
        crash = "crash" in run.fault
        result.crash_runs += crash
        result.crash_diverged += crash and report.final_divergence > 0
        stale, mono = report.stale_reads_after_ack > 0, report.monotonic_violations > 0
        diverged = report.final_divergence > 0 and not crash
        result.stale_runs += stale
        result.monotonic_runs += mono
        result.diverged_runs += diverged
        seen = sorted((o.client, o.kind, o.version, o.outcome or "") for o in ops)
        result.behaviours.add((run.fault, tuple(seen), run.entry(entry), held,
                               report.stale_reads_after_ack, report.monotonic_violations))
        if stale or mono or diverged:
            result.violations += 1
            _count(result.violations_by_fault, run.fault)
            kept = self.kept[run.fault == "none"]  # traces without a fault come first
            if len(kept) < self.traces:
                end = f"after repair: cache {run.entry(entry)}, DB v{held}"
                kept.append(self.render(run, ops, end, report.violations))
                result.traces = (self.kept[True] + self.kept[False])[: self.traces]

    def render(self, run: _Run, ops: list[Op], end: str, notes: list[str]) -> str:
        r = self.result
        lines = [f"{r.protocol} {r.strategy}, {self.initial} start, fault: {run.fault}"]
        acks = [op for op in ops if op.outcome in ACKED]
        deletes = [op for op in ops if op.kind == "delete"]
        for n, text in sorted(run.log, key=lambda item: item[0]):
            lines.append(text)
            for op, said in run.ops:
                if op.end != n or not said:
                    continue
                seen = op.version or max((d.version for d in deletes if d.start < op.end),
                                         default=0)  # a None read: the checker's reading
                newer = [w for w in acks if w.end < op.start and w.version > seen]
                if op.kind == "read" and newer:
                    w = max(newer, key=lambda w: w.version)
                    said += f" (stale: v{w.version} acked by {w.client} at step {w.end:g})"
                lines.append(f"step {n}: => {said}")
        return "\n".join([*lines, end, *(f"checker: {note}" for note in notes)])


def explore(
    protocol: ProtocolName, strategy: Strategy, *, writers: int = 2, readers: int = 2,
    faults: bool | tuple[str, ...] = True, deletes: int = 0, reads: int = 1,
    initial: Literal["warm", "cold"] = "warm", max_faults: int = 1, lease_wait: float = 0.0,
    on_empty: OnEmpty = "lease", traces: int = 3, max_schedules: int | None = None,
    reduce: bool = True,
) -> ExploreResult:
    """Run every schedule of ``writers`` writers (the last ``deletes`` of them delete) and
    ``readers`` readers (``reads`` reads each) on one key, each run with at most
    ``max_faults`` faults (``faults``: True for all of FAULTS, False for none).

    ``initial="warm"``: the DB and the cache hold v1 first; ``"cold"``: both empty.
    ``lease_wait=0``: a reader finding another's lease reads the DB at once (a positive
    value polls once per ``lease_wait`` of its store's fake clock).
    """
    chosen = FAULTS if faults is True else () if faults is False else tuple(faults)
    plan: Plan = [(f"W{i}", ("delete",) if i > writers - deletes else ("put",))
                  for i in range(1, writers + 1)]
    plan += [(f"R{j}", ("get",) * reads) for j in range(1, readers + 1)]
    settings = Settings(strategy=strategy, protocol=protocol, lease_wait=lease_wait,
                        on_empty=on_empty)
    explorer = _Explorer(settings, plan, chosen, max_faults, initial, traces, reduce)
    started = time.perf_counter()
    asyncio.run(explorer.explore(max_schedules))
    explorer.result.seconds = time.perf_counter() - started
    return explorer.result


if __name__ == "__main__":  # python -m writethrough.tools.explore
    for _protocol in ("versioned", "naive"):
        for _strategy in ("write-through", "invalidate"):
            _found = explore(_protocol, _strategy, traces=1)
            print(_found.summary(), *_found.traces, sep="\n")
