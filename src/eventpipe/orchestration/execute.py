"""Executing one flow run with Prefect's engine: the one path every eventpipe executor takes,
whether the run executes in a warm process of the ``eventpipe`` worker
(``eventpipe.orchestration.warm``) or on a thread of the worker's own process (the pool
``eventpipe up`` runs its deployments on, ``warm_processes`` 0)."""

from __future__ import annotations

import logging
from typing import Any, cast
from uuid import UUID

from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, State
from prefect.flow_engine import load_flow, load_flow_run
from prefect.flows import load_flow_from_entrypoint
from prefect.logging.loggers import flow_run_logger

from eventpipe.compat import run_deployment_flow_run


def execute_flow_run(flow_run_id: UUID, entrypoint: str | None = None) -> State[Any]:
    """Read the flow run, import its deployment's flow (a module path: imported once per
    process) and run it in this thread; its final state. The run must be claimed (Pending).

    ``entrypoint``: the deployment's, when the caller has just read the deployment and it has
    no pull steps (one API call less); else the deployment is read here."""
    flow_run = load_flow_run(flow_run_id)
    # an adapter, as `python -m prefect.engine` passes it (typed as a Logger)
    run_logger = cast(logging.Logger, flow_run_logger(flow_run=flow_run))
    try:
        if entrypoint is not None:
            flow: Flow[..., Any] = load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)
        else:
            flow = _load_flow(flow_run)
    except Exception:
        run_logger.error("could not load the flow", exc_info=True)
        raise
    return run_deployment_flow_run(flow, flow_run, error_logger=run_logger)


def _load_flow(flow_run: FlowRun) -> Flow[..., Any]:
    """The run's flow: imported from its deployment's entrypoint with this thread's client;
    through Prefect's loader (pull steps and all) when the deployment has pull steps."""
    if flow_run.deployment_id is not None:
        deployment = get_client(sync_client=True).read_deployment(flow_run.deployment_id)
        if deployment.entrypoint and not deployment.pull_steps:
            return load_flow_from_entrypoint(deployment.entrypoint, use_placeholder_flow=False)
    return load_flow(flow_run)
