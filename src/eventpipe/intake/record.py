"""Recording what a source found: each sighting goes into the ledger with its event, in one
transaction, so the outbox pump can announce it. Used by the watcher, ``eventpipe run``,
scheduled fetches and ``eventpipe retry``."""

from __future__ import annotations

from eventpipe.core.keys import asset_key
from eventpipe.core.models import Landed
from eventpipe.events.build import Built, sighting_event
from eventpipe.intake.local import FolderSource
from eventpipe.ledger import FileRow, Ledger
from eventpipe.pipeline import absolute_spec, load_pipeline
from eventpipe.settings import Settings


def record(ledger: Ledger, pipeline: str, landed: Landed) -> str:
    """Record one sighting in the ledger with its event; returns the outcome."""
    outcome, _ = ledger.record_landed(
        pipeline, landed, lambda o, r: sighting_event(o, r, asset_key(r.uri))
    )
    return outcome


def scan_once(settings: Settings) -> int:
    """Record every complete file in the inbox (``eventpipe run``); returns how many were new
    or changed."""
    pipeline = load_pipeline(absolute_spec(settings.pipeline))
    ledger = Ledger.of(settings)
    outcomes: list[str] = []
    source = FolderSource(
        settings.inbox,
        lambda landed: outcomes.append(record(ledger, pipeline.name, landed)),
        settle_seconds=settings.settle_seconds,
        max_file_bytes=settings.max_file_bytes,
    )
    source.scan()
    ledger.close()
    return sum(1 for o in outcomes if o in ("new", "changed", "retry"))


def requeue_failed(ledger: Ledger, pipeline: str) -> int:
    """Queue every failed file of ``pipeline`` again, with a fresh landed event each."""

    def event_for(row: FileRow) -> Built:
        event = sighting_event("retry", row, asset_key(row.uri))
        assert event is not None
        return event

    return len(ledger.requeue(pipeline, event_for))
