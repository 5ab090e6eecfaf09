"""The run: each protocol under each scenario that can run on the source/cache pair, the
phases' reports added up per protocol."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...caches import BACKENDS as CACHES
from ...caches import open_cache
from ...checks import check_count
from ...errors import ConfigError
from ...sources import BACKENDS as SOURCES
from ...sources import open_source
from ...urls import parse_url
from ..checker import MAX_MESSAGES, Report
from .phase import Phase, PhaseResult, RunConfig, run_phase
from .scenarios import PROTOCOLS, SCENARIOS, ProtocolSpec, Scenario, skip_reason

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``: ops done in the whole run, a few times a second."""


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
    # Bounded: each client is a thread, each store may run a repair worker, and the checker
    # keeps every op of a phase in memory.
    for name, value, most in (("ops", ops, 1_000_000), ("clients", clients, 256),
                              ("stores", stores, 64)):
        check_count(name, value, most=most)
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
