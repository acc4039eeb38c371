"""The Prefect flow that materializes a pipeline: raw -> processed (a partition per file) ->
analytics, each stage a ``@materialize`` task.

Every run drains all pending files of its pipeline, so a burst of landings needs few runs.
Outputs are content-addressed versions; the current paths are atomically replaced copies of
them, checked on every run, so a cached (skipped) task can never leave a stale or missing
output behind.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext

from eventpipe.core import names
from eventpipe.core.keys import partition_relative
from eventpipe.core.storage import Storage
from eventpipe.events import build as ev
from eventpipe.exceptions import ConfigError, EventpipeError
from eventpipe.intake.aws import open_data_store
from eventpipe.ledger import FileRow, Ledger
from eventpipe.run.analytics_stage import run_analytics
from eventpipe.run.artifacts import RunReport, artifact_key, table_rows
from eventpipe.run.context import RunContext, TaskHome, bound, cached_pipeline
from eventpipe.run.credentials import run_ledger_url
from eventpipe.run.dask import task_runner_for
from eventpipe.run.deliver import deliver_now
from eventpipe.run.mirror import BucketPublisher
from eventpipe.run.outputs import restore_outputs
from eventpipe.run.partition_stage import process_work
from eventpipe.run.retract_stage import retract_partitions
from eventpipe.settings import cache_dir

log = logging.getLogger("eventpipe.flows")


@flow(name=names.MATERIALIZE_FLOW, persist_result=False)
def materialize_pipeline(
    pipeline: str,
    data: str,
    publish: dict[str, str] | None = None,
    task_runner: str = "threads",
    ledger_block: str | None = None,
    storage: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Materialize every pending file of ``pipeline`` (``module:attr`` or ``file.py:attr``),
    then every analytics asset whose inputs changed, writing under ``data`` (a local folder,
    or ``s3://bucket/prefix``: ``storage`` then says how to reach it, by names and URLs only,
    see :func:`eventpipe.intake.aws.open_data_store`); with ``publish`` (``{"uri":
    "s3://bucket/prefix", ...}``) copies of a local data dir's current outputs go there too.

    ``task_runner`` says where the process steps' code runs: ``threads`` (this process,
    several files at once), ``dask`` (a Dask cluster of one worker process per core, made for
    this run) or a Dask scheduler address (``tcp://host:port``, a running cluster: ``eventpipe
    up --task-runner dask`` keeps one). The task runs stay in this process either way.

    The ledger is the database ``EVENTPIPE_LEDGER`` names, else the one in the Prefect
    ``Secret`` block ``ledger_block``, else ``<data>/ledger.sqlite``."""
    started = time.time()
    pipe = cached_pipeline(pipeline)
    ctx = FlowRunContext.get()
    run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else "local"
    store = Storage(open_data_store(data, storage), pipe.name)
    ledger = Ledger.open(data, run_ledger_url(ledger_block))
    run = RunContext(
        pipeline=pipe,
        store=store,
        ledger=ledger,
        run_id=run_id,
        report=RunReport(pipeline=pipe.name),
        results=None if store.local_root is not None else cache_dir() / "results",
    )
    if publish and store.local_root is not None:
        run.mirror = BucketPublisher.from_options(publish, store.local_root)
    try:
        with bound(run), _partition_runner(run, task_runner, pipeline, data, storage):
            summary = _materialize(run, started)
    finally:
        run.flush_events()
        deliver_now(ledger)
        ledger.close()
    problems = []
    if summary["failed"]:
        problems.append(
            f"{summary['failed']} file(s) failed (see the events eventpipe.file.failed)"
        )
    if summary["assets_failed"]:
        problems.append(
            f"analytics {', '.join(summary['assets_failed'])} failed and keep their last good"
            " version (see the events eventpipe.asset.failed)"
        )
    if problems:
        raise EventpipeError(
            f"pipeline {pipe.name!r}: {'; '.join(problems)}; fix the step and run `eventpipe retry`"
        )
    return summary


@contextmanager
def _partition_runner(
    run: RunContext, task_runner: str, spec: str, data: str, storage: dict[str, str] | None
) -> Iterator[None]:
    """Enter the Dask task runner ``task_runner`` asks for, if any, for the files' tasks."""
    if task_runner == "threads":
        yield
        return
    with task_runner_for(task_runner) as runner:
        run.dask, run.home = runner.client, TaskHome(spec=spec, data=data, storage=storage)
        try:
            yield
        finally:
            run.dask = run.home = None


