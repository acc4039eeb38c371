"""AWS the Prefect way: clients from a prefect-aws ``AwsCredentials`` or ``S3Bucket`` block, or
from the standard chain (environment, profile, instance role); where a bucket source looks;
wiring a bucket's notifications to a queue (``eventpipe setup-s3``). boto3 and prefect-aws are
imported only when used, with an install hint when the ``s3`` extra is missing."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from eventpipe.core.fs import DataStore, parse_data
from eventpipe.exceptions import ConfigError, SourceError
from eventpipe.settings import Settings

log = logging.getLogger("eventpipe.intake.s3")


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


STORE_OPTIONS = ("endpoint_url", "region", "aws_credentials_block", "s3_bucket_block")
"""Settings a run needs to reach a bucket data dir: names and URLs, never a secret (they are
deployment parameters)."""


def store_options(settings: Settings) -> dict[str, str] | None:
    """How a run reaches ``settings``' data dir, when it is a bucket (else None)."""
    if not settings.data_in_bucket:
        return None
    values = {name: getattr(settings, name) for name in STORE_OPTIONS}
    return {k: str(v) for k, v in values.items() if v}


def open_data_store(data: str, options: dict[str, str] | None = None) -> DataStore:
    """The store of the data dir ``data`` (a path or ``s3://bucket/prefix``). For a bucket,
    credentials come the Prefect way, as for the source: the ``S3Bucket`` or ``AwsCredentials``
    block ``options`` names, else the standard chain; its endpoint is ``endpoint_url``, else
    the block's, else ``AWS_ENDPOINT_URL``."""
    if not data.startswith("s3://"):
        return parse_data(data)
    options = options or {}
    credentials: Any = None
    endpoint_url, region = options.get("endpoint_url"), options.get("region")
    if options.get("s3_bucket_block") or options.get("aws_credentials_block"):
        try:
            from prefect_aws import AwsCredentials, S3Bucket
        except ImportError as exc:  # pragma: no cover
            raise ConfigError(INSTALL_HINT) from exc
        if options.get("s3_bucket_block"):
            credentials = _load_block(S3Bucket, options["s3_bucket_block"]).credentials
        else:
            credentials = _load_block(AwsCredentials, options["aws_credentials_block"])
        client_parameters = getattr(credentials, "aws_client_parameters", None)
        if client_parameters is not None:
            block_params = client_parameters.get_params_override()
            endpoint_url = endpoint_url or block_params.get("endpoint_url")
        region = region or getattr(credentials, "region_name", None)
    return parse_data(data, endpoint_url=endpoint_url, region=region, credentials=credentials)


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


def setup_notifications(s3: Any, sqs: Any, bucket: str, queue: str, prefix: str = "") -> str:
    """Create ``bucket`` and ``queue`` if missing, let S3 send to the queue, and point the
    bucket's ObjectCreated and ObjectRemoved notifications under ``prefix`` at it.
    Idempotent: the bucket's other notification rules are kept, and eventpipe's own rule is
    replaced, not added."""
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
        "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
    }
    if prefix:
        rule["Filter"] = {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}}
    current["QueueConfigurations"] = [*rules, rule]
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=current)
    return str(queue_url)
