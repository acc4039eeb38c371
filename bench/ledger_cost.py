"""What the ledger costs per file on its two backends, SQLite and PostgreSQL, side by side.

A. The ledger's operations alone, as a run's life of a file calls them: ``record_landed``
(with its landed event, as the watcher records a sighting), ``mark_sent`` of that event (the
outbox pump), ``claim_pending`` (one claim for the whole round), ``finish`` and
``Catalog.publish`` of the file's partition asset row. Microseconds per file, per operation
and in total, median over rounds of ``--files`` files; one ledger per backend for the whole
part (opened once, as a long-running process holds it), the order of the backends
alternating between rounds. Measured before the Prefect server starts: no Prefect here.

B. A whole materialize run per file: ``--flow-files`` new files landed, then one run of the
harness's ``sales`` pipeline in this process (``harness.run_flow``), on a fresh data dir and,
for PostgreSQL, a fresh database found by the run through ``EVENTPIPE_LEDGER``; seconds per
file (the run's wall time / files), backends alternating between rounds, after an untimed
warm-up run on each.

PostgreSQL is ``eventpipe.testing.postgres_server()``: the machine's own, on 127.0.0.1, with
``fsync=off``; SQLite is a WAL file with ``synchronous=NORMAL`` (no fsync per commit either).

    .venv/bin/python bench/ledger_cost.py [--quick] [--rounds 12] [--flow-rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import harness
from eventpipe.core.keys import asset_key
from eventpipe.core.models import Landed
from eventpipe.events.build import sighting_event
from eventpipe.ledger import LEDGER_ENV, AssetRow, FileRow, Ledger
from eventpipe.testing import fresh_database, postgres_server

NAME = "ledger_cost"
BACKENDS = ("sqlite", "postgresql")
OPS = ("record_landed", "mark_sent", "claim_pending", "finish", "publish")
PIPELINE = "perf_ledger"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 + 2 rounds, runs of 20 files")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of part A (12)")
    parser.add_argument("--files", type=int, default=50, help="files per round of part A")
    parser.add_argument("--flow-rounds", type=int, default=None, help="rounds of part B (3)")
    parser.add_argument("--flow-files", type=int, default=None, help="files per run (50)")
    parser.add_argument("--no-flow", action="store_true", help="part A only (no Prefect)")
    parser.add_argument("--results", default=NAME, help="results file name")
    args = parser.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (4 if quick else 12)
    args.flow_rounds = args.flow_rounds or (2 if quick else 3)
    args.flow_files = args.flow_files or (20 if quick else 50)
    return args


def order(round_no: int) -> tuple[str, ...]:
    """The backends in round ``round_no``'s order: each goes first every other round."""
    return BACKENDS if round_no % 2 == 0 else BACKENDS[::-1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@contextmanager
def ledger_env(url: str | None) -> Iterator[None]:
    """``EVENTPIPE_LEDGER`` set to ``url`` (or unset) inside the block, as it was after."""
    before = os.environ.pop(LEDGER_ENV, None)
    if url:
        os.environ[LEDGER_ENV] = url
    try:
        yield
    finally:
        os.environ.pop(LEDGER_ENV, None)
        if before is not None:
            os.environ[LEDGER_ENV] = before


# -- A: the operations alone -------------------------------------------------------------------


def landed_files(root: Path, round_no: int, count: int) -> list[Landed]:
    """``count`` new sample files (distinct bytes, so none is a duplicate) as the folder
    source reports them; the same sightings are recorded on both backends."""
    inbox = root / f"ops-inbox-{round_no}"
    paths = harness.write_files(inbox, 10_000 + round_no * count, count)
    return [harness.landed(inbox, path) for path in paths]


def asset_row(row: FileRow, data: Path) -> AssetRow:
    """The processed partition's current row, as ``run.outputs.publish`` records it."""
    partition = row.relative.removesuffix(".csv")
    path = data / "processed" / "orders" / f"{partition}.parquet"
    version_id = hashlib.sha256(f"{row.sha256}:orders".encode()).hexdigest()[:16]
    return AssetRow(
        pipeline=row.pipeline,
        name="orders",
        partition=partition,
        kind="processed",
        key=asset_key(path.as_uri()),
        version=version_id,
        path=str(path),
        rows=50,
        size=4096,
        mtime_ns=time.time_ns(),
        code_version="c0de",
        input_fingerprint=row.sha256,
        updated_at=time.time(),
    )


def ops_round(ledger: Ledger, files: list[Landed], run_id: str, data: Path) -> dict[str, float]:
    """One file's life for each of ``files``, operation by operation; µs per file of each."""
    events: list[str] = []

    def event_for(outcome: Any, row: FileRow) -> Any:
        event = sighting_event(outcome, row, asset_key(row.uri))
        if event is not None:
            events.append(event[0])
        return event

    clock = time.perf_counter
    t0 = clock()
    outcomes = [ledger.record_landed(PIPELINE, f, event_for)[0] for f in files]
    t1 = clock()
    for event_id in events:
        ledger.mark_sent([event_id])
    t2 = clock()
    claimed = ledger.claim_pending(PIPELINE, run_id)
    t3 = clock()
    for row in claimed:
        ledger.finish(row.id, "done")
    t4 = clock()
    for row in claimed:
        ledger.publish(asset_row(row, data), f"{data}/versions/{row.sha256}", [row.uri], run_id)
    t5 = clock()
    n = len(files)
    if set(outcomes) != {"new"} or len(events) != n or len(claimed) != n:
        raise RuntimeError(f"{ledger.where}: {set(outcomes)}, {len(events)} events, claimed {n}")
    if ledger.counts(PIPELINE).get("processing"):
        raise RuntimeError(f"{ledger.where}: files left processing")
    times = (t0, t1, t2, t3, t4, t5)
    per_file = {op: (times[i + 1] - times[i]) * 1e6 / n for i, op in enumerate(OPS)}
    return {**per_file, "total": sum(per_file.values())}


def measure_ops(root: Path, pg: str, rounds: int, count: int) -> dict[str, Any]:
    ledgers = {
        "sqlite": Ledger(root / "ops-sqlite" / "ledger.sqlite"),
        "postgresql": Ledger(fresh_database(pg, "ops")),
    }
    samples: dict[str, list[dict[str, float]]] = {b: [] for b in BACKENDS}
    try:
        for round_no in range(-1, rounds):  # round -1 warms up connections and plans
            files = landed_files(root, round_no + 1, count)
            for backend in order(round_no):
                run_id = f"bench-{backend}-{round_no}"
                cost = ops_round(ledgers[backend], files, run_id, root / f"ops-{backend}")
                if round_no >= 0:
                    samples[backend].append(cost)
            if round_no >= 0:
                line = "  ".join(f"{b} {samples[b][-1]['total']:.0f} µs" for b in BACKENDS)
                print(f"  ops round {round_no + 1}/{rounds}: per file {line}", flush=True)
        server = postgres_facts(ledgers["postgresql"])
    finally:
        for ledger in ledgers.values():
            ledger.close()
    medians = {
        b: {k: round(median([s[k] for s in samples[b]]), 1) for k in (*OPS, "total")}
        for b in BACKENDS
    }
    ratio = {k: round(medians["postgresql"][k] / medians["sqlite"][k], 2) for k in (*OPS, "total")}
    return {
        "median_us_per_file": medians,
        "ratio_pg_sqlite": ratio,
        "samples_us_per_file": {
            b: [{k: round(v, 1) for k, v in s.items()} for s in samples[b]] for b in BACKENDS
        },
        "postgres_server": server,
    }


def postgres_facts(ledger: Ledger) -> dict[str, str]:
    from sqlalchemy import text

    with ledger.engine.connect() as db:
        return {
            name: str(db.execute(text(f"SHOW {name}")).scalar_one())
            for name in ("server_version", "fsync", "synchronous_commit")
        }


# -- B: a whole flow run -----------------------------------------------------------------------


def flow_run(root: Path, pg: str, tag: str, backend: str, count: int) -> tuple[float, int]:
    """Land ``count`` new files and run the flow on them; (wall seconds, files processed)."""
    spec, pipeline = harness.spec("plain"), harness.plain.name
    inbox, data = root / f"inbox-{tag}-{backend}", root / f"data-{tag}-{backend}"
    url = fresh_database(pg, "flow") if backend == "postgresql" else None
    files = harness.write_files(inbox, 0, count)
    with ledger_env(url):
        harness.land(data, pipeline, inbox, files, ledger_url=url)
        harness.settle(120)
        wall, summary = harness.run_flow(spec, data)
    ledger = harness.open_ledger(data, url)
    try:
        done = ledger.counts(pipeline).get("done", 0)
    finally:
        ledger.close()
    sqlite_file = (data / "ledger.sqlite").exists()
    if summary["processed"] != count or done != count or sqlite_file != (url is None):
        raise RuntimeError(
            f"{backend}: processed {summary['processed']}, {done} done of {count};"
            f" data dir's ledger.sqlite exists: {sqlite_file}"
        )
    return wall, summary["processed"]


def measure_flow(pg: str, rounds: int, count: int) -> dict[str, Any]:
    samples: dict[str, list[dict[str, float]]] = {b: [] for b in BACKENDS}
    with harness.prefect_server(NAME) as root:
        from eventpipe.run.compute import warm_up

        warm_up(harness.spec("plain"))
        for backend in BACKENDS:  # imports, first connections, a first run: not measured
            flow_run(root, pg, "warm", backend, 2)
        for round_no in range(rounds):
            for backend in order(round_no):
                wall, files = flow_run(root, pg, str(round_no), backend, count)
                samples[backend].append(
                    {"files": files, "wall_s": round(wall, 3), "s_per_file": wall / files}
                )
                print(
                    f"  flow round {round_no + 1}/{rounds} {backend}: {files} files in"
                    f" {wall:.2f} s ({wall / files * 1000:.0f} ms/file)",
                    flush=True,
                )
    per_file = {b: median([s["s_per_file"] for s in samples[b]]) for b in BACKENDS}
    return {
        "seconds_per_file_median": {b: round(v, 4) for b, v in per_file.items()},
        "wall_s_median": {b: round(median([s["wall_s"] for s in samples[b]]), 3) for b in BACKENDS},
        "ratio_pg_sqlite": round(per_file["postgresql"] / per_file["sqlite"], 3),
        "samples": {
            b: [{**s, "s_per_file": round(s["s_per_file"], 4)} for s in samples[b]]
            for b in BACKENDS
        },
    }


# -- main --------------------------------------------------------------------------------------


def report(args: argparse.Namespace, ops: dict[str, Any], flow: dict[str, Any] | None) -> list:
    """Print the tables; return the suite's figures."""
    med, ratio = ops["median_us_per_file"], ops["ratio_pg_sqlite"]
    print()
    print(f"A. ledger operations, µs per file, medians of {args.rounds} rounds of {args.files}")
    print(
        harness.table(
            ["operation", "SQLite µs", "PostgreSQL µs", "PG / SQLite"],
            [
                [k, f"{med['sqlite'][k]:.0f}", f"{med['postgresql'][k]:.0f}", f"x{ratio[k]:.2f}"]
                for k in (*OPS, "total")
            ],
        )
    )
    figures = [
        {
            "figure": "ledger per file (record, mark sent, claim, finish, publish), median: "
            "PostgreSQL vs SQLite",
            "value": f"{med['postgresql']['total']:.0f} µs vs {med['sqlite']['total']:.0f} µs"
            f" (x{ratio['total']:.2f})",
            "goal": "-",
            "met": None,
        }
    ]
    if flow is not None:
        per_file = flow["seconds_per_file_median"]
        print()
        print(
            f"B. one flow run of {args.flow_files} new files, seconds per file,"
            f" medians of {args.flow_rounds} rounds"
        )
        print(
            harness.table(
                ["backend", "s / file", "run wall s"],
                [[b, per_file[b], flow["wall_s_median"][b]] for b in BACKENDS]
                + [["PG / SQLite", f"x{flow['ratio_pg_sqlite']:.2f}", ""]],
            )
        )
        figures.append(
            {
                "figure": f"flow run per file ({args.flow_files} new files a run), median: "
                "PostgreSQL vs SQLite",
                "value": f"{per_file['postgresql'] * 1000:.0f} ms vs"
                f" {per_file['sqlite'] * 1000:.0f} ms (x{flow['ratio_pg_sqlite']:.2f})",
                "goal": "-",
                "met": None,
            }
        )
    return figures


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse(argv)
    at_start = harness.start_state()
    root = Path(tempfile.mkdtemp(prefix="eventpipe-ledger-cost-")).resolve()
    flow: dict[str, Any] | None = None
    try:
        with ledger_env(None), postgres_server() as pg:  # SQLite runs must not find a URL
            print(f"part A: {args.rounds} rounds of {args.files} files", flush=True)
            ops = measure_ops(root, pg, args.rounds, args.files)
            if not args.no_flow:
                print(f"part B: {args.flow_rounds} rounds, runs of {args.flow_files}", flush=True)
                flow = measure_flow(pg, args.flow_rounds, args.flow_files)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    figures = report(args, ops, flow)
    body: dict[str, object] = {
        "measure": "A: µs per file of each ledger operation of a file's life (record_landed "
        "with its event, mark_sent, claim_pending of the round's files at once, finish, "
        "publish of its partition's asset row), median over rounds; B: wall seconds of one "
        "materialize run of N new files / N. Backends alternate between rounds.",
        "config": {
            "rounds": args.rounds,
            "files_per_round": args.files,
            "flow_rounds": args.flow_rounds,
            "flow_files": args.flow_files,
            "pipeline": harness.spec("plain"),
            "sqlite": "WAL, synchronous=NORMAL, a file on local disk",
            "postgresql": "eventpipe.testing.postgres_server(): 127.0.0.1, fsync=off, "
            "a fresh database per flow run",
        },
        "ops": ops,
        "flow": flow,
        "figures": figures,
    }
    facts = {
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": version("sqlalchemy"),
        "psycopg": version("psycopg"),
        "postgresql": ops["postgres_server"]["server_version"],
    }
    return harness.write_results(
        args.results, harness.recorded(body, at_start, machine_facts=facts)
    )


if __name__ == "__main__":
    main()
