"""A real S3 + SQS protocol server (``moto_server`` over HTTP on 127.0.0.1) and putting
objects into it the way producers do."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from eventpipe.orchestration.server import free_port
from eventpipe.testing.files import wait_for

if TYPE_CHECKING:
    import pandas as pd


def moto_env(endpoint: str) -> dict[str, str]:
    """The standard AWS variables that point any S3 client (boto3, pyarrow, eventpipe in a
    subprocess) at the moto server at ``endpoint``, with its dummy keys."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@contextmanager
def moto_s3(log_file: Path | None = None) -> Iterator[str]:
    """A real S3 + SQS protocol server (``moto_server``) on 127.0.0.1 and a free port, for the
    duration of the block; yields its endpoint URL. Sets dummy AWS credentials and a region in
    this process's environment unless some are set. Needs ``moto[server]``."""

    binary = Path(sys.executable).with_name("moto_server")
    command = [str(binary)] if binary.exists() else [shutil.which("moto_server") or "moto_server"]
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(name, value)
    out = log_file.open("ab") if log_file else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            [*command, "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise RuntimeError("moto_server not found: pip install 'moto[server]'") from exc
    try:
        wait_for(lambda: _answers(endpoint), 30, 0.1, what=f"moto_server on {endpoint}")
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log_file and not isinstance(out, int):
            out.close()


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
    except httpx.HTTPError:
        return False
    return True


def upload(s3: Any, bucket: str, key: str, content: str | bytes) -> str:
    """Put one object (as producers do: a single PUT, atomic in S3); returns its eTag."""
    body = content.encode() if isinstance(content, str) else content
    return str(s3.put_object(Bucket=bucket, Key=key, Body=body)["ETag"]).strip('"')


class DataBucket:
    """A new bucket for a pipeline's data (``--data s3://<bucket>/<prefix>``), read with boto3
    rather than with eventpipe's own code: what a test checks is what any S3 client sees."""

    def __init__(self, endpoint: str, prefix: str = "pipelines/sales/") -> None:
        import boto3

        self.name = "data-" + uuid.uuid4().hex[:12]
        self.prefix = prefix
        self.endpoint = endpoint
        self.s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        self.s3.create_bucket(Bucket=self.name)

    @property
    def uri(self) -> str:
        """The ``--data`` value."""
        return f"s3://{self.name}/{self.prefix.rstrip('/')}"

    def objects(self, under: str = "") -> list[str]:
        """Keys under ``under``, relative to the prefix, sorted."""
        found: list[str] = []
        pages = self.s3.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.name, Prefix=self.prefix + under):
            found += [o["Key"][len(self.prefix) :] for o in page.get("Contents", [])]
        return sorted(found)

    def read(self, relative: str) -> bytes:
        body: bytes = self.s3.get_object(Bucket=self.name, Key=self.prefix + relative)[
            "Body"
        ].read()
        return body

    def frame(self, relative: str) -> pd.DataFrame:
        """A parquet object, read in one GET (a reader sees a whole version or none)."""
        import pandas as pd

        return pd.read_parquet(io.BytesIO(self.read(relative)))

    def delete(self, relative: str) -> None:
        self.s3.delete_object(Bucket=self.name, Key=self.prefix + relative)
