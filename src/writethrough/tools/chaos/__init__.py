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

The parts: ``scenarios`` (the protocols and fault patterns), ``injectors`` (faults at
controlled points), ``phase`` (one protocol under one scenario, checked), ``runner``
(every phase, added up); ``python -m writethrough.tools.chaos`` is a killed writer's
child process.
"""

from __future__ import annotations

from .injectors import CACHE_CALLS, CACHE_WRITES, ChaosCache, ChaosSource, Injector, Jitter
from .phase import (
    KILLED_WRITERS,
    TTL,
    Phase,
    PhaseResult,
    RunConfig,
    _via,
    killed_writer,
    run_phase,
)
from .runner import (
    ChaosResult,
    Progress,
    ProtocolResult,
    combine,
    guarantee_held,
    run_chaos,
)
from .scenarios import PROTOCOLS, SCENARIOS, ProtocolSpec, Scenario, scenarios, skip_reason

__all__ = [
    "CACHE_CALLS",
    "CACHE_WRITES",
    "KILLED_WRITERS",
    "PROTOCOLS",
    "SCENARIOS",
    "TTL",
    "ChaosCache",
    "ChaosResult",
    "ChaosSource",
    "Injector",
    "Jitter",
    "Phase",
    "PhaseResult",
    "Progress",
    "ProtocolResult",
    "ProtocolSpec",
    "RunConfig",
    "Scenario",
    "_via",
    "combine",
    "guarantee_held",
    "killed_writer",
    "run_chaos",
    "run_phase",
    "scenarios",
    "skip_reason",
]
