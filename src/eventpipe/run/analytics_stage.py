"""The analytics stage of a materialize run: each analytics step whose inputs or code changed,
level by level, the steps of one level at once."""

from __future__ import annotations

import logging
import time
from typing import Any

from prefect.client.schemas.objects import State
from prefect.utilities.annotations import opaque

from eventpipe.core.models import AnalyticsInputs, Output
from eventpipe.ledger import AssetRow
from eventpipe.pipeline import Step
from eventpipe.run.context import RunContext
from eventpipe.run.outputs import publish
from eventpipe.run.tasks import MAX_ASSET_DEPS, analytics, materializing_task, task_options

log = logging.getLogger("eventpipe.run")


def run_analytics(run: RunContext, changed: dict[str, list[str]], logger: Any) -> None:
    """Run the analytics steps level by level; the steps of one level run concurrently.

    A step that raises keeps its last good version (its current output is not touched) and
    is marked failing (ledger, ``eventpipe.asset.failed``); what reads it is not computed
    (it is stale) until a run computes the step again, which happens once its inputs or its
    code change, or after ``eventpipe retry``."""
    versions: dict[str, str] = {}
    failures = run.ledger.failures(run.pipeline.name)
    broken: set[str] = set()
    for level in run.pipeline.analytics_levels():
        submitted = []
        for step in level:
            waits_on = [name for name in step.inputs if name in broken]
            if waits_on:
                broken.add(step.name)
                logger.warning(
                    "analytics %s waits: its input %s is failing", step.name, ", ".join(waits_on)
                )
                continue
            prepared = _prepare_analytics(run, step, versions, changed)
            if prepared is None:
                if _remove_without_data(run, step):
                    logger.info(
                        "analytics %s removed: its inputs have no data any more (retracted)",
                        step.name,
                    )
                else:
                    logger.info("analytics %s waits: an input has no data yet", step.name)
                continue
            task, inputs, refresh, kept = prepared
            failure = failures.get(step.name)
            if kept is not None:  # inputs and code as for the current version: no task at all
                versions[step.name] = kept.version
                run.skipped(kept.key, step, "unchanged: same input versions and code version")
                if failure is not None:  # back to inputs and code its current version fits
                    run.ledger.clear_failures(run.pipeline.name, step.name)
                continue
            if (
                failure is not None
                and failure.input_fingerprint == inputs.fingerprint
                and failure.code_version == step.code_version
            ):
                broken.add(step.name)
                logger.warning(
                    "analytics %s is still failing: same inputs and code as the attempt that"
                    " raised; fix the step (or run `eventpipe retry`)",
                    step.name,
                )
                continue
            if refresh:  # its cached version file is gone: compute it afresh
                task = task.with_options(refresh_cache=True)
            # opaque: no walk over every partition name in search of upstream task runs
            future = task.submit(step.name, opaque(inputs))
            submitted.append((step, inputs, future, time.perf_counter()))
        for step, inputs, future, t in submitted:
            future.wait()
            state: State[Any] = future.state
            run.report.add_time(f"analytics:{step.name}", time.perf_counter() - t)
            if not state.is_completed():
                broken.add(step.name)
                reason = str(state.message or state.name)
                logger.error("analytics %s failed: %s", step.name, reason)
                run.asset_failed(step, inputs.fingerprint, reason)
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


def _remove_without_data(run: RunContext, step: Step) -> bool:
    """An analytics asset whose inputs have no data (every file retracted) has no current
    version either: its current output and row go (its versions stay). Whether it had one."""
    current = run.ledger.asset(run.pipeline.name, step.name)
    if current is None:
        return False
    run.store.delete(current.path)
    run.ledger.drop_partition(run.pipeline.name, step.name, "")
    return True


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
