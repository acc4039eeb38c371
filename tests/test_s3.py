"""Watching a bucket: uploads to a real S3 protocol server (moto_server over HTTP) reach the
same pipeline through SQS notifications, exactly once."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from eventpipe.core.keys import asset_key
from eventpipe.intake.aws import setup_notifications
from eventpipe.orchestration.server import EmbeddedServer
from eventpipe.testing import upload, wait_for
from tests.loop_harness import Harness, running_loop

DAY1 = "day,amount\n2026-01-01,10\n2026-01-02,5\n"
DAY2 = "day,amount\n2026-01-01,7\n"


@dataclass
class Bucket:
    s3: Any
    sqs: Any
    name: str
    queue_url: str
    endpoint: str
    prefix: str = "landing/"

    @property
    def source(self) -> str:
        return f"s3://{self.name}/{self.prefix}"

    def put(self, relative: str, content: str | bytes) -> str:
        return upload(self.s3, self.name, self.prefix + relative, content)

    def uri(self, relative: str) -> str:
        return f"s3://{self.name}/{self.prefix}{relative}"

    def queued(self) -> int:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(
            attrs["ApproximateNumberOfMessagesNotVisible"]
        )


@pytest.fixture
def bucket(moto_endpoint: str) -> Bucket:
    name = "ep-" + uuid.uuid4().hex[:12]
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    sqs = boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")
    queue_url = setup_notifications(s3, sqs, name, f"{name}-q", "landing/")
    return Bucket(s3, sqs, name, queue_url, moto_endpoint)


@contextmanager
def bucket_loop(
    server: EmbeddedServer, root: Path, bucket: Bucket, name: str | None = None, **extra: Any
) -> Iterator[Harness]:
    options: dict[str, Any] = {
        "source": bucket.source,
        "queue": bucket.queue_url,
        "endpoint_url": bucket.endpoint,
        "queue_wait_seconds": 2,
        **extra,
    }
    with running_loop(server, root, name=name, **options) as harness:
        harness.extra_prefixes = (asset_key(f"s3://{bucket.name}/"),)
        yield harness


@pytest.fixture
def loop(prefect_server: EmbeddedServer, tmp_path: Path, bucket: Bucket) -> Iterator[Harness]:
    with bucket_loop(prefect_server, tmp_path, bucket) as harness:
        yield harness


def test_upload_updates_analytics_then_same_bytes_skip_and_an_overwrite_is_a_new_version(
    loop: Harness, bucket: Bucket
) -> None:
    bucket.put("orders-1.csv", DAY1)
    row = loop.wait_file_state("orders-1.csv", "done")
    assert row.uri == bucket.uri("orders-1.csv")
    assert loop.analytics("revenue_by_day")["amount"].tolist() == [10.0, 5.0]
    first = loop.asset_version("cleaned", "orders-1.csv")

    # The same bytes again: a new PUT with the same eTag, told from a repeat delivery of the
    # first by its Last-Modified, which S3 gives to the second.
    time.sleep(1.1)
    bucket.put("orders-1.csv", DAY1)
    skipped = loop.wait_events(
        lambda evs: len(evs) >= 1, "eventpipe.asset.skipped", what="the re-upload's skip"
    )
    assert "unchanged" in skipped[0]["payload"]["reason"]
    assert loop.asset_version("cleaned", "orders-1.csv") == first

    bucket.put("orders-1.csv", DAY2)  # overwritten with new bytes
    wait_for(
        lambda: loop.asset_version("cleaned", "orders-1.csv") not in (None, first),
        60,
        what="a new version of the partition",
    )
    loop.wait_idle()
    assert loop.analytics("revenue_by_day")["amount"].tolist() == [7.0]
    rows = [r for r in loop.ledger.files(loop.name) if r.relative == "orders-1.csv"]
    assert sorted(r.state for r in rows) == ["done", "done"]
    assert all(r.attempts == 1 for r in rows)

    raw_key = asset_key(bucket.uri("orders-1.csv"))
    materialized = loop.wait_events(
        lambda evs: any(e["resource"]["prefect.resource.id"] == raw_key for e in evs),
        "prefect.asset.materialization.succeeded",
        what="the raw asset keyed by its s3:// URI",
    )
    assert materialized
    assert bucket.queued() == 0  # every message deleted once recorded


def test_repeat_deliveries_multipart_and_superseded_messages_process_once(
    loop: Harness, bucket: Bucket
) -> None:
    body = bucket.put("a.csv", DAY1)
    loop.wait_file_state("a.csv", "done")
    # At-least-once delivery: the same notification arrives again.
    message = {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": bucket.name},
                    "object": {"key": bucket.prefix + "a.csv", "size": 10, "eTag": body},
                },
            }
        ]
    }
    bucket.sqs.send_message(QueueUrl=bucket.queue_url, MessageBody=json.dumps(message))
    # A late message about a version that was overwritten since.
    bucket.put("b.csv", DAY1.replace("10", "11"))
    stale = json.loads(json.dumps(message))
    stale["Records"][0]["s3"]["object"].update(key=bucket.prefix + "b.csv", eTag="0" * 32)
    bucket.sqs.send_message(QueueUrl=bucket.queue_url, MessageBody=json.dumps(stale))
    # A multipart upload: S3 sends a Put and a CompleteMultipartUpload notification.
    key = bucket.prefix + "big.csv"
    upload_id = bucket.s3.create_multipart_upload(Bucket=bucket.name, Key=key)["UploadId"]
    part = bucket.s3.upload_part(
        Bucket=bucket.name, Key=key, UploadId=upload_id, PartNumber=1, Body=DAY2.encode()
    )
    bucket.s3.complete_multipart_upload(
        Bucket=bucket.name,
        Key=key,
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )
    loop.wait_file_state("b.csv", "done")
    loop.wait_file_state("big.csv", "done")
    wait_for(lambda: bucket.queued() == 0, 60, what="the queue to drain")
    loop.wait_idle()

    rows = loop.ledger.files(loop.name)
    assert sorted(r.relative for r in rows) == ["a.csv", "b.csv", "big.csv"]
    assert all(r.state == "done" and r.attempts == 1 for r in rows)
    landed = loop.wait_events(lambda evs: len(evs) >= 3, "eventpipe.file.landed")
    assert len(landed) == 3
    # A repeat delivery is not a re-upload: no file or partition is skipped as already seen.
    # A run woken by a file an earlier run already drained claims no file and says its
    # analytics are unchanged: allowed only from a run that claimed no file at all.
    unchanged = "unchanged: same input versions and code version"
    events = loop.events("eventpipe.asset.skipped")
    skipped = [
        (e["resource"].get("prefect.resource.name"), e["payload"].get("reason"))
        for e in events
        if e["payload"].get("reason") != unchanged
    ]
    assert not skipped, skipped
    idle_skips = {_flow_run_of(e) for e in events if e["payload"].get("reason") == unchanged}
    if idle_skips:
        completed = loop.wait_events(
            lambda evs: idle_skips <= {_flow_run_of(e) for e in evs},
            "eventpipe.pipeline.completed",
        )
        claimed = {_flow_run_of(e): e["payload"]["files"] for e in completed}
        assert all(claimed[run] == 0 for run in idle_skips), claimed


def test_odd_keys_never_escape_the_data_directory(
    loop: Harness, bucket: Bucket, tmp_path: Path
) -> None:
    keys = ["../escape.csv", "../../etc/owned.csv", "/abs.csv", "odd #?&%[x].csv", "été/№1.csv"]
    for i, relative in enumerate(keys):
        bucket.put(relative, f"day,amount\n2026-02-0{i + 1},{i + 1}\n")
    wait_for(
        lambda: sum(r.state == "done" for r in loop.ledger.files(loop.name)) == len(keys),
        90,
        what="every odd key processed",
    )
    loop.wait_idle()
    assert sorted(loop.analytics("revenue_by_day")["amount"].tolist()) == [1, 2, 3, 4, 5]
    root = tmp_path.resolve()
    outside = [p for p in root.parent.rglob("*") if not p.resolve().is_relative_to(root)]
    assert not [p for p in outside if p.name in ("escape.csv", "owned.csv", "abs.csv")]
    partitions = {p.name for p in (loop.data / "processed" / loop.name / "cleaned").iterdir()}
    assert "%252E%252E%2Fescape.csv.parquet" in partitions
    assert {r.uri for r in loop.ledger.files(loop.name)} == {bucket.uri(k) for k in keys}


def test_an_unsupported_object_is_marked_in_quarantine_and_stays_in_the_bucket(
    loop: Harness, bucket: Bucket
) -> None:
    bucket.put("notes.txt", "not data")
    bucket.put("good.csv", DAY1)
    row = loop.wait_file_state("notes.txt", "rejected")
    assert "unsupported file type" in (row.reason or "")
    note = loop.data / "quarantine" / loop.name / "notes.txt.reason.json"
    assert json.loads(note.read_text())["uri"] == bucket.uri("notes.txt")
    bucket.s3.head_object(Bucket=bucket.name, Key=bucket.prefix + "notes.txt")  # still there
    loop.wait_file_state("good.csv", "done")
    loop.wait_events(lambda evs: len(evs) >= 1, "eventpipe.file.rejected")


def test_setup_is_idempotent_and_keeps_other_rules(bucket: Bucket) -> None:
    other = bucket.sqs.create_queue(QueueName=f"{bucket.name}-other")["QueueUrl"]
    other_arn = bucket.sqs.get_queue_attributes(QueueUrl=other, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    config = bucket.s3.get_bucket_notification_configuration(Bucket=bucket.name)
    config.pop("ResponseMetadata")
    config["QueueConfigurations"].append(
        {"Id": "someone-else", "QueueArn": other_arn, "Events": ["s3:ObjectRemoved:*"]}
    )
    bucket.s3.put_bucket_notification_configuration(
        Bucket=bucket.name, NotificationConfiguration=config
    )
    for _ in range(2):
        url = setup_notifications(
            bucket.s3, bucket.sqs, bucket.name, f"{bucket.name}-q", "landing/"
        )
        assert url == bucket.queue_url
    rules = bucket.s3.get_bucket_notification_configuration(Bucket=bucket.name)[
        "QueueConfigurations"
    ]
    assert sorted(r["Id"] for r in rules) == ["eventpipe-" + bucket.name + "-q", "someone-else"]


def test_credentials_from_a_prefect_block_never_show_in_logs_events_or_artifacts(
    prefect_server: EmbeddedServer,
    tmp_path: Path,
    bucket: Bucket,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prefect_aws import AwsClientParameters, AwsCredentials

    secret = "canary-" + uuid.uuid4().hex
    block = "ep-" + uuid.uuid4().hex[:8]
    AwsCredentials(
        aws_access_key_id="AKIA" + uuid.uuid4().hex[:16].upper(),
        aws_secret_access_key=secret,
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=bucket.endpoint),
    ).save(block)
    caplog.set_level("DEBUG")
    with bucket_loop(
        prefect_server, tmp_path, bucket, endpoint_url=None, aws_credentials_block=block
    ) as loop:
        bucket.put("orders.csv", DAY1)
        loop.wait_file_state("orders.csv", "done")
        loop.wait_events(lambda evs: len(evs) >= 1, "eventpipe.pipeline.completed")
        events = json.dumps(loop.events())
        run_id = loop.file("orders.csv").run_id  # type: ignore[union-attr]
    import httpx

    with httpx.Client(base_url=prefect_server.api_url, timeout=30) as client:
        artifacts = client.post(
            "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}
        ).json()
        logs = client.post(
            "/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}}
        ).json()
    assert artifacts  # run logs ship at WARNING and above here, so there may be none
    for where, text in {
        "events": events,
        "artifacts": json.dumps(artifacts),
        "run logs": json.dumps(logs),
        "local logs": caplog.text,
        "ledger": (loop.data / "ledger.sqlite").read_bytes().decode("latin-1"),
    }.items():
        assert secret not in text, where


@pytest.mark.slow
def test_a_burst_of_200_uploads_is_processed_once(loop: Harness, bucket: Bucket) -> None:
    for i in range(200):
        bucket.put(f"burst/{i:03d}.csv", f"day,amount\n2026-03-01,{i}\n")
    wait_for(
        lambda: loop.ledger.counts(loop.name).get("done", 0) == 200,
        240,
        interval=0.5,
        what="200 uploads done",
    )
    loop.wait_idle()
    rows = loop.ledger.files(loop.name)
    assert len(rows) == 200
    assert all(r.attempts == 1 for r in rows)
    assert loop.analytics("revenue_by_day")["amount"].tolist() == [float(sum(range(200)))]
    wait_for(lambda: bucket.queued() == 0, 60, what="the queue to drain")


@pytest.mark.slow
def test_uploads_while_stopped_are_processed_once_after_restart(
    prefect_server: EmbeddedServer, tmp_path: Path, bucket: Bucket
) -> None:
    with bucket_loop(prefect_server, tmp_path, bucket) as loop:
        bucket.put("before.csv", DAY1)
        loop.wait_file_state("before.csv", "done")
        name = loop.name
    for i in range(50):
        bucket.put(f"away/{i:02d}.csv", f"day,amount\n2026-04-01,{i}\n")
    with bucket_loop(prefect_server, tmp_path, bucket, name=name) as loop:
        wait_for(
            lambda: loop.ledger.counts(loop.name).get("done", 0) == 51,
            180,
            interval=0.5,
            what="the 50 uploads made while stopped",
        )
        wait_for(lambda: bucket.queued() == 0, 60, what="the queue to drain")
        loop.wait_idle()
        rows = loop.ledger.files(loop.name)
        assert len(rows) == 51
        assert all(r.state == "done" and r.attempts == 1 for r in rows)
        expected = float(sum(range(50)) + 15)
        assert loop.analytics("revenue_by_day")["amount"].sum() == expected


def test_outputs_are_published_to_a_bucket_too(
    prefect_server: EmbeddedServer, tmp_path: Path, bucket: Bucket
) -> None:
    import io

    import pandas as pd

    with bucket_loop(
        prefect_server, tmp_path, bucket, outputs=f"s3://{bucket.name}/published"
    ) as loop:
        bucket.put("orders.csv", DAY1)
        loop.wait_file_state("orders.csv", "done")
        loop.wait_idle()
        keys = {
            o["Key"]
            for o in bucket.s3.list_objects_v2(Bucket=bucket.name, Prefix="published/")["Contents"]
        }
        assert f"published/processed/{loop.name}/cleaned/orders.csv.parquet" in keys
        key = f"published/analytics/{loop.name}/revenue_by_day.parquet"
        body = bucket.s3.get_object(Bucket=bucket.name, Key=key)["Body"].read()
        published = pd.read_parquet(io.BytesIO(body))
        pd.testing.assert_frame_equal(published, loop.analytics("revenue_by_day"))


def test_with_on_delete_retract_a_deleted_object_leaves_the_outputs_even_while_stopped(
    prefect_server: EmbeddedServer, tmp_path: Path, bucket: Bucket
) -> None:
    def revenue(h: Harness) -> dict[str, float]:
        frame = h.analytics("revenue_by_day")
        return dict(zip(frame["day"], frame["amount"], strict=True))

    with bucket_loop(prefect_server, tmp_path, bucket, on_delete="retract") as loop:
        bucket.put("a.csv", DAY1)
        bucket.put("b.csv", DAY2)
        loop.wait_file_state("a.csv", "done")
        loop.wait_file_state("b.csv", "done")
        wait_for(lambda: revenue(loop) == {"2026-01-01": 17.0, "2026-01-02": 5.0}, 60)

        bucket.s3.delete_object(Bucket=bucket.name, Key=bucket.prefix + "a.csv")  # notified
        loop.wait_file_state("a.csv", "retracted")
        wait_for(lambda: revenue(loop) == {"2026-01-01": 7.0}, 60, what="a.csv retracted")
        assert loop.asset_version("cleaned", "a.csv") is None
        name = loop.name
    # Deleted while stopped, its notification lost: the listing at start finds it.
    bucket.s3.delete_object(Bucket=bucket.name, Key=bucket.prefix + "b.csv")
    bucket.sqs.purge_queue(QueueUrl=bucket.queue_url)
    with bucket_loop(prefect_server, tmp_path, bucket, name=name, on_delete="retract") as loop:
        loop.wait_file_state("b.csv", "retracted")
        wait_for(lambda: loop.asset_version("revenue_by_day") is None, 60, what="no data left")
        events = loop.wait_events(lambda found: len(found) == 2, "eventpipe.file.retracted")
        assert sorted(e["resource"]["prefect.resource.name"] for e in events) == [
            "a.csv",
            "b.csv",
        ]


def _flow_run_of(event: dict[str, Any]) -> str:
    """The flow run an eventpipe event names as related."""
    return next(
        str(r["prefect.resource.id"])
        for r in event["related"]
        if r.get("prefect.resource.role") == "flow-run"
    )
