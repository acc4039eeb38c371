"""The Prefect flow that materializes a pipeline: raw -> processed (a partition per file) ->
analytics, each stage a ``@materialize`` task.

Every run drains all pending files of its pipeline, so a burst of landings needs few runs.
Outputs are content-addressed versions; the current paths are atomically replaced copies of
them, checked on every run, so a cached (skipped) task can never leave a stale or missing
output behind.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.assets import Asset, AssetProperties, add_asset_metadata, materialize
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import FlowRunContext

from eventpipe import events as ev
from eventpipe.artifacts import FileLine, RunReport, artifact_key, table_rows
from eventpipe.cache import ContentFingerprint
from eventpipe.exceptions import EventpipeError, RejectedInput
from eventpipe.keys import asset_key, file_uri, partition_name, partition_relative
from eventpipe.ledger import AssetRow, FileRow, Ledger
from eventpipe.models import AnalyticsInputs, Output, RawFile
from eventpipe.pipeline import Pipeline, Step, load_pipeline
from eventpipe.readers import read_frame, suffix_of
from eventpipe.storage import Storage, atomic_copy, file_digest

log = logging.getLogger("eventpipe.flows")
MAX_ASSET_DEPS = 50

_loaded: dict[str, tuple[float, Pipeline]] = {}


def cached_pipeline(spec: str) -> Pipeline:
    """Load ``spec`` once per process, again when its source file changes (a warm runner
    picks up edited step code, and the new code version recomputes what depends on it)."""
    hit = _loaded.get(spec)
    source = _source_file(spec, hit[1] if hit else None)
    mtime = source.stat().st_mtime if source and source.exists() else 0.0
    if hit and hit[0] == mtime:
        return hit[1]
    if hit and ":" in spec and not _is_path_spec(spec):
        module = sys.modules.get(spec.rpartition(":")[0])
        if module is not None:
            importlib.reload(module)
    pipeline = load_pipeline(spec)
    _loaded[spec] = (mtime, pipeline)
    return pipeline


def _is_path_spec(spec: str) -> bool:
    target = spec.rpartition(":")[0]
    return target.endswith(".py") or "/" in target


def _source_file(spec: str, pipeline: Pipeline | None) -> Path | None:
    target = spec.rpartition(":")[0]
    if _is_path_spec(spec):
        return Path(target)
    module = sys.modules.get(target)
    file = getattr(module, "__file__", None)
    return Path(file) if file else None


def warm_up(spec: str) -> None:
    """Do once, at start, what the first run would otherwise pay for: load the pipeline into
    the cache the runs use, and exercise the parquet and CSV code paths."""
    import tempfile

    cached_pipeline(spec)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "warm.parquet"
        frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
        frame.to_parquet(path, index=False)
        _read_versions([str(path), str(path)]).groupby("b").sum()
        csv = Path(tmp) / "warm.csv"
        frame.to_csv(csv, index=False)
        read_frame(csv, ".csv")


@dataclass
class _Run:
    """State shared by the tasks of one flow run."""

    pipeline: Pipeline
    store: Storage
    ledger: Ledger
    run_id: str
    report: RunReport
    frames: dict[int, pd.DataFrame] = field(default_factory=dict)

    def raw_frame(self, raw: RawFile) -> pd.DataFrame:
        frame = self.frames.get(raw.file_id)
        if frame is None:
            frame = read_frame(Path(raw.snapshot), raw.suffix)
        return frame.copy()


# The run the tasks belong to. Tasks take only small values as arguments: Prefect walks every
# argument looking for futures, and the run holds frames and the pipeline.
_CURRENT: ContextVar[_Run] = ContextVar("eventpipe_run")


def _not_rejected(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a failed step unless the input itself is bad: bad bytes won't get better."""
    try:
        state.result(raise_on_failure=True)
    except RejectedInput:
        return False
    except BaseException:
        return True
    return True


def _raw_key(row: FileRow) -> str:
    return asset_key(row.uri)


