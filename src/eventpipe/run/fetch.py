"""Scheduled fetches: the ``fetch`` flow that runs one ``@pipeline.fetch`` function and lands
its result as a file of the pipeline.

A fetch's result takes the path of a dropped file from the ledger on: it is written atomically
under ``<data>/fetched/<pipeline>/``, snapshotted into the raw store, and recorded with the
watcher's own ``record()`` (sha256 fingerprint; the same bytes again → ``eventpipe.asset.skipped``,
new bytes → ``eventpipe.file.landed``, whose trigger starts the materialize run). Helper state
(ETags, cursors) is committed only after the result is recorded, so a conditional request
always refers to content the ledger has.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.tasks import exponential_backoff

from eventpipe.core import names
from eventpipe.core.models import Landed
from eventpipe.core.storage import Storage
from eventpipe.events import build as ev
from eventpipe.exceptions import ConfigError, FetchError
from eventpipe.intake.aws import open_data_store
from eventpipe.intake.record import record
from eventpipe.ledger import Ledger
from eventpipe.pipeline import FETCH_FORMATS, Fetch
from eventpipe.run.artifacts import artifact_key, escape_markdown
from eventpipe.run.context import cached_pipeline
from eventpipe.run.credentials import redact, revealing, run_ledger_url
from eventpipe.run.deliver import deliver_now
from eventpipe.run.failures import failure_reason, fetch_retryable

log = logging.getLogger("eventpipe.fetch")


@dataclass(frozen=True)
class Fetched:
    """Bytes a fetch returns, in one of the readable formats (``csv``, ``json``, ...)."""

    content: bytes
    format: str
    rows: int | None = None

    def __post_init__(self) -> None:
        if self.format not in FETCH_FORMATS:
            raise ConfigError(
                f"fetched format {self.format!r} is not readable; use one of {FETCH_FORMATS}"
            )


class NotModified(Exception):  # a signal, not an error
    """Raised by a helper when the source says nothing changed since the last fetch (HTTP
    304): the last fetched file stands and the fetch is reported as skipped."""


@dataclass
class FetchContext:
    """What the helpers of one fetch run may read and keep."""

    pipeline: str
    fetch: Fetch
    state: dict[str, Any]
    store: Storage
    """Where helpers keep response bodies their stored validators refer to
    (``fetched/<pipeline>/.cache/<sha256>.body`` in the data dir: :meth:`body_path`)."""
    staged: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    """Facts for the run's event and artifact (status codes, cursors): no secrets."""
    attempts: int = 0

    def body_path(self, digest: str) -> str:
        return self.store.fetched_path(f".cache/{digest}.body")

    def remembered(self, key: str) -> dict[str, Any]:
        value = self.state.get(key)
        return dict(value) if isinstance(value, dict) else {}

    def keep(self, key: str, value: dict[str, Any]) -> None:
        """Remember ``value`` under ``key`` once this fetch's result is recorded."""
        self.staged[key] = value


_CURRENT: ContextVar[FetchContext | None] = ContextVar("eventpipe_fetch", default=None)


def current() -> FetchContext | None:
    """The fetch being run, or None when a helper is called outside a scheduled fetch (then
    it keeps no state: no conditional requests, no cursor)."""
    return _CURRENT.get()


@contextmanager
def fetching(context: FetchContext) -> Iterator[FetchContext]:
    token = _CURRENT.set(context)
    try:
        yield context
    finally:
        _CURRENT.reset(token)


ResultKind = Literal["content", "not_modified", "empty"]


@dataclass(frozen=True)
class _Result:
    kind: ResultKind
    fetched: Fetched | None = None


def as_fetched(value: object, append: bool) -> _Result:
    """Normalize what a fetch function returned."""
    if value is None:
        return _Result("empty")
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], bytes | bytearray):
        value = Fetched(bytes(value[0]), str(value[1]))
    if isinstance(value, pd.DataFrame):
        if append and value.empty:
            return _Result("empty")
        buffer = io.BytesIO()
        value.to_parquet(buffer, index=False)
        return _Result("content", Fetched(buffer.getvalue(), "parquet", rows=len(value)))
    if isinstance(value, Fetched):
        if not value.content:
            return _Result("empty")
        return _Result("content", value)
    raise FetchError(
        f"a fetch returned {type(value).__name__}; return a DataFrame, "
        "Fetched(content, format), (bytes, format) or None",
        retryable=False,
    )


def _call(name: str) -> _Result:
    context = current()
    assert context is not None
    context.attempts += 1
    try:
        value = context.fetch.fn()
    except NotModified:
        return _Result("not_modified")
    return as_fetched(value, context.fetch.append)


def _fetch_task(spec: Fetch) -> Any:
    delays = exponential_backoff(spec.retry_delay_seconds)(spec.retries) if spec.retries else 0
    return task(
        name=f"fetch:{spec.name}",
        retries=spec.retries,
        retry_delay_seconds=delays,
        retry_condition_fn=fetch_retryable,
        cache_policy=NO_CACHE,
        persist_result=False,
    )(_call)


