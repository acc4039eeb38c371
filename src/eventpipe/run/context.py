"""The state one materialize run shares with its tasks: the run's ``RunContext`` (set for
the tasks by :func:`bound`), and the pipeline each process loads once."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from eventpipe.codeversion import Stamp, code_stamp, iter_user_modules
from eventpipe.core.models import Output, RawFile
from eventpipe.core.readers import read_frame
from eventpipe.core.storage import Storage
from eventpipe.events.build import (
    Built,
    asset_failed_event,
    asset_skipped_event,
    asset_updated_event,
)
from eventpipe.ledger import AssetFailure, Ledger
from eventpipe.pipeline import Pipeline, Step, is_path_spec, load_pipeline, pipeline_source
from eventpipe.run.artifacts import RunReport

log = logging.getLogger("eventpipe.run")


_loaded: dict[str, tuple[Stamp, Pipeline]] = {}
_reloading = threading.Lock()


def watched_files(spec: str) -> list[str]:
    """The files of the pipeline's code as last loaded here (its own file at least)."""
    hit = _loaded.get(spec)
    source = pipeline_source(spec)
    files = set(hit[1].code_files) if hit else set()
    if source is not None:
        files.add(os.path.realpath(source))
    return sorted(files)


def cached_pipeline(spec: str) -> Pipeline:
    """Load ``spec`` once per process, again when a file of its code changes (its own, or a
    module of the user's whose functions, classes or constants a step uses): a warm runner
    picks up edited code, and the new code versions recompute what depends on it. Edited
    helper modules are reloaded first, then the pipeline."""
    with _reloading:
        hit = _loaded.get(spec)
        files = watched_files(spec)
        if hit and code_stamp(files) == hit[0]:
            return hit[1]
        if hit:
            changed = {f for f, mtime in code_stamp(files) if (f, mtime) not in hit[0]}
            source = pipeline_source(spec)
            own = os.path.realpath(source) if source is not None else None
            for module in iter_user_modules(tuple(changed - {own})):
                importlib.reload(module)
            target = spec.rpartition(":")[0]
            if not is_path_spec(spec) and target in sys.modules:
                importlib.reload(sys.modules[target])
        pipeline = load_pipeline(spec)
        _loaded[spec] = ((), pipeline)
        _loaded[spec] = (code_stamp(watched_files(spec)), pipeline)
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
    mirror: Callable[[str], str] | None = None
    """Publishes a current output (its location in the local data dir) elsewhere too (a
    bucket); returns where."""
    events: list[Built] = field(default_factory=list)
    """Asset events of this run, queued in the outbox together (one transaction, not one
    per partition) before any file is marked done."""

    dask: Any = None
    """The run's Dask client when its process steps compute on a Dask cluster, else None."""
    home: TaskHome | None = None
    """What the cluster's workers need to find the pipeline and the data dir."""

    results: Path | None = None
    """Where Prefect keeps the tasks' cache records: ``<data>/.cache`` for a local data dir;
    for a bucket, the disposable local cache (a miss there only recomputes a version that
    already exists: versions are named after their content)."""

    held: list[object] = field(default_factory=list)
    """Every task result of the run, kept alive until it ends. Prefect links a task's inputs
    to the task runs that returned them by ``id()``, and an id whose object was freed can be
    reused by a later object (a list, a string: nothing a weak reference can check); a
    partition would then name another file's raw asset as its upstream."""

    _lock: threading.Lock = field(default_factory=threading.Lock)

    def results_dir(self) -> Path:
        return self.results if self.results is not None else self.store.data / ".cache"

    def add_time(self, stage: str, seconds: float) -> None:
        with self._lock:  # files are processed by several threads
            self.report.add_time(stage, seconds)

    def flush_events(self) -> None:
        if self.events:
            batch, self.events = self.events, []
            self.ledger.queue_events(batch)

    def skipped(self, key: str, step: Step, reason: str) -> None:
        """Say (``eventpipe.asset.skipped``) that ``step``'s asset ``key`` stays as it is."""
        self.report.assets_skipped.append(step.name)
        self.events.append(
            asset_skipped_event(
                self.pipeline.name, self.run_id, key, step.name, reason, step.code_version
            )
        )

    def updated(
        self,
        step: Step,
        out: Output,
        partition: str,
        upstream: dict[str, str],
        upstream_keys: list[str],
    ) -> None:
        """Say (``eventpipe.asset.updated``) that ``out`` is a new version of ``step``'s asset
        (of one partition of it, for a process step)."""
        self.events.append(
            asset_updated_event(
                self.pipeline.name,
                self.run_id,
                key=out.key,
                step=step.name,
                partition=partition,
                version=out.version,
                rows=out.rows,
                code_version=step.code_version,
                upstream=upstream,
                upstream_keys=upstream_keys,
            )
        )

    def asset_failed(self, step: Step, input_fingerprint: str, reason: str) -> None:
        """Mark ``step``'s analytics asset failing (``eventpipe.asset.failed``); it keeps its
        last good version."""
        pipeline = self.pipeline.name
        kept = self.ledger.asset(pipeline, step.name)
        self.report.assets_failed[step.name] = reason
        self.ledger.record_failure(
            AssetFailure(
                pipeline=pipeline,
                name=step.name,
                reason=reason,
                run_id=self.run_id,
                failed_at=time.time(),
                input_fingerprint=input_fingerprint,
                code_version=step.code_version,
            )
        )
        key = self.store.key(self.store.analytics_path(step.name))
        self.events.append(
            asset_failed_event(
                pipeline, self.run_id, key, step.name, reason, kept.version if kept else None
            )
        )

    def raw_frame(self, raw: RawFile, *, copy: bool = True) -> pd.DataFrame:
        """The frame read from ``raw``: a copy for a step (a step may change its input, and
        the next step reads it too), or, with ``copy=False`` for the file's last step, the
        frame itself, which the run then forgets."""
        frame = self.frames.get(raw.file_id) if copy else self.frames.pop(raw.file_id, None)
        if frame is None:
            return read_frame(self.store.read_raw(raw.snapshot), raw.suffix)
        return frame.copy() if copy else frame


@dataclass(frozen=True)
class TaskHome:
    """The pipeline spec and the data dir: all a Dask worker needs to run a process step."""

    spec: str
    data: str
    storage: dict[str, str] | None = None
    """How to reach a bucket data dir (names and URLs only: each worker resolves the
    credentials itself, so no secret travels with a task)."""


# The run the tasks belong to. Tasks take only small values as arguments: Prefect walks every
# argument looking for futures, and the run holds frames and the pipeline.
_CURRENT: ContextVar[RunContext] = ContextVar("eventpipe_run")


def current_run() -> RunContext:
    """The run the calling task belongs to (set by :func:`bound`)."""
    return _CURRENT.get()


@contextmanager
def bound(run: RunContext) -> Iterator[RunContext]:
    """Make ``run`` the run the tasks called in this block belong to."""
    token = _CURRENT.set(run)
    try:
        yield run
    finally:
        _CURRENT.reset(token)
