"""Every event eventpipe sends, built in one place.

Each builder returns ``(id, body)``: the body is what ``POST /api/events`` takes (a test checks
every builder's output against Prefect's own ``Event`` model). Event ids are deterministic where
a re-send must be harmless (the server drops a second event with the same id).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any, NotRequired, TypedDict

from eventpipe.core.names import (
    ASSET_FAILED,
    ASSET_SKIPPED,
    ASSET_STALE,
    ASSET_UPDATED,
    FILE_FAILED,
    FILE_LANDED,
    FILE_REJECTED,
    FILE_RETRACTED,
    FILE_RETRACTING,
    PIPELINE_COMPLETED,
    pipeline_resource_id,
)
from eventpipe.ledger import FileRow, Outcome

log = logging.getLogger("eventpipe.events")

_NAMESPACE = uuid.UUID("5b0d2f1e-3c55-4a8e-9d7e-2f6d1f0a9e11")

Resource = dict[str, str]
"""A Prefect resource: ``prefect.resource.id`` plus labels (related ones add a role)."""


class EventBody(TypedDict):
    """One event as ``POST /api/events`` takes it (Prefect's ``Event`` model)."""

    id: str
    occurred: str
    event: str
    resource: Resource
    related: list[Resource]
    payload: dict[str, Any]
    follows: NotRequired[str]


Built = tuple[str, EventBody]
"""An event's id and its body: what the ledger's outbox queues."""


def file_resource_id(pipeline: str, uri: str) -> str:
    return f"eventpipe.file.{pipeline}.{uuid.uuid5(_NAMESPACE, pipeline + chr(10) + uri)}"


def landed_event_id(pipeline: str, uri: str, sha256: str, generation: int) -> str:
    """uuid5(pipeline, uri, sha256[, generation]): a re-send of the same landing is a no-op."""
    name = f"{pipeline}\n{uri}\n{sha256}" + (f"\n{generation}" if generation else "")
    return str(uuid.uuid5(_NAMESPACE, name))


def related_pipeline(pipeline: str) -> Resource:
    return {
        "prefect.resource.id": pipeline_resource_id(pipeline),
        "prefect.resource.role": "pipeline",
        "prefect.resource.name": pipeline,
    }


def related_flow_run(flow_run_id: str, name: str | None = None) -> Resource:
    out = {
        "prefect.resource.id": f"prefect.flow-run.{flow_run_id}",
        "prefect.resource.role": "flow-run",
    }
    if name:
        out["prefect.resource.name"] = name
    return out


def file_resource(row: FileRow) -> Resource:
    return {
        "prefect.resource.id": file_resource_id(row.pipeline, row.uri),
        "prefect.resource.name": row.relative,
        "eventpipe.pipeline": row.pipeline,
        "eventpipe.uri": row.uri,
        "eventpipe.sha256": row.sha256,
    }


def build_event(
    name: str,
    resource: Resource,
    *,
    related: list[Resource] | None = None,
    payload: dict[str, Any] | None = None,
    event_id: str | None = None,
) -> Built:
    """An event body as the Prefect events API takes it, and its id."""
    event_id = event_id or str(uuid.uuid4())
    body: EventBody = {
        "id": event_id,
        "occurred": datetime.now(UTC).isoformat(),
        "event": name,
        "resource": resource,
        "related": related or [],
        "payload": payload or {},
    }
    return event_id, body


def sighting_event(outcome: Outcome, row: FileRow, raw_key: str) -> Built | None:
    """The event for one sighting of a file: landed for work to do, skipped for none."""
    related = [related_pipeline(row.pipeline)]
    if outcome in ("new", "changed", "retry", "restored"):
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


def retraction_event(kind: str, row: FileRow) -> Built | None:
    """The events of a retraction as the ledger records it (``Ledger.retract``):
    ``eventpipe.file.retracting`` (a run will remove its partitions), ``eventpipe.file.retracted``
    for a duplicate (nothing of it was in the outputs), and ``eventpipe.file.landed`` for a
    duplicate of it that now counts as a file of its own."""
    if kind == "landed":
        return sighting_event("new", row, "")
    if kind == "retracting":
        return build_event(
            FILE_RETRACTING,
            file_resource(row),
            related=[related_pipeline(row.pipeline)],
            payload={"reason": row.reason, "source": row.source},
            event_id=_retraction_id(row, kind),
        )
    return retracted_event(row, [], None)


def retracted_event(row: FileRow, partitions: list[dict[str, str]], run_id: str | None) -> Built:
    """``eventpipe.file.retracted``: what of this file left the outputs (each step's partition
    and the version it had: still in the version store)."""
    related = [related_pipeline(row.pipeline)]
    if run_id is not None:
        related.append(related_flow_run(run_id))
    return build_event(
        FILE_RETRACTED,
        file_resource(row),
        related=related,
        payload={"reason": row.reason, "partitions": partitions},
        event_id=_retraction_id(row, "retracted"),
    )


def _retraction_id(row: FileRow, kind: str) -> str:
    name = f"{row.pipeline}\n{row.uri}\n{row.sha256}\n{row.generation}\n{kind}"
    return str(uuid.uuid5(_NAMESPACE, name))


def fetch_event(
    name: str, pipeline: str, fetch: str, flow_run_id: str, payload: dict[str, Any]
) -> Built:
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
) -> Built:
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
) -> Built:
    related = [related_pipeline(row.pipeline)]
    if flow_run_id:
        related.append(related_flow_run(flow_run_id))
    return build_event(
        FILE_REJECTED,
        file_resource(row),
        related=related,
        payload={"reason": reason, "quarantined_to": quarantined, "size": row.size},
    )


