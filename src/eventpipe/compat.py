"""Every use eventpipe makes of Prefect internals, in one place.

Each name here relies on something Prefect does not document as public API. When Prefect is
upgraded, ``tests/test_compat.py`` checks that each still exists with the shape relied upon;
a failure there names the function to adapt, and nothing else in eventpipe needs reading.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple
from uuid import UUID

from prefect import Flow
from prefect.assets import Asset, AssetProperties
from prefect.client.schemas.objects import FlowRun, State
from prefect.context import AssetContext, SyncClientContext, _deployment_id, _deployment_parameters
from prefect.deployments.runner import EntrypointType, RunnerDeployment  # type: ignore[attr-defined]
from prefect.flow_engine import run_flow
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.utilities.engine import propose_state_sync

__all__ = [
    "EntrypointType",
    "Materialized",
    "RunnerDeployment",
    "emit_materializations",
    "propose_state_sync",
    "retarget_batch_task",
    "retarget_task",
    "run_deployment_flow_run",
    "warm_engine",
]


@contextmanager
def warm_engine() -> Iterator[None]:
    """What a long-lived executor of many runs enters once: one sync API client for all its
    runs (the engine would open one per run) and no heartbeat thread, which the engine waits
    about a second for after each run (``flow_engine.py`` sleeps in 1-s steps). The
    environment variable cannot say None, so the setting is changed in-process."""
    with (
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        SyncClientContext.get_or_create(),
    ):
        yield


def run_deployment_flow_run(
    flow: Flow[..., Any], flow_run: FlowRun, error_logger: logging.Logger | None = None
) -> State[Any]:
    """Run a deployment's ``flow_run`` with Prefect's engine in this thread; its final state.

    The engine starts a websocket observer per deployment run, only to notice a suspension
    request (eventpipe's flows never suspend), which costs ~0.1 s per run. So the run is
    handed to the engine without its deployment id, and the deployment context that
    ``prefect.runtime.deployment`` reads (private context variables) is set here instead.
    Server-side the run stays the deployment's run.
    """
    deployment_id: UUID | None = flow_run.deployment_id
    id_token = _deployment_id.set(deployment_id)
    params_token = _deployment_parameters.set(flow_run.parameters)
    try:
        state = run_flow(
            flow,
            flow_run=flow_run.model_copy(update={"deployment_id": None}),
            return_type="state",
            error_logger=error_logger,
        )
        assert isinstance(state, State)  # return_type="state" in a sync flow: a State
        return state
    finally:
        _deployment_parameters.reset(params_token)
        _deployment_id.reset(id_token)


def retarget_task(template: Any, key: str, name: str, deps: list[str] | None = None) -> Any:
    """A shallow copy of the ``@materialize`` task ``template`` that materializes asset ``key``
    (upstream ``deps``): the same object ``with_options(assets=...)`` builds, without
    re-running ``Task.__init__`` (which reads the module's source for cache keys: 5-15 ms a
    call). Relies on a materializing task keeping its assets in ``.assets`` and
    ``.asset_deps``."""
    task = copy.copy(template)
    task.assets = [Asset(key=key, properties=AssetProperties(name=name))]
    task.asset_deps = [Asset(key=d) for d in deps] if deps else []
    return task


def retarget_batch_task(template: Any, assets: list[tuple[str, str]]) -> Any:
    """A shallow copy of the ``@materialize`` task ``template`` that materializes every asset
    of ``assets`` (``(key, name)`` pairs): one task run for a batch of partitions."""
    task = copy.copy(template)
    task.assets = [Asset(key=key, properties=AssetProperties(name=name)) for key, name in assets]
    task.asset_deps = []
    return task


class Materialized(NamedTuple):
    """One asset a batch task materialized (or failed to), with its own upstream assets."""

    key: str
    upstream: tuple[str, ...]
    metadata: dict[str, Any] | None
    succeeded: bool = True


def emit_materializations(done: list[Materialized]) -> None:
    """From inside a batch task: the asset events Prefect emits for a materializing task, but
    each asset with its own upstream (Prefect relates every asset of a task to every upstream
    asset of the task: a batch of n partitions would say each came from all n raw files), and
    a failed event for each asset whose file failed while the task itself completed.

    Prefect's own emission at the end of the task is turned off for this task run, by
    emptying the downstream assets of its ``AssetContext`` (the flow run's asset tracking,
    which downstream tasks read, was filled when the task started)."""
    from prefect.events import emit_event

    ctx = AssetContext.get()
    if ctx is None:
        return
    by_key = {asset.key: asset for asset in ctx.downstream_assets}
    ctx.downstream_assets = set()
    referenced: set[str] = set()
    for item in done:
        asset = by_key.get(item.key)
        if asset is None:
            continue
        related = [AssetContext.asset_as_related(Asset(key=k)) for k in item.upstream]
        if ctx.materialized_by:
            related.append(AssetContext.related_materialized_by(ctx.materialized_by))
        for upstream in item.upstream:
            if upstream not in referenced:
                referenced.add(upstream)
                emit_event(
                    event="prefect.asset.referenced",
                    resource=AssetContext.asset_as_resource(Asset(key=upstream)),
                    related=[],
                )
        status = "succeeded" if item.succeeded else "failed"
        emit_event(
            event=f"prefect.asset.materialization.{status}",
            resource=AssetContext.asset_as_resource(asset),
            related=related,
            payload=item.metadata,
        )