def _materialize_raw(row: FileRow) -> RawFile:
    run = _CURRENT.get()
    suffix = suffix_of(row.relative)
    if suffix is None:
        raise RejectedInput(f"unsupported file type: {row.relative}")
    source = Path(row.local_path) if row.local_path else None
    snapshot = run.store.raw_snapshot_path(row.sha256, suffix)
    if not snapshot.exists():
        if source is None or not source.exists():
            raise RejectedInput("the file disappeared before it could be read")
        if file_digest(source) != row.sha256:
            raise RejectedInput("the file changed after it landed; its new version will land")
        run.store.snapshot_raw(source, row.sha256, suffix)
    frame = read_frame(snapshot, suffix)
    run.frames[row.id] = frame
    add_asset_metadata(
        _raw_key(row),
        {
            "sha256": row.sha256,
            "bytes": row.size,
            "rows": len(frame),
            "columns": [str(c) for c in frame.columns],
        },
    )
    return RawFile(
        file_id=row.id,
        uri=row.uri,
        partition=partition_name(row.relative),
        fingerprint=row.sha256,
        snapshot=str(snapshot),
        suffix=suffix,
        size=row.size,
    )


def _check_schema(step: Step, frame: pd.DataFrame) -> None:
    if step.expects is None:
        return
    missing = [c for c in step.expects.columns if c not in frame.columns]
    if missing:
        raise RejectedInput(f"step {step.name!r}: missing columns {missing}")
    if not step.expects.allow_extra:
        extra = [str(c) for c in frame.columns if c not in step.expects.columns]
        if extra:
            raise RejectedInput(f"step {step.name!r}: unexpected columns {extra}")
    for column, dtype in step.expects.columns.items():
        if dtype is None:
            continue
        try:
            frame[column].astype(dtype)  # type: ignore[call-overload]  # any dtype name
        except (ValueError, TypeError) as exc:
            raise RejectedInput(
                f"step {step.name!r}: column {column!r} is not {dtype}: {str(exc)[:120]}"
            ) from None


def _result_frame(step: Step, value: object) -> pd.DataFrame:
    if not isinstance(value, pd.DataFrame):
        raise EventpipeError(
            f"step {step.name!r} returned {type(value).__name__}; it must return a pandas DataFrame"
        )
    return value


def _process(step_name: str, raw: RawFile) -> Output:
    run = _CURRENT.get()
    step = run.pipeline.steps[step_name]
    frame = run.raw_frame(raw)
    _check_schema(step, frame)
    out = _result_frame(step, step.fn(frame))
    version, path = run.store.write_version(step.name, out)
    key = asset_key(file_uri(run.store.processed_path(step.name, raw.partition)))
    add_asset_metadata(
        key,
        {
            "version": version,
            "rows": len(out),
            "source_sha256": raw.fingerprint,
            "code_version": step.code_version,
        },
    )
    return Output(key=key, version=version, path=str(path), rows=len(out), sources=(raw.uri,))


def _read_versions(paths: list[str]) -> pd.DataFrame:
    if not paths:
        return pd.DataFrame()
    tables = [pq.read_table(p) for p in paths]
    table = (
        tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
    )
    frame: pd.DataFrame = table.to_pandas()
    return frame


def _analytics(step_name: str, inputs: AnalyticsInputs) -> Output:
    run = _CURRENT.get()
    step = run.pipeline.steps[step_name]
    kwargs: dict[str, pd.DataFrame] = {}
    for name in step.inputs:
        if name in inputs.partitions:
            kwargs[name] = _read_versions(
                [run.store.version_path(name, v).as_posix() for _, v in inputs.partitions[name]]
            )
        else:
            kwargs[name] = pd.read_parquet(run.store.version_path(name, inputs.upstream[name]))
    out = _result_frame(step, step.fn(**kwargs))
    version, path = run.store.write_version(step.name, out)
    key = asset_key(file_uri(run.store.analytics_path(step.name)))
    add_asset_metadata(
        key, {"version": version, "rows": len(out), "code_version": step.code_version}
    )
    sources = sorted({f"{n}/{p}" for n, parts in inputs.partitions.items() for p, _ in parts})
    return Output(
        key=key,
        version=version,
        path=str(path),
        rows=len(out),
        sources=tuple(sources + sorted(inputs.upstream)),
    )


_TASKS: dict[tuple[Any, ...], Any] = {}


