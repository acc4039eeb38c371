"""The benchmark suite's table: every figure of issue 7 has a row, measured or "—", and a
bench script's ``main(argv) -> dict`` result reaches it through a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench import suite

import harness

SCRIPTS = sorted(p.stem for p in harness.BENCH.glob("*.py"))


def test_a_figure_not_measured_yet_is_a_placeholder_row() -> None:
    rows = suite.rows_for("rerun", None, "not measured yet")

    assert [(r.number, r.value, r.goal, r.met) for r in rows] == [("2", "—", "<= 5 %", None)]


def test_a_scripts_figures_become_rows() -> None:
    result = {
        "figures": [
            {"figure": "throughput", "value": "1.2 M rows/s", "goal": ">= 0.5x", "met": True},
            {"figure": "pure", "value": "2 M rows/s", "goal": ">= 0.5x", "met": "maybe"},
        ],
        "date": "2026-11-26T01:00:00+00:00",
    }

    rows = suite.rows_for("throughput", result, "this run")

    assert [(r.number, r.figure, r.value, r.met, r.source) for r in rows] == [
        ("4", "throughput", "1.2 M rows/s", True, "this run"),
        ("4", "pure", "2 M rows/s", None, "this run"),
    ]
    assert {r.measured for r in rows} == {"2026-11-26"}


def test_freshness_rows_compare_each_path_with_prefect_defaults() -> None:
    result = {
        "summary": {
            "eventpipe (up, folder)": {"p50": 0.5, "p95": 2.0},
            "eventpipe, S3 bucket (moto)": {"p50": 12.0, "p95": 13.0},
            "baseline (serve, defaults)": {"p50": 11.0, "p95": 19.0},
        },
        "ratio_p50": 22.0,
    }

    rows = suite.rows_for("freshness", result, "this run")

    assert [(r.figure, r.value, r.met) for r in rows] == [
        ("freshness p50 / p95, folder (`eventpipe up`)", "0.50 s / 2.00 s", True),
        ("freshness p50 / p95, S3 bucket (`eventpipe up`, SQS)", "12.00 s / 13.00 s", False),
        ("freshness p50 / p95, worker path", "—", None),
        ("freshness p50 / p95, Prefect defaults (`flow.serve`)", "11.00 s / 19.00 s", None),
        ("freshness: Prefect defaults' p50 / folder p50", "22.0x", None),
    ]


def test_markdown_table_escapes_cells_and_marks_misses() -> None:
    rows = [
        suite.Row("4", "a | b", "1", ">= 2", False, "this run"),
        suite.Row("6", "idle", "-", "-", None, "not measured yet"),
    ]

    assert suite.markdown_table(rows).splitlines() == [
        "| # | figure | value | goal | met? | measured |",
        "| --- | --- | --- | --- | :---: | --- |",
        "| 4 | a \\| b | 1 | >= 2 | **no** | — |",
        "| 6 | idle | — | — | — | — |",
    ]


def test_every_figure_has_a_row_whatever_was_measured() -> None:
    rows = suite.collect({}, {})

    assert {r.number for r in rows} == {"1", "1b", "1c", "2", "3", "4", "5", "6", "+"}


def test_a_missing_script_is_skipped_with_a_note() -> None:
    outcome, result = suite.run_script("no_such_bench", [])

    assert (outcome.status, result) == ("skipped", None)
    assert "bench/no_such_bench.py" in outcome.note


@pytest.mark.slow
def test_the_throughput_script_runs_under_the_suite_contract() -> None:
    outcome, result = suite.run_script(
        "throughput", ["--quick", "--rows", "2000", "--reps", "1", "--no-write"]
    )

    assert outcome.status == "ok", outcome.note
    assert result is not None
    assert result["name"] == "throughput"
    assert set(result["rows_per_second"]) == {
        "duckdb",
        "duckdb_1_thread",
        "read_transform_write",
        "flow_run",
    }
    rows = suite.rows_for("throughput", result, "this run")
    assert rows[0].number == "4"
    assert "x DuckDB" in rows[0].value


def test_the_readme_table_is_replaced_between_its_marks() -> None:
    readme = f"intro\n{suite.README_BEGIN}\n| old |\n{suite.README_END}\nrest\n"

    assert suite.with_table(readme, "| new |") == (
        f"intro\n{suite.README_BEGIN}\n| new |\n{suite.README_END}\nrest\n"
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_importing_a_bench_script_leaves_prefect_unimported(script: str) -> None:
    """Each script points Prefect at its own server in ``main``: Prefect reads its settings
    once, so nothing it imports at module level may import Prefect first."""
    probe = f"import sys; import {script}; print('prefect' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=harness.BENCH,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )

    assert done.stdout.strip() == "False"


def test_a_result_file_records_the_code_the_machine_and_the_command(tmp_path: Path) -> None:
    at_start = harness.start_state()

    written = harness.write_results(
        tmp_path / "x.json", harness.recorded({"figures": []}, at_start, note="n")
    )

    stored = json.loads((tmp_path / "x.json").read_text(encoding="utf-8"))
    assert stored == written
    assert stored["figures"] == []
    assert stored["git"] == at_start.git
    assert len(stored["git"]["commit"]) == 40
    assert isinstance(stored["git"]["dirty"], list)
    assert stored["machine"]["loadavg_1m_at_start"] == at_start.loadavg_1m
    assert "loadavg_1m_at_end" in stored["machine"]
    assert stored["command"].startswith(Path(sys.executable).name)
    assert stored["note"] == "n"
    assert suite.result_date(stored) == stored["date"][:10]