DRAIN_ROUNDS = 10
"""A run claims again the files that landed while it worked, up to this many times: a burst
is drained by the run that is already warm, not left to triggers (a server busy ingesting a
burst's events can fail a trigger's run-deployment action with 503)."""
FRESHNESS_BUDGET_ENV = "EVENTPIPE_FRESHNESS_BUDGET"
DEFAULT_FRESHNESS_BUDGET = 1.0
"""...but only while its oldest file has waited less than this many seconds: under a steady
stream a run would otherwise keep taking newcomers and publish the first file's analytics only
after the last. The newcomers' own events have asked for the next run."""


def freshness_budget() -> float:
    """``EVENTPIPE_FRESHNESS_BUDGET`` (seconds), else the default."""
    text = os.environ.get(FRESHNESS_BUDGET_ENV, "").strip()
    if not text:
        return DEFAULT_FRESHNESS_BUDGET
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{FRESHNESS_BUDGET_ENV}={text!r}: write a number of seconds") from None
    if value < 0:
        raise ConfigError(f"{FRESHNESS_BUDGET_ENV}={text!r}: a budget cannot be negative")
    return value


def _materialize(run: RunContext, started: float) -> dict[str, Any]:
    pipe, ledger, report = run.pipeline, run.ledger, run.report
    logger = get_run_logger()
    t0 = time.perf_counter()
    lost = restore_outputs(run)
    log.debug("run body started")
    lost_names = {(r.name, r.partition) for r in lost}
    # Partitions computed by older step code, or whose every copy is gone, are recomputed
    # (the files behind them are looked up only when there are such partitions).
    steps = {step.name for step in pipe.process_steps}
    outdated = sorted(
        {
            (step.name, partition)
            for step in pipe.process_steps
            for partition in ledger.outdated(pipe.name, step.name, step.code_version)
        }
        | {(name, partition) for name, partition in lost_names if name in steps}
    )
    stale: dict[int, tuple[FileRow, set[str]]] = {}
    if outdated:
        current = {row.relative: row for row in ledger.current_files(pipe.name)}
        for name, partition in outdated:
            row = current.get(partition_relative(partition))
            if row is not None:
                stale.setdefault(row.id, (row, set()))[1].add(name)

    retract_partitions(run)  # files deleted from the source (or retracted) leave first
    changed_partitions: dict[str, list[str]] = {}
    done: list[int] = []
    oldest: float | None = None
    budget = freshness_budget()
    for round_ in range(DRAIN_ROUNDS):
        if round_ and oldest is not None and time.time() - oldest > budget:
            log.info(
                "run %s: its oldest file waited %.1f s (budget %.1f s): publishing now; files"
                " that landed meanwhile go to the next run",
                run.run_id,
                time.time() - oldest,
                budget,
            )
            break
        claimed = ledger.claim_pending(pipe.name, run.run_id)
        if round_ and not claimed:
            break
        if round_:
            log.info(
                "run %s: %d more file(s) landed meanwhile; taking them", run.run_id, len(claimed)
            )
        seen = [r.seen_at for r in claimed] + ([oldest] if oldest is not None else [])
        oldest = min(seen, default=None)
        work = {row.id: (row, {s.name for s in pipe.process_steps}) for row in claimed}
        for row_id, (row, steps_) in stale.items() if not round_ else ():
            work.setdefault(row_id, (row, set()))[1].update(steps_)
        if not round_:
            report.add_time("check", time.perf_counter() - t0)
        process_work(run, work, {r.id for r in claimed}, lost_names, changed_partitions, done)

    run_analytics(run, changed_partitions, logger)
    run.flush_events()
    # A file is done once everything downstream of it is current.
    ledger.finish_many(done, "done")
    freshness = time.time() - oldest if oldest is not None else None
    report.freshness_seconds = freshness
    report.add_time("total", time.time() - started)
    _artifacts(run)
    payload = report.payload()
    ledger.queue_event(*ev.pipeline_completed_event(pipe.name, run.run_id, payload))
    logger.info("pipeline %s: %s", pipe.name, payload)
    return payload


def _artifacts(run: RunContext) -> None:
    pipe = run.pipeline
    create_markdown_artifact(
        run.report.markdown(),
        key=artifact_key(pipe.name, "run-summary"),
        description=f"What this run of {pipe.name} did",
    )
    for name in run.report.assets_updated:
        row = run.ledger.asset(pipe.name, name)
        if row is None:
            continue
        frame = run.store.read_frame(row.path)
        create_table_artifact(
            table_rows(frame),
            key=artifact_key(pipe.name, name),
            description=f"{pipe.name}/{name} version {row.version}: {row.rows} rows "
            "(first 20 shown)",
        )