def asset_resource(key: str, name: str, pipeline: str) -> Resource:
    return {
        "prefect.resource.id": key,
        "prefect.resource.name": name,
        "eventpipe.pipeline": pipeline,
    }


def asset_skipped_event(
    pipeline: str, run_id: str, key: str, step: str, reason: str, code_version: str
) -> Built:
    """``eventpipe.asset.skipped``: a step's asset stays as it is, and why."""
    return build_event(
        ASSET_SKIPPED,
        asset_resource(key, step, pipeline),
        related=[related_pipeline(pipeline), related_flow_run(run_id)],
        payload={"asset": key, "step": step, "reason": reason, "code_version": code_version},
    )


def asset_updated_event(
    pipeline: str,
    run_id: str,
    *,
    key: str,
    step: str,
    partition: str,
    version: str,
    rows: int,
    code_version: str,
    upstream: dict[str, str],
    upstream_keys: list[str],
) -> Built:
    """``eventpipe.asset.updated``: a new version of an asset (or of one partition)."""
    return build_event(
        ASSET_UPDATED,
        asset_resource(key, f"{step}/{partition}" if partition else step, pipeline),
        related=[
            related_pipeline(pipeline),
            related_flow_run(run_id),
            *(
                {"prefect.resource.id": k, "prefect.resource.role": "upstream"}
                for k in upstream_keys
            ),
        ],
        payload={
            "asset": key,
            "step": step,
            "partition": partition or None,
            "version": version,
            "rows": rows,
            "upstream_versions": upstream,
            "code_version": code_version,
        },
    )


def asset_failed_event(
    pipeline: str, run_id: str, key: str, step: str, reason: str, kept: str | None
) -> Built:
    """``eventpipe.asset.failed``: an analytics step raised; its asset keeps version ``kept``
    (None: it has none yet) and what reads it waits."""
    return build_event(
        ASSET_FAILED,
        asset_resource(key, step, pipeline),
        related=[related_pipeline(pipeline), related_flow_run(run_id)],
        payload={"asset": key, "step": step, "reason": reason, "kept_version": kept},
    )


def pipeline_completed_event(pipeline: str, run_id: str, payload: dict[str, Any]) -> Built:
    """``eventpipe.pipeline.completed``: what one materialize run did."""
    return build_event(
        PIPELINE_COMPLETED,
        {
            "prefect.resource.id": pipeline_resource_id(pipeline),
            "prefect.resource.name": pipeline,
            "eventpipe.pipeline": pipeline,
        },
        related=[related_flow_run(run_id)],
        payload=payload,
    )


def file_failed_event(row: FileRow, reason: str, run_id: str) -> Built:
    """``eventpipe.file.failed``: a step raised on this file (it can be retried)."""
    return build_event(
        FILE_FAILED,
        file_resource(row),
        related=[related_pipeline(row.pipeline), related_flow_run(run_id)],
        payload={"reason": reason, "attempts": row.attempts},
    )


def fetch_skipped_event(pipeline: str, fetch: str, run_id: str, reason: str) -> Built:
    """``eventpipe.asset.skipped`` of a fetch that brought nothing new."""
    resource = f"eventpipe.fetch.{pipeline}.{fetch}"
    return build_event(
        ASSET_SKIPPED,
        {
            "prefect.resource.id": resource,
            "prefect.resource.name": fetch,
            "eventpipe.pipeline": pipeline,
        },
        related=[related_pipeline(pipeline), related_flow_run(run_id)],
        payload={"asset": resource, "reason": reason, "stage": "fetch"},
    )
