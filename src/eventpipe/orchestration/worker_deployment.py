"""When Prefect workers execute the runs (``eventpipe up --runs worker``): the watcher's view
of the deployment that ``eventpipe deploy`` or ``prefect deploy`` registered, and of its runs.

Nothing here claims, executes or crashes a run; that is the worker's and the server's job. The
watcher only reads: which deployment its events wake, whether a run is already on its way, and
which runs are over (so files a crashed run had claimed go back to pending).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.responses import DeploymentResponse
from prefect.exceptions import ObjectNotFound

from eventpipe.core.names import MATERIALIZE_FLOW

log = logging.getLogger("eventpipe")

ACTIVE = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]
"""A run in one of these states will still claim (or is claiming) the pipeline's files."""


def find_deployment(pipeline: str) -> DeploymentResponse | None:
    """Deployment ``materialize/<pipeline>`` (as ``prefect deploy`` names it from prefect.yaml),
    or None if it does not exist yet."""
    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(f"{MATERIALIZE_FLOW}/{pipeline}")
        except ObjectNotFound:
            return None


def deployment_problems(deployment: DeploymentResponse, pipeline: str, data: str) -> list[str]:
    """What in the deployment disagrees with this watcher: the runs would read another ledger
    or load another pipeline, and the files recorded here would wait forever."""
    params: dict[str, Any] = deployment.parameters or {}
    problems = []
    where = str(params.get("data", ""))
    if "{{" in where or not where:
        problems.append(
            f"its parameter data is {where!r}: deploy again with `eventpipe deploy --data DIR`,"
            " or with EVENTPIPE_DATA (an absolute path) set for `prefect deploy`"
        )
    elif where != data and (data.startswith("s3://") or Path(where) != Path(data)):
        problems.append(
            f"its runs write to data={where} but this watcher records into {data}: the two must"
            " be the same bucket prefix (or the same shared directory, at the same path)"
        )
    if not deployment.work_pool_name:
        problems.append(
            "it has no work pool: it was registered by `eventpipe up`, not deployed"
            " (`eventpipe deploy --pool POOL`, or `prefect deploy`)"
        )
    spec = str(params.get("pipeline", ""))
    if not spec:
        problems.append("its parameter pipeline is empty")
    if deployment.paused:
        problems.append("it is paused: `prefect deployment resume` it")
    return problems


def has_active_run(deployment_id: UUID) -> bool:
    """Whether a run of the deployment is scheduled, waiting for a worker or running."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=ACTIVE))
            ),
            limit=1,
        )
    return bool(runs)


def finished_runs(run_ids: set[str]) -> set[str]:
    """Those of ``run_ids`` (flow run ids) that are over (any final state) or unknown to the
    server; ids that are not flow run ids are left out."""
    ids: dict[str, UUID] = {}
    for run_id in run_ids:
        try:
            ids[run_id] = UUID(run_id)
        except ValueError:
            continue
    if not ids:
        return set()
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(ids.values()))),
            limit=len(ids),
        )
    live = {str(run.id) for run in runs if run.state is None or not run.state.is_final()}
    return set(ids) - live
