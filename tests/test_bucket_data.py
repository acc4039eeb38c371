"""`--data s3://bucket/prefix`: every object of the outputs contract lives in the bucket (moto
over HTTP), at the same relative paths as in a local data dir, with the ledger in PostgreSQL;
nothing of the pipeline is written to the local disk but the disposable cache under home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventpipe.core.keys import asset_key
from eventpipe.exceptions import ConfigError
from eventpipe.intake.aws import store_options
from eventpipe.ledger import Ledger, ledger_url
from eventpipe.orchestration.server import EmbeddedServer, free_port
from eventpipe.settings import Settings
from eventpipe.testing import Background, DataBucket, fresh_database, wait_for
from tests.loop_harness import Harness, running_loop

DAY1 = "day,amount\n2026-01-01,10\n2026-01-02,5\n"
DAY2 = "day,amount\n2026-01-01,7\n"
PIPELINE_FILES = ("*.parquet", "*.sqlite*", "*.csv", "*.csv.gz", "*.json", "*.jsonl")


def pipeline_files(root: Path) -> list[Path]:
    """Files of a pipeline's state under ``root`` (data, snapshots, ledger, inputs)."""
    return sorted(p for pattern in PIPELINE_FILES for p in root.rglob(pattern))


@pytest.fixture
def data_bucket(moto_endpoint: str) -> DataBucket:
    return DataBucket(moto_endpoint)


@pytest.fixture
def bucket_loop(
    prefect_server: EmbeddedServer,
    tmp_path: Path,
    data_bucket: DataBucket,
    postgres_url: str,
) -> Iterator[Harness]:
    ledger = fresh_database(postgres_url, "bucket")
    with running_loop(
        prefect_server,
        tmp_path,
        data=data_bucket.uri,
        ledger=ledger,
        endpoint_url=data_bucket.endpoint,
    ) as harness:
        harness.extra_prefixes = (asset_key(f"s3://{data_bucket.name}/"),)
        yield harness


def test_bucket_data_without_a_ledger_database_is_a_clear_config_error() -> None:
    with pytest.raises(ConfigError, match="a bucket cannot hold the ledger"):
        Settings(data="s3://results/sales")
    with pytest.raises(ConfigError, match="drop outputs"):
        Settings(
            data="s3://results/sales",
            ledger="postgresql+psycopg://u:p@db/eventpipe",
            outputs="s3://copies/x",
        )
    with pytest.raises(ConfigError, match="a bucket cannot hold the ledger"):
        Ledger.open("s3://results/sales", None)


def test_bucket_data_is_kept_as_given_and_runs_get_names_not_secrets() -> None:
    settings = Settings(
        data="s3://results/sales",
        ledger="postgresql+psycopg://u:secret@db/eventpipe",
        endpoint_url="http://minio:9000",
        aws_credentials_block="prod-aws",
    ).resolved()
    assert settings.data == "s3://results/sales"
    assert settings.data_in_bucket
    assert settings.outputs is None
    assert store_options(settings) == {
        "endpoint_url": "http://minio:9000",
        "aws_credentials_block": "prod-aws",
    }
    with pytest.raises(ConfigError, match="is a bucket"):
        _ = settings.data_dir
    local = Settings(data="data").resolved()
    assert store_options(local) is None
    assert not local.data_in_bucket


def _contract(name: str) -> dict[str, Any]:
    return {
        "analytics": f"analytics/{name}/revenue_by_day.parquet",
        "partition": f"processed/{name}/cleaned/orders.csv.parquet",
    }


