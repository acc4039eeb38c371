"""Publishing copies of a local data dir's current outputs to a bucket too (``outputs``): one
PUT per object, at the relative path it has under the data dir. (With ``--data s3://…`` the
outputs themselves are in the bucket, and nothing is copied.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eventpipe.intake.aws import BucketLocation, aws_clients
from eventpipe.settings import Settings


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
        settings = Settings.model_validate({k: v for k, v in options.items() if k != "uri"})
        s3, _ = aws_clients(settings)
        return cls(BucketLocation.parse(options["uri"]), s3, data)

    def key(self, path: str) -> str:
        return self.location.prefix + Path(path).resolve().relative_to(self.data).as_posix()

    def __call__(self, path: str) -> str:
        """Upload the local file ``path``; returns its ``s3://`` URI."""
        key = self.key(path)
        self.s3.upload_file(path, self.location.bucket, key)
        return self.location.uri(key)
