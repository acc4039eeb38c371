"""The analytics stage of a materialize run: each analytics step whose inputs or code changed,
level by level, the steps of one level at once."""

from __future__ import annotations

import logging
import time
from typing import Any

from prefect.client.schemas.objects import State

from eventpipe.core.models import AnalyticsInputs, Output
from eventpipe.ledger import AssetRow
from eventpipe.pipeline import Step
from eventpipe.run.artifacts import FileLine
from eventpipe.run.context import RunContext
from eventpipe.run.outputs import publish
from eventpipe.run.tasks import MAX_ASSET_DEPS, analytics, materializing_task, task_options

log = logging.getLogger("eventpipe.run")


def run_analytics(run: RunContext, changed: dict[str, list[str]], logger: Any) -> None:
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
                run.skipped(kept.key, step, "unchanged: same input versions and code version")
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
            publish(run, step, "analytics", "", path, out, inputs.fingerprint)
            log.debug("analytics %s published", step.name)
            versions[step.name] = out.version
            if state.name == "Cached":
                run.skipped(out.key, step, "cache hit: inputs and code unchanged")
            else:
                run.report.assets_updated.append(step.name)
                run.updated(
                    step,
                    out,
                    "",
                    inputs.upstream,
                    [run.store.key(run.store.analytics_path(n)) for n in inputs.upstream],
                )


def _prepare_analytics(
    run: RunContext, step: Step, versions: dict[str, str], changed: dict[str, list[str]]
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
            deps.append(store.key(store.analytics_path(name)))
    inputs = AnalyticsInputs(name=step.name, partitions=partitions, upstream=upstream)
    previous = ledger.asset(pipe.name, step.name)
    same = (
        previous is not None
        and previous.input_fingerprint == inputs.fingerprint
        and previous.code_version == step.code_version
    )
    exists = previous is not None and store.exists(store.version_path(step.name, previous.version))
    if same and exists:
        return None, inputs, False, previous
    refresh = same and not exists
    task = materializing_task(
        analytics,
        store.key(store.analytics_path(step.name)),
        f"{pipe.name}/{step.name}",
        task_options(run, step),
        deps[:MAX_ASSET_DEPS],
    )
    return task, inputs, refresh, None
