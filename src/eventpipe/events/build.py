"""Every event eventpipe sends, built in one place.

Each builder returns ``(id, body)``: the body is what ``POST /api/events`` takes (a test checks
every builder's output against Prefect's own ``Event`` model). Event ids are deterministic where
a re-send must be harmless (the server drops a second event with the same id).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from eventpipe.core.names import (
    ASSET_SKIPPED,
    ASSET_STALE,
    FILE_LANDED,
    FILE_REJECTED,
    pipeline_resource_id,
)
from eventpipe.ledger import FileRow, Outcome

log = logging.getLogger("eventpipe.events")

_NAMESPACE = uuid.UUID("5b0d2f1e-3c55-4a8e-9d7e-2f6d1f0a9e11")


def file_resource_id(pipeline: str, uri: str) -> str:
    return f"eventpipe.file.{pipeline}.{uuid.uuid5(_NAMESPACE, pipeline + chr(10) + uri)}"


def landed_event_id(pipeline: str, uri: str, sha256: str, generation: int) -> str:
    """uuid5(pipeline, uri, sha256[, generation]): a re-send of the same landing is a no-op."""
    name = f"{pipeline}\n{uri}\n{sha256}" + (f"\n{generation}" if generation else "")
    return str(uuid.uuid5(_NAMESPACE, name))


def related_pipeline(pipeline: str) -> dict[str, str]:
    return {
        "prefect.resource.id": pipeline_resource_id(pipeline),
        "prefect.resource.role": "pipeline",
        "prefect.resource.name": pipeline,
    }


def related_flow_run(flow_run_id: str, name: str | None = None) -> dict[str, str]:
    out = {
        "prefect.resource.id": f"prefect.flow-run.{flow_run_id}",
        "prefect.resource.role": "flow-run",
    }
    if name:
        out["prefect.resource.name"] = name
    return out


def file_resource(row: FileRow) -> dict[str, str]:
    return {
        "prefect.resource.id": file_resource_id(row.pipeline, row.uri),
        "prefect.resource.name": row.relative,
        "eventpipe.pipeline": row.pipeline,
        "eventpipe.uri": row.uri,
        "eventpipe.sha256": row.sha256,
    }


def build_event(
    name: str,
    resource: dict[str, str],
    *,
    related: list[dict[str, str]] | None = None,
    payload: dict[str, Any] | None = None,
    event_id: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """An event body as the Prefect events API takes it, and its id."""
    event_id = event_id or str(uuid.uuid4())
    body = {
        "id": event_id,
        "occurred": datetime.now(UTC).isoformat(),
        "event": name,
        "resource": resource,
        "related": related or [],
        "payload": payload or {},
    }
    return event_id, body


def sighting_event(
    outcome: Outcome, row: FileRow, raw_key: str
) -> tuple[str, dict[str, Any]] | None:
    """The event for one sighting of a file: landed for work to do, skipped for none."""
    related = [related_pipeline(row.pipeline)]
    if outcome in ("new", "changed", "retry"):
        return build_event(
            FILE_LANDED,
            file_resource(row),
            related=related,
            payload={"size": row.size, "outcome": outcome, "source": row.source},
            event_id=landed_event_id(row.pipeline, row.uri, row.sha256, row.generation),
        )
    if outcome == "duplicate":
        reason = row.reason or "duplicate content"
    else:
        reason = f"unchanged: same sha256 as the version already {row.state}"
    asset = {"prefect.resource.id": raw_key, "prefect.resource.role": "asset"}
    return build_event(
        ASSET_SKIPPED,
        {**file_resource(row)},
        related=[*related, asset],
        payload={"asset": raw_key, "reason": reason, "stage": "raw"},
    )


def fetch_event(
    name: str, pipeline: str, fetch: str, flow_run_id: str, payload: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """``eventpipe.fetch.completed`` / ``.failed`` of one scheduled fetch's run."""
    return build_event(
        name,
        {
            "prefect.resource.id": f"eventpipe.fetch.{pipeline}.{fetch}",
            "prefect.resource.name": fetch,
            "eventpipe.pipeline": pipeline,
        },
        related=[related_pipeline(pipeline), related_flow_run(flow_run_id)],
        payload={"fetch": fetch, **payload},
    )


def stale_event(
    pipeline: str, name: str, key: str, version: str, waited_seconds: float, files_behind: int
) -> tuple[str, dict[str, Any]]:
    """An analytics asset is missing files that landed long ago (still pending, or failed)."""
    return build_event(
        ASSET_STALE,
        {"prefect.resource.id": key, "prefect.resource.name": name, "eventpipe.pipeline": pipeline},
        related=[related_pipeline(pipeline)],
        payload={
            "asset": key,
            "version": version,
            "waited_minutes": round(waited_seconds / 60, 1),
            "files_behind": files_behind,
        },
        event_id=str(uuid.uuid5(_NAMESPACE, f"stale\n{pipeline}\n{name}\n{version}")),
    )


def rejected_event(
    row: FileRow, reason: str, quarantined: str | None, flow_run_id: str | None = None
) -> tuple[str, dict[str, Any]]:
    related = [related_pipeline(row.pipeline)]
    if flow_run_id:
        related.append(related_flow_run(flow_run_id))
    return build_event(
        FILE_REJECTED,
        file_resource(row),
        related=related,
        payload={"reason": reason, "quarantined_to": quarantined, "size": row.size},
    )