@flow(name=names.FETCH_FLOW, persist_result=False)
def fetch_source(
    pipeline: str,
    fetch: str,
    data: str,
    ledger_block: str | None = None,
    storage: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run fetch ``fetch`` of ``pipeline`` (``module:attr`` or ``file.py:attr``) once and land
    its result under ``data``, like a dropped file."""
    started = time.perf_counter()
    pipe = cached_pipeline(pipeline)
    spec = pipe.fetches.get(fetch)
    if spec is None:
        raise ConfigError(
            f"pipeline {pipe.name!r} has no fetch {fetch!r} (it has: {sorted(pipe.fetches)})"
        )
    ctx = FlowRunContext.get()
    run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else "local"
    store = Storage(open_data_store(data, storage), pipe.name)
    ledger = Ledger.open(data, run_ledger_url(ledger_block))
    logger = get_run_logger()
    context = FetchContext(pipe.name, spec, ledger.fetch_state(pipe.name, fetch), store)
    try:
        with fetching(context), revealing() as secrets:
            state: State[_Result] = _fetch_task(spec)(fetch, return_state=True)
            if not state.is_completed():
                reason = redact(failure_reason(state), secrets)
                _report_failure(ledger, pipe.name, spec, run_id, reason, context.attempts)
                raise FetchError(
                    f"fetch {fetch!r} of pipeline {pipe.name!r} failed after its retries: "
                    f"{reason}; the next scheduled run tries again"
                ) from None
            try:
                summary = land(ledger, store, spec, state.result(), run_id, context)
            except Exception as exc:  # e.g. the disk is full: said in the feed too
                reason = redact(f"{type(exc).__name__}: {exc}", secrets)
                _report_failure(ledger, pipe.name, spec, run_id, reason, context.attempts)
                raise
            summary["seconds"] = round(time.perf_counter() - started, 4)
            logger.info("fetch %s: %s", fetch, redact(str(summary), secrets))
            if summary["outcome"] in ("new", "changed", "retry"):
                _artifact(pipe.name, fetch, summary)  # a skip has its event; no API call more
    finally:
        deliver_now(ledger)
        ledger.close()
    return summary


def _report_failure(
    ledger: Ledger, pipeline: str, spec: Fetch, run_id: str, reason: str, attempts: int
) -> None:
    ledger.queue_event(
        *ev.fetch_event(
            names.FETCH_FAILED,
            pipeline,
            spec.name,
            run_id,
            {"reason": reason, "attempts": attempts, "retries": spec.retries},
        )
    )


def land(
    ledger: Ledger,
    store: Storage,
    spec: Fetch,
    result: _Result,
    run_id: str,
    context: FetchContext,
) -> dict[str, Any]:
    """Record one fetch's result in the ledger, with its events; commit the helpers' state."""
    pipeline = store.pipeline
    summary: dict[str, Any] = {"fetch": spec.name, **context.notes}
    fetched = result.fetched
    landed: Landed | None
    if result.kind == "content" and fetched is not None:
        relative = _relative(spec, fetched.format)
        path = store.fetched_path(relative.removeprefix("fetched/"))
        store.write_bytes(path, fetched.content)
        fingerprint = hashlib.sha256(fetched.content).hexdigest()
        suffix = "." + fetched.format
        store.snapshot_raw(fetched.content, fingerprint, suffix)
        landed = Landed(
            uri=store.uri(path),
            relative=relative,
            size=len(fetched.content),
            fingerprint=fingerprint,
            source="fetch",
            local_path=path,
        )
        summary.update(
            file=relative, bytes=len(fetched.content), rows=fetched.rows, sha256=fingerprint
        )
    else:
        landed = _previous(ledger, store, spec) if result.kind == "not_modified" else None
    event_id, body = ev.fetch_event(names.FETCH_COMPLETED, pipeline, spec.name, run_id, {})
    if landed is not None:
        outcome: str = record(ledger, pipeline, landed)
        if result.kind == "not_modified":
            outcome = "not_modified"
    else:
        outcome = result.kind
        reason = (
            "not modified since the last fetch"
            if result.kind == "not_modified"
            else "the fetch returned no new rows"
        )
        ledger.queue_event(*ev.fetch_skipped_event(pipeline, spec.name, run_id, reason))
    summary["outcome"] = outcome
    body["payload"].update(summary)
    ledger.queue_event(event_id, body)
    if context.staged:
        ledger.save_fetch_state(pipeline, spec.name, {**context.state, **context.staged})
    return summary


def _relative(spec: Fetch, fmt: str) -> str:
    if spec.append:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return f"fetched/{spec.name}/{stamp}.{fmt}"
    return f"fetched/{spec.name}.{fmt}"


def _previous(ledger: Ledger, store: Storage, spec: Fetch) -> Landed | None:
    """The file the last successful fetch landed (what a 304 confirms), if any."""
    if spec.append:
        return None
    prefix = f"fetched/{spec.name}."
    rows = [r for r in ledger.latest_files(store.pipeline) if r.relative.startswith(prefix)]
    if not rows:
        return None
    row = max(rows, key=lambda r: r.updated_at)
    return Landed(
        uri=row.uri,
        relative=row.relative,
        size=row.size,
        fingerprint=row.sha256,
        source="fetch",
        local_path=row.local_path,
    )


def _artifact(pipeline: str, fetch: str, summary: dict[str, Any]) -> None:
    lines = [f"### Fetch `{escape_markdown(fetch)}` of `{escape_markdown(pipeline)}`", ""]
    lines += ["| | |", "| --- | --- |"]
    lines += [f"| {escape_markdown(k)} | {escape_markdown(v)} |" for k, v in summary.items()]
    create_markdown_artifact(
        "\n".join(lines),
        key=artifact_key(pipeline, "fetch", fetch),
        description=f"What this fetch of {pipeline}/{fetch} brought",
    )
