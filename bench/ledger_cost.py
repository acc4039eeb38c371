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

C. Freshness under ``eventpipe up``: the same pipeline (the harness's ``sales``, under one
name per path) in three ``eventpipe up`` subprocesses on one Prefect server, each with its
own inbox and home: ``sqlite`` with its local data dir's SQLite ledger, ``postgresql`` with a
local data dir and ``--ledger`` a fresh PostgreSQL database, and ``postgresql+bucket`` with
that ledger and ``--data s3://…`` a fresh bucket of a ``moto_server`` on 127.0.0.1 (every
snapshot, version and output in the bucket, nothing local but the cache). ``up`` puts the
ledger URL into its own environment for the runs it executes: three loops in this process
would share that variable. Files are dropped into the inboxes in turn, the path that goes
first rotating from one file to the next, ``--drops`` each, ~1.5 s apart so each file is
alone, after 2 untimed drops each; a drop's freshness is measured as ``freshness.py`` does:
from just before the file is written until every analytics output changed (its mtime on
disk; its ETag and Last-Modified in the bucket, polled with HEAD every 20 ms, which adds up
to ~25 ms to that path's figures).

PostgreSQL is ``eventpipe.testing.postgres_server()``: the machine's own, on 127.0.0.1, with
``fsync=off``; SQLite is a WAL file with ``synchronous=NORMAL`` (no fsync per commit either).

    .venv/bin/python bench/ledger_cost.py [--quick] [--rounds 12] [--flow-rounds 3] [--drops 30]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

import freshness
import harness
from eventpipe.core.keys import asset_key
from eventpipe.core.models import Landed
from eventpipe.events.build import sighting_event
from eventpipe.ledger import LEDGER_ENV, AssetRow, FileRow, Ledger
from eventpipe.testing import (
    Background,
    DataBucket,
    client_env,
    drop_file,
    fresh_database,
    moto_env,
    moto_s3,
    postgres_server,
)

NAME = "ledger_cost"
BACKENDS = ("sqlite", "postgresql")
FRESH_PATHS = ("sqlite", "postgresql", "postgresql+bucket")
"""Part C's paths: the two ledgers on a local data dir, and PostgreSQL with the data in S3."""
OPS = ("record_landed", "mark_sent", "claim_pending", "finish", "publish")
PIPELINE = "perf_ledger"
FRESH_SPECS = {
    "sqlite": "ledger_sqlite",
    "postgresql": "ledger_pg",
    "postgresql+bucket": "ledger_pg_bucket",
}
"""Part C's pipeline per path: an attribute of harness.py, ``plain`` under another name."""
BUCKET_POLL_SECONDS = 0.02
FRESH_WARMUP = 2
FRESH_GAP_SECONDS = 1.5


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="4 + 2 rounds, runs of 20 files, 6 drops each"
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds of part A (12)")
    parser.add_argument("--files", type=int, default=50, help="files per round of part A")
    parser.add_argument("--flow-rounds", type=int, default=None, help="rounds of part B (3)")
    parser.add_argument("--flow-files", type=int, default=None, help="files per run (50)")
    parser.add_argument("--drops", type=int, default=None, help="timed drops per path, C (30)")
    parser.add_argument("--no-flow", action="store_true", help="part A only (no Prefect)")
    parser.add_argument("--no-freshness", action="store_true", help="parts A and B only")
    parser.add_argument("--results", default=NAME, help="results file name")
    args = parser.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (4 if quick else 12)
    args.flow_rounds = args.flow_rounds or (2 if quick else 3)
    args.flow_files = args.flow_files or (20 if quick else 50)
    args.drops = args.drops or (6 if quick else 30)
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


def measure_flow(root: Path, pg: str, rounds: int, count: int) -> dict[str, Any]:
    """Part B on the Prefect server of ``root`` (``harness.prefect_server``)."""
    from eventpipe.run.compute import warm_up

    samples: dict[str, list[dict[str, float]]] = {b: [] for b in BACKENDS}
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


# -- C: freshness under `eventpipe up` ---------------------------------------------------------


class Loop:
    """One path's ``eventpipe up``: its own inbox, home and log under ``root``; its data dir
    there too, or in ``bucket``."""

    def __init__(
        self,
        root: Path,
        api_url: str,
        path: str,
        url: str | None,
        bucket: DataBucket | None = None,
    ) -> None:
        self.path, self.url, self.bucket = path, url, bucket
        self.spec = harness.spec(FRESH_SPECS[path])
        self.pipeline = getattr(harness, FRESH_SPECS[path]).name
        self.root = root / f"fresh-{path.replace('+', '-')}"
        self.inbox, self.data = self.root / "inbox", self.root / "data"
        env = client_env(api_url, self.root / "client-home", EVENTPIPE_HOME=".eventpipe")
        env.pop(LEDGER_ENV, None)  # the SQLite loop must not find a URL; the others get theirs
        if bucket is not None:
            env.update(moto_env(bucket.endpoint))
        data = bucket.uri if bucket is not None else str(self.data)
        argv = [sys.executable, "-m", "eventpipe.cli", "up", "--pipeline", self.spec]
        argv += ["--inbox", str(self.inbox), "--data", data, "--api-url", api_url]
        argv += ["--ledger", url] if url else []
        self.process = Background(argv, self.root / "up.log", env=env, cwd=self.root)
        self.outputs: list[Path] = []
        self.keys: list[str] = []

    def start(self) -> Loop:
        self.root.mkdir(parents=True)
        self.process.start()
        return self

    def wait_up(self) -> None:
        self.process.wait_for_output("eventpipe is up", 240)
        self.outputs = freshness.analytics_outputs(self.spec, self.data)
        if self.bucket is not None:  # the same relative paths, under the bucket's prefix
            self.keys = [
                self.bucket.prefix + p.relative_to(self.data).as_posix() for p in self.outputs
            ]

    def probe(self) -> list[Any]:
        """One token per analytics output, None while it is missing: its mtime on disk, or
        its ETag and Last-Modified in the bucket."""
        if self.bucket is None:
            return freshness.mtimes(self.outputs)
        tokens: list[Any] = []
        for key in self.keys:
            try:
                head = self.bucket.s3.head_object(Bucket=self.bucket.name, Key=key)
            except self.bucket.s3.exceptions.ClientError:
                tokens.append(None)
            else:
                tokens.append((head["ETag"], head["LastModified"]))
        return tokens

    def drop(self, index: int, sample: freshness.Sample) -> freshness.Drop:
        """Write ``sample`` into the inbox; wait until every analytics output is new."""
        before = self.probe()
        poll = freshness.POLL_SECONDS if self.bucket is None else BUCKET_POLL_SECONDS
        dropped_at, t0 = time.time(), time.perf_counter()
        drop_file(self.inbox, *sample)
        first, every = freshness.wait_changed(self.probe, before, t0, freshness.DROP_TIMEOUT, poll)
        return freshness.Drop(index, first, every, dropped_at)

    def done(self) -> int:
        """Files done in this loop's ledger; checks the ledger and the data are where it was
        told (with bucket data: no data file under its root at all)."""
        sqlite_file = (self.data / "ledger.sqlite").exists()
        if sqlite_file != (self.url is None):
            raise RuntimeError(f"{self.path}: data dir's ledger.sqlite exists: {sqlite_file}")
        if self.bucket is not None:
            local = [p for p in self.root.rglob("*") if p.suffix in {".parquet", ".sqlite"}]
            if local:
                raise RuntimeError(f"{self.path}: data files on local disk: {local[:3]}")
            if not self.bucket.objects(f"raw/{self.pipeline}/"):
                raise RuntimeError(f"{self.path}: no raw snapshot in the bucket")
        ledger = harness.open_ledger(self.data, self.url)
        try:
            return ledger.counts(self.pipeline).get("done", 0)
        finally:
            ledger.close()


def measure_freshness(root: Path, pg: str, drops: int) -> dict[str, Any]:
    """Part C on the Prefect server of ``root``: the three loops up at once, drops in turn."""
    api_url = os.environ["PREFECT_API_URL"]  # harness.prefect_server's server
    if os.environ.get(LEDGER_ENV):
        raise RuntimeError(f"{LEDGER_ENV} is set: the SQLite loop would find it")
    with moto_s3(root / "moto.log") as endpoint:
        os.environ.update(moto_env(endpoint))  # this process's boto3 (DataBucket)
        loops = [
            Loop(root, api_url, "sqlite", None),
            Loop(root, api_url, "postgresql", fresh_database(pg, "fresh")),
            Loop(
                root,
                api_url,
                "postgresql+bucket",
                fresh_database(pg, "freshb"),
                DataBucket(endpoint, prefix="bench/"),
            ),
        ]
        samples = freshness.make_samples(root / "fresh-staging", FRESH_WARMUP + drops)
        timed: dict[str, list[freshness.Drop]] = {p: [] for p in FRESH_PATHS}
        try:
            for loop in loops:
                loop.start()
            for loop in loops:
                loop.wait_up()
            for index, sample in enumerate(samples):
                turn = index % len(loops)  # who goes first rotates
                for loop in loops[turn:] + loops[:turn]:  # the same file on each, in turn
                    drop = loop.drop(index, sample)
                    shown = (
                        f"{drop.all_seconds:6.3f} s" if drop.all_seconds is not None else "timeout"
                    )
                    if index < FRESH_WARMUP:
                        print(f"  warm-up {loop.path:17} drop {index + 1}: {shown}", flush=True)
                    else:
                        timed[loop.path].append(drop)
                        number = f"{index - FRESH_WARMUP + 1:2}/{drops}"
                        print(f"  fresh {loop.path:17} drop {number}: {shown}", flush=True)
                    time.sleep(FRESH_GAP_SECONDS)
            done = {loop.path: loop.done() for loop in loops}
        finally:
            for loop in loops:
                loop.process.stop(timeout=60)
    for path, count in done.items():
        if count != len(samples):
            raise RuntimeError(f"{path}: {count} files done of {len(samples)} dropped")
    summary = {p: freshness.summarize(p, timed[p]) for p in FRESH_PATHS}
    sqlite_p50 = summary["sqlite"].p50

    def ratio(path: str) -> float | None:
        p50 = summary[path].p50
        return round(p50 / sqlite_p50, 3) if sqlite_p50 and p50 else None

    return {
        "summary": {p: asdict(s) for p, s in summary.items()},
        "ratio_pg_sqlite_p50": ratio("postgresql"),
        "ratio_bucket_sqlite_p50": ratio("postgresql+bucket"),
        "files_done": done,
        "drops": {p: [asdict(d) for d in timed[p]] for p in FRESH_PATHS},
    }


# -- main --------------------------------------------------------------------------------------


def report(
    args: argparse.Namespace,
    ops: dict[str, Any],
    flow: dict[str, Any] | None,
    fresh: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
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
    if fresh is not None:
        summary, ratio_p50 = fresh["summary"], fresh["ratio_pg_sqlite_p50"]
        bucket_p50 = fresh.get("ratio_bucket_sqlite_p50")
        print()
        print(
            f"C. `eventpipe up`: file written -> every analytics output updated, seconds,"
            f" {args.drops} drops per path, interleaved"
        )
        print(
            harness.table(
                ["backend", "n", "timeouts", "p50 s", "p95 s", "max s"],
                [
                    [b, s["n"], s["timeouts"], _s(s["p50"]), _s(s["p95"]), _s(s["max"])]
                    for b, s in summary.items()
                ]
                + [["PG / SQLite (p50)", "", "", _x(ratio_p50), "", ""]]
                + [["PG + bucket / SQLite (p50)", "", "", _x(bucket_p50), "", ""]],
            )
        )
        pg, lite = summary["postgresql"], summary["sqlite"]
        figures.append(
            {
                "figure": "freshness under `eventpipe up` (file written -> all analytics "
                "updated), p50 / p95: PostgreSQL vs SQLite",
                "value": f"{_s(pg['p50'])} s / {_s(pg['p95'])} s vs"
                f" {_s(lite['p50'])} s / {_s(lite['p95'])} s (p50 {_x(ratio_p50)})",
                "goal": "-",
                "met": None,
            }
        )
        if "postgresql+bucket" in summary:
            both = summary["postgresql+bucket"]
            figures.append(
                {
                    "figure": "freshness under `eventpipe up`, p50 / p95: PostgreSQL ledger and "
                    "data in S3 (moto) vs SQLite and a local data dir",
                    "value": f"{_s(both['p50'])} s / {_s(both['p95'])} s vs"
                    f" {_s(lite['p50'])} s / {_s(lite['p95'])} s (p50 {_x(bucket_p50)})",
                    "goal": "-",
                    "met": None,
                }
            )
    return figures


def _s(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "-"


def _x(ratio: float | None) -> str:
    return f"x{ratio:.2f}" if ratio is not None else "-"


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse(argv)
    at_start = harness.start_state()
    root = Path(tempfile.mkdtemp(prefix="eventpipe-ledger-cost-")).resolve()
    flow: dict[str, Any] | None = None
    fresh: dict[str, Any] | None = None
    try:
        with ledger_env(None), postgres_server() as pg:  # SQLite runs must not find a URL
            print(f"part A: {args.rounds} rounds of {args.files} files", flush=True)
            ops = measure_ops(root, pg, args.rounds, args.files)
            if not args.no_flow:
                with harness.prefect_server(NAME) as server_root:
                    print(
                        f"part B: {args.flow_rounds} rounds, runs of {args.flow_files}",
                        flush=True,
                    )
                    flow = measure_flow(server_root, pg, args.flow_rounds, args.flow_files)
                    if not args.no_freshness:
                        print(f"part C: {args.drops} drops per path, interleaved", flush=True)
                        fresh = measure_freshness(server_root, pg, args.drops)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    figures = report(args, ops, flow, fresh)
    body: dict[str, object] = {
        "measure": "A: µs per file of each ledger operation of a file's life (record_landed "
        "with its event, mark_sent, claim_pending of the round's files at once, finish, "
        "publish of its partition's asset row), median over rounds; B: wall seconds of one "
        "materialize run of N new files / N. Backends alternate between rounds. C: seconds from "
        "just before a file is written into an `eventpipe up`'s inbox until every analytics "
        "output has a new mtime (or, in the bucket, a new ETag / Last-Modified), one `up` per "
        "path on one Prefect server, drops in turn, the first path rotating.",
        "config": {
            "rounds": args.rounds,
            "files_per_round": args.files,
            "flow_rounds": args.flow_rounds,
            "flow_files": args.flow_files,
            "freshness_drops": None if fresh is None else args.drops,
            "freshness_warmup_drops": FRESH_WARMUP,
            "freshness_gap_seconds": FRESH_GAP_SECONDS,
            "freshness_drop_timeout_seconds": freshness.DROP_TIMEOUT,
            "freshness_pipelines": {b: harness.spec(a) for b, a in FRESH_SPECS.items()},
            "pipeline": harness.spec("plain"),
            "sqlite": "WAL, synchronous=NORMAL, a file on local disk",
            "postgresql": "eventpipe.testing.postgres_server(): 127.0.0.1, fsync=off, "
            "a fresh database per flow run and one for each of part C's PostgreSQL loops",
            "bucket": "part C's postgresql+bucket: moto_server (eventpipe.testing.moto_s3) on "
            f"127.0.0.1, a fresh bucket; outputs polled with HEAD every {BUCKET_POLL_SECONDS} s",
        },
        "ops": ops,
        "flow": flow,
        "freshness": fresh,
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
