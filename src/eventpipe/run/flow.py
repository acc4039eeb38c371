"""The Prefect flow that materializes a pipeline: raw -> processed (a partition per file) ->
analytics, each stage a ``@materialize`` task.

Every run drains all pending files of its pipeline, so a burst of landings needs few runs.
Outputs are content-addressed versions; the current paths are atomically replaced copies of
them, checked on every run, so a cached (skipped) task can never leave a stale or missing
output behind.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext

from eventpipe.core import names
from eventpipe.core.keys import asset_key, file_uri, partition_name, partition_relative
from eventpipe.core.models import AnalyticsInputs, Output, RawFile
from eventpipe.core.readers import read_frame
from eventpipe.core.storage import Storage
from eventpipe.events import build as ev
from eventpipe.exceptions import EventpipeError, RejectedInput
from eventpipe.ledger import AssetRow, FileRow, Ledger
from eventpipe.pipeline import Step
from eventpipe.run import tasks as steps
from eventpipe.run.artifacts import FileLine, RunReport, artifact_key, table_rows
from eventpipe.run.deliver import deliver_now

log = logging.getLogger("eventpipe.flows")


def warm_up(spec: str) -> None:
    """Do once, at start, what the first run would otherwise pay for: load the pipeline into
    the cache the runs use, and exercise the parquet and CSV code paths."""
    import tempfile

    steps.cached_pipeline(spec)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "warm.parquet"
        frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
        frame.to_parquet(path, index=False)
        steps.read_versions([str(path), str(path)]).groupby("b").sum()
        csv = Path(tmp) / "warm.csv"
        frame.to_csv(csv, index=False)
        read_frame(csv, ".csv")


@flow(name=names.MATERIALIZE_FLOW, persist_result=False)
def materialize_pipeline(
    pipeline: str,
    data: str,
    publish: dict[str, str] | None = None,
    task_runner: str = "threads",
) -> dict[str, Any]:
    """Materialize every pending file of ``pipeline`` (``module:attr`` or ``file.py:attr``),
    then every analytics asset whose inputs changed, writing under ``data``; with
    ``publish`` (``{"uri": "s3://bucket/prefix", ...}``) current outputs go there too.

    ``task_runner`` says where the process steps' code runs: ``threads`` (this process,
    several files at once), ``dask`` (a Dask cluster of one worker process per core, made for
    this run) or a Dask scheduler address (``tcp://host:port``, a running cluster: ``eventpipe
    up --task-runner dask`` keeps one). The task runs stay in this process either way."""
    started = time.time()
    pipe = steps.cached_pipeline(pipeline)
    ctx = FlowRunContext.get()
    run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else "local"
    store = Storage(Path(data), pipe.name)
    ledger = Ledger.in_data_dir(store.data)
    run = steps.RunContext(
        pipeline=pipe,
        store=store,
        ledger=ledger,
        run_id=run_id,
        report=RunReport(pipeline=pipe.name),
    )
    if publish:
        from eventpipe.intake.s3 import BucketPublisher

        run.mirror = BucketPublisher.from_options(publish, store.data)
    try:
        with steps.bound(run), _partition_runner(run, task_runner, pipeline, store.data):
            summary = _materialize(run, started)
    finally:
        run.flush_events()
        deliver_now(ledger)
        ledger.close()
    if summary["failed"]:
        raise EventpipeError(
            f"{summary['failed']} file(s) failed in pipeline {pipe.name!r}; see the events "
            "eventpipe.file.failed, fix the step and run `eventpipe retry`"
        )
    return summary


@contextmanager
def _partition_runner(
    run: steps.RunContext, task_runner: str, spec: str, data: Path
) -> Iterator[None]:
    """Enter the Dask task runner ``task_runner`` asks for, if any, for the files' tasks."""
    if task_runner == "threads":
        yield
        return
    from eventpipe.run.dask import task_runner_for

    with task_runner_for(task_runner) as runner:
        run.dask, run.home = runner.client, steps.TaskHome(spec=spec, data=str(data))
        try:
            yield
        finally:
            run.dask = run.home = None


def _skipped(run: steps.RunContext, key: str, step: Step, reason: str) -> None:
    run.report.assets_skipped.append(step.name)
    event_id, body = ev.build_event(
        names.ASSET_SKIPPED,
        {
            "prefect.resource.id": key,
            "prefect.resource.name": step.name,
            "eventpipe.pipeline": run.pipeline.name,
        },
        related=[ev.related_pipeline(run.pipeline.name), ev.related_flow_run(run.run_id)],
        payload={
            "asset": key,
            "step": step.name,
            "reason": reason,
            "code_version": step.code_version,
        },
    )
    run.events.append((event_id, body))


