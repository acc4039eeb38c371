"""The bucket source: S3 ``ObjectCreated`` notifications read from SQS, plus a listing on start.

S3 delivers notifications at least once and in no order, and says nothing while eventpipe is
down. So each notification is checked against the ledger by (bucket, key, eTag); the object
is read with ``IfMatch`` so a message about an overwritten object is skipped as superseded;
the SQS message is deleted only after the ledger has recorded the file; and on start the
prefix is listed, so objects that arrived while eventpipe was stopped are taken once.

boto3 is used only here. Credentials come from a prefect-aws block when one is named, else
from the standard AWS chain (environment, profile, instance role).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from eventpipe.core.atomic import write_atomic
from eventpipe.core.models import Landed
from eventpipe.core.readers import suffix_of
from eventpipe.core.storage import Storage
from eventpipe.exceptions import SourceError

if TYPE_CHECKING:
    pass
from eventpipe.intake.aws import BucketLocation, _error_code

log = logging.getLogger("eventpipe.sources.s3")


@dataclass(frozen=True)
class ObjectNotice:
    """One object an S3 notification (or the listing) says exists, or, ``removed``, that a
    notification says was deleted."""

    key: str
    etag: str
    size: int
    removed: bool = False


@dataclass(frozen=True)
class SeenObject:
    """What the ledger remembers of a (uri, eTag) it recorded."""

    sha256: str
    stamp: str


def relative_key(prefix: str, key: str) -> str | None:
    """The key under ``prefix`` as a relative path that stays inside any directory it is
    joined to, or None for keys outside the prefix and for folder markers.

    S3 keys may hold ``..``, empty segments or a leading ``/``. Those segments are escaped
    (``%2E%2E``, ``%``) and ``%`` itself becomes ``%25``, so distinct keys stay distinct."""
    if not key.startswith(prefix) or key.endswith("/"):
        return None
    segments = []
    for segment in key[len(prefix) :].split("/"):
        segment = segment.replace("%", "%25").replace("\x00", "%00")
        if segment in ("", ".", ".."):
            segment = segment.replace(".", "%2E") or "%"
        segments.append(segment)
    return "/".join(segments)


def parse_notification(body: str) -> list[ObjectNotice] | None:
    """The created (and removed) objects a notification names; None for S3's
    ``s3:TestEvent`` and for messages that are not S3 notifications at all."""
    try:
        message = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(message, dict) or message.get("Event") == "s3:TestEvent":
        return None
    notices = []
    for record in message.get("Records") or []:
        name = str(record.get("eventName", ""))
        removed = name.startswith("ObjectRemoved:")
        if not name.startswith("ObjectCreated:") and not removed:
            continue
        obj = record.get("s3", {}).get("object", {})
        if "key" not in obj:
            continue
        notices.append(
            ObjectNotice(
                key=unquote_plus(obj["key"]),
                etag=str(obj.get("eTag", "")).strip('"'),
                size=int(obj.get("size", 0)),
                removed=removed,
            )
        )
    return notices


class BucketSource:
    """Calls ``on_landed`` once per new object version under ``location``, reading
    notifications from ``queue_url`` (long poll) after listing what is already there."""

    def __init__(
        self,
        location: BucketLocation,
        queue_url: str | None,
        clients: tuple[Any, Any],
        *,
        staging: Path,
        store: Storage,
        seen: Callable[[str, str], SeenObject | None],
        on_landed: Callable[[Landed], None],
        on_rejected: Callable[[Landed, str], None],
        max_file_bytes: int = 1 << 30,
        wait_seconds: int = 10,
        rescan_seconds: float = 300.0,
        on_removed: Callable[[str], None] | None = None,
        on_listed: Callable[[set[str]], None] | None = None,
    ) -> None:
        self.location = location
        self.queue_url = queue_url
        self.s3, self.sqs = clients
        self.staging = staging
        self.store = store
        self.seen = seen
        self.on_landed = on_landed
        self.on_rejected = on_rejected
        self.max_file_bytes = max_file_bytes
        self.wait_seconds = wait_seconds
        self.rescan_seconds = rescan_seconds
        self.on_removed = on_removed
        """Called with the uri of an object an ObjectRemoved notification names, once it is
        gone (not re-created meanwhile)."""
        self.on_listed = on_listed
        """Called with the uris of every object under the prefix after each full listing:
        the caller finds what was deleted while it was away."""
        self.ready = threading.Event()

    # -- the loop -------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """List the prefix, then take notifications until ``stop`` is set (relisting every
        ``rescan_seconds``, or continuously when there is no queue)."""
        self.reconcile()
        self.ready.set()
        last_scan = time.monotonic()
        while not stop.is_set():
            if self.queue_url is None:
                stop.wait(self.rescan_seconds)
                if not stop.is_set():
                    self.reconcile()
                continue
            try:
                self.poll_once()
            except Exception as exc:  # the queue or the network: log, back off, go on
                log.warning("cannot read the queue: %s", exc)
                stop.wait(5)
            if time.monotonic() - last_scan >= self.rescan_seconds:
                self.reconcile()
                last_scan = time.monotonic()

    def reconcile(self) -> int:
        """Take every object under the prefix not yet recorded in its current version (those
        that arrived while eventpipe was stopped, or whose notification was lost)."""
        taken = 0
        present: set[str] = set()
        try:
            for notice in self._list():
                present.add(self.location.uri(notice.key))
                if self.seen(self.location.uri(notice.key), notice.etag) is None:
                    taken += self.take(notice)
        except Exception as exc:
            log.warning("cannot list %s: %s", self.location, exc)
        else:
            if self.on_listed is not None:
                self.on_listed(present)
        if taken:
            log.info("%d object(s) under %s arrived while eventpipe was away", taken, self.location)
        return taken

    def _list(self) -> Iterator[ObjectNotice]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.location.bucket, Prefix=self.location.prefix
        )
        for page in pages:
            for obj in page.get("Contents", []):
                yield ObjectNotice(obj["Key"], str(obj["ETag"]).strip('"'), int(obj["Size"]))

    def poll_once(self) -> int:
        """One long poll; each message is deleted once every object it names is recorded."""
        reply = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=self.wait_seconds,
        )
        messages = reply.get("Messages", [])
        for message in messages:
            notices = parse_notification(message.get("Body", ""))
            try:
                for notice in notices or []:
                    self.take_notice(notice)
            except Exception as exc:
                # Not deleted: SQS shows the message again after its visibility timeout.
                log.warning("will retry a notification: %s", exc)
                continue
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return len(messages)

    # -- one object -----------------------------------------------------------------------

    def take_notice(self, notice: ObjectNotice) -> int:
        """A notification: new object versions are taken; a repeat delivery of one already
        recorded is dropped; the same bytes uploaded again are reported as unchanged."""
        uri = self.location.uri(notice.key)
        if notice.removed:
            if self.on_removed is not None and self._gone(notice):
                self.on_removed(uri)
            return 0
        known = self.seen(uri, notice.etag)
        if known is None:
            return self.take(notice)
        relative = relative_key(self.location.prefix, notice.key)
        suffix = suffix_of(notice.key)
        if relative is None or suffix is None or known.sha256.startswith("unread-"):
            return 0  # outside the prefix, or refused before it was read
        stamp = self._head_stamp(notice)
        if stamp is None or stamp == known.stamp:
            return 0  # superseded, or a repeat delivery of the version already recorded
        self.on_landed(
            Landed(
                uri=uri,
                relative=relative,
                size=notice.size,
                fingerprint=known.sha256,
                source="s3",
                local_path=self.store.raw_snapshot_path(known.sha256, suffix),
                tag=notice.etag,
                stamp=stamp,
            )
        )
        return 0

    def take(self, notice: ObjectNotice) -> int:
        """Read one object version into the raw store and hand it on; 1 if it was taken."""
        relative = relative_key(self.location.prefix, notice.key)
        if relative is None:
            return 0
        uri = self.location.uri(notice.key)
        base = Landed(
            uri=uri,
            relative=relative,
            size=notice.size,
            fingerprint=f"unread-{notice.etag}",
            source="s3",
            tag=notice.etag,
        )
        suffix = suffix_of(notice.key)
        if suffix is None:
            self.on_rejected(
                base, "unsupported file type (use .csv, .csv.gz, .json, .jsonl or .parquet)"
            )
            return 0
        if notice.size > self.max_file_bytes:
            self.on_rejected(
                base, f"file is {notice.size} bytes, over the limit of {self.max_file_bytes}"
            )
            return 0
        fetched = self._fetch(notice, suffix)
        if fetched is None:
            return 0
        sha256, size, stamp, snapshot = fetched
        self.on_landed(
            Landed(
                uri=uri,
                relative=relative,
                size=size,
                fingerprint=sha256,
                source="s3",
                local_path=snapshot,
                tag=notice.etag,
                stamp=stamp,
            )
        )
        return 1

    def _gone(self, notice: ObjectNotice) -> bool:
        """Whether the object is still deleted (notifications come unordered: one uploaded
        again since is taken by its own ObjectCreated)."""
        try:
            self.s3.head_object(Bucket=self.location.bucket, Key=notice.key)
        except Exception as exc:
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                return True
            raise  # the network: the message is read again later
        return False

    def _head_stamp(self, notice: ObjectNotice) -> str | None:
        try:
            head = self.s3.head_object(
                Bucket=self.location.bucket, Key=notice.key, IfMatch=f'"{notice.etag}"'
            )
        except Exception as exc:
            if _error_code(exc) in ("412", "PreconditionFailed", "404", "NoSuchKey"):
                return None
            raise
        return _stamp(head["LastModified"])

    def _fetch(self, notice: ObjectNotice, suffix: str) -> tuple[str, int, str, str] | None:
        """Stream the object (only the version the notice names) into the raw store; returns
        its sha256, size, LastModified and the snapshot's location."""
        try:
            reply = self.s3.get_object(
                Bucket=self.location.bucket, Key=notice.key, IfMatch=f'"{notice.etag}"'
            )
        except Exception as exc:
            code = _error_code(exc)
            if code in ("412", "PreconditionFailed"):
                log.info("%s was overwritten since; its newer version lands on its own", notice.key)
                return None
            if code in ("404", "NoSuchKey"):
                log.info("%s was deleted before it could be read", notice.key)
                return None
            raise SourceError(
                f"cannot read s3://{self.location.bucket}/{notice.key}: {exc}"
            ) from exc

        def stream(tmp: Path) -> tuple[str, int]:
            digest, size = hashlib.sha256(), 0
            with tmp.open("wb") as out:
                for chunk in reply["Body"].iter_chunks(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            return digest.hexdigest(), size

        # Named after its content, so an object seen twice is stored once.
        target, (sha256, size) = write_atomic(
            self.staging,
            stream,
            lambda done: f"{done[0]}{suffix}",
            suffix=suffix,
            keep_existing=True,
        )
        snapshot = self.store.raw_snapshot_path(sha256, suffix)
        if snapshot != str(target):  # staged on this host, kept in the data dir's bucket
            try:
                self.store.snapshot_raw(target, sha256, suffix)
            finally:
                target.unlink(missing_ok=True)
        return sha256, size, _stamp(reply["LastModified"]), snapshot


def _stamp(value: datetime | str) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)
