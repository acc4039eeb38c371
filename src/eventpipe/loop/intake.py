"""The intake service: the folder watcher or the bucket source in a thread of its own, each
file it finds recorded in the ledger with its event, each refusal quarantined with a reason."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from eventpipe.core.models import Landed
from eventpipe.core.readers import suffix_of
from eventpipe.core.storage import Storage
from eventpipe.events.build import rejected_event
from eventpipe.intake.aws import (
    aws_clients,
    bucket_location,
    open_data_store,
    resolve_queue,
    store_options,
)
from eventpipe.intake.local import FolderSource, Rejected
from eventpipe.intake.record import SWEPT_STATES, record, retract, retract_deleted
from eventpipe.intake.s3 import BucketSource, SeenObject
from eventpipe.ledger import DELETED, Ledger
from eventpipe.settings import Settings, cache_dir

log = logging.getLogger("eventpipe")


class Intake:
    """Watches the inbox (or the bucket) of ``settings`` for pipeline ``pipeline``."""

    def __init__(
        self,
        settings: Settings,
        *,
        pipeline: str,
        ledger: Ledger,
        poke: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.ledger = ledger
        self.poke = poke
        """Wakes the outbox pump: a recorded file's event goes out at once."""
        self._stop = stop
        self._thread: threading.Thread | None = None
        self.store = Storage(open_data_store(settings.data, store_options(settings)), pipeline)

    def start(self, ready_timeout: float = 60) -> Intake:
        """Start watching; return once the first scan (or listing) is done."""
        s = self.settings
        source = self._bucket_source() if s.watches_bucket else self._folder_source()
        self._thread = threading.Thread(
            target=source.run, args=(self._stop,), name="eventpipe-watch", daemon=True
        )
        self._thread.start()
        source.ready.wait(ready_timeout)
        return self

    def join(self) -> None:
        """After ``stop`` is set. A bucket source may sit in a long poll; what it takes after
        this is durable in the ledger and its message is redelivered if not yet deleted."""
        if self._thread is not None:
            self._thread.join(2 if self.settings.watches_bucket else 10)

    def _folder_source(self) -> FolderSource:
        s = self.settings
        return FolderSource(
            s.inbox,
            self.on_landed,
            self.on_rejected,
            settle_seconds=s.settle_seconds,
            max_file_bytes=s.max_file_bytes,
            rescan_seconds=s.rescan_seconds,
            on_deleted=self.retract_deleted if s.on_delete == "retract" else None,
        )

    def retract_deleted(self) -> None:
        """``on_delete = retract``: files gone from the inbox leave the outputs."""
        gone = retract_deleted(self.ledger, self.pipeline, self.settings.inbox)
        for relative in gone:
            log.info("%s: deleted from the inbox; retracting its partitions", relative)
        if gone:
            self.poke()

    def _bucket_source(self) -> BucketSource:
        s, name, ledger = self.settings, self.pipeline, self.ledger

        def seen(uri: str, tag: str) -> SeenObject | None:
            found = ledger.seen_object(name, uri, tag)
            return SeenObject(*found) if found else None

        clients = aws_clients(s)
        return BucketSource(
            bucket_location(s),
            resolve_queue(clients[1], s.queue),
            clients,
            # A local data dir stages into its raw store; a bucket's through the local cache.
            staging=cache_dir(s.home) / "staging" / name
            if s.data_in_bucket
            else s.data_dir / "raw" / name,
            store=self.store,
            seen=seen,
            on_landed=self.on_landed,
            on_rejected=self.on_bucket_rejected,
            max_file_bytes=s.max_file_bytes,
            wait_seconds=s.queue_wait_seconds,
            rescan_seconds=max(s.rescan_seconds, 60.0),
            on_removed=self.retract_removed if s.on_delete == "retract" else None,
            on_listed=self.retract_unlisted if s.on_delete == "retract" else None,
        )

    def retract_removed(self, uri: str) -> None:
        """``on_delete = retract``: an object deleted from the bucket leaves the outputs."""
        if retract(self.ledger, self.pipeline, uri, DELETED):
            log.info("%s: deleted from the bucket; retracting its partitions", uri)
            self.poke()

    def retract_unlisted(self, present: set[str]) -> None:
        """After a listing: objects recorded but no longer there were deleted meanwhile."""
        for row in self.ledger.latest_files(self.pipeline):
            if row.source == "s3" and row.state in SWEPT_STATES and row.uri not in present:
                self.retract_removed(row.uri)

    def on_landed(self, landed: Landed) -> None:
        in_bucket = self.store.local_root is None
        if landed.source == "local" and in_bucket and not self._snapshot(landed):
            return
        outcome = record(self.ledger, self.pipeline, landed)
        log.info("%s: %s", landed.relative, outcome)
        self.poke()

    def _snapshot(self, landed: Landed) -> bool:
        """With the data in a bucket, a run may execute on another host, where this inbox is
        not: put the file's raw snapshot in the bucket before it is recorded, so runs read it
        there. False when the file changed since it was hashed (its next event takes it)."""
        suffix = suffix_of(landed.relative)
        if suffix is None or landed.local_path is None:
            return True  # refused by the run, as for a local data dir
        try:
            body = Path(landed.local_path).read_bytes()
        except OSError as exc:
            log.warning("cannot read %s: %s", landed.relative, exc)
            return False
        if hashlib.sha256(body).hexdigest() != landed.fingerprint:
            return False
        self.store.snapshot_raw(body, landed.fingerprint, suffix)
        return True

    def on_rejected(self, rejected: Rejected) -> None:
        """Refused before reading (unsupported type, too large, a link out of the inbox): move
        it to quarantine, record it and say why."""
        stat = rejected.path.lstat()
        landed = Landed(
            uri="file://" + str(rejected.path),  # the link itself, never its target
            relative=rejected.relative,
            size=stat.st_size,
            fingerprint=f"unread-{stat.st_size}-{stat.st_mtime_ns}",
            source="local",
            local_path=str(rejected.path),
        )
        target = self.store.quarantine(rejected.path, rejected.relative, rejected.reason, None)
        self.ledger.record_rejected(
            self.pipeline,
            landed,
            rejected.reason,
            lambda row: rejected_event(row, rejected.reason, str(target)),
        )
        log.warning("quarantined %s: %s", rejected.relative, rejected.reason)
        self.poke()

    def on_bucket_rejected(self, landed: Landed, reason: str) -> None:
        """Refused before reading: the object stays in the bucket; quarantine holds a note."""
        note = self.store.quarantine_note(landed.relative, reason, None, landed.uri)
        self.ledger.record_rejected(
            self.pipeline, landed, reason, lambda row: rejected_event(row, reason, str(note))
        )
        log.warning("rejected %s: %s", landed.uri, reason)
        self.poke()
