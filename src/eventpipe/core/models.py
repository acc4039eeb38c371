"""Frozen value types passed between layers."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Landed:
    """A file that arrived in a source and was read completely."""

    uri: str
    """Where the file is: ``file:///abs/path`` or ``s3://bucket/key``."""
    relative: str
    """Its path relative to the source root; the partition name derives from it."""
    size: int
    fingerprint: str
    """sha256 of the bytes."""
    source: str
    """``local`` or ``s3``."""
    local_path: str | None = None
    """Where its bytes are on this machine (the inbox file, or the raw store for S3)."""
    tag: str | None = None
    """The source's version tag (the S3 eTag): with ``uri``, identifies one upload."""
    stamp: str | None = None
    """When the source says that version was written (S3 LastModified)."""


@dataclass(frozen=True)
class RawFile:
    """A claimed file, snapshotted into the raw version store; the input of every process step."""

    file_id: int
    uri: str
    partition: str
    fingerprint: str
    snapshot: str
    """Path of the immutable copy the steps read."""
    suffix: str
    size: int


@dataclass(frozen=True)
class Output:
    """One materialized version of an asset."""

    key: str
    version: str
    path: str
    rows: int
    sources: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class AnalyticsInputs:
    """What an analytics step reads, described by versions so its cache key costs nothing."""

    name: str
    partitions: dict[str, tuple[tuple[str, str], ...]]
    """Process step name -> ((partition, version), ...) sorted."""
    upstream: dict[str, str]
    """Analytics asset name -> version."""

    @property
    def fingerprint(self) -> str:
        body = json.dumps([self.partitions, sorted(self.upstream.items())], sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()
