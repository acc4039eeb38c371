"""The task bodies of a materialize run and how their outputs are published.

Kept apart from the flow module on purpose: Prefect may pickle the flow module by value (for
``serve`` and workers), and the per-run state here (a context variable, the task cache) must be
imported there, not pickled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from prefect.assets import add_asset_metadata, materialize
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.results import get_result_store

from eventpipe.compat import (
    Materialized,
    emit_materializations,
    retarget_batch_task,
    retarget_task,
)
from eventpipe.core.atomic import file_digest
from eventpipe.core.keys import asset_key, partition_name
from eventpipe.core.models import AnalyticsInputs, Output, RawFile
from eventpipe.core.readers import read_frame, suffix_of
from eventpipe.exceptions import RejectedInput
from eventpipe.ledger import FileRow
from eventpipe.pipeline import Step
from eventpipe.run.cache import ContentFingerprint
from eventpipe.run.compact import read_partitions
from eventpipe.run.compute import (
    combined_partials,
    compute_partition,
    compute_version,
    result_frame,
)
from eventpipe.run.context import RunContext, current_run
from eventpipe.run.failures import not_rejected

log = logging.getLogger("eventpipe.flows")
MAX_ASSET_DEPS = 50


def inbox_file(row: FileRow) -> Path | None:
    """The file on this host's disk a row was read from (an inbox file), if any; a bucket
    source's row names its raw snapshot instead (its location may be an ``s3://`` URI)."""
    if not row.local_path or "://" in row.local_path:
        return None
    return Path(row.local_path)


def raw_key(item: FileRow | RawFile) -> str:
    """The raw asset of a landed file."""
    return asset_key(item.uri)


def materialize_raw(row: FileRow) -> RawFile:
    raw, metadata = _read_raw(current_run(), row)
    add_asset_metadata(raw_key(row), metadata)
    return raw


def _read_raw(run: RunContext, row: FileRow) -> tuple[RawFile, dict[str, Any]]:
    """Snapshot a claimed file into the raw store (once) and parse it; its raw asset's
    metadata. A file that is gone, changed or of no known type raises ``RejectedInput``."""
    suffix = suffix_of(row.relative)
    if suffix is None:
        raise RejectedInput(f"unsupported file type: {row.relative}")
    snapshot = run.store.raw_snapshot_path(row.sha256, suffix)
    if not run.store.exists(snapshot):
        source = inbox_file(row)
        if source is None or not source.exists():
            raise RejectedInput("the file disappeared before it could be read")
        if file_digest(source) != row.sha256:
            raise RejectedInput("the file changed after it landed; its new version will land")
        run.store.snapshot_raw(source, row.sha256, suffix)
    frame = read_frame(run.store.read_raw(snapshot), suffix)
    run.frames[row.id] = frame
    metadata = {
        "sha256": row.sha256,
        "bytes": row.size,
        "rows": len(frame),
        "columns": [str(c) for c in frame.columns],
    }
    raw = RawFile(
        file_id=row.id,
        uri=row.uri,
        partition=partition_name(row.relative),
        fingerprint=row.sha256,
        snapshot=snapshot,
        suffix=suffix,
        size=row.size,
    )
    return raw, metadata


@dataclass
class BatchResult:
    """What a batch task did, per file (by file id): each file's error is its own."""

    raws: list[RawFile] = field(default_factory=list)
    """The files read (a raw batch)."""
    outputs: dict[int, tuple[Output, bool]] = field(default_factory=dict)
    """Each file's new partition version, and whether it came from the cache (a step batch)."""
    errors: dict[int, BaseException] = field(default_factory=dict)


def materialize_raws(rows: list[FileRow]) -> BatchResult:
    """The raw stage of a batch of files, in one task run: each file snapshotted and read, or
    its error kept for it alone."""
    run = current_run()
    result = BatchResult()
    events: list[Materialized] = []
    for row in rows:
        try:
            raw, metadata = _read_raw(run, row)
        except Exception as exc:  # this file's problem, reported for it alone
            result.errors[row.id] = exc
            events.append(Materialized(raw_key(row), (), None, succeeded=False))
            continue
        result.raws.append(raw)
        events.append(Materialized(raw_key(row), (), metadata))
    emit_materializations(events)
    return result


