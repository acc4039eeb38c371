"""Register a pipeline's deployment and its event trigger with the Prefect server."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.responses import DeploymentResponse
from prefect.events import DeploymentEventTrigger
from prefect.events.schemas.automations import AutomationCore
from prefect.exceptions import ObjectNotFound
from prefect.schedules import Cron, Interval
from prefect.utilities.callables import parameter_schema

from eventpipe.compat import EntrypointType, RunnerDeployment
from eventpipe.core.names import (
    MATERIALIZE_FLOW,
    WAKE_LABEL,
    WAKING_EVENTS,
    pipeline_resource_id,
)
from eventpipe.exceptions import ConfigError
from eventpipe.orchestration.automations import same_automation
from eventpipe.pipeline import Fetch, Pipeline
from eventpipe.run.fetch import fetch_source
from eventpipe.run.flow import materialize_pipeline


def landed_trigger(pipeline: str) -> DeploymentEventTrigger:
    """Fire a run for each waking ``eventpipe.file.landed`` (or ``eventpipe.file.retracting``)
    of ``pipeline`` (one per batch the
    outbox sends, see ``events.mark_wakes``); no ``within``, so throttling never drops a landing,
    and each run drains every pending file."""
    return DeploymentEventTrigger(
        name=f"{pipeline}: file landed",
        expect=set(WAKING_EVENTS),
        match={"eventpipe.pipeline": pipeline, WAKE_LABEL: "true"},
        threshold=1,
        within=timedelta(0),
    )


def data_parameter(data: Path | str) -> str:
    """The data dir as the runs get it: an absolute path, or ``s3://bucket/prefix`` as it is."""
    text = str(data)
    return text if text.startswith("s3://") else str(Path(text).resolve())


