"""eventpipe's events: how they are named and built, and the outbox pump that delivers them.

Every event is first committed to the ledger's outbox, then POSTed to ``/api/events`` and
marked sent only after a 2xx answer. Event ids are deterministic where a re-send must be
harmless (the server drops a second event with the same id).
"""

from __future__ import annotations

import base64
import functools
import logging
import ssl
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx

from eventpipe.ledger import FileRow, Ledger, Outcome

log = logging.getLogger("eventpipe.events")

FILE_LANDED = "eventpipe.file.landed"
FILE_REJECTED = "eventpipe.file.rejected"
FILE_FAILED = "eventpipe.file.failed"
ASSET_SKIPPED = "eventpipe.asset.skipped"
ASSET_UPDATED = "eventpipe.asset.updated"
PIPELINE_COMPLETED = "eventpipe.pipeline.completed"
ASSET_STALE = "eventpipe.asset.stale"
FETCH_COMPLETED = "eventpipe.fetch.completed"
FETCH_FAILED = "eventpipe.fetch.failed"

_NAMESPACE = uuid.UUID("5b0d2f1e-3c55-4a8e-9d7e-2f6d1f0a9e11")


def pipeline_resource_id(pipeline: str) -> str:
    return f"eventpipe.pipeline.{pipeline}"


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


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """httpx's default TLS context, built once: building one loads the CA bundle (~0.1 s),
    which every new ``httpx.Client`` would otherwise pay."""
    return httpx.create_ssl_context()


class EventSender:
    """POSTs batches of events to the Prefect server and reports whether it acknowledged them."""

    def __init__(
        self,
        api_url: str,
        auth_string: str | None = None,
        api_key: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        headers = {}
        if auth_string:
            headers["Authorization"] = "Basic " + base64.b64encode(auth_string.encode()).decode()
        elif api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(
            base_url=api_url.rstrip("/") + "/",
            headers=headers,
            timeout=timeout,
            verify=ssl_context(),
        )

    @classmethod
    def from_prefect_settings(cls) -> EventSender:
        from prefect.settings import get_current_settings

        api = get_current_settings().api
        if not api.url:
            raise RuntimeError("PREFECT_API_URL is not set; start a server or pass --api-url")
        secret_auth = api.auth_string.get_secret_value() if api.auth_string else None
        key = api.key.get_secret_value() if api.key else None
        return cls(api.url, auth_string=secret_auth, api_key=key)

    def send(self, bodies: list[dict[str, Any]]) -> bool:
        try:
            response = self._client.post("events", json=bodies)
        except httpx.HTTPError as exc:
            log.warning("event delivery failed (%s); events stay in the outbox", type(exc).__name__)
            return False
        if response.is_success:
            return True
        log.warning("server refused events: HTTP %s; they stay in the outbox", response.status_code)
        return False

    def close(self) -> None:
        self._client.close()


WAKE_LABEL = "eventpipe.wake"


def mark_wakes(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Label the last landed event of each pipeline in a batch as the one that wakes a run.

    Every file keeps its own landed event in the feed, but the deployment trigger matches only
    the wake label: a burst sent in one batch starts one run, which drains every pending file
    (the files' rows are committed before their events are sent).
    """
    last: dict[str, int] = {}
    for index, body in enumerate(bodies):
        if body.get("event") == FILE_LANDED:
            last[body["resource"].get("eventpipe.pipeline", "")] = index
    wakes = set(last.values())
    return [
        {**body, "resource": {**body["resource"], WAKE_LABEL: "true"}} if i in wakes else body
        for i, body in enumerate(bodies)
    ]


def deliver_now(ledger: Ledger) -> None:
    """Send what a run queued now, at its end; whatever fails stays in the outbox for the
    pump."""
    try:
        sender = EventSender.from_prefect_settings()
        try:
            flush_outbox(ledger, sender)
        finally:
            sender.close()
    except Exception:
        log.warning("could not deliver events now; they stay in the outbox", exc_info=True)


def flush_outbox(ledger: Ledger, sender: EventSender, batch: int = 200) -> int:
    """Send every unsent event once; returns how many were acknowledged (stops at a failure)."""
    sent = 0
    while True:
        pending = ledger.unsent(batch)
        if not pending:
            return sent
        if not sender.send(mark_wakes([body for _, body, _ in pending])):
            ledger.mark_attempt([event_id for event_id, _, _ in pending])
            return -1 if sent == 0 else sent
        ledger.mark_sent([event_id for event_id, _, _ in pending])
        log.debug("sent %d event(s)", len(pending))
        sent += len(pending)
        if len(pending) < batch:
            return sent


class OutboxPump:
    """A thread that drains the outbox whenever it is poked, retrying with backoff.

    Nothing is lost when the server is down: rows wait in SQLite until it answers again. The
    first event after a quiet spell goes out at once; while events keep coming, they are sent
    at most every ``gather_seconds``, so a burst becomes a few batches and wakes a few runs.
    """

    def __init__(
        self,
        ledger: Ledger,
        sender: EventSender,
        idle_seconds: float = 1.0,
        max_backoff: float = 10.0,
        gather_seconds: float = 0.5,
    ) -> None:
        self._gather = gather_seconds
        self._ledger = ledger
        self._sender = sender
        self._idle = idle_seconds
        self._max_backoff = max_backoff
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="eventpipe-outbox", daemon=True)

    def start(self) -> OutboxPump:
        self._thread.start()
        return self

    def poke(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        backoff = 0.25
        last_sent = 0.0
        while not self._stop.is_set():
            since = time.monotonic() - last_sent
            if since < self._gather:
                self._stop.wait(self._gather - since)
            self._wake.clear()
            try:
                result = flush_outbox(self._ledger, self._sender)
                if result > 0:
                    last_sent = time.monotonic()
            except Exception:  # the pump must outlive any single failure
                log.exception("outbox flush failed")
                result = -1
            if result < 0:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            backoff = 0.25
            self._wake.wait(self._idle)
        try:
            flush_outbox(self._ledger, self._sender)
        except Exception:
            log.debug("final outbox flush failed", exc_info=True)
        self._sender.close()
        self._ledger.close()