def _materializing_task(
    fn: Callable[..., Any],
    key: str,
    name: str,
    options: dict[str, Any],
    deps: list[str] | None = None,
) -> Any:
    """A ``@materialize`` task for ``key``; built once per key, options and deps (building
    one costs milliseconds, and a warm runner calls the same analytics every run)."""
    cache_key = (
        fn,
        key,
        name,
        tuple(sorted((k, repr(v)) for k, v in options.items())),
        tuple(deps or ()),
    )
    task = _TASKS.get(cache_key)
    if task is None:
        if len(_TASKS) > 4096:
            _TASKS.clear()
        task = materialize(
            Asset(key=key, properties=AssetProperties(name=name)),
            asset_deps=list[Asset | str](deps) if deps else None,
        )(fn).with_options(**options)
        _TASKS[cache_key] = task
    return task


def _task_options(run: _Run, step: Step) -> dict[str, Any]:
    policy = ContentFingerprint(
        pipeline=run.pipeline.name, step=step.name, code_version=step.code_version
    )
    return {
        "name": step.name,
        "cache_policy": policy,
        "persist_result": True,
        "result_storage": run.store.data / ".cache",
        "retries": step.retries,
        "retry_delay_seconds": step.retry_delay_seconds,
        "retry_condition_fn": _not_rejected,
    }


def _publish(
    run: _Run,
    step: Step,
    kind: str,
    partition: str,
    current: Path,
    out: Output,
    input_fingerprint: str,
) -> None:
    """Point the current output at ``out``'s version (atomically) and record it."""
    version_file = Path(out.path)
    if not _same_file(current, version_file):
        atomic_copy(version_file, current)
    stat = current.stat()
    run.ledger.publish(
        AssetRow(
            pipeline=run.pipeline.name,
            name=step.name,
            partition=partition,
            kind=kind,
            key=out.key,
            version=out.version,
            path=str(current),
            rows=out.rows,
            size=stat.st_size,
            mtime_ns=stat.st_mtime_ns,
            code_version=step.code_version,
            input_fingerprint=input_fingerprint,
            updated_at=time.time(),
        ),
        str(version_file),
        list(out.sources),
        run.run_id,
    )


def _same_file(current: Path, version_file: Path) -> bool:
    try:
        a, b = current.stat(), version_file.stat()
    except FileNotFoundError:
        return False
    return a.st_size == b.st_size and file_digest(current) == file_digest(version_file)


def _skipped(run: _Run, key: str, step: Step, reason: str, related: list[dict[str, str]]) -> None:
    run.report.assets_skipped.append(step.name)
    event_id, body = ev.build_event(
        ev.ASSET_SKIPPED,
        {
            "prefect.resource.id": key,
            "prefect.resource.name": step.name,
            "eventpipe.pipeline": run.pipeline.name,
        },
        related=[ev.related_pipeline(run.pipeline.name), ev.related_flow_run(run.run_id), *related],
        payload={
            "asset": key,
            "step": step.name,
            "reason": reason,
            "code_version": step.code_version,
        },
    )
    run.ledger.queue_event(event_id, body)


def _run_step(
    call: Callable[..., Any], *args: Any, refresh: bool = False
) -> tuple[State[Any], bool]:
    """Call a materialize task; on a cache hit whose version file is gone, run it afresh."""
    task = call.with_options(refresh_cache=True) if refresh else call  # type: ignore[attr-defined]
    state: State[Any] = task(*args, return_state=True)
    cached = state.name == "Cached"
    if cached and state.is_completed():
        out = state.result()
        if isinstance(out, Output) and not Path(out.path).exists():
            return _run_step(call, *args, refresh=True)
    return state, cached


