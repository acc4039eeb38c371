"""The outbox pump: events leave the ledger's outbox for ``POST /api/events`` and are marked
sent only after a 2xx answer, so nothing is lost while the server is down."""

from __future__ import annotations

import base64
import functools
import logging
import ssl
import threading
import time
from collections.abc import Collection
from typing import Any

import httpx

from eventpipe.core.names import FILE_LANDED, WAKE_LABEL, WAKING_EVENTS
from eventpipe.ledger import Ledger

log = logging.getLogger("eventpipe.events")


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


def mark_wakes(bodies: list[dict[str, Any]], awaited: Collection[str] = ()) -> list[dict[str, Any]]:
    """Label the last landed (or retracting) event of each pipeline in a batch as the one that
    wakes a run,
    but for the pipelines in ``awaited``, whose woken run is still on its way.

    Every file keeps its own landed event in the feed, but the deployment trigger matches only
    the wake label: a burst sent in one batch starts one run, which drains every pending file
    (the files' rows are committed before their events are sent). A run already woken and not
    started drains these files too: waking another would only queue a run that finds nothing
    (under a steady stream, one per batch, each costing the engine's ~0.7 s).
    """
    last: dict[str, int] = {}
    for index, body in enumerate(bodies):
        if body.get("event") in WAKING_EVENTS:
            pipeline = body["resource"].get("eventpipe.pipeline", "")
            if pipeline not in awaited:
                last[pipeline] = index
    wakes = set(last.values())
    return [
        {**body, "resource": {**body["resource"], WAKE_LABEL: "true"}} if i in wakes else body
        for i, body in enumerate(bodies)
    ]


def _awaited(ledger: Ledger, bodies: list[dict[str, Any]]) -> set[str]:
    """The pipelines of these landed events whose last woken run has not started yet."""
    pipelines = {
        body["resource"].get("eventpipe.pipeline", "")
        for body in bodies
        if body.get("event") == FILE_LANDED
    }
    return {p for p in pipelines if p and ledger.run_on_its_way(p)}


def flush_outbox(ledger: Ledger, sender: EventSender, batch: int = 200) -> int:
    """Send every unsent event once; returns how many were acknowledged (stops at a failure)."""
    sent = 0
    while True:
        pending = ledger.unsent(batch)
        if not pending:
            return sent
        bodies = [body for _, body, _ in pending]
        if not sender.send(mark_wakes(bodies, _awaited(ledger, bodies))):
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