def _updated(
    run: steps.RunContext,
    step: Step,
    out: Output,
    partition: str,
    upstream: dict[str, str],
    upstream_keys: list[str],
) -> None:
    """``eventpipe.asset.updated``: a new version of an asset (or of one partition)."""
    event_id, body = ev.build_event(
        names.ASSET_UPDATED,
        {
            "prefect.resource.id": out.key,
            "prefect.resource.name": f"{step.name}/{partition}" if partition else step.name,
            "eventpipe.pipeline": run.pipeline.name,
        },
        related=[
            ev.related_pipeline(run.pipeline.name),
            ev.related_flow_run(run.run_id),
            *(
                {"prefect.resource.id": k, "prefect.resource.role": "upstream"}
                for k in upstream_keys
            ),
        ],
        payload={
            "asset": out.key,
            "step": step.name,
            "partition": partition or None,
            "version": out.version,
            "rows": out.rows,
            "upstream_versions": upstream,
            "code_version": step.code_version,
        },
    )
    run.events.append((event_id, body))


DRAIN_ROUNDS = 10
"""A run claims again the files that landed while it worked, up to this many times: a burst
is drained by the run that is already warm, not left to triggers (a server busy ingesting a
burst's events can fail a trigger's run-deployment action with 503)."""


def _materialize(run: steps.RunContext, started: float) -> dict[str, Any]:
    pipe, ledger, report = run.pipeline, run.ledger, run.report
    logger = get_run_logger()
    t0 = time.perf_counter()
    lost = steps.restore_outputs(run)
    log.debug("run body started")
    lost_names = {(r.name, r.partition) for r in lost}
    # Partitions computed by older step code, or whose every copy is gone, are recomputed.
    current = {row.relative: row for row in ledger.current_files(pipe.name)}
    stale: dict[int, tuple[FileRow, set[str]]] = {}
    for step in pipe.process_steps:
        for asset in ledger.assets(pipe.name, step.name):
            if asset.code_version != step.code_version or (step.name, asset.partition) in (
                lost_names
            ):
                row = current.get(partition_relative(asset.partition))
                if row is not None:
                    stale.setdefault(row.id, (row, set()))[1].add(step.name)

    changed_partitions: dict[str, list[str]] = {}
    done: list[int] = []
    oldest: float | None = None
    for round_ in range(DRAIN_ROUNDS):
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
        _process_work(run, work, {r.id for r in claimed}, lost_names, changed_partitions, done)

    _run_analytics(run, changed_partitions, logger)
    run.flush_events()
    # A file is done once everything downstream of it is current.
    ledger.finish_many(done, "done")
    freshness = time.time() - oldest if oldest is not None else None
    report.freshness_seconds = freshness
    report.add_time("total", time.time() - started)
    _artifacts(run)
    payload = report.payload()
    event_id, body = ev.build_event(
        names.PIPELINE_COMPLETED,
        {
            "prefect.resource.id": names.pipeline_resource_id(pipe.name),
            "prefect.resource.name": pipe.name,
            "eventpipe.pipeline": pipe.name,
        },
        related=[ev.related_flow_run(run.run_id)],
        payload=payload,
    )
    ledger.queue_event(event_id, body)
    logger.info("pipeline %s: %s", pipe.name, payload)
    return payload


def _process_work(
    run: steps.RunContext,
    work: dict[int, tuple[FileRow, set[str]]],
    claimed_ids: set[int],
    lost_names: set[tuple[str, str]],
    changed_partitions: dict[str, list[str]],
    done: list[int],
) -> None:
    """Skip what is already current, process the rest; extend ``changed_partitions`` and
    ``done``."""
    pipe = run.pipeline
    todo: list[tuple[FileRow, set[str], FileLine | None]] = []
    current_assets = {(a.name, a.partition): a for a in run.ledger.assets(pipe.name)}
    for row, wanted in (work[k] for k in sorted(work)):
        line = FileLine(name=row.relative, outcome="processed")
        if row.id in claimed_ids:
            run.report.files.append(line)
        partition = partition_name(row.relative)
        kept = [
            a
            for s in pipe.process_steps
            if s.name in wanted
            and (a := current_assets.get((s.name, partition))) is not None
            and _still_current(a, row, s, lost_names)
        ]
        if len(kept) < len(wanted):
            todo.append((row, wanted, line))
            continue
        # Same bytes, same step code, current output in place: nothing to run, not even a
        # cached task (which would cost a task run per step and emit nothing).
        line.outcome, line.detail = "skipped", "unchanged: same sha256 and step code"
        line.rows_out = sum(a.rows for a in kept)
        for asset in kept:
            _skipped(
                run,
                asset.key,
                pipe.steps[asset.name],
                "unchanged: same raw sha256 and step code version; current partition kept",
            )
        if row.id in claimed_ids:
            done.append(row.id)
    for result in _process_files(run, todo, claimed_ids):
        done += result.done
        for name, keys in result.changed.items():
            changed_partitions.setdefault(name, []).extend(keys)


