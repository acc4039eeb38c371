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
from prefect.utilities.annotations import opaque

from eventpipe.core.keys import asset_key, partition_name
from eventpipe.core.models import Output, RawFile
from eventpipe.events import build as ev
from eventpipe.exceptions import RejectedInput
from eventpipe.ledger import AssetRow, FileRow
from eventpipe.pipeline import Step
from eventpipe.run.artifacts import FileLine
from eventpipe.run.context import RunContext
from eventpipe.run.failures import failure_of, failure_reason
from eventpipe.run.outputs import publish, publish_many, quarantine_landed
from eventpipe.run.tasks import (
    BatchResult,
    batch_options,
    materialize_raw,
    materialize_raws,
    materializing_batch_task,
    materializing_task,
    process,
    process_batch,
    raw_key,
    run_step,
    task_options,
)

log = logging.getLogger("eventpipe.run")


CACHE_HIT = (
    "cache hit: same raw sha256 and step code version; current output restored from its version"
)
"""Why a partition's step did not run: the reason its ``asset.skipped`` event gives."""


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
    partitions = sorted({partition_name(row.relative) for row, _ in work.values()})
    current_assets = {(a.name, a.partition): a for a in run.ledger.assets_of(pipe.name, partitions)}
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


BATCH_LANES = 2
"""Batches processed at once: one per core. A batch's time is mostly pandas and pyarrow, much
of it outside the GIL (CSV parsing, parquet encoding, file I/O)."""
BATCH_FILES = 100
"""Files per batch at most: a batch is two or three Prefect task runs however many files it
holds (against two per file alone), and its partitions publish together."""
BATCH_BYTES = 32 * 2**20
"""Raw bytes per batch at most: a batch holds its files' frames until its steps have run."""


_Work = tuple[FileRow, set[str], FileLine | None]
"""A file to process: its row, the process steps it needs, its line in the run's report."""


