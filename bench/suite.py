"""The benchmark suite: every bench script, one after the other, in one command, then one table.

    .venv/bin/python bench/suite.py [--quick] [--only throughput,idle] [--skip freshness]
    .venv/bin/python bench/suite.py --markdown     # the README's table from bench/results/

Each script keeps one contract: ``main(argv: list[str] | None = None) -> dict[str, object]``,
accepts ``--quick`` and writes ``bench/results/<name>.json``. The suite calls each ``main`` in
a fresh interpreter of its own: Prefect reads its settings from the environment once, at
import, and each script points it at its own server; a fresh process also keeps one
benchmark's threads, caches and memory out of the next one's figures. A script that is not
there (yet) is skipped with a note.

A script's figures reach the table through its result: a ``"figures"`` list of
``{"figure", "value", "goal", "met"}`` (strings, and a bool or None), or, for freshness, its
``"summary"``. The suite then writes ``bench/results/suite.json``, prints the table and renders
the freshness plot (``bench/plot.py``) into ``docs/images/freshness.png``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import harness

BENCH, REPO, RESULTS = harness.BENCH, harness.REPO, harness.RESULTS

NUMBERS = {
    "freshness": "1",
    "stream": "1b",
    "trigger_floor": "1c",
    "rerun": "2",
    "incremental": "3",
    "throughput": "4",
    "burst": "5",
    "idle": "6",
    "dask_speedup": "+",
    "fs_layer": "+",
    "ledger_cost": "+",
}
"""Each script, in the order the suite runs them, and its figure's number in issue 7."""

PLACEHOLDERS: dict[str, list[tuple[str, str]]] = {
    "freshness": [("freshness p50 / p95: folder, S3, worker vs Prefect defaults", "faster")],
    "stream": [
        ("steady stream (2 files/s), freshness p50 / p95", "p50 <= 2x isolated, p95 <= 2 s")
    ],
    "trigger_floor": [("event -> trigger's run created, embedded server, p95", "<= 0.5 s")],
    "rerun": [("no-change re-run cost vs full run", "<= 5 %")],
    "incremental": [("one new file with 1000 partitions present vs with 10", "ratio <= 1.5")],
    "throughput": [("raw CSV -> processed parquet, 1M rows, vs DuckDB COPY", ">= 0.5x DuckDB")],
    "burst": [("burst of 1000 files: seconds to all done, flow runs used", "<= 60 s, <= 20 runs")],
    "idle": [("idle RSS and CPU of `eventpipe up`", "<= 400 MB, < 2 % CPU")],
    "dask_speedup": [
        ("100 files in one run, CPU-bound step: Dask vs threads", "uses all cores"),
        ("100 files in one run, light step (demo, 50 rows): Dask vs threads", "-"),
    ],
    "fs_layer": [
        ("small parquet on S3 (moto), per file, median: pyarrow.fs vs s3fs", "-"),
        ("list 300 objects, median: pyarrow.fs vs s3fs", "-"),
        ("~5 MB parquet read (pq.read_table), median: pyarrow.fs vs s3fs", "-"),
    ],
    "ledger_cost": [
        (
            "ledger per file (record, mark sent, claim, finish, publish), median: "
            "PostgreSQL vs SQLite",
            "-",
        ),
        ("flow run per file, median: PostgreSQL vs SQLite", "-"),
        (
            "freshness under `eventpipe up` (file written -> all analytics updated), "
            "p50 / p95: PostgreSQL vs SQLite",
            "-",
        ),
    ],
}
"""What each figure is, shown with "—" until its script has produced it."""

FRESHNESS_LABELS = (
    ("S3", "S3 bucket (`eventpipe up`, SQS)"),
    ("eventpipe worker", "`eventpipe` worker (warm processes)"),
    ("worker (query", "worker path, tuned (query 1 s, prefetch 0)"),
    ("worker (defaults", "worker path, the worker's defaults"),
    ("worker", "worker path"),
    ("baseline", "Prefect defaults (`flow.serve`)"),
    ("(up, folder)", "folder (`eventpipe up`)"),
)

CHILD = """
import importlib.util, json, sys
from pathlib import Path

script, out, argv = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
sys.path.insert(0, str(script.parent))  # as `python bench/x.py` has it: `import harness`
sys.argv = [str(script), *argv]
spec = importlib.util.spec_from_file_location(script.stem, script)
module = importlib.util.module_from_spec(spec)
sys.modules[script.stem] = module
spec.loader.exec_module(module)
result = module.main(argv)
out.write_text(json.dumps(result, default=str), encoding="utf-8")
"""