def register(
    pipeline: Pipeline,
    spec: str,
    data: Path | str,
    publish: dict[str, str] | None = None,
    task_runner: str = "threads",
    storage: dict[str, str] | None = None,
    *,
    pool: str,
) -> UUID:
    """Create or update deployment ``materialize/<pipeline>`` on work pool ``pool`` (the one
    ``eventpipe up`` executes its runs from) and its trigger, unpaused."""
    parameters: dict[str, Any] = {
        "pipeline": spec,
        "data": data_parameter(data),
        "publish": publish,
    }
    if storage:
        parameters["storage"] = storage
    if task_runner != "threads":
        parameters["task_runner"] = task_runner
    deployment: RunnerDeployment = materialize_pipeline.to_deployment(  # type: ignore[assignment]
        name=pipeline.name,
        parameters=parameters,
        triggers=[landed_trigger(pipeline.name)],
        description=f"Materializes pipeline {pipeline.name!r} whenever a file lands "
        f"(related resource {pipeline_resource_id(pipeline.name)}).",
        tags=["eventpipe", f"eventpipe:{pipeline.name}"],
        work_pool_name=pool,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    deployment_id: UUID = deployment.apply()  # type: ignore[assignment]  # sync in a sync context
    set_paused(deployment_id, paused=False)
    return deployment_id


ENTRYPOINT = "eventpipe.flows.materialize_pipeline"
"""The public module path of the flow (as in prefect.yaml): workers import it, no code is
pulled."""


def require_work_pool(pool: str) -> None:
    """A :class:`ConfigError` saying how to create work pool ``pool`` if the server has none
    of that name."""
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            raise ConfigError(
                f"no work pool {pool!r} on this server: create it with `prefect work-pool"
                f" create {pool} --type eventpipe` (warm processes; or --type process), then"
                " deploy again"
            ) from None


def has_secret_block(name: str) -> bool:
    """Whether the server has a Secret block ``name`` (its value is not read)."""
    with get_client(sync_client=True) as client:
        try:
            client.read_block_document_by_name(name, "secret", include_secrets=False)
        except ObjectNotFound:
            return False
    return True


def deploy_to_pool(
    pipeline: Pipeline,
    spec: str,
    data: Path | str,
    pool: str,
    *,
    publish: dict[str, str] | None = None,
    task_runner: str = "threads",
    ledger_block: str | None = None,
    storage: dict[str, str] | None = None,
) -> tuple[UUID, str]:
    """Create or update deployment ``materialize/<pipeline>`` on work pool ``pool``, with its
    landed-file trigger, unpaused; returns its id and "created", "updated" or "unchanged"
    (then nothing on the server was touched, the trigger's automation neither).

    Workers import the flow by module path and ``spec`` must be importable where they run: no
    storage, no pull step. Only names go into the parameters, never a credential: the runs
    find the ledger's URL in ``EVENTPIPE_LEDGER`` or in the Secret block ``ledger_block``."""
    require_work_pool(pool)
    parameters: dict[str, Any] = {
        "pipeline": spec,
        "data": data_parameter(data),
        "task_runner": task_runner,
    }
    if publish:
        parameters["publish"] = publish
    if storage:
        parameters["storage"] = storage
    if ledger_block:
        parameters["ledger_block"] = ledger_block
    trigger = landed_trigger(pipeline.name)
    deployment: RunnerDeployment = materialize_pipeline.to_deployment(  # type: ignore[assignment]
        name=pipeline.name,
        parameters=parameters,
        triggers=[trigger],
        description=f"Materializes pipeline {pipeline.name!r} on the workers of pool {pool!r}"
        f" whenever a file lands (related resource {pipeline_resource_id(pipeline.name)}).",
        tags=["eventpipe", f"eventpipe:{pipeline.name}"],
        work_pool_name=pool,
        entrypoint_type=EntrypointType.MODULE_PATH,
        paused=False,
    )
    deployment.entrypoint = ENTRYPOINT
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_deployment_by_name(f"{MATERIALIZE_FLOW}/{pipeline.name}")
        except ObjectNotFound:
            existing = None
        if existing is not None:
            trigger.set_deployment_id(existing.id)
            automations = client.read_resource_related_automations(
                f"prefect.deployment.{existing.id}"
            )
            if _same_deployment(existing, deployment) and _same_triggers(
                [a for a in automations if a.name == trigger.name], [trigger.as_automation()]
            ):
                return existing.id, "unchanged"
    deployment_id: UUID = deployment.apply()  # type: ignore[assignment]  # sync in a sync context
    return deployment_id, "created" if existing is None else "updated"


def _same_deployment(existing: DeploymentResponse, wanted: RunnerDeployment) -> bool:
    """Whether applying ``wanted`` would change what a run of ``existing`` does."""
    schema = parameter_schema(materialize_pipeline).model_dump(exclude_unset=True)
    return (
        existing.parameters == wanted.parameters
        and existing.work_pool_name == wanted.work_pool_name
        and existing.entrypoint == wanted.entrypoint
        and not existing.pull_steps
        and not existing.paused
        and sorted(existing.tags) == sorted(wanted.tags)
        and existing.description == wanted.description
        and existing.version == wanted.version
        and existing.parameter_openapi_schema == schema
    )


def _same_triggers(existing: list[AutomationCore], wanted: list[AutomationCore]) -> bool:
    return len(existing) == len(wanted) and all(
        same_automation(a, b) for a, b in zip(existing, wanted, strict=True)
    )


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


def register_fetches(
    pipeline: Pipeline,
    spec: str,
    data: Path | str,
    storage: dict[str, str] | None = None,
    *,
    pool: str,
) -> dict[str, UUID]:
    """Create or update deployment ``fetch/<pipeline>-<fetch>`` on work pool ``pool`` with its
    schedule for each ``@pipeline.fetch``. A deployment or schedule paused in the UI stays
    paused."""
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
            parameters={
                "pipeline": spec,
                "fetch": fetch.name,
                "data": data_parameter(data),
                **({"storage": storage} if storage else {}),
            },
            schedules=[fetch_schedule(fetch, active=active)],
            paused=paused,
            description=f"Fetches {fetch.name!r} of pipeline {pipeline.name!r} {fetch.every}; "
            "its result lands like a dropped file (pause to stop fetching).",
            tags=["eventpipe", f"eventpipe:{pipeline.name}", "eventpipe:fetch"],
            work_pool_name=pool,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        ids[fetch.name] = deployment.apply()  # type: ignore[assignment]
    return ids


def request_run(deployment_id: UUID) -> None:
    """Create a run of the deployment now (pending work found on start or left waiting,
    ``eventpipe retry``, edited step code)."""
    with get_client(sync_client=True) as client:
        client.create_flow_run_from_deployment(deployment_id)
