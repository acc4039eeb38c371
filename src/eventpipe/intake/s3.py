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
from urllib.parse import unquote_plus, urlsplit

from eventpipe.core.models import Landed
from eventpipe.core.readers import suffix_of
from eventpipe.core.storage import write_atomic
from eventpipe.exceptions import ConfigError, SourceError

if TYPE_CHECKING:
    from eventpipe.settings import Settings

log = logging.getLogger("eventpipe.sources.s3")

INSTALL_HINT = "the S3 source needs boto3 and prefect-aws: pip install 'eventpipe[s3]'"
QUEUE_POLICY_SID = "eventpipe-s3-notifications"


@dataclass(frozen=True)
class BucketLocation:
    """``s3://bucket/prefix``: where the source looks."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> BucketLocation:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigError(f"{url!r} is not an S3 location; write it as s3://bucket/prefix")
        prefix = parts.path.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return cls(parts.netloc, prefix)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def __str__(self) -> str:
        return self.uri(self.prefix)


@dataclass(frozen=True)
class ObjectNotice:
    """One object an S3 notification (or the listing) says exists."""

    key: str
    etag: str
    size: int


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
    """The created objects a notification names; None for S3's ``s3:TestEvent`` and for
    messages that are not S3 notifications at all."""
    try:
        message = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(message, dict) or message.get("Event") == "s3:TestEvent":
        return None
    notices = []
    for record in message.get("Records") or []:
        if not str(record.get("eventName", "")).startswith("ObjectCreated:"):
            continue
        obj = record.get("s3", {}).get("object", {})
        if "key" not in obj:
            continue
        notices.append(
            ObjectNotice(
                key=unquote_plus(obj["key"]),
                etag=str(obj.get("eTag", "")).strip('"'),
                size=int(obj.get("size", 0)),
            )
        )
    return notices


def _boto3() -> Any:
    try:
        import boto3
    except ImportError as exc:  # pragma: no cover - the dev environment has the extra
        raise ConfigError(INSTALL_HINT) from exc
    return boto3


def _load_block(block_type: Any, name: str) -> Any:
    """A saved prefect-aws block, loaded synchronously (this runs in the source's thread)."""
    try:
        return block_type.load(name, _sync=True)
    except ValueError as exc:
        raise ConfigError(
            f"no {block_type.__name__} block named {name!r} on the Prefect server: {exc}"
        ) from exc


def aws_clients(settings: Settings) -> tuple[Any, Any]:
    """(s3, sqs) clients, configured the Prefect way: an ``S3Bucket`` or ``AwsCredentials``
    block by name, else the standard AWS chain; ``endpoint_url`` overrides either."""
    params: dict[str, Any] = {}
    if settings.s3_bucket_block or settings.aws_credentials_block:
        try:
            from prefect_aws import AwsCredentials, S3Bucket
        except ImportError as exc:  # pragma: no cover
            raise ConfigError(INSTALL_HINT) from exc
        if settings.s3_bucket_block:
            credentials = _load_block(S3Bucket, settings.s3_bucket_block).credentials
        else:
            credentials = _load_block(AwsCredentials, str(settings.aws_credentials_block))
        session = credentials.get_boto3_session()
        client_parameters = getattr(credentials, "aws_client_parameters", None)
        if client_parameters is not None:
            params.update(client_parameters.get_params_override())
    else:
        session = _boto3().Session(region_name=settings.region)
    if settings.endpoint_url:
        params["endpoint_url"] = settings.endpoint_url
    if settings.region and "region_name" not in params and session.region_name is None:
        params["region_name"] = settings.region
    return session.client("s3", **params), session.client("sqs", **params)


def bucket_location(settings: Settings) -> BucketLocation:
    """The ``--source`` location, or the bucket and folder of the ``S3Bucket`` block."""
    if settings.source:
        return BucketLocation.parse(settings.source)
    if settings.s3_bucket_block:
        from prefect_aws import S3Bucket

        block = _load_block(S3Bucket, settings.s3_bucket_block)
        return BucketLocation.parse(f"s3://{block.bucket_name}/{block.bucket_folder}")
    raise ConfigError("no bucket given: pass --source s3://bucket/prefix or --s3-bucket-block")


def resolve_queue(sqs: Any, queue: str | None) -> str | None:
    """A queue URL from a URL or a queue name."""
    if queue is None or queue.startswith(("https://", "http://")):
        return queue
    try:
        return str(sqs.get_queue_url(QueueName=queue)["QueueUrl"])
    except Exception as exc:
        raise ConfigError(
            f"no SQS queue named {queue!r}: {_error_code(exc) or exc}; "
            "create it with `eventpipe setup-s3`"
        ) from exc


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


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
        snapshot_path: Callable[[str, str], Path],
        seen: Callable[[str, str], SeenObject | None],
        on_landed: Callable[[Landed], None],
        on_rejected: Callable[[Landed, str], None],
        max_file_bytes: int = 1 << 30,
        wait_seconds: int = 10,
        rescan_seconds: float = 300.0,
    ) -> None:
        self.location = location
        self.queue_url = queue_url
        self.s3, self.sqs = clients
        self.staging = staging
        self.snapshot_path = snapshot_path
        self.seen = seen
        self.on_landed = on_landed
        self.on_rejected = on_rejected
        self.max_file_bytes = max_file_bytes
        self.wait_seconds = wait_seconds
        self.rescan_seconds = rescan_seconds
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
        try:
            for notice in self._list():
                if self.seen(self.location.uri(notice.key), notice.etag) is None:
                    taken += self.take(notice)
        except Exception as exc:
            log.warning("cannot list %s: %s", self.location, exc)
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
                local_path=str(self.snapshot_path(known.sha256, suffix)),
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
        sha256, size, stamp, path = fetched
        self.on_landed(
            Landed(
                uri=uri,
                relative=relative,
                size=size,
                fingerprint=sha256,
                source="s3",
                local_path=str(path),
                tag=notice.etag,
                stamp=stamp,
            )
        )
        return 1

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

    def _fetch(self, notice: ObjectNotice, suffix: str) -> tuple[str, int, str, Path] | None:
        """Stream the object (only the version the notice names) into the raw store."""
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
            lambda done: self.snapshot_path(done[0], suffix).name,
            suffix=suffix,
            keep_existing=True,
        )
        return sha256, size, _stamp(reply["LastModified"]), target