@dataclass(frozen=True)
class Row:
    number: str
    figure: str
    value: str
    goal: str
    met: bool | None
    source: str
    """"this run", "bench/results/<name>.json of <date>", or why there is no value."""
    measured: str = "—"
    """The day the value was measured."""


@dataclass(frozen=True)
class Outcome:
    name: str
    status: str
    """ok, failed, skipped (no script), not run (left out by --only/--skip or --markdown)."""
    seconds: float = 0.0
    note: str = ""


# -- running -----------------------------------------------------------------------------------


def run_script(name: str, argv: list[str]) -> tuple[Outcome, dict[str, Any] | None]:
    """Call ``bench/<name>.py``'s ``main(argv)`` in a fresh interpreter; its output streams."""
    script = BENCH / f"{name}.py"
    if not script.exists():
        return Outcome(name, "skipped", note=f"bench/{name}.py is not there yet"), None
    with tempfile.TemporaryDirectory(prefix="eventpipe-suite-") as tmp:
        out = Path(tmp) / "result.json"
        print(f"\n=== {name} {' '.join(argv)}".rstrip(), flush=True)
        started = time.monotonic()
        code = subprocess.run(
            [sys.executable, "-c", CHILD, str(script), str(out), *argv], cwd=REPO, check=False
        ).returncode
        seconds = time.monotonic() - started
        if code != 0 or not out.exists():
            return Outcome(name, "failed", seconds, f"exit code {code}"), None
        result = json.loads(out.read_text(encoding="utf-8"))
    if not isinstance(result, dict):
        return Outcome(name, "failed", seconds, "main() did not return a dict"), None
    return Outcome(name, "ok", seconds), result


