"""``writethrough advise``: exact figures from a recorded workload, and from a live store's
metrics endpoint (a real store on Redis + PostgreSQL behind a real HTTP endpoint)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import writethrough
from conftest import unique_namespace
from servers import PostgresServer, RedisServer
from writethrough.cli import main
from writethrough.observe import instrument
from writethrough.observe.advise import DAY, advise, from_history, read_ops
from writethrough.observe.metrics import serve


def _history(path: Path, ns: str, puts: int, read_back_every: int, reads: int = 0,
             outcome: str = "updated", size: int = 100) -> list[dict[str, Any]]:
    """``puts`` writes 1 s apart on distinct keys; every ``read_back_every``-th is read 0.2 s
    after, others 2 s after (outside a 1 s window); plus ``reads`` reads of a cold key."""
    ops = []
    for i in range(puts):
        t = float(i)
        ops.append({"client": "c", "key": f"{ns}/k{i}", "kind": "write", "start": t,
                    "end": t + 0.01, "version": 1, "outcome": outcome, "bytes": size})
        later = 0.2 if i % read_back_every == 0 else 2.0
        ops.append({"client": "c", "key": f"{ns}/k{i}", "kind": "read", "start": t + later,
                    "end": t + later + 0.001, "version": 1})
    for j in range(reads):
        ops.append({"client": "c", "key": f"{ns}/other", "kind": "read", "start": j * 0.1,
                    "end": j * 0.1 + 0.001, "version": 0})
    with path.open("a") as out:
        out.writelines(json.dumps(op) + "\n" for op in ops)
    return ops


def test_recorded_workload_figures_and_both_recommendations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "ops.jsonl"
    _history(path, "profiles", puts=100, read_back_every=2, outcome="updated")  # 50% read back
    _history(path, "events", puts=200, read_back_every=50, reads=10, outcome="invalidated",
             size=1000)  # 2% read back
    by_ns = {w.namespace: w for w in from_history(read_ops(path), window=1.0)}
    profiles, events = by_ns["profiles"], by_ns["events"]
    assert (profiles.puts, profiles.reads, profiles.read_backs) == (100, 100, 50)
    assert profiles.value_bytes == 100 and profiles.cold_share is None  # no "cold" flags
    assert profiles.strategy == "write-through"
    assert (events.puts, events.reads, events.read_backs) == (200, 210, 4)
    assert events.cold_share is None  # all invalidated: not a write-through recording
    a = advise(profiles)
    assert a.recommended == "write-through" and "read back right after writes" in a.reason
    wt, inv = a.costs
    puts_day = 100 / profiles.seconds * DAY
    assert inv.extra_db_reads_per_day == pytest.approx(puts_day * 0.5)
    assert wt.extra_db_reads_per_day == 0.0
    assert wt.cache_bytes_per_day == pytest.approx(puts_day * 100)
    assert inv.cache_bytes_per_day == pytest.approx(puts_day * 0.5 * 100)
    b = advise(events)
    assert b.recommended == "invalidate" and "written much more than read back" in b.reason
    assert advise(profiles, latency_critical=True).recommended == "invalidate"
    assert main(["advise", "--history", str(path)]) == 0
    out = capsys.readouterr().out
    assert "profiles: read back right after writes (50% of puts" in out.replace("\n", " ")
    assert main(["advise", "--history", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {x["workload"]["namespace"]: x["recommended"] for x in data["advice"]} == {
        "events": "invalidate", "profiles": "write-through"}


def test_bad_history_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "write"}\n')
    assert main(["advise", "--history", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "bad.jsonl:1" in err
    assert main(["advise", "--history", str(tmp_path / "none.jsonl")]) == 1
    assert main(["advise", "--metrics", "http://127.0.0.1:1/metrics", "--interval", "0"]) == 2


@pytest.mark.postgres
@pytest.mark.redis
def test_live_metrics_endpoint(
    redis_srv: RedisServer, postgres_srv: PostgresServer, capsys: pytest.CaptureFixture[str],
) -> None:
    registry, ns = CollectorRegistry(), unique_namespace("adv")
    server = serve(0, "127.0.0.1", registry)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    try:
        store = instrument(writethrough.open(postgres_srv.url, redis_srv.url, namespace=ns),
                           registry=registry, read_back_window=5.0)
        with store:
            for i in range(40):
                store.put(f"k{i}", {"pad": "x" * 50})  # cold: the writer fills the key
                store.get(f"k{i}")
            for i in range(40):
                store.put(f"k{i}", {"pad": "y" * 50})  # warm: updated
                if i % 4 == 0:
                    store.get(f"k{i}")
            assert main(["advise", "--metrics", url, "--interval", "0", "--json"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    data = json.loads(capsys.readouterr().out)
    (advice,) = [x for x in data["advice"] if x["workload"]["namespace"] == ns]
    w = advice["workload"]
    assert (w["puts"], w["reads"]) == (80, 50)
    assert w["read_back_share"] == pytest.approx(50 / 80)  # 40 + 10 puts read back in 5 s
    assert w["cold_share"] == pytest.approx(40 / 80)  # the first 40 puts found nothing cached
    assert w["value_bytes"] == pytest.approx(len('{"pad":"' + "x" * 50 + '"}'))
    assert w["strategy_in_use"] == "write-through" and w["cache_step_p50_s"] > 0
    assert advice["recommended"] == "write-through"
