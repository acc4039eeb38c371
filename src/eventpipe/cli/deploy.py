"""``eventpipe deploy``: register a pipeline for Prefect workers, without a prefect.yaml."""

from __future__ import annotations

import os
from typing import Annotated

from eventpipe.cli.common import console, err, settings_flags, settings_or_configured, setup_logging
from eventpipe.exceptions import ConfigError
from eventpipe.settings import Settings

DEPLOY_SETTINGS = settings_flags(
    "pipeline",
    "pool",
    "data",
    "ledger",
    "ledger_block",
    "api_url",
    "task_runner",
    "notify_webhook",
    "notify_block",
    "stale_minutes",
    "endpoint_url",
    "region",
    "aws_credentials_block",
)


def deploy(*, settings: Annotated[Settings | None, DEPLOY_SETTINGS] = None) -> None:
    """Register the pipeline's deployment `materialize/<pipeline>` on a work pool, with its
    landed-file trigger and the automation that marks unresponsive runs Crashed (and, with
    --notify-webhook or --notify-block, the paging automations). Safe to run again: what is
    already as wanted is left unchanged. Workers need the pipeline importable and the ledger's
    URL in EVENTPIPE_LEDGER (or a Secret block, --ledger-block); no credential is stored in
    the deployment.
    """
    setup_logging(False)
    s = settings_or_configured(settings).resolved()
    if not s.pool:
        raise ConfigError(
            "say which work pool runs the deployment: --pool POOL (create one with"
            " `prefect work-pool create POOL --type eventpipe`, or --type process)"
        )
    if s.api_url:
        # Before Prefect is imported: it reads its API URL once, at import.
        os.environ["PREFECT_API_URL"] = s.api_url
    from prefect.settings import get_current_settings

    from eventpipe.intake.aws import store_options
    from eventpipe.orchestration import automations
    from eventpipe.orchestration.deploy import deploy_to_pool, has_secret_block
    from eventpipe.pipeline import absolute_spec, load_pipeline

    if not get_current_settings().api.url:  # else Prefect would deploy to a throwaway server
        raise ConfigError(
            "say which Prefect server to deploy to: --api-url http://host:4200/api (or"
            " PREFECT_API_URL)"
        )
    spec = absolute_spec(s.pipeline)
    pipe = load_pipeline(spec)
    deployment_id, what = deploy_to_pool(
        pipe,
        spec,
        s.data,
        s.pool,
        publish=s.publish_options(),
        task_runner=s.task_runner,
        ledger_block=s.ledger_block,
        storage=store_options(s),
    )
    console.print(
        f"{what:9} deployment materialize/{pipe.name} on work pool {s.pool}, with trigger"
        f" '{pipe.name}: file landed' (id {deployment_id})"
    )
    block_id = automations.notification_block(s.notify_block, s.notify_webhook)
    done = automations.apply(pipe.name, deployment_id, block_id, s.stale_minutes)
    for name, what in done:
        console.print(f"{what:9} automation {name}")
    if not any(name.endswith(": run unresponsive") for name, _ in done):
        err.print(
            "flow-run heartbeats are off here (PREFECT_FLOWS_HEARTBEAT_FREQUENCY): no automation"
            " marks the runs of a dead worker Crashed"
        )
    if s.ledger_block and not has_secret_block(s.ledger_block):
        err.print(
            f"no Secret block {s.ledger_block!r} on this server yet: the runs will fail until"
            " it holds the ledger's URL (create it in the UI, Blocks → Secret)"
        )
    if s.ledger is not None and not s.ledger_block:
        err.print(
            "the ledger URL is not stored in the deployment: set EVENTPIPE_LEDGER in the"
            " workers' environment, or keep it in a Prefect Secret block and deploy with"
            " --ledger-block NAME"
        )
    console.print(
        f"now run:  prefect worker start --pool {s.pool}   (where {spec} is importable)\n"
        f"          eventpipe up --runs worker --pipeline {spec} --data {s.data}"
    )
