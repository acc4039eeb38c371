"""The names eventpipe gives things in Prefect: its events, its flows, the labels its triggers
match. A plain module (no Prefect import), so every layer can use it."""

from __future__ import annotations

FILE_LANDED = "eventpipe.file.landed"
FILE_REJECTED = "eventpipe.file.rejected"
FILE_FAILED = "eventpipe.file.failed"
FILE_RETRACTING = "eventpipe.file.retracting"
FILE_RETRACTED = "eventpipe.file.retracted"
WAKING_EVENTS = (FILE_LANDED, FILE_RETRACTING)
"""The file events that ask for a run (the deployment trigger expects them)."""
ASSET_SKIPPED = "eventpipe.asset.skipped"
ASSET_UPDATED = "eventpipe.asset.updated"
ASSET_FAILED = "eventpipe.asset.failed"
PIPELINE_COMPLETED = "eventpipe.pipeline.completed"
ASSET_STALE = "eventpipe.asset.stale"
FETCH_COMPLETED = "eventpipe.fetch.completed"
FETCH_FAILED = "eventpipe.fetch.failed"

WAKE_LABEL = "eventpipe.wake"
"""Set on the one landed event of a batch that wakes a run (see ``events.outbox.mark_wakes``)."""

MATERIALIZE_FLOW = "materialize"
"""The flow of deployment ``materialize/<pipeline>``."""
FETCH_FLOW = "fetch"
"""The flow of deployment ``fetch/<pipeline>-<fetch>``."""


def pipeline_resource_id(pipeline: str) -> str:
    return f"eventpipe.pipeline.{pipeline}"
