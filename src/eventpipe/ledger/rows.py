"""The rows the ledger hands out: frozen values, no database types."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

FileState = Literal[
    "landed",
    "sent",
    "processing",
    "done",
    "failed",
    "rejected",
    "skipped",
    "retracting",
    "retracted",
]
Outcome = Literal["new", "changed", "unchanged", "duplicate", "retry", "restored"]
PENDING_STATES = ("landed", "sent")
DELETED = "deleted from the source"
"""The reason of a retraction the source saw: a sighting of the same bytes restores it."""
BY_COMMAND = "retracted with `eventpipe retract`"
"""The reason of an explicit retraction: it stays until the file's bytes change."""


@dataclass(frozen=True)
class FileRow:
    """One (uri, sha256) the ledger has seen, and where it is in its life."""

    id: int
    pipeline: str
    uri: str
    relative: str
    sha256: str
    size: int
    source: str
    local_path: str | None
    state: FileState
    generation: int
    seen_at: float
    updated_at: float
    run_id: str | None
    reason: str | None
    attempts: int


@dataclass(frozen=True)
class AssetRow:
    """The current version of one asset (a partition of a process step, or an analytics asset)."""

    pipeline: str
    name: str
    partition: str
    kind: str
    key: str
    version: str
    path: str
    rows: int
    size: int
    mtime_ns: int
    code_version: str
    input_fingerprint: str
    updated_at: float


@dataclass(frozen=True)
class AssetFailure:
    """An analytics asset whose step raised: its last good version (if any) stays current."""

    pipeline: str
    name: str
    reason: str
    run_id: str | None
    failed_at: float
    input_fingerprint: str
    """What the failed attempt computed from: the same inputs and code are not tried again
    until ``eventpipe retry``."""
    code_version: str


@dataclass(frozen=True)
class VersionRow:
    key: str
    version: str
    name: str
    partition: str
    path: str
    rows: int
    sources: list[str]
    run_id: str | None
    created_at: float
    current_at: float


_ASSET_COLUMNS = ", ".join(f.name for f in fields(AssetRow))
