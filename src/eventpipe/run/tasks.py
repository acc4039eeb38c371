"""The task bodies of a materialize run and how their outputs are published.

Kept apart from the flow module on purpose: Prefect may pickle the flow module by value (for
``serve`` and workers), and the per-run state here (a context variable, the task cache) must be
imported there, not pickled.
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect.assets import Asset, AssetProperties, add_asset_metadata, materialize
from prefect.client.schemas.objects import State, TaskRun

from eventpipe.core.keys import asset_key, file_uri, partition_name
from eventpipe.core.models import AnalyticsInputs, Output, RawFile
from eventpipe.core.readers import error_gist, read_frame, suffix_of
from eventpipe.core.storage import Storage, atomic_copy, file_digest, quarantine
from eventpipe.exceptions import EventpipeError, RejectedInput
from eventpipe.ledger import AssetRow, FileRow, Ledger
from eventpipe.pipeline import Pipeline, Step, is_path_spec, load_pipeline, pipeline_source
from eventpipe.run.artifacts import RunReport
from eventpipe.run.cache import ContentFingerprint

log = logging.getLogger("eventpipe.flows")
MAX_ASSET_DEPS = 50

_loaded: dict[str, tuple[float, Pipeline]] = {}


def cached_pipeline(spec: str) -> Pipeline:
    """Load ``spec`` once per process, again when its source file changes (a warm runner
    picks up edited step code, and the new code version recomputes what depends on it)."""
    hit = _loaded.get(spec)
    source = pipeline_source(spec)
    mtime = source.stat().st_mtime if source and source.exists() else 0.0
    if hit and hit[0] == mtime:
        return hit[1]
    target = spec.rpartition(":")[0]
    if hit and not is_path_spec(spec) and target in sys.modules:
        importlib.reload(sys.modules[target])
    pipeline = load_pipeline(spec)
    _loaded[spec] = (mtime, pipeline)
    return pipeline


@dataclass
class RunContext:
    """State shared by the tasks of one flow run."""

    pipeline: Pipeline
    store: Storage
    ledger: Ledger
    run_id: str
    report: RunReport
    frames: dict[int, pd.DataFrame] = field(default_factory=dict)
    mirror: Callable[[Path], str] | None = None
    """Publishes a current output elsewhere too (a bucket); returns where."""
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """Asset events of this run, queued in the outbox together (one transaction, not one
    per partition) before any file is marked done."""

    dask: Any = None
    """The run's Dask client when its process steps compute on a Dask cluster, else None."""
    home: TaskHome | None = None
    """What the cluster's workers need to find the pipeline and the data dir."""

    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_time(self, stage: str, seconds: float) -> None:
        with self._lock:  # files are processed by several threads
            self.report.add_time(stage, seconds)

    def flush_events(self) -> None:
        if self.events:
            batch, self.events = self.events, []
            self.ledger.queue_events(batch)

    def raw_frame(self, raw: RawFile) -> pd.DataFrame:
        frame = self.frames.get(raw.file_id)
        if frame is None:
            frame = read_frame(Path(raw.snapshot), raw.suffix)
        return frame.copy()


@dataclass(frozen=True)
class TaskHome:
    """The pipeline spec and the data dir: all a Dask worker needs to run a process step."""

    spec: str
    data: str


# The run the tasks belong to. Tasks take only small values as arguments: Prefect walks every
# argument looking for futures, and the run holds frames and the pipeline.
_CURRENT: ContextVar[RunContext] = ContextVar("eventpipe_run")