def _stamp(value: datetime | str) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def setup_notifications(s3: Any, sqs: Any, bucket: str, queue: str, prefix: str = "") -> str:
    """Create ``bucket`` and ``queue`` if missing, let S3 send to the queue, and point the
    bucket's ObjectCreated notifications under ``prefix`` at it. Idempotent: the bucket's
    other notification rules are kept, and eventpipe's own rule is replaced, not added."""
    try:
        s3.head_bucket(Bucket=bucket)
    except Exception as exc:
        if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise SourceError(f"cannot reach bucket {bucket!r}: {exc}") from exc
        region = s3.meta.region_name
        options = (
            {}
            if region in (None, "us-east-1")
            else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        )
        s3.create_bucket(Bucket=bucket, **options)
    queue_url = sqs.create_queue(QueueName=queue)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": QUEUE_POLICY_SID,
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}},
            }
        ],
    }
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(policy)})
    rule_id = f"eventpipe-{queue}"
    current = s3.get_bucket_notification_configuration(Bucket=bucket)
    current.pop("ResponseMetadata", None)
    rules = [r for r in current.get("QueueConfigurations", []) if r.get("Id") != rule_id]
    rule: dict[str, Any] = {
        "Id": rule_id,
        "QueueArn": queue_arn,
        "Events": ["s3:ObjectCreated:*"],
    }
    if prefix:
        rule["Filter"] = {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}}
    current["QueueConfigurations"] = [*rules, rule]
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=current)
    return str(queue_url)


class BucketPublisher:
    """Publishes current outputs under ``s3://bucket/prefix`` with the same relative paths
    they have under the data dir. A PUT is atomic: readers see the old object or the new one,
    never part of it."""

    def __init__(self, location: BucketLocation, s3: Any, data: Path) -> None:
        self.location = location
        self.s3 = s3
        self.data = data.resolve()

    @classmethod
    def from_options(cls, options: dict[str, str], data: Path) -> BucketPublisher:
        from eventpipe.settings import Settings

        settings = Settings.model_validate({k: v for k, v in options.items() if k != "uri"})
        s3, _ = aws_clients(settings)
        return cls(BucketLocation.parse(options["uri"]), s3, data)

    def key(self, path: Path) -> str:
        return self.location.prefix + path.resolve().relative_to(self.data).as_posix()

    def __call__(self, path: Path) -> str:
        """Upload ``path``; returns its ``s3://`` URI."""
        key = self.key(path)
        self.s3.upload_file(str(path), self.location.bucket, key)
        return self.location.uri(key)