def process_batch(step_name: str, raws: list[RawFile], keep_frames: frozenset[int]) -> BatchResult:
    """A process step over a batch of files, in one task run. A file whose partition for the
    same bytes and step code is in the cache (Prefect's result records, shared with the
    one-file tasks) gets it back; the others are computed, each failure kept for its file.
    The frames of the files in ``keep_frames`` stay for a later step."""
    run = current_run()
    step = run.pipeline.steps[step_name]
    records = get_result_store()
    policy = ContentFingerprint(
        pipeline=run.pipeline.name, step=step.name, code_version=step.code_version
    )
    result = BatchResult()
    events: list[Materialized] = []
    computed: list[tuple[RawFile, str, Any]] = []
    for raw in raws:
        record_key = policy.record_key(raw)
        cached = _cached_output(run, records, record_key)
        if cached is not None:  # a cached task emits no asset events; neither does this
            result.outputs[raw.file_id] = (cached, True)
            if raw.file_id not in keep_frames:
                run.frames.pop(raw.file_id, None)
            continue
        if run.dask is not None and run.home is not None:
            future = run.dask.submit(compute_partition, run.home, step_name, raw, pure=False)
            computed.append((raw, record_key, future))
            continue
        try:
            frame = run.raw_frame(raw, copy=raw.file_id in keep_frames)
            computed.append((raw, record_key, compute_version(step, run.store, frame)))
        except Exception as exc:  # the step's error on this file, for this file alone
            result.errors[raw.file_id] = exc
            computed.append((raw, record_key, None))
    for raw, record_key, value in computed:
        key = run.store.key(run.store.processed_path(step.name, raw.partition))
        if value is not None and not isinstance(value, tuple):  # a Dask future
            try:
                value = value.result()
            except Exception as exc:  # raised by the step in a worker
                result.errors[raw.file_id] = exc
                value = None
        if value is None:
            events.append(Materialized(key, (raw_key(raw),), None, succeeded=False))
            continue
        version, path, rows = value
        metadata = _partition_metadata(step, raw, version, rows)
        out = Output(key=key, version=version, path=path, rows=rows, sources=(raw.uri,))
        records.write(obj=out, key=record_key)
        result.outputs[raw.file_id] = (out, False)
        events.append(Materialized(key, (raw_key(raw),), metadata))
    emit_materializations(events)
    return result


def _cached_output(run: RunContext, records: Any, record_key: str) -> Output | None:
    """The cached partition for ``record_key``, if its record and its version file exist."""
    if not records.exists(record_key):
        return None
    try:
        out = records.read(record_key).result
    except Exception:  # an unreadable record is a miss: the partition is computed again
        log.warning("cache record %s unreadable; computing the partition again", record_key)
        return None
    if isinstance(out, Output) and run.store.exists(out.path):
        return out
    return None


def _partition_metadata(step: Step, raw: RawFile, version: str, rows: int) -> dict[str, Any]:
    return {
        "version": version,
        "rows": rows,
        "source_sha256": raw.fingerprint,
        "code_version": step.code_version,
    }


def process(step_name: str, raw: RawFile) -> Output:
    run = current_run()
    step = run.pipeline.steps[step_name]
    if run.dask is not None and run.home is not None:
        # Only the step's code goes to the cluster: the task run, its cache, retries and
        # asset events stay here, and a worker costs one small message per partition.
        future = run.dask.submit(compute_partition, run.home, step_name, raw, pure=False)
        version, path, rows = future.result()
    else:
        version, path, rows = compute_version(step, run.store, run.raw_frame(raw))
    key = run.store.key(run.store.processed_path(step.name, raw.partition))
    add_asset_metadata(key, _partition_metadata(step, raw, version, rows))
    return Output(key=key, version=version, path=path, rows=rows, sources=(raw.uri,))