def _still_current(asset: AssetRow, row: FileRow, step: Step, lost: set[tuple[str, str]]) -> bool:
    """Whether ``asset`` (a partition) already is ``step`` applied to ``row``'s bytes."""
    return (
        asset.input_fingerprint == row.sha256
        and asset.code_version == step.code_version
        and (asset.name, asset.partition) not in lost
    )


@dataclass
class _FileResult:
    done: list[int] = field(default_factory=list)
    changed: dict[str, list[str]] = field(default_factory=dict)


PARTITION_WORKERS = 8
"""Files processed at once by the default task runner. Each file is a chain of Prefect task
runs whose time is mostly the engine's and I/O (fsync, SQLite, sockets): threads overlap
those waits even on 2 cores."""


def _process_files(
    run: steps.RunContext,
    todo: list[tuple[FileRow, set[str], FileLine | None]],
    claimed_ids: set[int],
) -> list[_FileResult]:
    """raw -> process steps for each file of ``todo``, several files at once."""
    if len(todo) <= 1:
        return [_process_file(run, row, wanted, line, claimed_ids) for row, wanted, line in todo]
    with ThreadPoolExecutor(
        max_workers=min(PARTITION_WORKERS, len(todo)), thread_name_prefix="eventpipe-partition"
    ) as pool:
        # Each file runs in a copy of this context: the flow run and the eventpipe run.
        futures = [
            pool.submit(
                contextvars.copy_context().run,
                _process_file,
                run,
                row,
                wanted,
                line,
                claimed_ids,
            )
            for row, wanted, line in todo
        ]
        return [f.result() for f in futures]


def _process_file(
    run: steps.RunContext,
    row: FileRow,
    wanted: set[str],
    line: FileLine | None,
    claimed_ids: set[int],
) -> _FileResult:
    pipe, store = run.pipeline, run.store
    result = _FileResult()
    line = line or FileLine(name=row.relative, outcome="processed")
    raw_task = steps.materializing_task(
        steps.materialize_raw,
        steps.raw_key(row),
        f"{pipe.name}/raw/{row.relative}",
        {"name": "raw", "cache_policy": NO_CACHE},
    )
    t = time.perf_counter()
    raw_state: State[Any] = raw_task(row, return_state=True)
    run.add_time("raw", time.perf_counter() - t)
    if not raw_state.is_completed():
        _close_failed(run, row, line, raw_state)
        return result
    raw: RawFile = raw_state.result()
    line.rows_in = len(run.frames.get(row.id, ()))
    partition = partition_name(row.relative)
    try:
        for step in pipe.process_steps:
            if step.name not in wanted:
                continue
            path = store.processed_path(step.name, partition)
            key = asset_key(file_uri(path))
            task = steps.materializing_task(
                steps.process,
                key,
                f"{pipe.name}/{step.name}/{row.relative}",
                steps.task_options(run, step),
            )
            t = time.perf_counter()
            state, cached = steps.run_step(task, step.name, raw)
            run.add_time(f"process:{step.name}", time.perf_counter() - t)
            if not state.is_completed():
                _close_failed(run, row, line, state)
                return result
            out: Output = state.result()
            steps.publish(run, step, "processed", partition, path, out, raw.fingerprint)
            log.debug("partition %s/%s published", step.name, partition)
            line.rows_out += out.rows
            result.changed.setdefault(step.name, []).append(key)
            if cached:
                _skipped(
                    run,
                    key,
                    step,
                    "cache hit: same raw sha256 and step code version; "
                    "current output restored from its version",
                )
            else:
                _updated(run, step, out, partition, {"raw": raw.fingerprint}, [asset_key(raw.uri)])
    finally:
        run.frames.pop(row.id, None)
    if row.id in claimed_ids:
        result.done.append(row.id)
    return result


