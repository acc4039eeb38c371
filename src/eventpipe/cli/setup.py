"""One-off setup: ``eventpipe setup-s3`` wires a bucket to a queue, ``eventpipe automations
apply`` creates the automations that page on-call."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from cyclopts import App

from eventpipe.cli.common import console, settings_flags, settings_or_configured, setup_logging
from eventpipe.exceptions import EventpipeError
from eventpipe.settings import Settings

S3_SETTINGS = settings_flags("endpoint_url", "region", "aws_credentials_block")
PAGING_SETTINGS = settings_flags(
    "pipeline", "api_url", "notify_webhook", "notify_block", "stale_minutes"
)

automations_app = App(name="automations", help="The automations that page on-call.")


@automations_app.command(name="apply")
def automations_apply(
    *,
    settings: Annotated[Settings | None, PAGING_SETTINGS] = None,
    file: Path | None = None,
) -> None:
    """Create or update the pipeline's automations on a Prefect server (safe to run again):
    failed run, rejected file, no run after files landed, stale asset.

    Parameters
    ----------
    file
        Automation templates to apply (default: the packaged ones, as in
        deployments/automations.yaml).
    """
    setup_logging(False)
    s = settings_or_configured(settings)
    if s.api_url:
        # Before Prefect is imported: it reads its API URL once, at import.
        os.environ["PREFECT_API_URL"] = s.api_url
    from eventpipe.orchestration import automations
    from eventpipe.orchestration.deploy import deployment_id
    from eventpipe.pipeline import absolute_spec, load_pipeline

    pipe = load_pipeline(absolute_spec(s.pipeline))
    block_id = automations.notification_block(s.notify_block, s.notify_webhook)
    if block_id is None:
        raise EventpipeError("say where to page: --notify-webhook URL or --notify-block slug/name")
    done = automations.apply(pipe.name, deployment_id(pipe.name), block_id, s.stale_minutes, file)
    for name, what in done:
        console.print(f"{what:8} {name}")


def setup_s3(
    *,
    bucket: str,
    queue: str,
    prefix: str = "",
    settings: Annotated[Settings | None, S3_SETTINGS] = None,
) -> None:
    """Wire a bucket to a queue in one step: create both if missing and send the bucket's
    ObjectCreated and ObjectRemoved notifications (under --prefix) to the queue. Safe to run again.

    Parameters
    ----------
    bucket
        Bucket name (created if it does not exist).
    queue
        SQS queue name (created if it does not exist).
    prefix
        Only objects under this prefix are announced.
    """
    setup_logging(False)
    # Imported here: boto3 (the s3 extra) is slow to import and not needed elsewhere.
    from eventpipe.intake.aws import aws_clients, setup_notifications

    s = settings_or_configured(settings)
    queue_url = setup_notifications(*aws_clients(s), bucket, queue, prefix)
    location = f"s3://{bucket}/{prefix}"
    console.print(
        f"s3://{bucket} sends ObjectCreated and ObjectRemoved under {location!r} to {queue_url}"
    )
    flags = f" --endpoint-url {s.endpoint_url}" if s.endpoint_url else ""
    console.print(f"now run:  eventpipe up --source {location} --queue {queue}{flags}")