@pytest.mark.timeout(300)
def test_every_output_of_the_contract_lives_in_the_bucket(
    bucket_loop: Harness, data_bucket: DataBucket, tmp_path: Path
) -> None:
    loop, name = bucket_loop, bucket_loop.name
    paths = _contract(name)
    loop.drop("orders.csv", DAY1)
    loop.wait_file_state("orders.csv", "done")
    wait_for(
        lambda: paths["analytics"] in data_bucket.objects(), 30, what="the analytics in the bucket"
    )
    by_day = data_bucket.frame(paths["analytics"])
    assert by_day["amount"].tolist() == [10.0, 5.0]
    keys = data_bucket.objects()
    assert paths["partition"] in keys
    raw = [k for k in keys if k.startswith(f"raw/{name}/")]
    assert len(raw) == 1
    assert raw[0].endswith(".csv")
    assert data_bucket.read(raw[0]).decode() == DAY1
    first = loop.asset_version("revenue_by_day")
    assert f"versions/{name}/revenue_by_day/{first}.parquet" in keys
    # The ledger names the objects by their s3:// URIs, and so do the asset keys.
    row = loop.ledger.asset(name, "revenue_by_day")
    assert row is not None
    assert row.path == f"{data_bucket.uri}/{paths['analytics']}"
    assert row.key == asset_key(row.path)

    # A new version: the current object is replaced, the old version stays.
    loop.drop("orders.csv", DAY2)
    wait_for(
        lambda: loop.asset_version("revenue_by_day") not in (None, first),
        60,
        what="the second version",
    )
    wait_for(
        lambda: data_bucket.frame(paths["analytics"])["amount"].tolist() == [7.0],
        30,
        what="the new current object",
    )
    second = loop.asset_version("revenue_by_day")
    versions = data_bucket.objects(f"versions/{name}/revenue_by_day/")
    assert versions == sorted(
        f"versions/{name}/revenue_by_day/{v}.parquet" for v in {first, second}
    )

    # A bad file goes to quarantine in the bucket, with its reason; the inbox loses it.
    loop.drop("broken.csv", "day,amount\n2026-01-01,1,2,3\n")
    loop.wait_file_state("broken.csv", "rejected")
    quarantined = data_bucket.objects(f"quarantine/{name}/")
    assert quarantined == [
        f"quarantine/{name}/broken.csv",
        f"quarantine/{name}/broken.csv.reason.json",
    ]
    assert b"more fields than the header" in data_bucket.read(quarantined[1])
    assert not (loop.inbox / "broken.csv").exists()

    # A deleted current object is put back from its version by the next run.
    data_bucket.delete(paths["analytics"])
    loop.drop("more.csv", "day,amount\n2026-01-03,1\n")
    loop.wait_file_state("more.csv", "done")
    wait_for(lambda: paths["analytics"] in data_bucket.objects(), 30, what="the restored analytics")

    # Nothing of the pipeline on the local disk but the inbox's inputs and the cache.
    local = [p for p in pipeline_files(tmp_path) if not p.is_relative_to(loop.inbox)]
    assert all(p.is_relative_to(tmp_path / "home" / "cache") for p in local), local
    assert not [p for p in local if p.suffix in (".parquet", ".csv") or ".sqlite" in p.name]

    # The CLI on another "host": nothing but the ledger's URL and the bucket's settings.
    cli_checks(loop, data_bucket, tmp_path / "elsewhere")


def cli(where: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventpipe.cli", *args],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def cli_checks(loop: Harness, data_bucket: DataBucket, where: Path) -> None:
    """status, versions, lineage, explain, retry and ui, read from PostgreSQL and the bucket."""
    where.mkdir()
    name = loop.name
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTPIPE_")}
    env.update(
        COLUMNS="200",
        HOME=str(where),
        EVENTPIPE_PIPELINE=str(loop.loop.settings.pipeline),
        EVENTPIPE_DATA=data_bucket.uri,
        EVENTPIPE_LEDGER=ledger_url(loop.loop.settings) or "",
        AWS_ENDPOINT_URL=data_bucket.endpoint,
    )
    status = cli(where, env, "status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)[name]
    assets = {a["name"]: a for a in report["assets"]}
    assert assets["revenue_by_day"]["key"] == asset_key(
        f"{data_bucket.uri}/analytics/{name}/revenue_by_day.parquet"
    )
    assert {f["file"]: f["state"] for f in report["files"]} == {
        "orders.csv": "done",
        "broken.csv": "rejected",
        "more.csv": "done",
    }
    versions = cli(where, env, "versions", "revenue_by_day", "--json")
    assert versions.returncode == 0, versions.stderr
    assert len(json.loads(versions.stdout)) >= 3
    lineage = cli(where, env, "lineage", "--format", "json")
    assert lineage.returncode == 0, lineage.stderr
    graph = json.loads(lineage.stdout)
    assert f"{data_bucket.uri}/analytics/{name}/revenue_by_day.parquet" in lineage.stdout, graph
    story = cli(where, env, "explain", "broken.csv")
    assert story.returncode == 0, story.stderr
    assert "rejected" in story.stdout
    assert "more fields than the header" in story.stdout
    retried = cli(where, env, "retry")
    assert retried.returncode == 0, retried.stderr
    port = free_port()
    page = Background(
        [sys.executable, "-m", "eventpipe.cli", "ui", "--port", str(port)],
        where / "ui.log",
        env=env,
        cwd=where,
    )
    page.start()
    try:
        served = wait_for(
            lambda: _get(f"http://127.0.0.1:{port}/lineage.json"), 60, 0.2, what="eventpipe ui"
        )
        assert "revenue_by_day" in served
    finally:
        page.stop(timeout=10)
    assert not pipeline_files(where)


def _get(url: str) -> str | None:
    try:
        return httpx.get(url, timeout=5).raise_for_status().text
    except httpx.HTTPError:
        return None
