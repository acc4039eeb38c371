"""Running a step's code on frames: the input's schema checked, the step called, its result
checked and written as a new version; partitions read back, and the partial results of
map/combine steps kept between runs."""

from __future__ import annotations

import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pyarrow as pa

from eventpipe.core.fs import DataStore
from eventpipe.core.models import AnalyticsInputs, RawFile
from eventpipe.core.readers import error_gist, read_frame
from eventpipe.core.storage import Storage
from eventpipe.exceptions import EventpipeError, RejectedInput
from eventpipe.intake.aws import open_data_store
from eventpipe.pipeline import Step
from eventpipe.run.context import RunContext, TaskHome, cached_pipeline

log = logging.getLogger("eventpipe.run")


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


def compute_partition(home: TaskHome, step_name: str, raw: RawFile) -> tuple[str, str, int]:
    """Run in a Dask worker: ``step`` on the raw snapshot, written as a new version; returns
    (version, path, rows). A bad file raises here, and the task run in the flow fails with
    the same error."""
    pipeline = cached_pipeline(home.spec)
    store = Storage(worker_store(home.data, home.storage), pipeline.name)
    return compute_version(
        pipeline.steps[step_name], store, read_frame(store.read_raw(raw.snapshot), raw.suffix)
    )


def worker_store(data: str, options: dict[str, str] | None) -> DataStore:
    """The data dir's store in a Dask worker, made once per process and data dir (the
    credentials are resolved here, the way the run resolved its own)."""
    key = (data, tuple(sorted((options or {}).items())))
    store = _worker_stores.get(key)
    if store is None:
        store = _worker_stores[key] = open_data_store(data, options)
    return store


_worker_stores: dict[tuple[str, tuple[tuple[str, str], ...]], DataStore] = {}


def compute_version(step: Step, store: Storage, frame: pd.DataFrame) -> tuple[str, str, int]:
    check_schema(step, frame)
    out = result_frame(step, step.fn(frame))
    version, path = store.write_version(step.name, out)
    return version, path, len(out)


def read_versions(store: Storage, paths: list[str]) -> pd.DataFrame:
    """The partitions at ``paths``, concatenated in order (columns unified permissively).

    Read by a few threads: parquet decoding releases the GIL, and a pipeline with a thousand
    partitions would otherwise pay a thousand sequential opens on every analytics run."""
    if not paths:
        return pd.DataFrame()
    if len(paths) == 1:
        tables = [store.read_table(paths[0])]
    else:
        with ThreadPoolExecutor(max_workers=min(8, len(paths))) as pool:
            # One thread per file already: no nested thread pool inside each read.
            tables = list(pool.map(lambda p: store.read_table(p, use_threads=False), paths))
    table = (
        tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
    )
    frame: pd.DataFrame = table.to_pandas()
    return frame


_PARTITION = "__eventpipe_partition__"


_VERSION = "__eventpipe_partition_version__"


def partials_path(run: RunContext, step: Step, fingerprint: str) -> str:
    """The partial results of a map/combine step for one set of input versions (a cache:
    rebuilt from the partitions whenever it is missing or unreadable)."""
    return run.store.partials_path(step.name, f"{step.code_version}-{fingerprint[:32]}.parquet")


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
            previous = run.store.read_frame(previous_path)
        except Exception:  # a cache: recompute what it held
            log.warning("partial results %s unreadable; recomputing them", previous_path)
        else:
            pairs = list(zip(previous[_PARTITION], previous[_VERSION], strict=True))
            frames.append(previous[[pair in wanted_set for pair in pairs]])
            have = wanted_set.intersection(pairs)
    for partition, version in wanted:
        if (partition, version) in have:
            continue
        part = run.store.read_frame(run.store.version_path(source, version))
        partial = result_frame(step, step.fn(**{source: part}))
        frames.append(partial.assign(**{_PARTITION: partition, _VERSION: version}))
    bundle = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(bundle):
        order = {p: i for i, (p, _) in enumerate(wanted)}
        bundle = bundle.iloc[bundle[_PARTITION].map(order).argsort(kind="stable")]
    target = partials_path(run, step, inputs.fingerprint)
    if target != previous_path:
        run.store.write_frame(target, bundle)
        if previous_path is not None:
            run.store.delete(previous_path)
    return bundle.drop(columns=[_PARTITION, _VERSION], errors="ignore").reset_index(drop=True)


def _previous_partials(run: RunContext, step: Step) -> str | None:
    row = run.ledger.asset(run.pipeline.name, step.name)
    if row is None or row.code_version != step.code_version:
        return None
    path = partials_path(run, step, row.input_fingerprint)
    return path if run.store.exists(path) else None


def warm_up(spec: str) -> None:
    """Do once, at start, what the first run would otherwise pay for: load the pipeline into
    the cache the runs use, and exercise the parquet and CSV code paths."""
    cached_pipeline(spec)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "warm.parquet"
        frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
        frame.to_parquet(path, index=False)
        read_versions(Storage(Path(tmp), "warm"), [str(path), str(path)]).groupby("b").sum()
        csv = Path(tmp) / "warm.csv"
        frame.to_csv(csv, index=False)
        read_frame(csv, ".csv")
