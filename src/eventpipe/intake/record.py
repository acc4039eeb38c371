"""Recording what a source found: each sighting goes into the ledger with its event, in one
transaction, so the outbox pump can announce it. Used by the watcher, ``eventpipe run``,
scheduled fetches and ``eventpipe retry``."""

from __future__ import annotations

import os
from pathlib import Path

from eventpipe.core.keys import asset_key
from eventpipe.core.models import Landed
from eventpipe.events.build import Built, retraction_event, sighting_event
from eventpipe.intake.local import FolderSource
from eventpipe.ledger import DELETED, FileRow, Ledger
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


def retract(ledger: Ledger, pipeline: str, uri: str, reason: str, *, busy: bool = False) -> bool:
    """Retract the newest version of ``uri`` (``Ledger.retract``) with its events; whether
    there was something to retract."""
    return (
        ledger.retract(
            pipeline, uri, reason, retraction_event, busy=busy, twin_present=_still_there
        )
        is not None
    )


def _still_there(row: FileRow) -> bool:
    """Whether a duplicate's file is still in its source (an object: assumed; the listing
    retracts it otherwise)."""
    if row.source != "local":
        return True
    return row.local_path is not None and os.path.lexists(row.local_path)


SWEPT_STATES = ("landed", "sent", "done", "failed", "skipped")
"""What a deleted file is retracted from: not ``processing`` (a run may be moving it to
quarantine: the next sweep, after the run, decides) nor ``rejected`` (nothing of it is in the
outputs)."""


def retract_deleted(ledger: Ledger, pipeline: str, inbox: Path) -> list[str]:
    """Retract every file of ``inbox`` the ledger has seen and that is no longer there (deleted
    while the watcher ran or while it was down); the files retracted (inbox-relative)."""
    root = str(inbox.resolve()) + os.sep
    gone = [
        row
        for row in ledger.latest_files(pipeline)
        if row.source == "local"
        and row.state in SWEPT_STATES
        and row.local_path is not None
        and row.local_path.startswith(root)
        and not os.path.lexists(row.local_path)
    ]
    return [row.relative for row in gone if retract(ledger, pipeline, row.uri, DELETED)]
