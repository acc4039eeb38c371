"""Register a pipeline's deployment and its event trigger with the Prefect server."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.events import DeploymentEventTrigger
from prefect.exceptions import ObjectNotFound
from prefect.schedules import Cron, Interval

from eventpipe.compat import EntrypointType, RunnerDeployment
from eventpipe.core.names import FILE_LANDED, MATERIALIZE_FLOW, WAKE_LABEL, pipeline_resource_id
from eventpipe.exceptions import ConfigError
from eventpipe.pipeline import Fetch, Pipeline
from eventpipe.run.fetch import fetch_source
from eventpipe.run.flow import materialize_pipeline


def landed_trigger(pipeline: str) -> DeploymentEventTrigger:
    """Fire a run for each waking ``eventpipe.file.landed`` of ``pipeline`` (one per batch the
    outbox sends, see ``events.mark_wakes``); no ``within``, so throttling never drops a landing,
    and each run drains every pending file."""
    return DeploymentEventTrigger(
        name=f"{pipeline}: file landed",
        expect={FILE_LANDED},
        match={"eventpipe.pipeline": pipeline, WAKE_LABEL: "true"},
        threshold=1,
        within=timedelta(0),
    )


def register(
    pipeline: Pipeline,
    spec: str,
    data: Path,
    publish: dict[str, str] | None = None,
    task_runner: str = "threads",
) -> UUID:
    """Create or update deployment ``materialize/<pipeline>`` and its trigger, unpaused."""
    parameters: dict[str, Any] = {"pipeline": spec, "data": str(data.resolve()), "publish": publish}
    if task_runner != "threads":
        parameters["task_runner"] = task_runner
    deployment: RunnerDeployment = materialize_pipeline.to_deployment(  # type: ignore[assignment]
        name=pipeline.name,
        parameters=parameters,
        triggers=[landed_trigger(pipeline.name)],
        description=f"Materializes pipeline {pipeline.name!r} whenever a file lands "
        f"(related resource {pipeline_resource_id(pipeline.name)}).",
        tags=["eventpipe", f"eventpipe:{pipeline.name}"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    deployment_id: UUID = deployment.apply()  # type: ignore[assignment]  # sync in a sync context
    set_paused(deployment_id, paused=False)
    return deployment_id


def set_paused(deployment_id: UUID, *, paused: bool) -> None:
    """Pause (on shutdown, so triggered runs don't pile up) or resume a deployment and the
    automations of its triggers (a paused deployment's trigger would still create runs)."""
    with get_client(sync_client=True) as client:
        automations = client.read_resource_related_automations(
            f"prefect.deployment.{deployment_id}"
        )
        for automation in automations:
            if paused:
                client.pause_automation(automation.id)
            else:
                client.resume_automation(automation.id)
        if paused:
            client.pause_deployment(deployment_id)
        else:
            client.resume_deployment(deployment_id)


def deployment_id(pipeline: str) -> UUID:
    """The id of deployment ``materialize/<pipeline>``; register it first (``eventpipe up``)."""
    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(f"{MATERIALIZE_FLOW}/{pipeline}").id
        except ObjectNotFound:
            raise ConfigError(
                f"no deployment materialize/{pipeline} on this server: run `eventpipe up` "
                "(or `prefect deploy`) first"
            ) from None


def fetch_deployment_name(pipeline: str, fetch: str) -> str:
    """``<pipeline>-<fetch>``: the deployment ``fetch/<pipeline>-<fetch>``."""
    return f"{pipeline}-{fetch}"


def fetch_schedule(fetch: Fetch, *, active: bool = True) -> Any:
    """The Prefect schedule of ``fetch`` (cron or interval), slugged by the fetch's name."""
    if fetch.schedule is not None:
        return Cron(fetch.schedule, timezone=fetch.timezone, active=active, slug=fetch.name)
    assert fetch.interval is not None
    return Interval(fetch.interval, timezone=fetch.timezone, active=active, slug=fetch.name)


def register_fetches(pipeline: Pipeline, spec: str, data: Path) -> dict[str, UUID]:
    """Create or update deployment ``fetch/<pipeline>-<fetch>`` with its schedule for each
    ``@pipeline.fetch``. A deployment or schedule paused in the UI stays paused."""
    ids: dict[str, UUID] = {}
    for fetch in pipeline.fetches.values():
        name = fetch_deployment_name(pipeline.name, fetch.name)
        paused, active = False, True
        with get_client(sync_client=True) as client:
            try:
                existing = client.read_deployment_by_name(f"fetch/{name}")
            except ObjectNotFound:
                pass
            else:
                paused = bool(existing.paused)
                active = all(s.active for s in existing.schedules or [])
        deployment: RunnerDeployment = fetch_source.to_deployment(  # type: ignore[assignment]
            name=name,
            parameters={"pipeline": spec, "fetch": fetch.name, "data": str(data.resolve())},
            schedules=[fetch_schedule(fetch, active=active)],
            paused=paused,
            description=f"Fetches {fetch.name!r} of pipeline {pipeline.name!r} {fetch.every}; "
            "its result lands like a dropped file (pause to stop fetching).",
            tags=["eventpipe", f"eventpipe:{pipeline.name}", "eventpipe:fetch"],
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        ids[fetch.name] = deployment.apply()  # type: ignore[assignment]
    return ids


def request_run(deployment_id: UUID) -> None:
    """Create a run of the deployment now (pending work found on start or left waiting,
    ``eventpipe retry``, edited step code)."""
    with get_client(sync_client=True) as client:
        client.create_flow_run_from_deployment(deployment_id)