def not_rejected(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a failed step unless the input itself is bad: bad bytes won't get better."""
    try:
        state.result(raise_on_failure=True)
    except RejectedInput:
        return False
    except BaseException:
        return True
    return True


def raw_key(row: FileRow) -> str:
    return asset_key(row.uri)


def materialize_raw(row: FileRow) -> RawFile:
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
        raw_key(row),
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


def check_schema(step: Step, frame: pd.DataFrame) -> None:
    """Reject a file without the columns or types ``step`` expects, saying what to change."""
    if step.expects is None:
        return
    expected = step.expects.columns
    missing = [c for c in expected if c not in frame.columns]
    if missing:
        raise RejectedInput(
            f"step {step.name!r}: missing columns {missing} (the file has {_names(frame.columns)});"
            " add them and drop the file again"
        )
    if not step.expects.allow_extra:
        extra = [str(c) for c in frame.columns if c not in expected]
        if extra:
            raise RejectedInput(
                f"step {step.name!r}: unexpected columns {extra}; it takes only {list(expected)}:"
                " remove the others and drop the file again"
            )
    for column, dtype in expected.items():
        if dtype is None:
            continue
        try:
            frame[column].astype(dtype)  # type: ignore[call-overload]  # any dtype name
        except (ValueError, TypeError) as exc:
            raise RejectedInput(
                f"step {step.name!r}: column {column!r} is not {dtype} ({error_gist(exc)});"
                " fix its values and drop the file again"
            ) from None


def _names(columns: pd.Index) -> str:
    shown = [str(c) for c in columns[:10]]
    more = f" and {len(columns) - 10} more" if len(columns) > 10 else ""
    return f"{shown}{more}"


def result_frame(step: Step, value: object) -> pd.DataFrame:
    if not isinstance(value, pd.DataFrame):
        raise EventpipeError(
            f"step {step.name!r} returned {type(value).__name__}; it must return a pandas DataFrame"
        )
    return value


def process(step_name: str, raw: RawFile) -> Output:
    run = _CURRENT.get()
    step = run.pipeline.steps[step_name]
    if run.dask is not None and run.home is not None:
        # Only the step's code goes to the cluster: the task run, its cache, retries and
        # asset events stay here, and a worker costs one small message per partition.
        future = run.dask.submit(compute_partition, run.home, step_name, raw, pure=False)
        version, path, rows = future.result()
    else:
        version, path, rows = _compute(step, run.store, run.raw_frame(raw))
    key = asset_key(file_uri(run.store.processed_path(step.name, raw.partition)))
    add_asset_metadata(
        key,
        {
            "version": version,
            "rows": rows,
            "source_sha256": raw.fingerprint,
            "code_version": step.code_version,
        },
    )
    return Output(key=key, version=version, path=path, rows=rows, sources=(raw.uri,))


def compute_partition(home: TaskHome, step_name: str, raw: RawFile) -> tuple[str, str, int]:
    """Run in a Dask worker: ``step`` on the raw snapshot, written as a new version; returns
    (version, path, rows). A bad file raises here, and the task run in the flow fails with
    the same error."""
    pipeline = cached_pipeline(home.spec)
    store = Storage(Path(home.data), pipeline.name)
    return _compute(pipeline.steps[step_name], store, read_frame(Path(raw.snapshot), raw.suffix))


def _compute(step: Step, store: Storage, frame: pd.DataFrame) -> tuple[str, str, int]:
    check_schema(step, frame)
    out = result_frame(step, step.fn(frame))
    version, path = store.write_version(step.name, out)
    return version, str(path), len(out)


def read_versions(paths: list[str]) -> pd.DataFrame:
    """The partitions at ``paths``, concatenated in order (columns unified permissively).

    Read by a few threads: parquet decoding releases the GIL, and a pipeline with a thousand
    partitions would otherwise pay a thousand sequential opens on every analytics run."""
    if not paths:
        return pd.DataFrame()
    if len(paths) == 1:
        tables = [pq.read_table(paths[0])]
    else:
        with ThreadPoolExecutor(max_workers=min(8, len(paths))) as pool:
            tables = list(pool.map(_read_table, paths))
    table = (
        tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
    )
    frame: pd.DataFrame = table.to_pandas()
    return frame


def _read_table(path: str) -> Any:
    # One thread per file already: no nested thread pool inside each read.
    return pq.read_table(path, use_threads=False)


def analytics(step_name: str, inputs: AnalyticsInputs) -> Output:
    run = _CURRENT.get()
    step = run.pipeline.steps[step_name]
    if step.combine is not None:
        out = result_frame(step, step.combine(combined_partials(run, step, inputs)))
        return _analytics_output(run, step, inputs, out)
    kwargs: dict[str, pd.DataFrame] = {}
    for name in step.inputs:
        if name in inputs.partitions:
            kwargs[name] = read_versions(
                [run.store.version_path(name, v).as_posix() for _, v in inputs.partitions[name]]
            )
        else:
            kwargs[name] = pd.read_parquet(run.store.version_path(name, inputs.upstream[name]))
    return _analytics_output(run, step, inputs, result_frame(step, step.fn(**kwargs)))


def _analytics_output(
    run: RunContext, step: Step, inputs: AnalyticsInputs, out: pd.DataFrame
) -> Output:
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


_PARTITION = "__eventpipe_partition__"
_VERSION = "__eventpipe_partition_version__"


def partials_path(run: RunContext, step: Step, fingerprint: str) -> Path:
    """The partial results of a map/combine step for one set of input versions (a cache:
    rebuilt from the partitions whenever it is missing or unreadable)."""
    name = f"{step.code_version}-{fingerprint[:32]}.parquet"
    return run.store.data / ".partials" / run.pipeline.name / step.name / name


def combined_partials(run: RunContext, step: Step, inputs: AnalyticsInputs) -> pd.DataFrame:
    """``step.fn`` applied to each current partition of its input, concatenated in partition
    order. Partial results of unchanged partition versions come from the previous run's
    bundle (one file), so only new or changed partitions are read."""
    source = step.inputs[0]
    wanted = inputs.partitions[source]
    wanted_set = set(wanted)
    frames: list[pd.DataFrame] = []
    have: set[tuple[str, str]] = set()
    previous_path = _previous_partials(run, step)
    if previous_path is not None:
        try:
            previous = pd.read_parquet(previous_path)
        except Exception:  # a cache: recompute what it held
            log.warning("partial results %s unreadable; recomputing them", previous_path)
        else:
            pairs = list(zip(previous[_PARTITION], previous[_VERSION], strict=True))
            frames.append(previous[[pair in wanted_set for pair in pairs]])
            have = wanted_set.intersection(pairs)
    for partition, version in wanted:
        if (partition, version) in have:
            continue
        part = pd.read_parquet(run.store.version_path(source, version))
        partial = result_frame(step, step.fn(**{source: part}))
        frames.append(partial.assign(**{_PARTITION: partition, _VERSION: version}))
    bundle = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(bundle):
        order = {p: i for i, (p, _) in enumerate(wanted)}
        bundle = bundle.iloc[bundle[_PARTITION].map(order).argsort(kind="stable")]
    target = partials_path(run, step, inputs.fingerprint)
    if target != previous_path:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{target.name}")
        bundle.to_parquet(tmp, index=False)
        os.replace(tmp, target)
        if previous_path is not None:
            previous_path.unlink(missing_ok=True)
    return bundle.drop(columns=[_PARTITION, _VERSION], errors="ignore").reset_index(drop=True)


def _previous_partials(run: RunContext, step: Step) -> Path | None:
    row = run.ledger.asset(run.pipeline.name, step.name)
    if row is None or row.code_version != step.code_version:
        return None
    path = partials_path(run, step, row.input_fingerprint)
    return path if path.exists() else None


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
    task = copy.copy(template)
    task.assets = [Asset(key=key, properties=AssetProperties(name=name))]
    task.asset_deps = [Asset(key=d) for d in deps] if deps else []
    return task


def task_options(run: RunContext, step: Step) -> dict[str, Any]:
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
        "retry_condition_fn": not_rejected,
    }