def analytics(step_name: str, inputs: AnalyticsInputs) -> Output:
    run = current_run()
    step = run.pipeline.steps[step_name]
    if step.combine is not None:
        out = result_frame(step, step.combine(combined_partials(run, step, inputs)))
        return _analytics_output(run, step, inputs, out)
    kwargs: dict[str, pd.DataFrame] = {}
    for name in step.inputs:
        if name in inputs.partitions:
            kwargs[name] = read_partitions(run.store, step.name, name, inputs.partitions[name])
        else:
            kwargs[name] = run.store.read_frame(run.store.version_path(name, inputs.upstream[name]))
    return _analytics_output(run, step, inputs, result_frame(step, step.fn(**kwargs)))


def _analytics_output(
    run: RunContext, step: Step, inputs: AnalyticsInputs, out: pd.DataFrame
) -> Output:
    version, path = run.store.write_version(step.name, out)
    key = run.store.key(run.store.analytics_path(step.name))
    add_asset_metadata(
        key, {"version": version, "rows": len(out), "code_version": step.code_version}
    )
    sources = sorted({f"{n}/{p}" for n, parts in inputs.partitions.items() for p, _ in parts})
    return Output(
        key=key,
        version=version,
        path=path,
        rows=len(out),
        sources=tuple(sources + sorted(inputs.upstream)),
    )


_TEMPLATES: dict[tuple[Any, ...], Any] = {}


def materializing_task(
    fn: Callable[..., Any],
    key: str,
    name: str,
    options: dict[str, Any],
    deps: list[str] | None = None,
) -> Any:
    """A ``@materialize`` task for asset ``key`` (upstream ``deps``).

    Building a Prefect task reads the module's source (``Task.__init__`` keeps it for
    cache keys): 5-15 ms, paid twice per file with ``with_options``, a third of a burst's
    time. So one task is built per function and options, and each asset gets a shallow copy
    of it with its own assets: the same object ``with_options(assets=...)`` would build.
    """
    template_key = (fn, tuple(sorted((k, repr(v)) for k, v in options.items())))
    template = _TEMPLATES.get(template_key)
    if template is None:
        if len(_TEMPLATES) > 256:
            _TEMPLATES.clear()
        template = materialize(key)(fn).with_options(**options)
        _TEMPLATES[template_key] = template
    return retarget_task(template, key, name, deps)


def materializing_batch_task(
    fn: Callable[..., Any], assets: list[tuple[str, str]], options: dict[str, Any]
) -> Any:
    """A ``@materialize`` task for every asset of ``assets`` (``(key, name)`` pairs): one
    task run for a batch of files (built once per function and options, as above)."""
    template = materializing_task(fn, assets[0][0], assets[0][1], options)
    return retarget_batch_task(template, assets)


def batch_options(run: RunContext, step: Step | None) -> dict[str, Any]:
    """A batch task's options: no cache or retries of its own (each file's partition is
    cached by its own record, and a file that fails is tried again alone), its result kept
    in memory only."""
    return {
        "name": f"{step.name} (batch)" if step is not None else "raw (batch)",
        "cache_policy": NO_CACHE,
        "persist_result": False,
        "result_storage": run.results_dir(),
    }


def task_options(run: RunContext, step: Step, spent: int = 0) -> dict[str, Any]:
    """A one-file step task's options; ``spent``: retries already used on the file."""
    policy = ContentFingerprint(
        pipeline=run.pipeline.name, step=step.name, code_version=step.code_version
    )
    return {
        "name": step.name,
        "cache_policy": policy,
        "persist_result": True,
        "result_storage": run.results_dir(),
        "retries": max(0, step.retries - spent),
        "retry_delay_seconds": step.retry_delay_seconds,
        "retry_condition_fn": not_rejected,
    }


def run_step(
    call: Callable[..., Any], *args: Any, refresh: bool = False
) -> tuple[State[Any], bool]:
    """Call a materialize task; on a cache hit whose version file is gone, run it afresh."""
    task = call.with_options(refresh_cache=True) if refresh else call  # type: ignore[attr-defined]
    state: State[Any] = task(*args, return_state=True)
    cached = state.name == "Cached"
    if cached and state.is_completed():
        out = state.result()
        if isinstance(out, Output) and not current_run().store.exists(out.path):
            return run_step(call, *args, refresh=True)
    return state, cached
