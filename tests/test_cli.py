"""The ``writethrough`` command, run in-process (``main([...])``) and once as a console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import writethrough
from writethrough.cli import COMMANDS, main


def test_compare_json_prints_one_object_with_both_strategies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["compare", "--updates", "200", "--keys", "50", "--json"]) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert [s["strategy"] for s in data["strategies"]] == ["write-through", "invalidate"]
    assert data["strategies"][0]["extra_db_reads_per_write"] == 0.0
    assert data["strategies"][1]["extra_db_reads_per_write"] == 1.0
    assert data["workload"]["updates"] == 200 and data["workload"]["keys"] == 50
    assert err == ""


def test_compare_prints_the_table_and_the_extrapolation(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--updates", "100", "--keys", "20"]) == 0
    out, _ = capsys.readouterr()
    rows = [line for line in out.splitlines() if line.startswith(("write-through", "invalidate"))]
    assert len(rows) == 2
    assert " 0.00 " in rows[0] and " 1.00 " in rows[1]
    assert "Warm-up, not measured" in out
    assert "At 1,000,000 updates/day, invalidate costs ~1,000,000 extra DB queries/day" in out


def test_compare_options_reach_the_workload(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compare", "--updates", "30", "--keys", "7", "--reads-after-write", "2",
            "--background-reads", "1", "--seed", "5", "--strategies", "invalidate",
            "--protocol", "naive", "--ttl", "60", "--json"]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["strategy"] for s in data["strategies"]] == ["invalidate"]
    (only,) = data["strategies"]
    assert only["protocol"] == "naive" and only["writes"] == 30 and only["reads"] == 30 * 3
    workload = data["workload"]
    assert (workload["keys"], workload["seed"], workload["ttl"]) == (7, 5, 60.0)


def test_bad_source_is_one_red_error_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--updates", "10", "--keys", "5", "--source", "foo://x"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error:") and "foo" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_bad_ttl_is_a_library_error_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--updates", "10", "--keys", "5", "--ttl", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "ttl" in err


@pytest.mark.parametrize(
    "argv",
    [["compare", "--updates", "0"], ["compare", "--strategies", "write-back"], ["nope"]],
)
def test_bad_arguments_exit_2_with_one_error_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: writethrough") and "--help" in err
    assert len(err.strip().splitlines()) == 1


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "compare" in capsys.readouterr().err


def test_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "compare.png"
    assert main(["compare", "--updates", "50", "--keys", "10", "--plot", str(target)]) == 0
    assert target.stat().st_size > 1000
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"Plot written to {target}" in capsys.readouterr().out.replace("\n", "")


def test_plot_to_a_missing_directory_fails_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compare", "--plot", str(tmp_path / "no" / "x.png")]) == 2
    assert "error:" in capsys.readouterr().err


def test_plot_without_matplotlib_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    assert (
        main(["compare", "--updates", "10", "--keys", "5", "--plot", str(tmp_path / "x.png")]) == 2
    )
    err = capsys.readouterr().err
    assert "pip install 'writethrough[plot]'" in err
    assert not (tmp_path / "x.png").exists()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"writethrough {writethrough.__version__}"


def test_subcommands_are_a_registry() -> None:
    assert "compare" in COMMANDS
    add, run = COMMANDS["compare"]
    assert callable(add) and callable(run)


def test_console_script_entry_point_works() -> None:
    script = Path(sys.executable).parent / "writethrough"
    if not script.exists():
        pytest.skip(f"console script not installed next to {sys.executable}")
    done = subprocess.run(
        [str(script), "compare", "--updates", "100", "--keys", "20"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "write-through" in done.stdout and "invalidate" in done.stdout
    assert "At 1,000,000 updates/day" in done.stdout


def test_python_dash_m_writethrough() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "writethrough", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (
        done.returncode == 0 and done.stdout.strip() == f"writethrough {writethrough.__version__}"
    )


def test_compare_new_keys_and_db_latency_reach_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compare", "--updates", "60", "--keys", "10", "--new-keys", "0.5",
            "--db-latency", "1", "--json"]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["workload"]["new_keys"] == 0.5
    assert data["workload"]["db_latency_ms"] == 1.0
    assert data["workload"]["db_latency_how"] == "source wrapper"  # SQLite: a delaying wrapper
    for s in data["strategies"]:
        assert s["creates"] > 0 and s["create_read_backs"] == s["creates"]
        assert s["write_p50_us"] >= 1000  # every write waited the added millisecond
    assert main(["compare", "--updates", "40", "--keys", "10", "--new-keys", "0.3"]) == 0
    assert "read-after-create" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [["--new-keys", "1.5"], ["--new-keys", "x"], ["--db-latency", "-1"]])
def test_compare_rejects_a_bad_share_or_latency(
    bad: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", *bad])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and bad[0] in err


def test_bench_runs_rows_and_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--quick", "--rounds", "1", "--only", "import", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [row["key"] for row in data["rows"]] == ["import"]
    assert data["rows"][0]["contenders"][0]["extra"]["heavy_modules_loaded"] == []
    with pytest.raises(SystemExit):
        main(["bench", "--only", "nope"])