def publish(
    run: RunContext,
    step: Step,
    kind: str,
    partition: str,
    current: Path,
    out: Output,
    input_fingerprint: str,
) -> None:
    """Point the current output at ``out``'s version (atomically) and record it."""
    version_file = Path(out.path)
    if not same_file(current, version_file):
        atomic_copy(version_file, current)
        if run.mirror is not None:
            log.info("published %s", run.mirror(current))
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


def same_file(current: Path, version_file: Path) -> bool:
    try:
        a, b = current.stat(), version_file.stat()
    except FileNotFoundError:
        return False
    return a.st_size == b.st_size and file_digest(current) == file_digest(version_file)


def run_step(
    call: Callable[..., Any], *args: Any, refresh: bool = False
) -> tuple[State[Any], bool]:
    """Call a materialize task; on a cache hit whose version file is gone, run it afresh."""
    task = call.with_options(refresh_cache=True) if refresh else call  # type: ignore[attr-defined]
    state: State[Any] = task(*args, return_state=True)
    cached = state.name == "Cached"
    if cached and state.is_completed():
        out = state.result()
        if isinstance(out, Output) and not Path(out.path).exists():
            return run_step(call, *args, refresh=True)
    return state, cached


def restore_outputs(run: RunContext) -> list[AssetRow]:
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
        if run.mirror is not None:
            run.mirror(current)
        stat = current.stat()
        run.ledger.touch_asset(
            AssetRow(**{**row.__dict__, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
        )
        log.warning("restored %s (version %s): it was deleted or changed", current, row.version)
    return lost


@contextmanager
def bound(run: RunContext) -> Iterator[RunContext]:
    """Make ``run`` the run the tasks called in this block belong to."""
    token = _CURRENT.set(run)
    try:
        yield run
    finally:
        _CURRENT.reset(token)


def quarantine_landed(run: RunContext, row: FileRow, reason: str) -> str | None:
    """Move a rejected file out of the inbox, unless a newer version has replaced it there."""
    if not row.local_path:
        return None
    source = Path(row.local_path)
    try:
        if source.is_symlink() or file_digest(source) != row.sha256:
            return None
    except FileNotFoundError:
        return None
    target = quarantine(run.store.data, run.pipeline.name, source, row.relative, reason, row.sha256)
    log.warning("quarantined %s: %s", row.relative, reason)
    return str(target)