def _close_failed(run: steps.RunContext, row: FileRow, line: FileLine, state: State[Any]) -> None:
    try:
        state.result(raise_on_failure=True)
        reason = f"state {state.name}"
    except BaseException as exc:  # the step's own error, reported and isolated to this file
        reason = str(exc) or type(exc).__name__
        rejected = isinstance(exc, RejectedInput)
    else:
        rejected = False
    line.outcome, line.detail = ("rejected" if rejected else "failed"), reason
    if rejected:
        quarantined = steps.quarantine_landed(run, row, reason)
        run.ledger.finish(
            row.id, "rejected", reason, ev.rejected_event(row, reason, quarantined, run.run_id)
        )
        return
    event = ev.build_event(
        names.FILE_FAILED,
        ev.file_resource(row),
        related=[ev.related_pipeline(row.pipeline), ev.related_flow_run(run.run_id)],
        payload={"reason": reason, "attempts": row.attempts},
    )
    run.ledger.finish(row.id, "failed", reason, event)


def _run_analytics(run: steps.RunContext, changed: dict[str, list[str]], logger: Any) -> None:
    """Run the analytics steps level by level; the steps of one level run concurrently."""
    versions: dict[str, str] = {}
    for level in run.pipeline.analytics_levels():
        submitted = []
        for step in level:
            prepared = _prepare_analytics(run, step, versions, changed)
            if prepared is None:
                logger.info("analytics %s waits: an input has no data yet", step.name)
                continue
            task, inputs, refresh, kept = prepared
            if kept is not None:  # inputs and code as for the current version: no task at all
                versions[step.name] = kept.version
                _skipped(run, kept.key, step, "unchanged: same input versions and code version")
                continue
            if refresh:  # its cached version file is gone: compute it afresh
                task = task.with_options(refresh_cache=True)
            submitted.append((step, inputs, task.submit(step.name, inputs), time.perf_counter()))
        for step, inputs, future, t in submitted:
            future.wait()
            state: State[Any] = future.state
            run.report.add_time(f"analytics:{step.name}", time.perf_counter() - t)
            if not state.is_completed():
                logger.error("analytics %s failed: %s", step.name, state.message)
                run.report.files.append(
                    FileLine(
                        name=f"analytics:{step.name}", outcome="failed", detail=str(state.message)
                    )
                )
                continue
            out: Output = state.result()
            path = run.store.analytics_path(step.name)
            steps.publish(run, step, "analytics", "", path, out, inputs.fingerprint)
            log.debug("analytics %s published", step.name)
            versions[step.name] = out.version
            if state.name == "Cached":
                _skipped(run, out.key, step, "cache hit: inputs and code unchanged")
            else:
                run.report.assets_updated.append(step.name)
                _updated(
                    run,
                    step,
                    out,
                    "",
                    inputs.upstream,
                    [asset_key(file_uri(run.store.analytics_path(n))) for n in inputs.upstream],
                )


def _prepare_analytics(
    run: steps.RunContext, step: Step, versions: dict[str, str], changed: dict[str, list[str]]
) -> tuple[Any, AnalyticsInputs, bool, AssetRow | None] | None:
    """The task and the version-described inputs of one analytics step, whether its cache
    must be refreshed, and its current version if that already is this computation; None
    while one of its inputs has no data."""
    pipe, store, ledger = run.pipeline, run.store, run.ledger
    partitions: dict[str, tuple[tuple[str, str], ...]] = {}
    upstream: dict[str, str] = {}
    deps: list[str] = []
    for name in step.inputs:
        if pipe.steps[name].kind == "process":
            rows = ledger.assets(pipe.name, name)
            if not rows:
                return None
            partitions[name] = tuple(sorted((r.partition, r.version) for r in rows))
            deps += changed.get(name, []) or [r.key for r in rows]
        else:
            if name not in versions:
                return None
            upstream[name] = versions[name]
            deps.append(asset_key(file_uri(store.analytics_path(name))))
    inputs = AnalyticsInputs(name=step.name, partitions=partitions, upstream=upstream)
    previous = ledger.asset(pipe.name, step.name)
    same = (
        previous is not None
        and previous.input_fingerprint == inputs.fingerprint
        and previous.code_version == step.code_version
    )
    exists = previous is not None and store.version_path(step.name, previous.version).exists()
    if same and exists:
        return None, inputs, False, previous
    refresh = same and not exists
    task = steps.materializing_task(
        steps.analytics,
        asset_key(file_uri(store.analytics_path(step.name))),
        f"{pipe.name}/{step.name}",
        steps.task_options(run, step),
        deps[: steps.MAX_ASSET_DEPS],
    )
    return task, inputs, refresh, None


def _artifacts(run: steps.RunContext) -> None:
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
        frame = pd.read_parquet(row.path)
        create_table_artifact(
            table_rows(frame),
            key=artifact_key(pipe.name, name),
            description=f"{pipe.name}/{name} version {row.version}: {row.rows} rows "
            "(first 20 shown)",
        )