def batches(todo: list[_Work]) -> list[list[_Work]]:
    """``todo`` cut into batches: one file alone stays alone, a few are spread over the lanes
    (as many batches as lanes), a burst fills batches of up to ``BATCH_FILES`` files or
    ``BATCH_BYTES`` bytes."""
    if not todo:
        return []
    size = min(BATCH_FILES, -(-len(todo) // BATCH_LANES))
    cut: list[list[_Work]] = [[]]
    held = 0
    for item in todo:
        if cut[-1] and (len(cut[-1]) >= size or held + item[0].size > BATCH_BYTES):
            cut.append([])
            held = 0
        cut[-1].append(item)
        held += item[0].size
    return cut


def _process_files(
    run: RunContext,
    todo: list[_Work],
    claimed_ids: set[int],
) -> list[_FileResult]:
    """raw -> process steps for each file of ``todo``, in batches, a batch per lane at once."""
    cut = batches(todo)
    if len(cut) <= 1:
        return [_process_batch(run, batch, claimed_ids) for batch in cut]
    with ThreadPoolExecutor(
        max_workers=min(BATCH_LANES, len(cut)), thread_name_prefix="eventpipe-batch"
    ) as pool:
        # Each batch runs in a copy of this context: the flow run and the eventpipe run.
        futures = [
            pool.submit(contextvars.copy_context().run, _process_batch, run, batch, claimed_ids)
            for batch in cut
        ]
        return [f.result() for f in futures]


def _process_batch(run: RunContext, batch: list[_Work], claimed_ids: set[int]) -> _FileResult:
    """One batch of files: a raw task run, then a task run per process step, each over every
    file of the batch still standing (a batch of one file is that file alone). A file's
    error closes that file alone (rejected or failed, as one file would be); a file that
    failed with retries left is tried again alone, through one-file task runs with the
    step's retries."""
    if len(batch) == 1:  # a file alone: its own task runs, with Prefect's retries
        return _each_alone(run, batch, claimed_ids)
    pipe = run.pipeline
    result = _FileResult()
    rows = {row.id: row for row, _, _ in batch}
    wanted = {row.id: steps for row, steps, _ in batch}
    lines = {
        row.id: line or FileLine(name=row.relative, outcome="processed") for row, _, line in batch
    }
    raw_task = materializing_batch_task(
        materialize_raws,
        [(raw_key(row), f"{pipe.name}/raw/{row.relative}") for row in rows.values()],
        batch_options(run, None),
    )
    t = time.perf_counter()
    raw_state: State[Any] = raw_task(list(rows.values()), return_state=True)
    run.add_time("raw", time.perf_counter() - t)
    if not raw_state.is_completed():  # the batch itself broke, not one file: each alone
        return _each_alone(run, batch, claimed_ids)
    read: BatchResult = raw_state.result()
    run.held.append(read)
    for file_id, exc in read.errors.items():
        _close_file(run, rows[file_id], lines[file_id], exc)
    standing = {raw.file_id: raw for raw in read.raws}
    for file_id in standing:
        lines[file_id].rows_in = len(run.frames.get(file_id, ()))
    try:
        alone = _batch_steps(run, raw_state, rows, wanted, lines, standing, result)
    finally:
        for file_id in rows:
            run.frames.pop(file_id, None)
    for file_id in standing:
        if file_id in claimed_ids:
            result.done.append(file_id)
    for file_id, (steps_left, tried) in alone.items():
        _merge(
            result,
            _process_file(run, rows[file_id], steps_left, lines[file_id], claimed_ids, tried),
        )
    return result


def _batch_steps(
    run: RunContext,
    raw_state: State[Any],
    rows: dict[int, FileRow],
    wanted: dict[int, set[str]],
    lines: dict[int, FileLine],
    standing: dict[int, RawFile],
    result: _FileResult,
) -> dict[int, tuple[set[str], str]]:
    """Each process step over the files of a batch still ``standing`` (which loses the files
    that fail); returns the files to try again alone: the steps they still need, and the
    step whose try the batch spent.

    A step's task takes the raw files ``opaque``: Prefect would otherwise walk their fields
    and relate the task to whichever task last returned the same string object (the suffix
    every raw file shares), naming another batch's raw files as upstream. It waits on the
    raw batch's state instead, its one upstream run."""
    pipe, store = run.pipeline, run.store
    alone: dict[int, tuple[set[str], str]] = {}
    steps = pipe.process_steps
    for i, step in enumerate(steps):
        ids = [f for f in standing if step.name in wanted[f]]
        if not ids:
            continue
        later = {s.name for s in steps[i + 1 :]}
        keep = frozenset(f for f in ids if wanted[f] & later)
        task = materializing_batch_task(
            process_batch,
            [
                (
                    store.key(store.processed_path(step.name, standing[f].partition)),
                    f"{pipe.name}/{step.name}/{rows[f].relative}",
                )
                for f in ids
            ],
            batch_options(run, step),
        )
        t = time.perf_counter()
        state: State[Any] = task(
            step.name,
            opaque([standing[f] for f in ids]),
            opaque(keep),
            wait_for=[raw_state],
            return_state=True,
        )
        run.add_time(f"process:{step.name}", time.perf_counter() - t)
        left = {s.name for s in steps[i:]}
        if not state.is_completed():  # the batch itself broke, not one file: each alone
            for f in ids:
                alone[f] = (left & wanted[f], "")
                del standing[f]
            continue
        done: BatchResult = state.result()
        run.held.append(done)
        for file_id, exc in done.errors.items():
            del standing[file_id]
            if step.retries > 0 and not isinstance(exc, RejectedInput):
                alone[file_id] = (left & wanted[file_id], step.name)
            else:
                _close_file(run, rows[file_id], lines[file_id], exc)
        _publish_batch(run, step, done, standing, lines, result)
    return alone


def _merge(result: _FileResult, more: _FileResult) -> None:
    result.done += more.done
    for name, keys in more.changed.items():
        result.changed.setdefault(name, []).extend(keys)


def _publish_batch(
    run: RunContext,
    step: Step,
    done: BatchResult,
    standing: dict[int, RawFile],
    lines: dict[int, FileLine],
    result: _FileResult,
) -> None:
    """Publish the partitions a step batch produced (one ledger transaction) and say so."""
    items = []
    for file_id, (out, _) in done.outputs.items():
        raw = standing[file_id]
        current = run.store.processed_path(step.name, raw.partition)
        items.append((raw.partition, current, out, raw.fingerprint))
    publish_many(run, step, "processed", items)
    for file_id, (out, cached) in done.outputs.items():
        raw = standing[file_id]
        lines[file_id].rows_out += out.rows
        result.changed.setdefault(step.name, []).append(out.key)
        if cached:
            run.skipped(out.key, step, CACHE_HIT)
        else:
            run.updated(step, out, raw.partition, {"raw": raw.fingerprint}, [raw_key(raw)])


def _each_alone(run: RunContext, batch: list[_Work], claimed_ids: set[int]) -> _FileResult:
    result = _FileResult()
    for row, wanted, line in batch:
        _merge(result, _process_file(run, row, wanted, line, claimed_ids))
    return result


def _process_file(
    run: RunContext,
    row: FileRow,
    wanted: set[str],
    line: FileLine | None,
    claimed_ids: set[int],
    tried: str = "",
) -> _FileResult:
    """One file alone, a task run per stage. ``tried``: the step a batch already tried once
    on this file (one of its retries is spent)."""
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
        _close_file(run, row, line, failure_of(raw_state), failure_reason(raw_state))
        return result
    raw: RawFile = raw_state.result()
    run.held.append(raw)
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
                task_options(run, step, spent=int(step.name == tried)),
            )
            t = time.perf_counter()
            # opaque: the task's upstream is this raw file's run alone (see _batch_steps)
            state, cached = run_step(task, step.name, opaque(raw))
            run.add_time(f"process:{step.name}", time.perf_counter() - t)
            if not state.is_completed():
                _close_file(run, row, line, failure_of(state), failure_reason(state))
                return result
            out: Output = state.result()
            run.held.append(out)
            publish(run, step, "processed", partition, path, out, raw.fingerprint)
            log.debug("partition %s/%s published", step.name, partition)
            line.rows_out += out.rows
            result.changed.setdefault(step.name, []).append(key)
            if cached:
                run.skipped(key, step, CACHE_HIT)
            else:
                run.updated(step, out, partition, {"raw": raw.fingerprint}, [asset_key(raw.uri)])
    finally:
        run.frames.pop(row.id, None)
    if row.id in claimed_ids:
        result.done.append(row.id)
    return result


def _close_file(
    run: RunContext,
    row: FileRow,
    line: FileLine,
    exc: BaseException | None,
    reason: str | None = None,
) -> None:
    """Close a file its step's error stopped: rejected (and quarantined) for bad input, else
    failed; the error is reported and isolated to this file."""
    if reason is None:
        reason = (str(exc) or type(exc).__name__) if exc is not None else "no result"
    rejected = isinstance(exc, RejectedInput)
    line.outcome, line.detail = ("rejected" if rejected else "failed"), reason
    if rejected:
        quarantined = quarantine_landed(run, row, reason)
        run.ledger.finish(
            row.id, "rejected", reason, ev.rejected_event(row, reason, quarantined, run.run_id)
        )
        return
    run.ledger.finish(row.id, "failed", reason, ev.file_failed_event(row, reason, run.run_id))