def restore_outputs(run: _Run) -> list[AssetRow]:
    """Put back current outputs that were deleted or changed since they were published.

    Returns the rows whose version file is gone too (they must be recomputed).
    """
    lost: list[AssetRow] = []
    for row in run.ledger.assets(run.pipeline.name):
        current = Path(row.path)
        try:
            stat = current.stat()
            if (stat.st_size, stat.st_mtime_ns) == (row.size, row.mtime_ns):
                continue
        except FileNotFoundError:
            pass
        version_file = run.store.version_path(row.name, row.version)
        if not version_file.exists():
            lost.append(row)
            continue
        atomic_copy(version_file, current)
        stat = current.stat()
        run.ledger.touch_asset(
            AssetRow(**{**row.__dict__, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
        )
        log.warning("restored %s (version %s): it was deleted or changed", current, row.version)
    return lost


@flow(name="materialize", persist_result=False)
def materialize_pipeline(pipeline: str, data: str) -> dict[str, Any]:
    """Materialize every pending file of ``pipeline`` (``module:attr`` or ``file.py:attr``),
    then every analytics asset whose inputs changed, writing under ``data``."""
    started = time.time()
    pipe = cached_pipeline(pipeline)
    ctx = FlowRunContext.get()
    run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else "local"
    store = Storage(Path(data), pipe.name)
    ledger = Ledger(store.data / "ledger.sqlite")
    run = _Run(
        pipeline=pipe,
        store=store,
        ledger=ledger,
        run_id=run_id,
        report=RunReport(pipeline=pipe.name),
    )
    token = _CURRENT.set(run)
    try:
        summary = _materialize(run, started)
    finally:
        _CURRENT.reset(token)
        _deliver(ledger)
        ledger.close()
    if summary["failed"]:
        raise EventpipeError(
            f"{summary['failed']} file(s) failed in pipeline {pipe.name!r}; see the events "
            "eventpipe.file.failed, fix the step and run `eventpipe retry`"
        )
    return summary


def _deliver(ledger: Ledger) -> None:
    """Send what this run queued now; whatever fails stays in the outbox for the pump."""
    try:
        sender = ev.EventSender.from_prefect_settings()
        try:
            ev.flush_outbox(ledger, sender)
        finally:
            sender.close()
    except Exception:
        log.warning("could not deliver events now; they stay in the outbox", exc_info=True)


def _materialize(run: _Run, started: float) -> dict[str, Any]:
    pipe, store, ledger, report = run.pipeline, run.store, run.ledger, run.report
    logger = get_run_logger()
    t0 = time.perf_counter()
    lost = restore_outputs(run)
    log.debug("run body started")
    claimed = ledger.claim_pending(pipe.name, run.run_id)
    claimed_ids = {row.id for row in claimed}
    work: dict[int, tuple[FileRow, set[str]]] = {
        row.id: (row, {s.name for s in pipe.process_steps}) for row in claimed
    }
    # Partitions computed by older step code, or whose every copy is gone, are recomputed.
    current = {row.relative: row for row in ledger.current_files(pipe.name)}
    lost_names = {(r.name, r.partition) for r in lost}
    for step in pipe.process_steps:
        for asset in ledger.assets(pipe.name, step.name):
            stale = (
                asset.code_version != step.code_version
                or (step.name, asset.partition) in lost_names
            )
            row = current.get(partition_relative(asset.partition))
            if stale and row is not None and row.id not in work:
                work.setdefault(row.id, (row, set()))[1].add(step.name)
            elif stale and row is not None:
                work[row.id][1].add(step.name)
    report.add_time("check", time.perf_counter() - t0)
    oldest = min((r.seen_at for r in claimed), default=None)

    changed_partitions: dict[str, list[str]] = {}
    done: list[int] = []
    for row, steps in (work[k] for k in sorted(work)):
        line = FileLine(name=row.relative, outcome="processed")
        if row.id in claimed_ids:
            report.files.append(line)
        raw_task = _materializing_task(
            _materialize_raw,
            _raw_key(row),
            f"{pipe.name}/raw/{row.relative}",
            {"name": "raw", "cache_policy": NO_CACHE},
        )
        t = time.perf_counter()
        raw_state: State[Any] = raw_task(row, return_state=True)
        report.add_time("raw", time.perf_counter() - t)
        if not raw_state.is_completed():
            _close_failed(run, row, line, raw_state)
            continue
        raw: RawFile = raw_state.result()
        line.rows_in = len(run.frames.get(row.id, ()))
        partition = partition_name(row.relative)
        ok = True
        for step in pipe.process_steps:
            if step.name not in steps:
                continue
            path = store.processed_path(step.name, partition)
            key = asset_key(file_uri(path))
            task = _materializing_task(
                _process, key, f"{pipe.name}/{step.name}/{row.relative}", _task_options(run, step)
            )
            t = time.perf_counter()
            state, cached = _run_step(task, step.name, raw)
            report.add_time(f"process:{step.name}", time.perf_counter() - t)
            if not state.is_completed():
                ok = False
                _close_failed(run, row, line, state)
                break
            out: Output = state.result()
            _publish(run, step, "processed", partition, path, out, raw.fingerprint)
            log.debug("partition %s/%s published", step.name, partition)
            line.rows_out += out.rows
            changed_partitions.setdefault(step.name, []).append(key)
            if cached:
                _skipped(
                    run,
                    key,
                    step,
                    "cache hit: same raw sha256 and step code version; "
                    "current output restored from its version",
                    [],
                )
        if ok and row.id in claimed_ids:
            done.append(row.id)
        run.frames.pop(row.id, None)

    _run_analytics(run, changed_partitions, logger)
    # A file is done once everything downstream of it is current.
    ledger.finish_many(done, "done")
    freshness = time.time() - oldest if oldest is not None else None
    report.freshness_seconds = freshness
    report.add_time("total", time.time() - started)
    _artifacts(run)
    payload = report.payload()
    event_id, body = ev.build_event(
        ev.PIPELINE_COMPLETED,
        {
            "prefect.resource.id": ev.pipeline_resource_id(pipe.name),
            "prefect.resource.name": pipe.name,
        },
        related=[ev.related_flow_run(run.run_id)],
        payload=payload,
    )
    ledger.queue_event(event_id, body)
    logger.info("pipeline %s: %s", pipe.name, payload)
    return payload


def _close_failed(run: _Run, row: FileRow, line: FileLine, state: State[Any]) -> None:
    try:
        state.result(raise_on_failure=True)
        reason = f"state {state.name}"
    except BaseException as exc:  # the step's own error, reported and isolated to this file
        reason = str(exc) or type(exc).__name__
        rejected = isinstance(exc, RejectedInput)
    else:
        rejected = False
    line.outcome, line.detail = ("rejected" if rejected else "failed"), reason
    name = ev.FILE_REJECTED if rejected else ev.FILE_FAILED
    event = ev.build_event(
        name,
        ev.file_resource(row),
        related=[ev.related_pipeline(row.pipeline), ev.related_flow_run(run.run_id)],
        payload={"reason": reason, "attempts": row.attempts},
    )
    run.ledger.finish(row.id, "rejected" if rejected else "failed", reason, event)


def _run_analytics(run: _Run, changed: dict[str, list[str]], logger: Any) -> None:
    """Run the analytics steps level by level; the steps of one level run concurrently."""
    versions: dict[str, str] = {}
    for level in run.pipeline.analytics_levels():
        submitted = []
        for step in level:
            prepared = _prepare_analytics(run, step, versions, changed)
            if prepared is None:
                logger.info("analytics %s waits: an input has no data yet", step.name)
                continue
            task, inputs, refresh = prepared
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
            _publish(run, step, "analytics", "", path, out, inputs.fingerprint)
            log.debug("analytics %s published", step.name)
            versions[step.name] = out.version
            if state.name == "Cached":
                _skipped(run, out.key, step, "cache hit: inputs and code unchanged", [])
            else:
                run.report.assets_updated.append(step.name)


def _prepare_analytics(
    run: _Run, step: Step, versions: dict[str, str], changed: dict[str, list[str]]
) -> tuple[Any, AnalyticsInputs, bool] | None:
    """The task and the version-described inputs of one analytics step, or None while one of
    its inputs has no data."""
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
    refresh = (
        previous is not None
        and previous.input_fingerprint == inputs.fingerprint
        and previous.code_version == step.code_version
        and not store.version_path(step.name, previous.version).exists()
    )
    task = _materializing_task(
        _analytics,
        asset_key(file_uri(store.analytics_path(step.name))),
        f"{pipe.name}/{step.name}",
        _task_options(run, step),
        deps[:MAX_ASSET_DEPS],
    )
    return task, inputs, refresh


def _artifacts(run: _Run) -> None:
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