def stored_result(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return loaded if isinstance(loaded, dict) else None


# -- the table ---------------------------------------------------------------------------------


def result_date(result: Mapping[str, Any]) -> str:
    """When a stored result was measured, as a day (from its own record of it)."""
    machine = result.get("machine")
    when = result.get("date") or (machine.get("date") if isinstance(machine, dict) else None)
    return str(when)[:10] if when else "an earlier run"


def freshness_rows(result: Mapping[str, Any], source: str) -> list[Row]:
    summary = result.get("summary")
    if not isinstance(summary, dict) or not summary:
        return []
    baseline = next((s for p, s in summary.items() if "baseline" in p), None)
    base_p50 = baseline.get("p50") if isinstance(baseline, dict) else None
    rows = []
    for path, stats in summary.items():
        label = next((text for key, text in FRESHNESS_LABELS if key in path), path)
        p50, p95 = stats.get("p50"), stats.get("p95")
        value = f"{p50:.2f} s / {p95:.2f} s" if p50 is not None and p95 is not None else "-"
        if stats is baseline:
            goal, met = "(the reference)", None
        elif "eventpipe worker" in path:
            goal = "p50 <= 1.0 s, p95 <= 2 s"
            met = p50 <= 1.0 and p95 <= 2.0 if p50 is not None and p95 is not None else None
        else:
            goal = f"p50 below Prefect defaults' ({base_p50:.1f} s)" if base_p50 else "-"
            met = p50 < base_p50 if p50 is not None and base_p50 else None
        rows.append(Row("1", f"freshness p50 / p95, {label}", value, goal, met, source))
    if not any("worker" in path for path in summary):  # its path is being added
        at = next((i for i, r in enumerate(rows) if "Prefect defaults" in r.figure), len(rows))
        worker = Row("1", "freshness p50 / p95, worker path", "—", rows[0].goal, None, source)
        rows.insert(at, worker)
    ratio = result.get("ratio_p50")
    if isinstance(ratio, int | float):
        rows.append(
            Row(
                "1",
                "freshness: Prefect defaults' p50 / folder p50",
                f"{ratio:.1f}x",
                "-",
                None,
                source,
            )
        )
    warm = result.get("ratio_worker_eventpipe_worker_p50")
    if isinstance(warm, int | float):
        rows.append(
            Row(
                "1",
                "freshness: tuned process worker's p50 / `eventpipe` worker's p50",
                f"{warm:.1f}x",
                ">= 5x",
                warm >= 5,
                source,
            )
        )
    return rows


def figure_rows(name: str, result: Mapping[str, Any], source: str) -> list[Row]:
    figures = result.get("figures")
    if not isinstance(figures, list):
        return []
    rows = []
    for item in figures:
        if isinstance(item, dict) and "figure" in item:
            met = item.get("met")
            rows.append(
                Row(
                    NUMBERS[name],
                    str(item["figure"]),
                    str(item.get("value", "-")),
                    str(item.get("goal", "-")),
                    met if isinstance(met, bool) else None,
                    source,
                )
            )
    return rows


def rerun_rows(result: Mapping[str, Any], source: str) -> list[Row]:
    wall, body = result.get("ratio_no_change_wall"), result.get("ratio_no_change_body")
    if not isinstance(wall, int | float) or not isinstance(body, int | float):
        return []
    files = result.get("config", {}).get("files", "?")
    figure = f"no-change re-run cost vs full run ({files} files): flow body / wall"
    value = f"{body:.1%} / {wall:.1%}"
    return [Row("2", figure, value, "<= 5 %", body <= 0.05 and wall <= 0.05, source)]


def incremental_rows(result: Mapping[str, Any], source: str) -> list[Row]:
    config, forms = result.get("config", {}), result.get("forms", {})
    small, large = config.get("small"), config.get("large")
    rows = []
    for form, label in (("plain", "plain analytics"), ("combine", "map/combine analytics")):
        ratio = forms.get(form, {})
        wall, body = ratio.get("ratio_wall"), ratio.get("ratio_body")
        if isinstance(wall, int | float) and isinstance(body, int | float):
            figure = f"one new file, {large} vs {small} partitions, {label}: wall / body"
            met = wall <= 1.5 and body <= 1.5
            rows.append(Row("3", figure, f"x{wall:.2f} / x{body:.2f}", "ratio <= 1.5", met, source))
    return rows


def burst_rows(result: Mapping[str, Any], source: str) -> list[Row]:
    rows = []
    for burst in result.get("bursts", []):
        files, seconds, runs = (
            burst.get("files"),
            burst.get("seconds_to_all_done"),
            burst.get("flow_runs"),
        )
        if files != 1000 or not isinstance(seconds, int | float) or not isinstance(runs, int):
            continue
        once = "each file once" if burst.get("exactly_once") else "NOT exactly once"
        value = f"{seconds:.1f} s, {runs} run(s), {once}"
        met = seconds <= 60 and runs <= 20 and bool(burst.get("exactly_once"))
        figure = "burst of 1000 files: seconds to all done, flow runs used"
        rows.append(Row("5", figure, value, "<= 60 s, <= 20 runs", met, source))
    return rows


EXTRACTORS: dict[str, Callable[[Mapping[str, Any], str], list[Row]]] = {
    "freshness": freshness_rows,
    "rerun": rerun_rows,
    "incremental": incremental_rows,
    "burst": burst_rows,
}


def rows_for(name: str, result: Mapping[str, Any] | None, source: str) -> list[Row]:
    """The table rows of one script: its figures, else its placeholders with "—"."""
    if result is not None:
        extract = EXTRACTORS.get(name)
        rows = extract(result, source) if extract else []
        if not rows:
            rows = figure_rows(name, result, source)
        if not rows and isinstance(result.get("met"), bool):
            figure, goal = PLACEHOLDERS[name][0]
            value = f"see bench/results/{name}.json"
            rows = [Row(NUMBERS[name], figure, value, goal, result["met"], source)]
        if rows:
            day = result_date(result)
            if day == "an earlier run":
                day = datetime.now(UTC).date().isoformat() if source == "this run" else "—"
            return [replace(r, measured=day) if r.value != "—" else r for r in rows]
        source = f"{source}; no figures in its result"
    return [Row(NUMBERS[name], f, "—", goal, None, source) for f, goal in PLACEHOLDERS[name]]


def collect(outcomes: Mapping[str, Outcome], fresh: Mapping[str, dict[str, Any]]) -> list[Row]:
    """Every figure: from this run where the script ran, else from its stored result."""
    rows: list[Row] = []
    for name in NUMBERS:
        outcome = outcomes.get(name)
        if name in fresh:
            rows += rows_for(name, fresh[name], "this run")
            continue
        stored = stored_result(name)
        if stored is not None:
            rows += rows_for(name, stored, f"bench/results/{name}.json of {result_date(stored)}")
        elif outcome is not None and outcome.status in ("skipped", "failed"):
            rows += rows_for(name, None, f"{outcome.status}: {outcome.note}")
        else:
            rows += rows_for(name, None, "not measured yet")
    return rows


def met_text(met: bool | None) -> str:
    return "—" if met is None else ("yes" if met else "**no**")


def markdown_table(rows: list[Row]) -> str:
    """The README's results table."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        "| # | figure | value | goal | met? | measured |",
        "| --- | --- | --- | --- | :---: | --- |",
    ]
    for row in rows:
        value = row.value if row.value != "-" else "—"
        goal = row.goal if row.goal != "-" else "—"
        lines.append(
            f"| {row.number} | {cell(row.figure)} | {cell(value)} | {cell(goal)} "
            f"| {met_text(row.met)} | {row.measured} |"
        )
    return "\n".join(lines)


def text_table(rows: list[Row]) -> str:
    width = max((len(r.figure) for r in rows), default=10)
    value_width = max((len(r.value) for r in rows), default=10)
    lines = [f"{'#':<2} {'figure':<{width}}  {'value':<{value_width}}  {'met?':<5} goal"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        lines.append(
            f"{r.number:<2} {r.figure:<{width}}  {r.value:<{value_width}}  {met:<5} {r.goal}"
        )
    return "\n".join(lines)


README_BEGIN = "<!-- bench-table: written by `bench/suite.py --markdown --readme` -->"
README_END = "<!-- /bench-table -->"


def with_table(readme: str, table: str) -> str:
    """``readme`` with the text between its bench-table marks replaced by ``table``."""
    head, begin, rest = readme.partition(README_BEGIN)
    _, end, tail = rest.partition(README_END)
    if not begin or not end:
        raise SystemExit(f"README.md has no {README_BEGIN} ... {README_END} block")
    return f"{head}{begin}\n{table}\n{end}{tail}"


# -- main --------------------------------------------------------------------------------------


def load_bench_module(name: str) -> ModuleType:
    """Import ``bench/<name>.py`` by path (the bench folder is not a package)."""
    path = BENCH / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"eventpipe_bench_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render_plot() -> str | None:
    """The freshness plot from bench/results/freshness.json, if that exists."""
    if not (RESULTS / "freshness.json").exists() or not (BENCH / "plot.py").exists():
        return None
    try:
        written = load_bench_module("plot").main([])
    except Exception as exc:  # the table matters more than the picture
        print(f"plot not rendered: {exc}", file=sys.stderr)
        return None
    return str(written.get("image")) if isinstance(written, dict) else None


def names_from(text: str | None) -> set[str]:
    names = {n.strip() for n in (text or "").split(",") if n.strip()}
    unknown = names - set(NUMBERS)
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; known: {', '.join(NUMBERS)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script")
    parser.add_argument("--only", help="comma-separated scripts to run (default: all)")
    parser.add_argument("--skip", help="comma-separated scripts not to run")
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="run nothing: print the README table from bench/results/*.json",
    )
    parser.add_argument("--no-plot", action="store_true", help="don't render the plot")
    parser.add_argument(
        "--readme",
        action="store_true",
        help="with --markdown: also put the table into README.md between its bench-table marks",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    only, skip = names_from(args.only), names_from(args.skip)
    selected = [n for n in NUMBERS if (not only or n in only) and n not in skip]
    if args.markdown:
        rows = collect({}, {})
        print(markdown_table(rows))
        if args.readme:
            readme = REPO / "README.md"
            readme.write_text(
                with_table(readme.read_text(encoding="utf-8"), markdown_table(rows)),
                encoding="utf-8",
            )
            print(f"updated {readme}")
        return {"name": "suite", "rows": [asdict(r) for r in rows]}

    started = time.monotonic()
    at_start = harness.start_state()
    outcomes: dict[str, Outcome] = {}
    fresh: dict[str, dict[str, Any]] = {}
    for name in NUMBERS:
        if name not in selected:
            outcomes[name] = Outcome(name, "not run", note="left out of this invocation")
            continue
        outcome, result = run_script(name, ["--quick"] if args.quick else [])
        outcomes[name] = outcome
        if result is not None:
            fresh[name] = result
        print(f"=== {name}: {outcome.status} {outcome.note}".rstrip(), flush=True)
    rows = collect(outcomes, fresh)
    image = None if args.no_plot else render_plot()
    table = markdown_table(rows)
    body: dict[str, object] = {
        "name": "suite",
        "quick": args.quick,
        "ran": {name: asdict(o) for name, o in outcomes.items()},
        "rows": [asdict(r) for r in rows],
        "markdown": table,
        "plot": image,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    note = (
        "a 2-core machine shared with other engineers' test runs: each script "
        "interleaves what it compares and reports medians and ratios"
    )
    suite = harness.write_results("suite", harness.recorded(body, at_start, note=note))
    print()
    print(text_table(rows))
    for outcome in outcomes.values():
        if outcome.status in ("skipped", "failed"):
            print(f"note: {outcome.name} {outcome.status}: {outcome.note}")
    if image:
        print(f"plot: {image}")
    print(f"results in {RESULTS}; `bench/suite.py --markdown` prints the README table")
    return suite


if __name__ == "__main__":
    main()
