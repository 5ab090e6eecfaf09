"""``writethrough chaos``: small seeded runs of every scenario, on memory:// and a real Redis.

The versioned protocols must keep the guarantee (0 stale reads after an acknowledged
write, 0 final divergence) while the same faults make the naive ones serve stale reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from writethrough.cli import main
from writethrough.tools.chaos import (
    PROTOCOLS,
    SCENARIOS,
    ChaosResult,
    _via,
    guarantee_held,
    run_chaos,
    scenarios,
)
from writethrough.tools.checker import check, read_history

LOCAL = [s.name for s in SCENARIOS if not (s.wire or s.kill or s.own or s.source_wire)]
REDIS_ONLY = [s.name for s in SCENARIOS if s.wire or s.kill or s.own]
POSTGRES_ONLY = [s.name for s in SCENARIOS if s.source_wire]


def assert_versioned_hold(result: ChaosResult) -> None:
    """0 stale reads after ack, 0 non-monotonic reads per client, 0 final divergence."""
    for p in result.protocols:
        if p.protocol.versioned:
            assert p.report.stale_reads_after_ack == 0, (p.protocol.label, p.report.violations[:5])
            assert p.report.monotonic_violations == 0, (p.protocol.label, p.report.violations[:5])
            assert p.report.final_divergence == 0, (p.protocol.label, p.report.violations[:5])
            assert p.report.pending_repair_overdue == 0 and p.report.checked_reads > 0


def by_protocol(result: ChaosResult, scenario: str) -> dict[str, Any]:
    return {ph.protocol.label: ph for ph in result.phases if ph.scenario.name == scenario}


def test_all_scenarios_on_memory_and_sqlite(tmp_path: Path) -> None:
    result = run_chaos(f"sqlite:///{tmp_path}/c.db", "memory://", scenarios("all"), ops=3000,
                       clients=4, seed=7)
    assert_versioned_hold(result)
    assert result.faults_bite
    skipped = {ph.scenario.name: ph.skipped for ph in result.phases if ph.skipped}
    assert set(skipped) == {*REDIS_ONLY, *POSTGRES_ONLY}, "memory:// skips the wire and kill ones"
    assert "redis://" in skipped["net-delay"] and "across processes" in skipped["writer-killed"]
    ran = [ph for ph in result.phases if ph.skipped is None]
    assert sum(ph.ops for ph in ran if ph.protocol == PROTOCOLS[0]) == 3000, "--ops is per protocol"


@pytest.mark.parametrize("name", LOCAL)
def test_each_scenario_runs_alone(tmp_path: Path, name: str) -> None:
    result = run_chaos(f"sqlite:///{tmp_path}/c.db", "memory://", scenarios(name), ops=2000,
                       clients=4, seed=3)
    assert [ph.scenario.name for ph in result.phases] == [name] * 4
    assert_versioned_hold(result)
    faults = by_protocol(result, name)["write-through"].faults
    assert faults, "the faults were injected"
    if name in ("cache-timeout", "hot-writers"):  # these must bite naive, every time
        for label in ("naive write-through", "naive invalidate"):
            assert by_protocol(result, name)[label].report.stale_reads_after_ack > 0, label


def test_all_scenarios_on_redis_and_sqlite(redis_srv: Any, tmp_path: Path) -> None:
    result = run_chaos(f"sqlite:///{tmp_path}/c.db", redis_srv.url, scenarios("all"), ops=3000,
                       clients=4, seed=11)
    assert_versioned_hold(result)
    assert result.faults_bite
    assert {ph.scenario.name for ph in result.phases if ph.skipped} == {"writer-killed-outbox",
                                                                        *POSTGRES_ONLY}
    for label, ph in by_protocol(result, "writer-killed").items():
        assert ph.faults["writers killed"] == 2, (label, ph.notes)
        assert ph.killed_writer_divergence == 2, f"{label}: without the outbox, race 4 stays"
    for label, ph in by_protocol(result, "writer-killed-outbox").items():
        if ph.skipped is None:
            assert ph.faults["writers killed"] == 2 and ph.faults["outbox rows repaired"] >= 2
            assert ph.report.final_divergence == 0, f"{label}: the outbox repaired it"
    for name in ("net-delay", "net-loss"):
        assert all(ph.skipped is None for ph in by_protocol(result, name).values())


@pytest.mark.parametrize("name", REDIS_ONLY)
def test_redis_scenarios_run_alone(redis_srv: Any, tmp_path: Path, name: str) -> None:
    result = run_chaos(f"sqlite:///{tmp_path}/c.db", redis_srv.url, scenarios(name), PROTOCOLS[2:],
                       ops=400, clients=4, seed=5)
    assert_versioned_hold(result)
    assert all(ph.skipped is None and ph.ops >= 400 for ph in result.phases)


def test_restarts_failovers_lost_replies_and_slow_reads(redis_srv: Any, postgres_srv: Any) -> None:
    """Issue 9's scenarios on Redis + PostgreSQL: private redis-servers crashed from a
    snapshot and failed over to a lagging replica, commits whose reply was lost, DB reads
    slower than the lease. The versioned protocols hold; the naive ones serve stale reads."""
    names = "restart-snapshot,replica-failover,lost-reply,slow-reads"
    result = run_chaos(postgres_srv.url, f"{redis_srv.url}?socket_timeout=0.25", scenarios(names),
                       ops=6000, clients=6, seed=9)
    assert all(ph.skipped is None for ph in result.phases)
    assert_versioned_hold(result)
    for name in ("restart-snapshot", "replica-failover"):
        phases = by_protocol(result, name)
        faults = phases["write-through"].faults
        assert faults.get("restarts from a snapshot", 0) + faults.get(
            "failovers to a lagging replica", 0) >= 2, faults
        naive = sum(phases[label].report.stale_reads_after_ack
                    for label in ("naive write-through", "naive invalidate"))
        assert naive > 0, f"{name}: the same faults make the naive protocols go back in time"
    assert by_protocol(result, "slow-reads")["write-through"].stats["lease_renewals"] > 0


def test_cli_json_and_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    history = tmp_path / "ops.jsonl"
    argv = ["chaos", "--scenario", "hot-writers", "--scenario", "eviction,flush", "--ops", "1500",
            "--clients", "4", "--seed", "9", "--json", "--history", str(history)]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert [p["protocol"] for p in data["protocols"]] == ["write-through", "invalidate"] * 2
    assert [p["versioned"] for p in data["protocols"]] == [False, False, True, True]
    keys = {"checked_reads", "stale_reads_after_ack", "max_stale_window_s",
            "reads_during_pending_repair", "final_divergence", "nines"}
    assert all(keys <= set(p) for p in data["protocols"])
    assert [s["scenario"] for s in data["scenarios"]] == ["hot-writers", "eviction", "flush"]
    assert all(len(s["results"]) == 4 for s in data["scenarios"])
    assert data["faults_bite"] is True and data["run"]["ops"] == 1500
    ops = read_history(history)
    assert check(ops).checked_reads == sum(p["checked_reads"] for p in data["protocols"])
    assert check(ops).stale_reads_after_ack == sum(p["stale_reads_after_ack"] for p in data["protocols"])
    assert {op.key.split("/")[0] for op in ops} == {"naive-write-through", "naive-invalidate",
                                                    "write-through", "invalidate"}


def test_cli_prints_a_table_per_protocol_and_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chaos", "--scenario", "hot-writers", "--ops", "1000", "--clients", "2"]) == 0
    out = capsys.readouterr().out
    for label in ("naive write-through", "naive invalidate", "write-through", "invalidate"):
        assert any(line.strip() == label for line in out.splitlines()), label
    assert out.count("all scenarios") == 4
    assert "skipped" not in out, "hot-writers runs on memory://"
    assert "PASS versioned: 0 stale reads after ack, 0 non-monotonic reads and 0 final divergence" in out
    assert "the faults bite" in out


def test_cli_protocol_choice_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chaos", "--scenario", "fill-race", "--ops", "500", "--clients", "2",
                 "--protocols", "versioned", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [p["label"] for p in data["protocols"]] == ["write-through", "invalidate"]
    assert main(["chaos", "--scenario", "no-such-thing"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "unknown scenario" in err
    with pytest.raises(SystemExit):
        main(["chaos", "--protocols", "optimistic"])
    assert main(["chaos", "--cache", "nope://x", "--ops", "10"]) == 2


def test_the_proxy_url_keeps_credentials_database_and_options() -> None:
    assert _via("redis://u:p%40w@cache:6379/2?socket_timeout=0.1", 5555) == (
        "redis://u:p%40w@127.0.0.1:5555/2?socket_timeout=0.1")
    assert _via("redis://cache", 7) == "redis://127.0.0.1:7"
    assert _via("redis://cache:1?socket_timeout=1", 7) == "redis://127.0.0.1:7?socket_timeout=1"


def test_a_cluster_and_postgres(cluster_srv: Any, postgres_srv: Any) -> None:
    names = "flush,eviction,writer-killed,writer-killed-outbox,net-delay"
    result = run_chaos(postgres_srv.url, cluster_srv.url, scenarios(names), PROTOCOLS[2:], ops=1200,
                       clients=4, seed=13)
    assert_versioned_hold(result)
    skipped = {ph.scenario.name: ph.skipped for ph in result.phases if ph.skipped}
    assert set(skipped) == {"net-delay"} and "redis+cluster://" in skipped["net-delay"]
    assert all(ph.killed_writer_divergence == 2 for ph in result.phases
               if ph.scenario.name == "writer-killed")


def test_the_tool_judges_non_monotonic_reads_too() -> None:
    from writethrough.tools.checker import Report

    assert guarantee_held(Report(checked_reads=10))
    assert not guarantee_held(Report(checked_reads=10, monotonic_violations=1, violating_reads=1))
    assert not guarantee_held(Report(checked_reads=10, final_divergence=1))
