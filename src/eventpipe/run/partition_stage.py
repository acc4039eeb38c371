"""The files stage of a materialize run: raw -> process steps for each claimed file, several
files at once, each file's failure isolated to that file."""

from __future__ import annotations

import contextvars
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State

from eventpipe.core.keys import asset_key, partition_name
from eventpipe.core.models import Output, RawFile
from eventpipe.events import build as ev
from eventpipe.exceptions import RejectedInput
from eventpipe.ledger import AssetRow, FileRow
from eventpipe.pipeline import Step
from eventpipe.run.artifacts import FileLine
from eventpipe.run.context import RunContext
from eventpipe.run.failures import failure_of, failure_reason
from eventpipe.run.outputs import publish, quarantine_landed
from eventpipe.run.tasks import (
    materialize_raw,
    materializing_task,
    process,
    raw_key,
    run_step,
    task_options,
)

log = logging.getLogger("eventpipe.run")


def process_work(
    run: RunContext,
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
            run.skipped(
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
    run: RunContext,
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
    run: RunContext,
    row: FileRow,
    wanted: set[str],
    line: FileLine | None,
    claimed_ids: set[int],
) -> _FileResult:
    pipe, store = run.pipeline, run.store
    result = _FileResult()
    line = line or FileLine(name=row.relative, outcome="processed")
    raw_task = materializing_task(
        materialize_raw,
        raw_key(row),
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
            key = store.key(path)
            task = materializing_task(
                process,
                key,
                f"{pipe.name}/{step.name}/{row.relative}",
                task_options(run, step),
            )
            t = time.perf_counter()
            state, cached = run_step(task, step.name, raw)
            run.add_time(f"process:{step.name}", time.perf_counter() - t)
            if not state.is_completed():
                _close_failed(run, row, line, state)
                return result
            out: Output = state.result()
            publish(run, step, "processed", partition, path, out, raw.fingerprint)
            log.debug("partition %s/%s published", step.name, partition)
            line.rows_out += out.rows
            result.changed.setdefault(step.name, []).append(key)
            if cached:
                run.skipped(
                    key,
                    step,
                    "cache hit: same raw sha256 and step code version; "
                    "current output restored from its version",
                )
            else:
                run.updated(step, out, partition, {"raw": raw.fingerprint}, [asset_key(raw.uri)])
    finally:
        run.frames.pop(row.id, None)
    if row.id in claimed_ids:
        result.done.append(row.id)
    return result


def _close_failed(run: RunContext, row: FileRow, line: FileLine, state: State[Any]) -> None:
    exc = failure_of(state)  # the step's own error, reported and isolated to this file
    reason = failure_reason(state, exc)
    rejected = isinstance(exc, RejectedInput)
    line.outcome, line.detail = ("rejected" if rejected else "failed"), reason
    if rejected:
        quarantined = quarantine_landed(run, row, reason)
        run.ledger.finish(
            row.id, "rejected", reason, ev.rejected_event(row, reason, quarantined, run.run_id)
        )
        return
    run.ledger.finish(row.id, "failed", reason, ev.file_failed_event(row, reason, run.run_id))
